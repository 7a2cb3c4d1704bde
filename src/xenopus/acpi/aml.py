"""A small AML encoder: typed objects that render to ACPI Machine Language bytes.

Section numbers are ACPI 6.5's: §20.2 (AML grammar) for the terms, §6.4 (resource
data types) for the descriptors inside a `ResourceTemplate`. Only what xenopus's DSDT
needs is here; every object has `.encode() -> bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

# §20.2.3 data objects, §20.2.5 term objects: opcodes.
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX = 0x5E  # '^'
NULL_NAME = 0x00
EXT_OP_PREFIX = 0x5B
OP_REGION_OP = 0x80  # after EXT_OP_PREFIX
FIELD_OP = 0x81  # after EXT_OP_PREFIX
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
LOCAL0_OP = 0x60
ARG0_OP = 0x68
STORE_OP = 0x70
SHIFT_LEFT_OP = 0x79
SHIFT_RIGHT_OP = 0x7A
AND_OP = 0x7B
OR_OP = 0x7D
NOTIFY_OP = 0x86
CREATE_DWORD_FIELD_OP = 0x8A
LAND_OP = 0x90
LOR_OP = 0x91
LNOT_OP = 0x92
LEQUAL_OP = 0x93
LGREATER_OP = 0x94
LLESS_OP = 0x95
IF_OP = 0xA0
ELSE_OP = 0xA1
RETURN_OP = 0xA4

ONES = (1 << 64) - 1  # OnesOp in a revision-2 (64-bit integer) definition block

# §20.2.4 PkgLength: one byte holds 6 bits; 2-4 bytes hold 4 bits plus 8 per extra byte.
PKG_LENGTH_MAX = (1 << 28) - 1

# §19.6.100 OperationRegion spaces.
SYSTEM_MEMORY = 0x00
SYSTEM_IO = 0x01
PCI_CONFIG = 0x02

# §20.2.5.2 FieldFlags: AccessType (bits 0-3), LockRule (bit 4), UpdateRule (bits 5-6).
ANY_ACC, BYTE_ACC, WORD_ACC, DWORD_ACC, QWORD_ACC, BUFFER_ACC = range(6)
NO_LOCK, LOCK = 0, 1
PRESERVE, WRITE_AS_ONES, WRITE_AS_ZEROS = range(3)


class Aml(Protocol):
    def encode(self) -> bytes: ...


def pkg_length_value(value: int) -> bytes:
    """A PkgLength-format number as is (a NamedField's bit width, §20.2.5.2)."""
    if value < 0 or value > PKG_LENGTH_MAX:
        raise ValueError(f"PkgLength out of range: {value}")
    if value < 1 << 6:
        return bytes([value])
    extra = 1 if value < 1 << 12 else 2 if value < 1 << 20 else 3
    rest = value >> 4
    return bytes([(extra << 6) | (value & 0xF)]) + rest.to_bytes(extra, "little")


def pkg_length(body: int) -> bytes:
    """The PkgLength in front of `body` bytes: it counts its own bytes too (§20.2.4)."""
    for size in range(1, 5):
        total = body + size
        if total <= PKG_LENGTH_MAX and len(pkg_length_value(total)) == size:
            return pkg_length_value(total)
    raise ValueError(f"AML package too long: {body} bytes")


def _package(prefix: bytes, body: bytes) -> bytes:
    return prefix + pkg_length(len(body)) + body


def name_seg(seg: str) -> bytes:
    """A NameSeg (§20.2.2): four characters, short names padded with '_'."""
    if not 1 <= len(seg) <= 4:
        raise ValueError(f"AML name segment must be 1-4 characters: {seg!r}")
    seg = seg.upper().ljust(4, "_")
    if not (seg[0] == "_" or "A" <= seg[0] <= "Z") or not all(
        c == "_" or "A" <= c <= "Z" or "0" <= c <= "9" for c in seg
    ):
        raise ValueError(f"bad AML name segment: {seg!r}")
    return seg.encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString (§20.2.2): optional root '\\' or parent '^' prefixes, then dotted
    segments as one NameSeg, a DualNamePath, a MultiNamePath, or the NullName."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = b"\\", path[1:]
    else:
        while path.startswith("^"):
            prefix, path = prefix + b"^", path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + bytes([NULL_NAME])
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise ValueError(f"AML name path too deep: {path!r}")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


Term = Aml | int | bytes


def term(value: Term) -> bytes:
    """Encode a term argument: Python ints become Integers, bytes become Buffers."""
    if isinstance(value, bool):
        raise TypeError("AML has no booleans: use 0 or 1")
    if isinstance(value, int):
        return Integer(value).encode()
    if isinstance(value, bytes | bytearray):
        return Buffer(bytes(value)).encode()
    return value.encode()


def _target(value: Aml | str | None) -> bytes:
    """A Target/SuperName: a name (str), a Local/Arg, or nothing (NullName)."""
    if value is None:
        return bytes([NULL_NAME])
    if isinstance(value, str):
        return name_string(value)
    return value.encode()


# --- data objects (§20.2.3) -------------------------------------------------------


@dataclass(frozen=True)
class Integer:
    """The shortest integer encoding: ZeroOp, OneOp, OnesOp or a Byte..QWord constant."""

    value: int

    def encode(self) -> bytes:
        v = self.value
        if not 0 <= v <= ONES:
            raise ValueError(f"AML integer out of range: {v}")
        if v == 0:
            return bytes([ZERO_OP])
        if v == 1:
            return bytes([ONE_OP])
        if v == ONES:
            return bytes([ONES_OP])
        for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
            if v < 1 << (8 * size):
                return bytes([prefix]) + v.to_bytes(size, "little")
        return bytes([QWORD_PREFIX]) + v.to_bytes(8, "little")


@dataclass(frozen=True)
class String:
    """String (§20.2.3 StringPrefix): NUL-free ASCII."""

    value: str

    def encode(self) -> bytes:
        data = self.value.encode("ascii")
        if b"\0" in data or any(c > 0x7F for c in data):
            raise ValueError(f"AML strings are NUL-free ASCII: {self.value!r}")
        return bytes([STRING_PREFIX]) + data + b"\0"


@dataclass(frozen=True)
class Buffer:
    """DefBuffer (§20.2.5.4): a byte buffer."""

    data: bytes

    def encode(self) -> bytes:
        body = Integer(len(self.data)).encode() + self.data
        return _package(bytes([BUFFER_OP]), body)


@dataclass(frozen=True)
class Package:
    """DefPackage (§20.2.5.4): at most 255 elements."""

    elements: Sequence[Term]

    def encode(self) -> bytes:
        if len(self.elements) > 255:
            raise ValueError("a Package holds at most 255 elements (use a VarPackage)")
        body = bytes([len(self.elements)]) + b"".join(term(e) for e in self.elements)
        return _package(bytes([PACKAGE_OP]), body)


def eisa_id(text: str) -> int:
    """EISAID("PNP0A03") (§19.6.35): three letters of 5 bits and four hex digits,
    stored byte-swapped as a DWORD."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id: {text!r}")
    a, b, c = (ord(ch) - 0x40 for ch in text[:3])
    product = int(text[3:], 16)
    raw = bytes([(a << 2) | (b >> 3), ((b & 7) << 5) | c, product >> 8, product & 0xFF])
    return int.from_bytes(raw, "little")


@dataclass(frozen=True)
class EisaId:
    """EISAID("PNP0A03") (§19.6.35) as an integer term."""

    text: str

    def encode(self) -> bytes:
        return Integer(eisa_id(self.text)).encode()


def to_uuid(text: str) -> Buffer:
    """ToUUID (§19.6.143): the 16-byte buffer, first three fields little-endian.
    (RFC 4122's string form, parsed here: the uuid module costs every domain process
    its import.)"""
    fields = text.split("-")
    if [len(f) for f in fields] != [8, 4, 4, 4, 12]:
        raise ValueError(f"not a UUID: {text!r}")
    raw = bytes.fromhex("".join(fields))
    return Buffer(raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:])


# --- names and references ----------------------------------------------------------


@dataclass(frozen=True)
class NameRef:
    """A reference to a named object, evaluated as a term."""

    path: str

    def encode(self) -> bytes:
        return name_string(self.path)


@dataclass(frozen=True)
class Local:
    """LocalObj (§20.2.6.2): Local0-Local7."""

    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index <= 7:
            raise ValueError(f"Local{self.index}: only Local0-Local7 exist")
        return bytes([LOCAL0_OP + self.index])


@dataclass(frozen=True)
class Arg:
    """ArgObj (§20.2.6.1): Arg0-Arg6."""

    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index <= 6:
            raise ValueError(f"Arg{self.index}: only Arg0-Arg6 exist")
        return bytes([ARG0_OP + self.index])


# --- namespace modifiers and named objects (§20.2.5.1, §20.2.5.2) --------------------


@dataclass(frozen=True)
class Name:
    """DefName (§20.2.5.1): a named object."""

    name: str
    value: Term

    def encode(self) -> bytes:
        return bytes([NAME_OP]) + name_string(self.name) + term(self.value)


def _terms(body: Iterable[Aml]) -> bytes:
    return b"".join(t.encode() for t in body)


@dataclass(frozen=True)
class Scope:
    """DefScope (§20.2.5.1)."""

    name: str
    body: Sequence[Aml] = ()

    def encode(self) -> bytes:
        return _package(bytes([SCOPE_OP]), name_string(self.name) + _terms(self.body))


@dataclass(frozen=True)
class Device:
    """DefDevice (§20.2.5.2)."""

    name: str
    body: Sequence[Aml] = ()

    def encode(self) -> bytes:
        return _package(
            bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(self.name) + _terms(self.body)
        )


@dataclass(frozen=True)
class Method:
    """DefMethod (§20.2.5.2)."""

    name: str
    args: int = 0
    body: Sequence[Aml] = ()
    serialized: bool = False
    sync_level: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.args <= 7 or not 0 <= self.sync_level <= 15:
            raise ValueError(f"method {self.name}: bad arg count or sync level")
        # MethodFlags: ArgCount bits 0-2, SerializeFlag bit 3, SyncLevel bits 4-7.
        flags = self.args | (int(self.serialized) << 3) | (self.sync_level << 4)
        body = name_string(self.name) + bytes([flags]) + _terms(self.body)
        return _package(bytes([METHOD_OP]), body)


@dataclass(frozen=True)
class OperationRegion:
    """DefOpRegion (§20.2.5.2): `length` bytes at `offset` of address space `space`."""

    name: str
    space: int
    offset: Term
    length: Term

    def encode(self) -> bytes:
        return (
            bytes([EXT_OP_PREFIX, OP_REGION_OP])
            + name_string(self.name)
            + bytes([self.space])
            + term(self.offset)
            + term(self.length)
        )


@dataclass(frozen=True)
class Field:
    """Field (§20.2.5.2): `units` are (name, bits) pairs; a None name is a ReservedField."""

    region: str
    units: Sequence[tuple[str | None, int]]
    access: int = ANY_ACC
    lock: int = NO_LOCK
    update: int = PRESERVE

    def encode(self) -> bytes:
        flags = self.access | (self.lock << 4) | (self.update << 5)
        body = name_string(self.region) + bytes([flags])
        for name, bits in self.units:
            lead = bytes([0x00]) if name is None else name_seg(name)
            body += lead + pkg_length_value(bits)
        return _package(bytes([EXT_OP_PREFIX, FIELD_OP]), body)


@dataclass(frozen=True)
class CreateDWordField:
    """DefCreateDWordField (§20.2.5.2)."""

    source: Term
    index: Term
    name: str

    def encode(self) -> bytes:
        return (
            bytes([CREATE_DWORD_FIELD_OP])
            + term(self.source)
            + term(self.index)
            + name_string(self.name)
        )


# --- statements and expressions (§20.2.5.3, §20.2.5.4) ------------------------------


@dataclass(frozen=True)
class Call:
    """A MethodInvocation (§20.2.5.4): the method's name, then its arguments."""

    method: str
    args: Sequence[Term] = ()

    def encode(self) -> bytes:
        return name_string(self.method) + b"".join(term(a) for a in self.args)


@dataclass(frozen=True)
class Return:
    """DefReturn (§20.2.5.3)."""

    value: Term

    def encode(self) -> bytes:
        return bytes([RETURN_OP]) + term(self.value)


@dataclass(frozen=True)
class Notify:
    """DefNotify (§20.2.5.3)."""

    target: Aml | str
    value: Term

    def encode(self) -> bytes:
        return bytes([NOTIFY_OP]) + _target(self.target) + term(self.value)


@dataclass(frozen=True)
class Store:
    """DefStore (§20.2.5.4)."""

    source: Term
    target: Aml | str

    def encode(self) -> bytes:
        return bytes([STORE_OP]) + term(self.source) + _target(self.target)


@dataclass(frozen=True)
class If:
    """DefIfElse's If part (§20.2.5.3)."""

    predicate: Term
    body: Sequence[Aml] = ()

    def encode(self) -> bytes:
        return _package(bytes([IF_OP]), term(self.predicate) + _terms(self.body))


@dataclass(frozen=True)
class Else:
    """DefElse (§20.2.5.3)."""

    body: Sequence[Aml] = ()

    def encode(self) -> bytes:
        return _package(bytes([ELSE_OP]), _terms(self.body))


@dataclass(frozen=True)
class _Binary:
    """Operand1 Operand2 Target (§20.2.5.4 And, Or, ShiftLeft, ...)."""

    left: Term
    right: Term
    target: Aml | str | None = None
    op: ClassVar[int] = 0

    def encode(self) -> bytes:
        return bytes([self.op]) + term(self.left) + term(self.right) + _target(self.target)


class And(_Binary):
    op = AND_OP


class Or(_Binary):
    op = OR_OP


class ShiftLeft(_Binary):
    op = SHIFT_LEFT_OP


class ShiftRight(_Binary):
    op = SHIFT_RIGHT_OP


@dataclass(frozen=True)
class _Logical:
    """Operand1 Operand2, no target (§20.2.5.4 LEqual, LAnd, ...)."""

    left: Term
    right: Term
    op: ClassVar[int] = 0

    def encode(self) -> bytes:
        return bytes([self.op]) + term(self.left) + term(self.right)


class LEqual(_Logical):
    op = LEQUAL_OP


class LAnd(_Logical):
    op = LAND_OP


class LOr(_Logical):
    op = LOR_OP


class LGreater(_Logical):
    op = LGREATER_OP


class LLess(_Logical):
    op = LLESS_OP


@dataclass(frozen=True)
class LNot:
    """DefLNot (§20.2.5.4)."""

    operand: Term

    def encode(self) -> bytes:
        return bytes([LNOT_OP]) + term(self.operand)


# --- resource descriptors (§6.4) ---------------------------------------------------

# Small items: byte 0 is (type << 3) | length (§6.4.2); large items: 0x80 | type, then
# a 16-bit length (§6.4.3).
SMALL_IRQ = 0x04
SMALL_IO = 0x08
SMALL_END_TAG = 0x0F
LARGE_MEMORY32_FIXED = 0x86
LARGE_DWORD_ADDRESS = 0x87
LARGE_WORD_ADDRESS = 0x88
LARGE_EXTENDED_IRQ = 0x89
LARGE_QWORD_ADDRESS = 0x8A

# §6.4.3.5.1-3: Resource Type of an address space descriptor.
RESOURCE_MEMORY = 0
RESOURCE_IO = 1
RESOURCE_BUS = 2

# §6.4.3.5.5 table 6.48: general flags.
ADDR_CONSUMER = 1 << 0
ADDR_SUB_DECODE = 1 << 1
ADDR_MIN_FIXED = 1 << 2
ADDR_MAX_FIXED = 1 << 3
# Memory type-specific flags: _RW bit 0, _MEM bits 1-2.
MEM_READ_WRITE = 1 << 0
MEM_NON_CACHEABLE = 0 << 1
MEM_CACHEABLE = 1 << 1
MEM_WRITE_COMBINING = 2 << 1
MEM_PREFETCHABLE = 3 << 1
# I/O type-specific flags: _RNG bits 0-1 (3 = ISA and non-ISA ranges).
IO_ENTIRE_RANGE = 3


def _small(kind: int, body: bytes) -> bytes:
    if len(body) > 7:
        raise ValueError("small resource items carry at most 7 bytes")
    return bytes([(kind << 3) | len(body)]) + body


def _large(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + len(body).to_bytes(2, "little") + body


@dataclass(frozen=True)
class IO:
    """I/O Port Descriptor (§6.4.2.5), 16-bit decode."""

    minimum: int
    maximum: int
    alignment: int
    length: int

    def encode(self) -> bytes:
        body = bytes([1])  # _DEC: decodes 16 address bits
        body += self.minimum.to_bytes(2, "little") + self.maximum.to_bytes(2, "little")
        return _small(SMALL_IO, body + bytes([self.alignment, self.length]))


@dataclass(frozen=True)
class IRQNoFlags:
    """IRQ Descriptor (§6.4.2.1) without the information byte: edge, active-high,
    exclusive — the ISA convention."""

    irqs: Sequence[int]

    def encode(self) -> bytes:
        mask = 0
        for irq in self.irqs:
            if not 0 <= irq <= 15:
                raise ValueError(f"IRQ descriptor covers IRQ 0-15 only: {irq}")
            mask |= 1 << irq
        return _small(SMALL_IRQ, mask.to_bytes(2, "little"))


@dataclass(frozen=True)
class Interrupt:
    """Extended Interrupt Descriptor (§6.4.3.6)."""

    irqs: Sequence[int]
    consumer: bool = True
    edge: bool = False
    active_low: bool = False
    shared: bool = False

    def encode(self) -> bytes:
        flags = (
            int(self.consumer)
            | (int(self.edge) << 1)
            | (int(self.active_low) << 2)
            | (int(self.shared) << 3)
        )
        body = bytes([flags, len(self.irqs)])
        body += b"".join(irq.to_bytes(4, "little") for irq in self.irqs)
        return _large(LARGE_EXTENDED_IRQ, body)


@dataclass(frozen=True)
class Memory32Fixed:
    """32-Bit Fixed Memory Range Descriptor (§6.4.3.4)."""

    base: int
    length: int
    writeable: bool = True

    def encode(self) -> bytes:
        body = bytes([int(self.writeable)])
        body += self.base.to_bytes(4, "little") + self.length.to_bytes(4, "little")
        return _large(LARGE_MEMORY32_FIXED, body)


@dataclass(frozen=True)
class AddressSpace:
    """Word/DWord/QWord Address Space Descriptor (§6.4.3.5.1-3): `width` is 2, 4 or 8.

    Fields after the flags: granularity, minimum, maximum, translation offset, length.
    """

    width: int
    kind: int
    minimum: int
    maximum: int
    general_flags: int = ADDR_MIN_FIXED | ADDR_MAX_FIXED  # a producer with a fixed range
    type_flags: int = 0
    granularity: int = 0
    translation: int = 0

    def encode(self) -> bytes:
        tag = {2: LARGE_WORD_ADDRESS, 4: LARGE_DWORD_ADDRESS, 8: LARGE_QWORD_ADDRESS}
        if self.width not in tag or self.maximum < self.minimum:
            raise ValueError(f"bad address space descriptor: {self}")
        length = self.maximum - self.minimum + 1
        body = bytes([self.kind, self.general_flags, self.type_flags])
        for value in (self.granularity, self.minimum, self.maximum, self.translation, length):
            body += value.to_bytes(self.width, "little")
        return _large(tag[self.width], body)


def word_bus_number(first: int, last: int) -> AddressSpace:
    return AddressSpace(2, RESOURCE_BUS, first, last)


def word_io(minimum: int, maximum: int) -> AddressSpace:
    return AddressSpace(2, RESOURCE_IO, minimum, maximum, type_flags=IO_ENTIRE_RANGE)


def dword_memory(minimum: int, maximum: int, cache: int = MEM_NON_CACHEABLE) -> AddressSpace:
    return AddressSpace(4, RESOURCE_MEMORY, minimum, maximum, type_flags=MEM_READ_WRITE | cache)


def qword_memory(minimum: int, maximum: int, cache: int = MEM_CACHEABLE) -> AddressSpace:
    return AddressSpace(8, RESOURCE_MEMORY, minimum, maximum, type_flags=MEM_READ_WRITE | cache)


def end_tag(descriptors: bytes) -> bytes:
    """End Tag (§6.4.2.9); its checksum makes the whole template sum to zero."""
    head = (SMALL_END_TAG << 3) | 1
    return bytes([head, -(sum(descriptors) + head) & 0xFF])


@dataclass(frozen=True)
class ResourceTemplate:
    """A Buffer holding resource descriptors and the End Tag (§19.6.117)."""

    descriptors: Sequence[Aml]

    def encode(self) -> bytes:
        data = b"".join(d.encode() for d in self.descriptors)
        return Buffer(data + end_tag(data)).encode()
