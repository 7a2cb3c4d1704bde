"""What fuzzing (fuzz/, `make fuzz`) found, each as a small named reproduction that must
get the code's documented refusal. The fuzzer's own input for each is also kept in the
corpus (fuzz/corpus/<target>/regress-*), which test_fuzz_targets.py replays."""

from __future__ import annotations

import logging
import struct

import pytest

from fuzz.seeds import _elf_pvh
from xenopus.boot.layout import BootImageError
from xenopus.boot.loader import load_kernel
from xenopus.domain.config import ConfigSyntaxError, parse_settings
from xenopus.memory.guest import GuestMemory
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store

# fuzz/seeds.py's 64-bit PVH ELF: the PT_NOTE program header is the second one.
PHDR2 = 64 + 56
P_OFFSET, P_FILESZ = 8, 32


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory.create(8 << 20)
    yield m
    m.close()


@pytest.mark.parametrize("filesz", [1 << 63, (1 << 64) - 1, 1 << 40])
def test_pvh_note_segment_larger_than_the_file(mem: GuestMemory, tmp_path, filesz: int) -> None:
    # Found by the kernel target: pyelftools read p_filesz bytes and raised OverflowError
    # (>= 2^63), or would allocate terabytes, before our length check ran.
    elf = bytearray(_elf_pvh())
    struct.pack_into("<Q", elf, PHDR2 + P_FILESZ, filesz)
    path = tmp_path / "k.elf"
    path.write_bytes(elf)
    with pytest.raises(BootImageError, match="note segment runs past the end of the file"):
        load_kernel(mem, path)


def test_pvh_note_segment_offset_past_the_file(mem: GuestMemory, tmp_path) -> None:
    elf = bytearray(_elf_pvh())
    struct.pack_into("<Q", elf, PHDR2 + P_OFFSET, (1 << 64) - 8)
    path = tmp_path / "k.elf"
    path.write_bytes(elf)
    with pytest.raises(BootImageError, match="note segment runs past the end of the file"):
        load_kernel(mem, path)


@pytest.mark.parametrize("digit", ["²", "١", "٣"])
def test_xl_cfg_unicode_digit_is_a_syntax_error(digit: str) -> None:
    # Found by the xlcfg target: the lexer took str.isdigit() for libxlu's [0-9], then
    # its ASCII number pattern did not match and an AttributeError escaped.
    with pytest.raises(ConfigSyntaxError, match=f"unexpected character `{digit}'"):
        parse_settings(f"memory = {digit}\n", "u.cfg")


@pytest.mark.parametrize(("kind", "args"), [
    (wire.XS_GET_DOMAIN_PATH, ["²"]),
    (wire.XS_IS_DOMAIN_INTRODUCED, ["¹"]),
    (wire.XS_SET_PERMS, ["/local/domain/5/x", "r²"]),
    (wire.XS_DIRECTORY_PART, ["/local/domain/5", "³"]),
])
def test_xenstore_latin1_digit_is_einval(kind: int, args: list[str], caplog) -> None:
    # The same str.isdigit() mistake in the XenStore's number and permission parsers: a
    # guest's "²" (latin-1 0xb2) passed the check, int() raised ValueError, and each such
    # request logged a traceback (a log flood a guest controls) instead of EINVAL.
    store = Store()
    store.introduce(store.connect(0, lambda p, t: None), 5)
    conn = store.connect(5, lambda p, t: None)
    payload = wire.strings(*args)
    reply = XenStoreServer(store).dispatch(conn, wire.Header(kind, 1, 0, len(payload)), payload)
    assert reply == wire.error_reply(1, 0, "EINVAL")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


E_PHENTSIZE, E_PHNUM = 54, 56  # ELF64 header offsets


@pytest.mark.parametrize(("entsize", "count", "match"), [
    (0, 0xF800, "program header entries of 0 bytes"),  # the fuzzer's: 13 s, same bytes again
    (56, 2000, "2000 program headers"),  # 112 000 bytes of table: over binfmt_elf's 64 KiB
    (56, 100, "program header table runs past the end of the file"),
])
def test_pvh_program_header_table_is_bounded(mem: GuestMemory, tmp_path, entsize: int,
                                             count: int, match: str) -> None:
    elf = bytearray(_elf_pvh())
    struct.pack_into("<HH", elf, E_PHENTSIZE, entsize, count)
    if count == 2000:
        elf += bytes(56 * 2000)  # the table is in the file: only its size is wrong
    path = tmp_path / "k.elf"
    path.write_bytes(elf)
    with pytest.raises(BootImageError, match=match):
        load_kernel(mem, path)
