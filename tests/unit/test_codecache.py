"""xenopus.codecache: dataclass methods compiled once, looked up by their source's hash."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from xenopus import codecache


def _point(frozen: bool = True, extra: bool = False) -> type:
    """A dataclass made now (its methods generated now, through whatever exec the
    dataclasses module has)."""
    fields: list = [("x", int), ("y", int, dataclasses.field(default=2))]
    if extra:
        fields.append(("z", int, dataclasses.field(default=3)))
    return dataclasses.make_dataclass("Point", fields, frozen=frozen)


def test_a_second_process_compiles_nothing_and_gets_the_same_methods(tmp_path: Path) -> None:
    path = str(tmp_path / "methods.marshal")
    with codecache.generated_methods(path, write=True) as first:
        _point()
    assert first.misses > 0  # __init__, __repr__, __eq__, __hash__, __setattr__, __delattr__
    assert os.path.exists(path)
    with codecache.generated_methods(path, write=True) as second:
        cls = _point()
    assert second.misses == 0
    p = cls(1)
    assert (p.x, p.y) == (1, 2)
    assert p == cls(1, 2) and p != cls(1, 3)
    assert repr(p) == "Point(x=1, y=2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5
    # The methods are those dataclasses makes itself, annotations included (compiled
    # without codecache's own `from __future__ import annotations`).
    plain = _point()
    for name in ("__init__", "__repr__", "__eq__", "__setattr__"):
        assert getattr(cls, name).__annotations__ == getattr(plain, name).__annotations__
    assert cls.__init__.__annotations__["x"] is int


def test_a_changed_class_misses_rather_than_taking_a_stale_entry(tmp_path: Path) -> None:
    path = str(tmp_path / "methods.marshal")
    with codecache.generated_methods(path, write=True):
        _point()
    with codecache.generated_methods(path, write=True) as lookup:
        cls = _point(extra=True)
    assert lookup.misses > 0
    assert cls(1).z == 3
    with codecache.generated_methods(path, write=False) as lookup:
        _point(extra=True)
        _point()
    assert lookup.misses == 0  # both kept


@pytest.mark.parametrize("damage", [
    b"",  # empty
    b"not a table at all",
    lambda good: good[:-40],  # truncated: the last entries run past the end
    lambda good: good[:8] + b"\xff\xff\xff\x7f" + good[12:],  # index length beyond the file
    lambda good: good[:4] + b"\0\0\0\0" + good[8:],  # another interpreter's
])
def test_a_damaged_table_is_compiled_around(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "methods.marshal"
    with codecache.generated_methods(str(path), write=True):
        _point()
    good = path.read_bytes()
    path.write_bytes(damage(good) if callable(damage) else damage)
    with codecache.generated_methods(str(path), write=False):
        cls = _point()
    assert cls(4, 5) == cls(4, 5) and repr(cls(4)) == "Point(x=4, y=2)"


def test_dataclasses_is_left_as_it_was_and_nothing_written_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "methods.marshal"
    assert "exec" not in vars(dataclasses)
    with codecache.generated_methods(str(path), write=False) as lookup:
        assert vars(dataclasses)["exec"] is lookup
        _point(frozen=False)
    assert "exec" not in vars(dataclasses)
    assert lookup.misses > 0 and not path.exists()
    with pytest.raises(RuntimeError), codecache.generated_methods(str(path), write=False):
        raise RuntimeError("an import failed")
    assert "exec" not in vars(dataclasses)


def test_an_index_pointing_at_another_entry_is_not_run(tmp_path: Path) -> None:
    """Entries swapped in the index (a file mixed from two writers): each is refused and
    compiled afresh, never run as another method."""
    import marshal

    path = tmp_path / "methods.marshal"
    with codecache.generated_methods(str(path), write=True):
        _point()
    data = path.read_bytes()
    size = int.from_bytes(data[8:12], "little")
    index = marshal.loads(data[12:12 + size])
    keys = list(index)
    rotated = {k: index[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}
    head = marshal.dumps(rotated)
    assert len(head) == size  # same shape: the entries' offsets are unchanged
    path.write_bytes(data[:12] + head + data[12 + size:])
    with codecache.generated_methods(str(path), write=False) as lookup:
        cls = _point()
    assert lookup.misses == len(keys)
    assert repr(cls(7)) == "Point(x=7, y=2)" and cls(7) == cls(7, 2)
