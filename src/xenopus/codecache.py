"""The methods `dataclasses` generates, compiled once per install instead of in every process.

`@dataclass` writes the source of each class's `__init__`, `__repr__`, `__eq__`,
`__setattr__`... and compiles it with `exec`; for the ~90 dataclasses a domain process
imports that is ~40 ms of CPU in every spare (toolstack/spare.py), each exec'd afresh
for its own address-space layout. `generated_methods()` has that `exec` look the source
up in a table of compiled code first, and compiles only what the table lacks. An entry is
found by the hash `importlib.util.source_hash` gives the exact source text (the 64-bit
keyed SipHash that validates a hash-based `.pyc`), so a class whose source changed
misses and compiles as before. The table lives beside the bytecode, in the package's
`__pycache__`, tagged with the interpreter (marshal's format is its own), and is written
like bytecode: by `make compile` (`python -m xenopus.toolstack.spare --write-methods`),
or by a process that missed entries where writing bytecode is allowed. Like a `.pyc` it is trusted as the code
beside it is: only who can write the package can write it.

Each entry is unmarshalled only when asked for, from the file's bytes read at once: the
wrapper code `dataclasses` runs once is freed right after, as when it compiles, instead
of 400 of them staying alive together and leaving holes in the heap (PSS per domain).
"""

from __future__ import annotations

import contextlib
import dataclasses
import marshal
import os
import sys
from collections.abc import Iterator
from importlib.util import source_hash
from types import CodeType

PATH = os.path.join(os.path.dirname(__file__), "__pycache__",
                    f"dataclass-methods.{sys.implementation.cache_tag}.marshal")
# The table's format (2: compiled without this module's __future__ flags) and the
# interpreter's exact version: marshal's code objects are its own.
_HEADER = b"XDM2" + sys.hexversion.to_bytes(4, "little")


class Table:
    """Compiled code by the hash of its source: entries read from a file (unmarshalled
    on use) and entries compiled since (`added`)."""

    def __init__(self, data: bytes = b"", index: dict[bytes, tuple[int, int]] | None = None):
        self._data = memoryview(data)
        self._index = index or {}
        self.added: dict[bytes, bytes] = {}  # hash -> marshalled code, to write

    def __len__(self) -> int:
        return len(self._index.keys() | self.added.keys())

    def get(self, key: bytes) -> CodeType | None:
        where = self._index.get(key)
        if where is None:
            return None
        start, length = where
        try:
            entry = marshal.loads(self._data[start:start + length])
        except (EOFError, ValueError, TypeError):
            return None  # damaged: compiled instead
        # Each entry names its key: an index that points at another entry's code is
        # caught here, not run.
        if (isinstance(entry, tuple) and len(entry) == 2 and entry[0] == key
                and isinstance(entry[1], CodeType)):
            return entry[1]
        return None

    def add(self, key: bytes, code: CodeType) -> None:
        self.added[key] = marshal.dumps((key, code))

    def entries(self) -> dict[bytes, bytes]:
        """Every entry, marshalled (the file's and the added)."""
        out = {key: bytes(self._data[s:s + n]) for key, (s, n) in self._index.items()}
        out.update(self.added)
        return out


def load(path: str = PATH) -> Table:
    """The table at `path`; empty if it is missing, another interpreter's, or damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return Table()
    if not data.startswith(_HEADER):
        return Table()
    try:
        # header, the index's length (4 bytes), the index, then the entries' code
        size = int.from_bytes(data[len(_HEADER):len(_HEADER) + 4], "little")
        at = len(_HEADER) + 4
        index = marshal.loads(data[at:at + size])
    except (EOFError, ValueError, TypeError):
        return Table()
    if not isinstance(index, dict):
        return Table()
    base = at + size
    good = {k: (base + v[0], v[1]) for k, v in index.items()
            if isinstance(k, bytes) and isinstance(v, tuple) and len(v) == 2
            and all(isinstance(n, int) and n >= 0 for n in v) and base + v[0] + v[1] <= len(data)}
    return Table(data, good)


def save(table: Table, path: str = PATH) -> None:
    """Write `table` atomically (another process reads the old or the new file), readable
    by all as bytecode is. (No tempfile: a spare would import it, and random, for this;
    nor the pid in the name: every spare is pid 1 of its own namespace.)"""
    entries = table.entries()
    index, blobs, offset = {}, [], 0
    for key, blob in entries.items():
        index[key] = (offset, len(blob))
        blobs.append(blob)
        offset += len(blob)
    head = marshal.dumps(index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER + len(head).to_bytes(4, "little") + head + b"".join(blobs))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Lookup:
    """`exec` as the dataclasses module sees it while installed."""

    def __init__(self, table: Table):
        self.table = table
        self.misses = 0

    def __call__(self, source: object, globals: dict | None = None,  # noqa: A002 - exec's
                 locals: dict | None = None) -> None:  # noqa: A002
        if isinstance(source, str):
            key = source_hash(source.encode())
            code = self.table.get(key)
            if code is None:
                # As exec(str) in dataclasses would: without the __future__ flags of
                # this module (`annotations` would turn the methods' into strings).
                code = compile(source, "<string>", "exec", dont_inherit=True)
                self.table.add(key, code)
                self.misses += 1
            source = code
        exec(source, globals, locals)  # noqa: S102 - what dataclasses does, from our table


@contextlib.contextmanager
def generated_methods(path: str = PATH, write: bool | None = None) -> Iterator[_Lookup]:
    """While in the block, dataclasses compile their methods from the table at `path`.
    On leaving it, `dataclasses` is as it was and, if entries were missing and `write`
    (default: unless bytecode is not to be written), the table is written anew."""
    if write is None:
        write = not sys.dont_write_bytecode
    lookup = _Lookup(load(path))
    had = "exec" in vars(dataclasses)
    previous = vars(dataclasses).get("exec")
    dataclasses.exec = lookup  # type: ignore[attr-defined]  # shadows the builtin there
    try:
        yield lookup
    finally:
        if had:
            dataclasses.exec = previous  # type: ignore[attr-defined]
        else:
            del dataclasses.exec  # type: ignore[attr-defined]
        if write and lookup.misses:
            with contextlib.suppress(OSError):  # a read-only install: compile next time too
                save(lookup.table, path)
