"""The core file layout (domain/coredump.py) read back by binutils' readelf, a real ELF
reader: an ELF64 core for x86-64 whose PT_LOADs carry guest RAM at its physical
addresses, each range's bytes at its file offset."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xenopus.domain import coredump

RANGES = [(0, 0x9FC00), (0x100000, 0x300000)]  # below 640 KiB, then 1-4 MiB


def fake_memory(gpa: int, size: int) -> memoryview:
    """Each byte is a function of its address, so misplaced data shows."""
    return memoryview(bytes(((a >> 12) ^ a) & 0xFF for a in range(gpa, gpa + size)))


@pytest.fixture
def core(tmp_path: Path) -> Path:
    path = tmp_path / "core"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = coredump.write_core(fd, RANGES, fake_memory)
    finally:
        os.close(fd)
    assert written == path.stat().st_size
    return path


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is missing")
def test_readelf_sees_a_core_with_one_load_per_ram_range(core: Path) -> None:
    header = subprocess.run(["readelf", "-h", str(core)], capture_output=True, text=True,
                            check=True).stdout
    assert re.search(r"Type:\s+CORE", header)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", header)
    assert re.search(r"Class:\s+ELF64", header)
    progs = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True,
                           check=True)
    assert progs.stderr == "", progs.stderr
    loads = re.findall(r"^\s+LOAD\s+(0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+) "
                       r"(0x[0-9a-f]+) RWE", progs.stdout, re.M)
    assert [(int(p, 16), int(f, 16)) for _, _, p, f, _ in loads] == RANGES
    data = core.read_bytes()
    for (off, vaddr, _paddr, filesz, memsz), (gpa, size) in zip(loads, RANGES, strict=True):
        start = int(off, 16)
        assert start % 4096 == 0 and int(vaddr, 16) == 0 and filesz == memsz
        assert data[start:start + size] == bytes(fake_memory(gpa, size))


def test_writes_in_order_to_a_pipe() -> None:
    r, w = os.pipe()
    try:
        import threading

        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(iter_read(r)))
        reader.start()
        written = coredump.write_core(w, RANGES[:1], fake_memory)
        os.close(w)
        reader.join()
    finally:
        os.close(r)
    assert len(got) == written
    assert got[:4] == b"\x7fELF"


def iter_read(fd: int):
    while chunk := os.read(fd, 65536):
        yield from chunk
