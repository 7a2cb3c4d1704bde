"""boot/elf.py, our ELF reader, against pyelftools (a dev dependency) on the real images
we boot: the test guests and, where fetched, the Linux kernels and Xen's PV shim."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from tests.conftest import GUESTS
from xenopus.boot.elf import ElfError, ElfFile

elftools = pytest.importorskip("elftools.elf.elffile", reason="pyelftools (dev) is not installed")
from elftools.elf.enums import ENUM_NOTE_N_TYPE, ENUM_P_TYPE_BASE  # noqa: E402

# pyelftools names the numbers it knows; ours stay numbers.
NOTE_TYPES = {name: value for name, value in ENUM_NOTE_N_TYPE.items() if name != "_default_"}
P_TYPES = {name: value for name, value in ENUM_P_TYPE_BASE.items() if name != "_default_"}

ROOT = Path(__file__).resolve().parents[2]
REAL = [
    *sorted((GUESTS / "out").glob("*.elf")),
    *(p for p in (ROOT / "linux" / "vmlinux", ROOT / "build" / "shim" / "xen-shim")
      if p.is_file()),
]


def images() -> list[Path]:
    if not REAL:
        pytest.skip("no ELF images: build the guests (make guests)")
    return REAL


@pytest.mark.parametrize("path", REAL or [None], ids=lambda p: p.name if p else "none")
def test_headers_segments_and_notes_match_pyelftools(path: Path | None) -> None:
    if path is None:
        pytest.skip("no ELF images: build the guests (make guests)")
    with open(path, "rb") as f:
        ours = ElfFile(f)
        theirs = elftools.ELFFile(f)
        assert ours.elfclass == theirs.elfclass
        assert ours.little_endian == theirs.little_endian
        assert ours.machine == theirs["e_machine"]
        assert ours.e_entry == theirs["e_entry"]
        assert ours.num_segments() == theirs.num_segments()
        assert ours.num_sections() == theirs.num_sections()
        fields = ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
                  "p_flags", "p_align")
        for a, b in zip(ours.segments(), theirs.iter_segments(), strict=True):
            header = b.header
            assert [getattr(a, k) for k in fields] == [
                P_TYPES.get(header[k], header[k]) for k in fields]
        theirs_notes = []
        for seg in theirs.iter_segments():
            if seg["p_type"] == "PT_NOTE":
                theirs_notes += [(n["n_name"].encode(), NOTE_TYPES.get(n["n_type"], n["n_type"]),
                                  n["n_descdata"]) for n in seg.iter_notes()]
        assert [(n.name, n.type, n.desc) for n in ours.notes()] == theirs_notes


def test_the_real_images_exist_or_are_skipped_for_a_reason() -> None:
    assert images()


@pytest.mark.parametrize("data", [b"", b"\x7fEL", b"MZ" + b"\0" * 62,
                                  b"\x7fELF\x03\x01" + b"\0" * 58,
                                  b"\x7fELF\x02\x01" + b"\0" * 10])
def test_not_elf_or_truncated_is_an_elf_error(data: bytes) -> None:
    with pytest.raises(ElfError):
        ElfFile(io.BytesIO(data))


def test_a_program_header_past_the_end_is_refused_before_reading() -> None:
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 1 << 40, 0, 0, 64, 56, 3, 64, 0, 0)
    elf = ElfFile(io.BytesIO(ident + header))
    with pytest.raises(ElfError, match="past the end"):
        elf.check_tables(64 * 1024)
    with pytest.raises(ElfError, match="past the end"):
        list(elf.segments())
