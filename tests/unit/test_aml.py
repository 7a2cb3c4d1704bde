"""AML encodings checked byte for byte against the grammar of ACPI 6.5 §20.2 and the
resource descriptor layouts of §6.4 (the expected bytes are written out by hand from
those tables, not produced by our encoder)."""

from __future__ import annotations

import pytest

from xenopus.acpi import aml
from xenopus.acpi.aml import (
    IO,
    And,
    Arg,
    Buffer,
    Device,
    EisaId,
    Else,
    Field,
    If,
    Integer,
    Interrupt,
    IRQNoFlags,
    LEqual,
    Local,
    Memory32Fixed,
    Method,
    Name,
    NameRef,
    Notify,
    OperationRegion,
    Package,
    ResourceTemplate,
    Return,
    Scope,
    Store,
    String,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "00"),  # ZeroOp
        (1, "01"),  # OneOp
        ((1 << 64) - 1, "ff"),  # OnesOp
        (2, "0a02"),  # BytePrefix
        (0xFF, "0aff"),
        (0x100, "0b0001"),  # WordPrefix, little-endian
        (0xFFFF, "0bffff"),
        (0x10000, "0c00000100"),  # DWordPrefix
        (0xFEB00004, "0c0400b0fe"),
        (0x1_0000_0000, "0e0000000001000000"),  # QWordPrefix
    ],
)
def test_integer_prefixes(value: int, expected: str) -> None:
    assert Integer(value).encode() == bytes.fromhex(expected)


def test_integer_out_of_range() -> None:
    with pytest.raises(ValueError):
        Integer(-1).encode()
    with pytest.raises(ValueError):
        Integer(1 << 64).encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # §20.2.4: one byte holds 0-63 in bits 0-5; otherwise bits 6-7 count the
        # following bytes, bits 0-3 hold the low nibble, the next bytes the rest.
        (0, "00"),
        (63, "3f"),
        (64, "4004"),
        (0x123, "4312"),
        (4095, "4fff"),
        (4096, "800001"),
        (0xFFFFF, "8fffff"),
        (0x100000, "c0000001"),
        ((1 << 28) - 1, "cfffffff"),
    ],
)
def test_pkg_length_value(value: int, expected: str) -> None:
    assert aml.pkg_length_value(value) == bytes.fromhex(expected)


def test_pkg_length_too_long() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length_value(1 << 28)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The encoded length counts the PkgLength bytes themselves.
        (0, "01"),
        (62, "3f"),  # 62 + 1 = 63: the largest one-byte package
        (63, "4104"),  # 63 + 2 = 65 = 0x41: needs two bytes
        (4093, "4fff"),  # 4093 + 2 = 4095: the largest two-byte package
        (4094, "810001"),  # 4094 + 3 = 4097
    ],
)
def test_pkg_length_counts_itself(body: int, expected: str) -> None:
    assert aml.pkg_length(body) == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("_SB", b"_SB_"),  # NameSeg padded with '_'
        ("RTC", b"RTC_"),
        ("\\_SB", b"\\_SB_"),  # RootChar
        ("^PCI0", b"^PCI0"),  # ParentPrefixChar
        ("^^COM1", b"^^COM1"),
        ("_SB.PCI0", b"\x2e_SB_PCI0"),  # DualNamePrefix
        ("\\_SB.PWRB", b"\\\x2e_SB_PWRB"),
        ("\\_SB.PCI0.COM1", b"\\\x2f\x03_SB_PCI0COM1"),  # MultiNamePrefix, SegCount
        ("", b"\x00"),  # NullName
        ("\\", b"\\\x00"),
    ],
)
def test_name_string(path: str, expected: bytes) -> None:
    assert aml.name_string(path) == expected


@pytest.mark.parametrize("bad", ["TOOLONG", "1ABC", "A-B", "A..B"])
def test_name_string_refuses_bad_segments(bad: str) -> None:
    with pytest.raises(ValueError):
        aml.name_string(bad)


def test_string_and_buffer() -> None:
    assert String("ACPI0013").encode() == b"\x0dACPI0013\x00"
    # BufferOp PkgLength BufferSize (a TermArg: BytePrefix 3) ByteList
    assert Buffer(b"\x01\x02\x03").encode() == bytes.fromhex("11060a03010203")
    with pytest.raises(ValueError):
        String("a\0b").encode()


def test_package() -> None:
    # PackageOp PkgLength NumElements PackageElementList — the \_S5 package.
    assert Package([5, 5, 0, 0]).encode() == bytes.fromhex("1208040a050a050000")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("PNP0A03", 0x030AD041),  # the PCI root bridge id every DSDT uses
        ("PNP0A08", 0x080AD041),
        ("PNP0C09", 0x090CD041),  # ACPI spec's EISAID example (embedded controller)
        ("PNP0501", 0x0105D041),
    ],
)
def test_eisa_id(text: str, value: int) -> None:
    assert aml.eisa_id(text) == value
    assert EisaId(text).encode() == b"\x0c" + value.to_bytes(4, "little")


def test_to_uuid_byte_order() -> None:
    # §19.6.143 ToUUID: the first three fields are stored little-endian.
    got = aml.to_uuid("33DB4D5B-1FF7-401C-9657-7441C03DD766").data
    assert got == bytes.fromhex("5b4ddb33f71f1c4096577441c03dd766")


def test_name_scope_device_method() -> None:
    assert Name("_UID", 0).encode() == b"\x08_UID\x00"
    # DeviceOp is ExtOpPrefix 0x82; PkgLength covers NameString and TermList.
    assert Device("PWRB").encode() == b"\x5b\x82\x05PWRB"
    assert Scope("\\_SB").encode() == b"\x10\x06\\_SB_"
    # MethodFlags: ArgCount 1, SerializeFlag (bit 3).
    assert Method("_EVT", 1, serialized=True).encode() == b"\x14\x06_EVT\x09"
    assert Method("_STA", 0, [Return(0x0F)]).encode() == b"\x14\x09_STA\x00\xa4\x0a\x0f"


def test_statements() -> None:
    assert Notify("\\_SB.PWRB", 0x80).encode() == b"\x86\\\x2e_SB_PWRB\x0a\x80"
    assert Store(NameRef("EVTS"), Local(0)).encode() == b"\x70EVTS\x60"
    # And Operand Operand Target, with the NullName for "no target".
    assert And(Local(0), 1).encode() == b"\x7b\x60\x01\x00"
    assert LEqual(Arg(0), 2).encode() == b"\x93\x68\x0a\x02"
    body = [Return(Arg(3))]
    assert If(LEqual(Arg(0), 2), body).encode() == b"\xa0\x07\x93\x68\x0a\x02\xa4\x6b"
    assert Else(body).encode() == b"\xa1\x03\xa4\x6b"


def test_operation_region_and_field() -> None:
    region = OperationRegion("EREG", aml.SYSTEM_MEMORY, 0xFEB00004, 4)
    assert region.encode() == b"\x5b\x80EREG\x00\x0c\x04\x00\xb0\xfe\x0a\x04"
    # FieldFlags DWordAcc (3) | NoLock | Preserve; NamedField NameSeg PkgLength(bits).
    field = Field("EREG", [("EVTS", 32), (None, 64), ("NEXT", 8)], access=aml.DWORD_ACC)
    assert field.encode() == b"\x5b\x81\x13EREG\x03EVTS\x20\x00\x40\x04NEXT\x08"


def test_io_descriptor() -> None:
    # §6.4.2.5 I/O Port Descriptor: 0x47, information (bit 0: 16-bit decode),
    # minimum, maximum, alignment, length — IO (Decode16, 0x3F8, 0x3F8, 1, 8).
    assert IO(0x3F8, 0x3F8, 1, 8).encode() == bytes.fromhex("4701f803f8030108")


def test_irq_descriptors() -> None:
    # §6.4.2.1 IRQ Descriptor without information byte: 0x22, 16-bit mask.
    assert IRQNoFlags([4]).encode() == bytes.fromhex("221000")
    assert IRQNoFlags([1, 8]).encode() == bytes.fromhex("220201")
    # §6.4.3.6 Extended Interrupt Descriptor: 0x89, length 6, flags (consumer, level,
    # active-high, exclusive), table length 1, GSI 9.
    assert Interrupt([9]).encode() == bytes.fromhex("890600010109000000")
    edge_low_shared = Interrupt([9], edge=True, active_low=True, shared=True).encode()
    assert edge_low_shared[3] == 0b1111


def test_memory_and_address_descriptors() -> None:
    # §6.4.3.4 32-Bit Fixed Memory Range Descriptor: 0x86, length 9, RW, base, length.
    assert Memory32Fixed(0xE0000000, 0x100000).encode() == bytes.fromhex(
        "860900 01 000000e0 00001000"
    )
    # §6.4.3.5.3 Word Address Space Descriptor, bus number range 0-0 as a producer
    # with fixed minimum and maximum (general flags 0x0C).
    assert aml.word_bus_number(0, 0).encode() == bytes.fromhex(
        "880d00 02 0c 00 0000 0000 0000 0000 0100"
    )
    # §6.4.3.5.2 DWord Address Space Descriptor, memory, RW non-cacheable.
    assert aml.dword_memory(0xC0000000, 0xDFFFFFFF).encode() == bytes.fromhex(
        "871700 00 0c 01 00000000 000000c0 ffffffdf 00000000 00000020"
    )
    qword = aml.qword_memory(0x10_0000_0000, 0x1F_FFFF_FFFF).encode()
    assert qword[:6] == bytes.fromhex("8a2b00 00 0c 03")  # 43 bytes follow; cacheable
    assert len(qword) == 3 + 43


def test_resource_template_end_tag() -> None:
    rt = ResourceTemplate([IO(0x70, 0x70, 1, 2), IRQNoFlags([8])]).encode()
    descriptors = bytes.fromhex("4701700070000102 220001")
    # A Buffer: BufferOp, PkgLength, BufferSize, then descriptors and the End Tag
    # (§6.4.2.9: 0x79 and a checksum making the whole template sum to zero).
    assert rt[:3] == bytes([0x11, 0x10, 0x0A]) and rt[3] == len(descriptors) + 2
    assert rt[4:-2] == descriptors
    assert rt[-2] == 0x79
    assert sum(rt[4:]) % 256 == 0
