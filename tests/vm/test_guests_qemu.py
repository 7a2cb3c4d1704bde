"""The test guests (guests/) booted under QEMU, the peer: they must work there unchanged.

Each guest reports `RESULT: PASS|FAIL <name> ...` on COM1; QEMU's `-serial stdio` hands it
to us. Image layouts are checked against the numbers of the specs they implement: Xen's
public/elfnote.h (PVH note) and Linux Documentation/arch/x86/boot.rst (bzImage header).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.conftest import GUESTS

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

OUT = GUESTS / "out"
TIMEOUT = 30.0  # seconds per guest; they normally finish in well under one
# microvm has no RTC unless asked. `-cpu host` alone aborts on the nested build machines
# (QEMU cannot set MSR 0x10a, IA32_ARCH_CAPABILITIES, there); dropping that one feature
# changes nothing the guests look at.
MACHINE = "microvm,rtc=on"
CPU = "host,-arch-capabilities"
RESULT = re.compile(r"^RESULT: (PASS|FAIL) (\S+)(?: (.*))?$", re.M)
EXCEPTION = re.compile(
    r"^EXCEPTION: (#\w+|NMI) \(vector (\d+)\) error 0x([0-9a-f]+) at RIP 0x([0-9a-f]+) CPL (\d)$", re.M
)


@pytest.fixture(scope="module")
def qemu(guests: Path) -> str:
    """qemu-system-x86_64 (a missing one is a failure: `make test` installs it)."""
    path = shutil.which("qemu-system-x86_64")
    assert path, "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (make deps)"
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return path


def qemu_cmd(qemu: str, kernel: Path, cmdline: str = "", initrd: Path | None = None) -> list[str]:
    cmd = [
        qemu, "-M", MACHINE, "-accel", "kvm", "-cpu", CPU, "-m", "64", "-nodefaults",
        "-no-reboot", "-display", "none", "-serial", "stdio", "-kernel", str(kernel),
        "-append", cmdline,
    ]
    return cmd + (["-initrd", str(initrd)] if initrd else [])


def boot(qemu: str, kernel: str, cmdline: str = "", initrd: Path | None = None) -> str:
    """Run a guest to its shutdown (a triple fault that -no-reboot turns into an exit)."""
    proc = subprocess.run(
        qemu_cmd(qemu, OUT / kernel, cmdline, initrd), stdin=subprocess.DEVNULL,
        capture_output=True, timeout=TIMEOUT,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"qemu exited {proc.returncode}: {proc.stderr.decode()}\n{out}"
    return out.replace("\r\n", "\n")


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float = TIMEOUT) -> bytes:
    """Collect a running guest's output until `marker` appears (or fail at the deadline)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout} s; got:\n{data.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"qemu ended before {marker!r}; got:\n{data.decode(errors='replace')}"
            data += chunk
    return data


def results(out: str) -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3] or "") for m in RESULT.finditer(out)]


def fnv_checksum(n: int) -> int:
    """guests/hello.c: h = 0x811c9dc5; h = ((h ^ i) * 0x01000193) mod 2^32 for i < n."""
    h = 0x811C9DC5
    for i in range(n):
        h = ((h ^ i) * 0x01000193) & 0xFFFFFFFF
    return h


# ---- image layout -----------------------------------------------------------------------

GUEST_NAMES = ["hello", "minimal", "serial", "rtc", "trap", "crash", "bootinfo", "exits"]


@pytest.mark.parametrize("name", GUEST_NAMES)
def test_elf_has_pvh_note_and_loads_at_1mib(qemu: str, name: str) -> None:
    with open(OUT / f"{name}.elf", "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf["e_machine"] == "EM_X86_64"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert min(s["p_paddr"] for s in loads) == 0x100000
        notes = [s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"]
        assert len(notes) == 1
        # QEMU pads the note name to p_align: 4 keeps the payload where the spec puts it.
        assert notes[0]["p_align"] == 4
        xen = [n for n in notes[0].iter_notes() if n["n_name"] == "Xen"]
        # xen/include/public/elfnote.h: XEN_ELFNOTE_PHYS32_ENTRY 18.
        (entry_note,) = [n for n in xen if n["n_type"] == 18]
        assert entry_note["n_descsz"] == 4
        entry = struct.unpack("<I", entry_note["n_descdata"])[0]
        symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        assert entry == symbols["pvh_start32"]
        # boot.rst: the 64-bit entry is 0x200 into the protected-mode kernel at 0x100000.
        assert symbols["startup_64"] == 0x100200
        assert symbols["_start"] == 0x100000


def test_no_sse_or_xsave_instructions(qemu: str) -> None:
    banned = re.compile(r"\b([xyz]mm\d+|xsave\w*|xrstor\w*|fxsave\w*|fxrstor\w*|cmpxchg16b)\b")
    for name in GUEST_NAMES:
        dis = subprocess.run(
            ["objdump", "-d", str(OUT / f"{name}.elf")], capture_output=True, text=True, check=True
        ).stdout
        assert "<guest_main>:" in dis
        hits = [line for line in dis.splitlines() if banned.search(line)]
        assert not hits, f"{name}: {hits[:5]}"


def test_bzimage_header(qemu: str) -> None:
    """Fields at the offsets of boot.rst "THE REAL-MODE KERNEL HEADER"."""
    img = (OUT / "bootinfo.bzImage").read_bytes()
    setup_sects = img[0x1F1]
    assert setup_sects >= 4
    assert img[0x1FE:0x200] == b"\x55\xaa"
    assert img[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", img, 0x206)[0] == 0x020F
    assert img[0x211] & 0x01  # loadflags LOADED_HIGH
    assert struct.unpack_from("<I", img, 0x214)[0] == 0x100000  # code32_start
    assert img[0x234] == 0  # relocatable_kernel
    assert struct.unpack_from("<H", img, 0x236)[0] & 0x0001  # XLF_KERNEL_64
    assert struct.unpack_from("<Q", img, 0x258)[0] == 0x100000  # pref_address
    kernel = img[(setup_sects + 1) * 512:]
    assert struct.unpack_from("<I", img, 0x1F4)[0] == (len(kernel) + 15) // 16  # syssize
    # The protected-mode kernel is the ELF's image: compare the 64-bit entry's bytes.
    with open(OUT / "bootinfo.elf", "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".head").data()
        mem_end = max(s["p_paddr"] + s["p_memsz"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
    assert kernel[: len(text)] == text
    assert struct.unpack_from("<I", img, 0x260)[0] >= mem_end - 0x100000  # init_size


# ---- guests under QEMU --------------------------------------------------------------------


def test_minimal(qemu: str) -> None:
    proc = subprocess.run(qemu_cmd(qemu, OUT / "minimal.elf"), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=TIMEOUT)
    # One line, with the serial side's \n -> \r\n translation.
    assert proc.stdout == b"RESULT: PASS minimal\r\n"


def test_hello(qemu: str) -> None:
    out = boot(qemu, "hello.elf", "greeting=hi console=ttyS0")
    assert "xenopus test guest: hello\n" in out
    assert "boot protocol: pvh\n" in out
    assert "command line: greeting=hi console=ttyS0\n" in out
    ranges = re.findall(r"^  \[0x([0-9a-f]+)-0x([0-9a-f]+)\) (RAM|reserved|\S+)$", out, re.M)
    ram = sum(int(b, 16) - int(a, 16) for a, b, kind in ranges if kind == "RAM")
    assert 63 << 20 <= ram <= 64 << 20
    vendor = re.search(r"^cpu vendor: (\S+)$", out, re.M)
    assert vendor and vendor[1] in {"GenuineIntel", "AuthenticAMD"}
    checksum = re.search(r"^checksum: 0x([0-9a-f]{8}) \(10000000 iterations", out, re.M)
    assert checksum, out
    assert int(checksum[1], 16) == fnv_checksum(10_000_000)
    assert results(out) == [("PASS", "hello", "")]


def test_serial_registers_and_interrupts(qemu: str) -> None:
    out = boot(qemu, "serial.elf")
    checks = re.findall(r"^(ok|FAIL) (.*)$", out, re.M)
    assert len(checks) == 11, out
    assert all(status == "ok" for status, _ in checks), out
    assert results(out) == [("PASS", "serial", "")]


def test_serial_echo_reads_host_input(qemu: str) -> None:
    proc = subprocess.Popen(qemu_cmd(qemu, OUT / "serial.elf", "echo"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc, b"READY\r\n")
        assert proc.stdin is not None
        proc.stdin.write(b"ping-from-host 42\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    text = out.decode(errors="replace").replace("\r\n", "\n")
    assert "ECHO: ping-from-host 42\n" in text, text
    assert results(text) == [("PASS", "serial", "")]


def test_rtc_bcd_and_binary_agree(qemu: str) -> None:
    before = time.gmtime()
    out = boot(qemu, "rtc.elf")
    after = time.gmtime()
    bcd = re.search(r"^rtc bcd: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$", out, re.M)
    binary = re.search(r"^rtc bin: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$", out, re.M)
    assert bcd and binary, out
    # QEMU's RTC runs on UTC by default: the guest's reading lies within our run.
    got = time.strptime(binary[1], "%Y-%m-%d %H:%M:%S")
    assert time.mktime(before) - 1 <= time.mktime(got) <= time.mktime(after) + 1
    assert results(out) == [("PASS", "rtc", binary[1])]


def test_trap_ud_reports_rip_of_ud2(qemu: str) -> None:
    out = boot(qemu, "trap.elf", "case=ud")
    expect = re.search(r"^expect RIP 0x([0-9a-f]+)$", out, re.M)
    exc = EXCEPTION.search(out)
    assert expect and exc, out
    assert exc.groups() == ("#UD", "6", "0", expect[1], "0")
    assert results(out) == [("PASS", "trap", "ud")]


def test_trap_gp_from_ring3(qemu: str) -> None:
    out = boot(qemu, "trap.elf", "case=gp3")
    expect = re.search(r"^expect RIP 0x([0-9a-f]+)$", out, re.M)
    exc = EXCEPTION.search(out)
    assert expect and exc, out
    assert exc.groups() == ("#GP", "13", "0", expect[1], "3")
    assert results(out) == [("PASS", "trap", "gp3")]


def test_trap_unexpected_uses_default_report(qemu: str) -> None:
    out = boot(qemu, "trap.elf", "case=unexpected")
    expect = re.search(r"^expect RIP 0x([0-9a-f]+)$", out, re.M)
    exc = EXCEPTION.search(out)
    assert expect and exc, out
    assert exc.groups() == ("#UD", "6", "0", expect[1], "0")
    assert results(out) == [("FAIL", "trap", "exception")]
    assert out.index("EXCEPTION:") < out.index("RESULT:")


def test_crash_boots_and_announces(qemu: str) -> None:
    # After the jump QEMU may stop with a KVM error or hang: only the line before is ours.
    proc = subprocess.Popen(qemu_cmd(qemu, OUT / "crash.elf"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = read_until(proc, b"about to crash\r\n")
    finally:
        proc.kill()
        proc.wait()
    assert b"RESULT: PASS" not in out


def test_exits(qemu: str) -> None:
    out = boot(qemu, "exits.elf", "iterations=5000")
    assert "exits: 5000\n" in out
    assert results(out) == [("PASS", "exits", "5000")]


@pytest.fixture(scope="module")
def ramdisk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A few KiB of deterministic bytes, with the size and 32-bit byte sum bootinfo checks."""
    data = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(100))[:3000]
    path = tmp_path_factory.mktemp("ramdisk") / "initrd.bin"
    path.write_bytes(data)
    return path, len(data), sum(data) & 0xFFFFFFFF


@pytest.mark.parametrize(("image", "proto"), [("bootinfo.elf", "pvh"), ("bootinfo.bzImage", "linux")])
def test_bootinfo(qemu: str, ramdisk: tuple[Path, int, int], image: str, proto: str) -> None:
    path, size, total = ramdisk
    cmdline = (f"expect_proto={proto} expect_initrd_size={size} "
               f"expect_initrd_sum={total:#x} expect_ram_mb=64 marker=bootinfo-{proto}")
    out = boot(qemu, image, cmdline, path)
    assert f"protocol: {proto}\n" in out
    assert f"command line: {cmdline}\n" in out
    assert re.search(rf"^ramdisk: addr 0x[0-9a-f]+ size {size} sum 0x{total:08x}$", out, re.M), out
    [(status, name, detail)] = results(out)
    assert (status, name) == ("PASS", "bootinfo"), out
    assert detail.startswith(f"{proto} ")


def test_bootinfo_detects_wrong_expectations(qemu: str, ramdisk: tuple[Path, int, int]) -> None:
    path, size, total = ramdisk
    out = boot(qemu, "bootinfo.elf",
               f"expect_proto=linux expect_initrd_size={size + 1} expect_initrd_sum={total ^ 1:#x} "
               "expect_ram_mb=128", path)
    assert results(out) == [("FAIL", "bootinfo", "pvh: 4 checks failed")]


XEN_GUESTS = ["xenhello", "xenevtchn", "xenfifo", "xengntmap", "xengrant", "xenstore", "xenconsole", "xenblk",
              "xennet", "xenpair", "xenhostile", "xenbench", "xenmem", "xenvcpu"]


@pytest.mark.parametrize("name", XEN_GUESTS)
def test_xen_guest_without_xen(qemu: str, name: str) -> None:
    """Under a hypervisor without Xen's interface, each Xen guest says so and fails."""
    out = boot(qemu, f"{name}.elf")
    assert 'no Xen: CPUID 0x40000000 signature is "KVMKVMKVM"' in out
    assert results(out) == [("FAIL", name, "no-xen")]
