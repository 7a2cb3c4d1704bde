"""load_kernel: format detection, file errors, the e820 map, and the real test guests."""

from __future__ import annotations

from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.conftest import GUEST_OUT, GUESTS
from xenopus.boot import BootImageError, build_e820, load_kernel
from xenopus.boot.e820 import E820_ACPI, E820_RAM, E820_RESERVED, E820Entry, E820Map
from xenopus.memory.guest import GuestMemory

from .test_boot_bzimage import build_bzimage
from .test_boot_pvh import build_elf

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def mem():
    with GuestMemory.create(64 * MiB) as m:
        yield m


def refused(mem: GuestMemory, path: Path, *words: str, **kw) -> None:
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, path, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert w in msg, msg


def test_picks_protocol_from_format(mem: GuestMemory, tmp_path: Path) -> None:
    elf = tmp_path / "vmlinux"
    elf.write_bytes(build_elf())
    assert load_kernel(mem, elf).protocol == "pvh"
    bz = tmp_path / "bzImage"
    bz.write_bytes(build_bzimage(pref_address=0x2000000, init_size=0x100000))
    assert load_kernel(mem, bz).protocol == "linux"


def test_refuses_unknown_format_naming_magic(mem: GuestMemory, tmp_path: Path) -> None:
    pe = tmp_path / "kernel.efi"
    pe.write_bytes(b"MZ\x90\x00" + bytes(0x400))
    refused(mem, pe, "not an ELF or bzImage", "4d 5a 90 00")


def test_refuses_empty_missing_and_unreadable(mem: GuestMemory, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    refused(mem, empty, "empty file")
    refused(mem, tmp_path / "missing", "cannot open kernel", "No such file")
    refused(mem, tmp_path, "cannot open kernel", "directory")


def test_refuses_tiny_guest(tmp_path: Path) -> None:
    elf = tmp_path / "vmlinux"
    elf.write_bytes(build_elf())
    with GuestMemory.create(MiB) as small:
        refused(small, elf, "guest memory too small")


def test_describe_mentions_what_was_loaded(mem: GuestMemory, tmp_path: Path) -> None:
    elf = tmp_path / "vmlinux"
    elf.write_bytes(build_elf())
    text = load_kernel(mem, elf, cmdline="hello").describe()
    assert str(elf) in text and "'hello'" in text and "reserved" in text


# --- e820 ---------------------------------------------------------------------------


def test_e820_with_memory_above_4g() -> None:
    with GuestMemory.create(3 * GiB + 16 * MiB) as big:
        got = [(e.addr, e.size, e.type) for e in build_e820(big)]
    assert got == [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0x60400, E820_RESERVED),
        (0x100000, 3 * GiB - 0x100000, E820_RAM),
        (4 * GiB, 16 * MiB, E820_RAM),
    ]


def test_e820_of_xens_pvh_platform_has_no_legacy_hole() -> None:
    # libxl_x86.c's PVH map: RAM from 0; only what we place below 1 MiB is not RAM (the
    # Xen special pages, the ACPI tables, whose window ends a page short of 1 MiB).
    with GuestMemory.create(64 * MiB) as m:
        got = [(e.addr, e.end, e.type) for e in build_e820(m, legacy_hole=False)]
    assert got == [
        (0, 0xDE000, E820_RAM),
        (0xDE000, 0xE0000, E820_RESERVED),
        (0xE0000, 0xFF000, E820_ACPI),
        (0xFF000, 64 * MiB, E820_RAM),
    ]


def test_e820_extra_ranges_override() -> None:
    with GuestMemory.create(64 * MiB) as m:
        acpi = E820Entry(0xE0000, 0x20000, E820_ACPI)
        hole = E820Entry(0x2000000, 0x1000, E820_RESERVED)
        got = [(e.addr, e.end, e.type) for e in build_e820(m, [acpi, hole])]
    assert got == [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0xE0000, E820_RESERVED),
        (0xE0000, 0x100000, E820_ACPI),
        (0x100000, 0x2000000, E820_RAM),
        (0x2000000, 0x2001000, E820_RESERVED),
        (0x2001000, 64 * MiB, E820_RAM),
    ]


def test_e820_map_merges_adjacent_same_type() -> None:
    m = E820Map()
    m.add(0, 0x1000, E820_RAM)
    m.add(0x1000, 0x1000, E820_RAM)
    m.add(0x800, 0x100, E820_RESERVED)
    m.add(0x800, 0x100, E820_RAM)
    assert [(e.addr, e.size, e.type) for e in m] == [(0, 0x2000, E820_RAM)]


# --- the real test guests (guests/out, built by guests/Makefile) ----------------------


@pytest.fixture(scope="module")
def built_guests(request: pytest.FixtureRequest) -> Path:
    if not (GUESTS / "Makefile").exists():
        pytest.skip("guests/Makefile does not exist yet: the test guests cannot be built")
    return request.getfixturevalue("guests")


def test_loads_every_pvh_guest(built_guests: Path) -> None:
    elfs = sorted(built_guests.glob("*.elf"))
    assert elfs, f"no *.elf in {built_guests}"
    for path in elfs:
        with GuestMemory.create(64 * MiB) as m:
            info = load_kernel(m, path, cmdline="console=ttyS0")
            assert info.protocol == "pvh", path
            assert info.kernel_range[0] <= info.entry < info.kernel_range[1], path
            assert m.read_u32(info.cpu.gprs["rbx"]) == 0x336EC578, path
            with open(path, "rb") as f:
                for seg in ELFFile(f).iter_segments():
                    if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                        assert m.read(seg["p_paddr"], seg["p_filesz"]) == seg.data(), path


def test_loads_bzimage_guest(built_guests: Path) -> None:
    path = GUEST_OUT / "bootinfo.bzImage"
    assert path.exists(), f"{path} was not built"
    with GuestMemory.create(128 * MiB) as m:
        info = load_kernel(m, path, cmdline="console=ttyS0")
        assert info.protocol == "linux"
        zp = info.cpu.gprs["rsi"]
        assert m.read(zp + 0x202, 4) == b"HdrS"
        image = path.read_bytes()
        setup_sects = image[0x1F1] or 4
        kernel = image[(setup_sects + 1) * 512 :]
        assert m.read(info.kernel_range[0], len(kernel)) == kernel
