"""A flattened device tree (FDT, "DTB") writer.

Implements the Devicetree Specification v0.4 chapter 5 "Flattened Devicetree (DTB)
Format": the header (§5.2), the memory reservation block (§5.3), the structure block
(§5.4) and the strings block (§5.5). Names are checked against §2.2.1 (node names) and
§2.2.4 (property names), so a tree we write is one dtc and Linux read back as written.

A tree is built from `Node`s and serialised with `Node.to_dtb()`:

    root = Node("")
    root.u32("#address-cells", 2)
    cpus = root.child("cpus")
    ...
    blob = root.to_dtb()
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

FDT_MAGIC = 0xD00DFEED  # §5.2
FDT_VERSION = 17
FDT_LAST_COMP_VERSION = 16
FDT_HEADER = struct.Struct(">10I")  # §5.2: ten big-endian u32s
# Structure block tokens (§5.4.1)
FDT_BEGIN_NODE = 0x1
FDT_END_NODE = 0x2
FDT_PROP = 0x3
FDT_END = 0x9

# §2.2.1 Table 2.1 (node-name characters; unit address after "@") and §2.2.4.1 Table 2.2
# (property-name characters); both at most 31 characters.
_NODE_NAME = re.compile(r"[A-Za-z0-9,._+-]{1,31}(@[A-Za-z0-9,._+-]+)?")
_PROP_NAME = re.compile(r"[A-Za-z0-9,._+?#-]{1,31}")


class FdtError(ValueError):
    """A tree that the Devicetree Specification does not allow."""


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


@dataclass
class Node:
    """One devicetree node: its properties (name → encoded value, in insertion order) and
    its children. The root's name is the empty string (§5.4.1)."""

    name: str
    props: dict[str, bytes] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.name and not _NODE_NAME.fullmatch(self.name):
            raise FdtError(f"node name {self.name!r} is not a devicetree node name (§2.2.1)")

    def child(self, name: str) -> Node:
        """Add and return a child node; a second child of the same name is refused."""
        if any(c.name == name for c in self.children):
            raise FdtError(f"node {self.name or '/'} already has a child {name!r}")
        node = Node(name)
        self.children.append(node)
        return node

    # --- property encodings (§2.2.4.2 "Property Values") ---------------------------------
    def prop(self, name: str, value: bytes = b"") -> Node:
        """A property with raw `value` (empty: a boolean property)."""
        if not _PROP_NAME.fullmatch(name):
            raise FdtError(f"property name {name!r} is not a devicetree property name (§2.2.4)")
        if name in self.props:
            raise FdtError(f"node {self.name or '/'} already has a property {name!r}")
        self.props[name] = bytes(value)
        return self

    def u32(self, name: str, *cells: int) -> Node:
        """<u32> or <prop-encoded-array> of 32-bit cells, big-endian."""
        for c in cells:
            if not 0 <= c <= 0xFFFF_FFFF:
                raise FdtError(f"{name}: cell {c:#x} does not fit in 32 bits")
        return self.prop(name, struct.pack(f">{len(cells)}I", *cells))

    def u64(self, name: str, *values: int) -> Node:
        """<u64>: each value as two cells, high first."""
        for v in values:
            if not 0 <= v < 1 << 64:
                raise FdtError(f"{name}: value {v:#x} does not fit in 64 bits")
        return self.prop(name, struct.pack(f">{len(values)}Q", *values))

    def string(self, name: str, *strings: str) -> Node:
        """<string> or <stringlist>: each NUL-terminated."""
        if any("\0" in s for s in strings):
            raise FdtError(f"{name}: a string holds a NUL")
        return self.prop(name, b"".join(s.encode() + b"\0" for s in strings))

    # --- serialisation (§5.4) ------------------------------------------------------------
    def _emit(self, out: bytearray, strings: _Strings) -> None:
        out += struct.pack(">I", FDT_BEGIN_NODE) + _pad4(self.name.encode() + b"\0")
        for name, value in self.props.items():
            out += struct.pack(">III", FDT_PROP, len(value), strings.offset(name))
            out += _pad4(value)
        for c in self.children:
            c._emit(out, strings)
        out += struct.pack(">I", FDT_END_NODE)

    def to_dtb(self, reserve: list[tuple[int, int]] = (), boot_cpuid: int = 0) -> bytes:
        """The DTB of the tree rooted here (§5.1 layout: header, reservation block,
        structure block, strings block). `reserve` lists (address, size) memory
        reservations (§5.3)."""
        if self.name:
            raise FdtError(f"the root node must have an empty name, not {self.name!r}")
        strings = _Strings()
        structure = bytearray()
        self._emit(structure, strings)
        structure += struct.pack(">I", FDT_END)
        # §5.3: the reservation block is 8-byte aligned and ends with a (0, 0) entry.
        off_rsvmap = (FDT_HEADER.size + 7) & ~7
        rsv = b"".join(struct.pack(">QQ", a, s) for a, s in reserve) + bytes(16)
        off_struct = off_rsvmap + len(rsv)  # §5.4: 4-byte aligned (it is: 40 + 16n)
        off_strings = off_struct + len(structure)
        table = bytes(strings.table)
        total = off_strings + len(table)
        header = FDT_HEADER.pack(FDT_MAGIC, total, off_struct, off_strings, off_rsvmap,
                                 FDT_VERSION, FDT_LAST_COMP_VERSION, boot_cpuid, len(table),
                                 len(structure))
        return header + bytes(off_rsvmap - FDT_HEADER.size) + rsv + bytes(structure) + table


class _Strings:
    """The strings block (§5.5): each property name once, NUL-terminated."""

    def __init__(self) -> None:
        self.table = bytearray()
        self._at: dict[str, int] = {}

    def offset(self, name: str) -> int:
        if name not in self._at:
            self._at[name] = len(self.table)
            self.table += name.encode() + b"\0"
        return self._at[name]
