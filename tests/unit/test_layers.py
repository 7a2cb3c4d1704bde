"""Imports run one way: no module under src/xenopus imports from a layer above its own.

The layers are DEVELOPERS.md's table; `LAYER` restates it (with the packages its prose
places beside a row's package), and the first test holds the two together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "xenopus"

# Each top-level package or module of xenopus, by layer (DEVELOPERS.md, "Layers").
LAYER = {
    "arch": 0, "host": 0, "stream": 0, "held_files": 0, "sampler": 0, "trace": 0, "codecache": 0,
    "kvm": 1,
    "memory": 2,
    "vm": 3,
    "devices": 4, "xen": 4,
    "boot": 5, "acpi": 5,
    "domain": 6, "ipc": 6, "control": 6,
    "toolstack": 7, "client": 7,
    "__main__": 8,  # `python -m xenopus`: the CLI's entry point
    "api": 8,  # the Python API: the client plus the toolstack's config lookup
}
# Of two units on one layer, only these imports are allowed ("only the one named second
# may import the first"); ipc and control import nothing from xenopus.
SAME_LAYER = {("xen", "devices"), ("domain", "ipc"), ("domain", "control"), ("toolstack", "client")}


def unit_of(module: str) -> str:
    """The top-level unit of a dotted module name inside xenopus ("xenopus.vm.cpu" → vm)."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every xenopus import in the `source` of `module`, function-local
    and TYPE_CHECKING-only ones included; `from xenopus import x` counts as xenopus.x."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base == "xenopus" or (node.level and not node.module):
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return sorted((line, m) for line, m in found if m.startswith("xenopus."))


def test_the_table_is_developers_md() -> None:
    rows = re.findall(r"^\| (\d+) [^|]*\| ([^|]*) \|", (ROOT / "DEVELOPERS.md").read_text(), re.M)
    documented = {
        name: int(layer) for layer, cell in rows for name in re.findall(r"`xenopus\.(\w+)`", cell)
    }
    assert documented, "DEVELOPERS.md has no layer table"
    assert {n: LAYER[n] for n in documented if n in LAYER} == documented


def test_every_package_has_a_layer() -> None:
    units = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    units |= {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert units == set(LAYER)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    me = module_name(path)
    mine = unit_of(me) if "." in me else None
    wrong = []
    for line, target in imports(path.read_text(), me, path.name == "__init__.py"):
        theirs = unit_of(target)
        if mine is None or theirs == mine:
            continue
        if LAYER[theirs] > LAYER[mine] or (
            LAYER[theirs] == LAYER[mine] and (mine, theirs) not in SAME_LAYER
        ):
            wrong.append(f"line {line}: {target} (layer {LAYER[theirs]}, {theirs})")
    assert not wrong, f"{me} (layer {LAYER[mine]}) imports upward: " + "; ".join(wrong)


def test_the_checker_sees_every_kind_of_import() -> None:
    """Absolute, relative and `from xenopus import` imports, function-local ones too."""
    source = (
        "from xenopus import host\n"
        "from . import cpu\n"
        "from .irq import MsiRoute\n"
        "def f():\n    import xenopus.domain.builder\n"
    )
    assert [m for _, m in imports(source, "xenopus.vm.probe")] == [
        "xenopus.host", "xenopus.vm.cpu", "xenopus.vm.irq", "xenopus.domain.builder"]
