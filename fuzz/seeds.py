"""Writes the seed corpus (fuzz/corpus/<target>/seed-*): well-formed inputs the fuzzer
mutates from, built from the specs rather than copied from our own output.

    .venv/bin/python -m fuzz.seeds        # rewrites the seed-* files; the rest of the
                                          # corpus (what the fuzzer kept) is left alone
"""

from __future__ import annotations

import struct
from pathlib import Path

from xenopus.xen.xenstore import wire

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parent.parent


def _msg(t: int, *args: str | bytes, tx: int = 0, req: int = 1) -> bytes:
    return wire.pack(t, req, tx, wire.strings(*args) if args else b"")


def _write(path: str, value: bytes, tx: int = 0) -> bytes:
    """XS_WRITE: the path nul-terminated, then the value's raw bytes (xenstore.txt)."""
    return wire.pack(wire.XS_WRITE, 1, tx, path.encode() + b"\0" + value)


def xenstore_seeds() -> dict[str, bytes]:
    """Request streams (io/xs_wire.h) as a guest (byte 0 = 0), the toolstack (1) and a
    scoped backend (2) would send them; byte 1 = 0xFF: the ring written whole."""
    home = "/local/domain/5"
    session = b"".join([
        _write(f"{home}/data/a", b"hello"),
        _msg(wire.XS_READ, f"{home}/data/a"),
        _msg(wire.XS_MKDIR, "data/b"),
        _msg(wire.XS_DIRECTORY, f"{home}/data"),
        _msg(wire.XS_DIRECTORY_PART, f"{home}/data", "0"),
        _msg(wire.XS_GET_PERMS, "data/a"),
        _msg(wire.XS_SET_PERMS, "data/a", "b5", "r0"),
        _msg(wire.XS_WATCH, "data", "tok"),
        _msg(wire.XS_TRANSACTION_START, ""),
        _write("data/c", b"in-tx", tx=1),
        _msg(wire.XS_TRANSACTION_END, "T", tx=1),
        _msg(wire.XS_RM, "data/b"),
        _msg(wire.XS_UNWATCH, "data", "tok"),
        _msg(wire.XS_GET_DOMAIN_PATH, "5"),
        _msg(wire.XS_IS_DOMAIN_INTRODUCED, "6"),
        _msg(wire.XS_RESET_WATCHES),
    ])
    toolstack = b"".join([
        _msg(wire.XS_INTRODUCE, "7", "4096", "3"),
        _write("/local/domain/7/name", b"guest"),
        _msg(wire.XS_SET_TARGET, "7", "5"),
        _msg(wire.XS_WATCH, "@releaseDomain", "r"),
        _msg(wire.XS_RESUME, "7"),
        _msg(wire.XS_RELEASE, "7"),
        _msg(wire.XS_CONTROL, "print", "x"),
    ])
    backend = b"".join([
        _msg(wire.XS_MKDIR, "/local/domain/0/backend/vbd/5/51712"),
        _write("/local/domain/0/backend/vbd/5/51712/state", b"4"),
        _msg(wire.XS_READ, "/local/domain/6/name"),
    ])
    return {
        "guest-session": bytes([0, 0xFF]) + session,
        "guest-small-chunks": bytes([0, 6]) + session,
        "toolstack": bytes([1, 0xFF]) + toolstack,
        "backend": bytes([2, 0xFF]) + backend,
        "guest-huge-len": bytes([0, 0xFF]) + struct.pack("<4I", wire.XS_READ, 1, 0, 5000),
    }


def virtqueue_seeds() -> dict[str, bytes]:
    """A size-8 queue at 0x0 (descriptors), 0x200 (avail), 0x400 (used) with chains of
    §2.7.5 (direct), §2.7.5.3 (indirect) and one that loops; buffers in region 1."""
    size = 8
    desc, avail, used, table = 0x0, 0x200, 0x400, 0x800
    ram = bytearray(0x1000)

    def d(base: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        struct.pack_into("<QIHH", ram, base + 16 * i, addr, length, flags, nxt)

    buf = 0x20000  # region 1
    d(desc, 0, buf, 16, 1, 1)  # readable header, NEXT
    d(desc, 1, buf + 0x100, 512, 3, 2)  # writable data, NEXT
    d(desc, 2, buf + 0x300, 1, 2, 0)  # writable status
    d(desc, 3, table, 48, 4, 0)  # INDIRECT: three entries
    d(table, 0, buf, 16, 1, 1)
    d(table, 1, buf + 0x100, 512, 3, 2)
    d(table, 2, buf + 0x300, 1, 2, 0)
    d(desc, 4, buf, 16, 1, 5)  # a loop 4 -> 5 -> 4
    d(desc, 5, buf + 0x10, 16, 1, 4)
    d(desc, 6, 0xFFFF_FFFF_FFFF_F000, 0x2000, 2, 0)  # wraps the address space
    d(desc, 7, 0x1F000, 0x2000, 2, 0)  # straddles the hole between the regions
    heads = [0, 3, 4, 6, 7]
    for slot, h in enumerate(heads):
        struct.pack_into("<H", ram, avail + 4 + 2 * slot, h)
    struct.pack_into("<H", ram, avail + 2, len(heads))
    header = struct.Struct("<BBIII")
    seeds = {}
    for name, feats in (("plain", 0), ("event-idx", 1), ("indirect", 2), ("both", 3 | 4 * 9)):
        seeds[f"ring-{name}"] = header.pack(3, feats, desc, avail, used) + bytes(ram)
    seeds["misaligned"] = header.pack(3, 2, desc + 8, avail, used) + bytes(ram)
    seeds["outside-ram"] = header.pack(3, 2, 0x10000, avail, used) + bytes(ram)
    assert size == 1 << 3
    return seeds


def xlcfg_seeds() -> dict[str, bytes]:
    seeds = {f"guest-{p.stem}": p.read_bytes() for p in sorted((ROOT / "guests").glob("*.cfg"))}
    seeds["many-keys"] = b"""# every grammar we read
name = "web-1"
type = "pvh"
memory = 256
maxmem = 512
vcpus = 2
maxvcpus = 4
cpus = ["0-1", "all"]
kernel = "vmlinux"
ramdisk = "initrd.img"
cmdline = "console=hvc0 root=/dev/xvda1"
extra = "quiet"
disk = [ 'format=raw, vdev=xvda, access=rw, target=disk.img', 'file:other.img,xvdb,r' ]
vif = [ 'mac=00:16:3e:01:02:03,bridge=xenbr0', 'model=xen,vifname=vif-web' ]
on_poweroff = "destroy"
on_reboot = 'restart'
on_crash = "preserve"
xen_platform = 1
virtio_rng = 1
virtio_console = 0
uuid = "a6d1a7d0-0c51-4a25-9a8f-5b2e3f9c6a01"
"""
    seeds["escapes-and-append"] = (
        b"name = 'esc\\x41\\101\\n'\ncmdline = \"a\"\ncmdline += \" b\"\n"
        b"memory = 0x40 ; vcpus = 01\n disk = [\n ]\n"
    )
    return seeds


def configdict_seeds() -> dict[str, bytes]:
    """The JSON form of the xl.cfg seeds that load (paths as written: from_dict does not
    look for the files), one line each as the control protocol carries it."""
    from xenopus import ipc
    from xenopus.domain.config import ConfigError, from_settings, parse_settings

    seeds = {}
    for name, text in xlcfg_seeds().items():
        try:
            cfg, _ = from_settings(parse_settings(text.decode(), f"{name}.cfg"), f"/cfg/{name}.cfg")
        except ConfigError:
            continue
        seeds[name] = ipc.encode(cfg.to_dict())
    return seeds


def _elf_pvh(entry: int = 0x100000, cls64: bool = True) -> bytes:
    """An ELF with one PT_LOAD of 64 bytes at 1 MiB and a PT_NOTE holding
    XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h, type 18)."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)
    code = b"\xf4" * 64  # hlt
    if cls64:
        ehdr, phdr = struct.Struct("<16sHHIQQQIHHHHHH"), struct.Struct("<IIQQQQQQ")
        phoff = ehdr.size
        data_off = phoff + 2 * phdr.size
        head = ehdr.pack(b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, entry, phoff, 0, 0,
                         ehdr.size, phdr.size, 2, 64, 0, 0)
        ph = phdr.pack(1, 5, data_off, 0x100000, 0x100000, len(code), len(code) + 32, 16)
        ph += phdr.pack(4, 4, data_off + len(code), 0, 0, len(note), len(note), 4)
    else:
        ehdr, phdr = struct.Struct("<16sHHIIIIIHHHHHH"), struct.Struct("<IIIIIIII")
        phoff = ehdr.size
        data_off = phoff + 2 * phdr.size
        head = ehdr.pack(b"\x7fELF\x01\x01\x01" + bytes(9), 2, 3, 1, entry, phoff, 0, 0,
                         ehdr.size, phdr.size, 2, 40, 0, 0)
        ph = phdr.pack(1, data_off, 0x100000, 0x100000, len(code), len(code) + 32, 5, 16)
        ph += phdr.pack(4, data_off + len(code), 0, 0, len(note), len(note), 4, 4)
    return head + ph + code + note


def _bzimage(version: int = 0x020F, setup_sects: int = 1) -> bytes:
    """A bzImage (Documentation/arch/x86/boot.rst): the setup header, then setup_sects
    sectors of setup, then a small protected-mode kernel."""
    img = bytearray(512 * ((setup_sects or 4) + 1))
    img[0x1F1] = setup_sects
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x201] = 0x6A  # header ends at 0x26C (2.15)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    img[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", img, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", img, 0x230, 0x200000)  # kernel_alignment
    img[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", img, 0x236, 0x03)  # xloadflags: KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
    struct.pack_into("<I", img, 0x238, 255)  # cmdline_size
    struct.pack_into("<Q", img, 0x258, 0x200000)  # pref_address
    struct.pack_into("<I", img, 0x260, 0x10000)  # init_size
    return bytes(img) + b"\xf4" * 1024


def kernel_seeds() -> dict[str, bytes]:
    return {
        "pvh-elf64": _elf_pvh(),
        "pvh-elf32": _elf_pvh(cls64=False),
        "pvh-entry-outside": _elf_pvh(entry=0x200000),
        "bzimage-2.15": _bzimage(),
        "bzimage-2.12-four-sects": _bzimage(0x020C, 0),
    }


SEEDS = {"xenstore": xenstore_seeds, "virtqueue": virtqueue_seeds, "xlcfg": xlcfg_seeds,
         "configdict": configdict_seeds, "kernel": kernel_seeds}


def main() -> None:
    for target, make in SEEDS.items():
        out = CORPUS / target
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("seed-*"):
            old.unlink()
        for name, data in make().items():
            (out / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(list(out.iterdir()))} corpus files")


if __name__ == "__main__":
    main()
