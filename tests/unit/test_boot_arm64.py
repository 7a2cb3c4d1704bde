"""boot/arm64.py against Documentation/arch/arm64/booting.rst and Debian's real arm64 Image.

The synthetic headers are packed here field by field at booting.rst §4's offsets (code0
at 0, text_offset at 8, image_size at 16, flags at 24, magic at 56), not with the
module's own struct.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from xenopus.boot.arm64 import MiB, load_image, parse_image_header, plan, write_dtb
from xenopus.boot.layout import BootImageError
from xenopus.memory.guest import GuestMemory, MemoryRegion

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_IMAGE = ROOT / "build" / "arm64" / "Image"
RAM_BASE = 0x4000_0000  # QEMU virt's, and ours


def image(text_offset: int = 0, image_size: int = 0x3000, flags: int = 0b1010,
          body: bytes = b"\x01" * 0x1000) -> bytes:
    head = bytearray(64)
    struct.pack_into("<I", head, 0, 0x14000000)  # code0: a branch, as Linux's is
    struct.pack_into("<Q", head, 8, text_offset)
    struct.pack_into("<Q", head, 16, image_size)
    struct.pack_into("<Q", head, 24, flags)
    head[56:60] = b"ARM\x64"
    return bytes(head) + body


@pytest.mark.arm64_fetched
def test_debian_image_header() -> None:
    data = DEBIAN_IMAGE.read_bytes()
    header = parse_image_header(data, str(DEBIAN_IMAGE))
    # Since v5.10 text_offset is 0 (booting.rst §4: "used to be 0x80000"); image_size is
    # the file plus BSS.
    assert header.text_offset == 0
    assert header.image_size > len(data)
    # libmagic's reading of the same header is the independent peer
    if shutil.which("file"):
        described = subprocess.run(["file", "-b", str(DEBIAN_IMAGE)], capture_output=True,
                                   text=True, check=True).stdout
        assert "ARM64 boot executable Image" in described
        assert f"{header.page_size // 1024}K pages" in described
        assert ("little-endian" in described) != header.big_endian
    layout = plan(header, len(data), 8 * MiB, RAM_BASE, 512 * MiB)
    assert layout.kernel == RAM_BASE
    assert layout.kernel_end <= layout.initrd < layout.initrd + 8 * MiB <= layout.dtb


def test_header_fields() -> None:
    header = parse_image_header(image(text_offset=0x80000, image_size=0x200000, flags=0b1010))
    assert (header.text_offset, header.image_size) == (0x80000, 0x200000)
    assert header.page_size == 4096 and not header.big_endian


def test_legacy_image_has_text_offset_0x80000() -> None:
    # §4: image_size 0 means a kernel before v3.17, whose text_offset is 0x80000
    assert parse_image_header(image(text_offset=0x1234, image_size=0)).text_offset == 0x80000


@pytest.mark.parametrize("data, problem", [
    (gzip.compress(image()), "gzip"),
    (image()[:40], "shorter than the 64-byte"),
    (image()[:56] + b"XXXX" + image()[60:], "magic"),
    (image(flags=1), "big-endian"),
    (image(text_offset=0x80001), "not page-aligned"),
])
def test_bad_images_refused(data: bytes, problem: str) -> None:
    with pytest.raises(BootImageError, match=problem) as e:
        parse_image_header(data, "vmlinuz-x")
    assert str(e.value).startswith("vmlinuz-x: ")


def test_plan_places_by_the_protocol() -> None:
    header = parse_image_header(image(text_offset=0x80000, image_size=6 * MiB))
    layout = plan(header, 4 * MiB, 3 * MiB + 5, RAM_BASE + 0x1000, 1024 * MiB)
    assert layout.kernel == RAM_BASE + 2 * MiB + 0x80000  # next 2 MiB base, + text_offset
    assert layout.kernel_end == layout.kernel + 6 * MiB
    assert layout.dtb % 8 == 0 and layout.dtb % (2 * MiB) == 0
    assert layout.dtb + 2 * MiB <= RAM_BASE + 2 * MiB + 512 * MiB  # the pre-4.2 window
    assert layout.initrd % 4096 == 0 and layout.initrd + 3 * MiB + 5 <= layout.dtb
    assert layout.initrd >= layout.kernel_end


def test_plan_refuses_what_does_not_fit() -> None:
    header = parse_image_header(image(image_size=31 * MiB))
    with pytest.raises(BootImageError, match="do not fit in 32 MiB"):
        plan(header, 1 * MiB, 0, RAM_BASE, 32 * MiB)
    with pytest.raises(BootImageError, match="at least 32 MiB"):
        plan(header, 1 * MiB, 0, RAM_BASE, 16 * MiB)


def test_load_image_and_dtb(tmp_path: Path) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(image(text_offset=0, image_size=0x3000))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd!" * 100)
    with GuestMemory([MemoryRegion.create(RAM_BASE, 64 * MiB)]) as mem:
        mem.fill(RAM_BASE, 0x3000, 0xAA)  # the BSS must come out zeroed
        layout = load_image(mem, kernel, initrd, RAM_BASE, 64 * MiB)
        assert mem.read(layout.kernel, 0x1040) == kernel.read_bytes()
        assert mem.read(layout.kernel + 0x1040, 0x3000 - 0x1040) == bytes(0x3000 - 0x1040)
        assert mem.read(layout.initrd, 700) == initrd.read_bytes()
        entry = write_dtb(mem, layout, b"\xd0\x0d\xfe\xed" + bytes(60))
        assert (entry.pc, entry.x0) == (RAM_BASE, layout.dtb)
        assert entry.pstate == 0x3C5  # EL1h with D, A, I, F masked (booting.rst §4)
        assert mem.read(layout.dtb, 4) == b"\xd0\x0d\xfe\xed"


def test_load_image_names_a_missing_file(tmp_path: Path) -> None:
    with (GuestMemory([MemoryRegion.create(RAM_BASE, 64 * MiB)]) as mem,
          pytest.raises(BootImageError, match="cannot open kernel")):
        load_image(mem, tmp_path / "nope", None, RAM_BASE, 64 * MiB)
