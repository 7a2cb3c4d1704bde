"""The device guests (guests/acpi.c, smp.c, pci.c, vblk.c, vconsole.c, vrng.c,
hostile.c) booted under QEMU microvm with ACPI and a PCIe host bridge, the peer xenopus is
measured against.

Checks rest on numbers from the specs and from how the test set the machine up: ACPI 6.5
(FADT flag HW_REDUCED_ACPI is bit 20; S5 through the sleep control register), the virtio 1.2
PCI ids (4.1.2.1: vendor 0x1af4, modern device id 0x1040 + type), the pattern the vblk guest
writes (documented in guests/vblk.c) read back from the host image, and the SEEK_HOLE view of
discarded ranges.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUESTS
from tests.vm.test_guests_qemu import CPU, OUT, TIMEOUT, results

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

MACHINE = "microvm,pcie=on,rtc=on,acpi=on"
SECTOR = 512


@pytest.fixture(scope="module")
def qemu(guests: Path) -> str:
    """qemu-system-x86_64 (a missing one is a failure: `make test` installs it)."""
    path = shutil.which("qemu-system-x86_64")
    assert path, "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (make deps)"
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return path


def qemu_cmd(qemu: str, kernel: str, cmdline: str = "", *, smp: int = 1, mem: int = 64,
             devices: list[str] | None = None, reboot: bool = False) -> list[str]:
    cmd = [
        qemu, "-M", MACHINE, "-accel", "kvm", "-cpu", CPU, "-smp", str(smp), "-m", str(mem),
        "-nodefaults", "-display", "none", "-serial", "stdio", "-kernel", str(OUT / kernel),
        "-append", cmdline,
    ]
    return cmd + ([] if reboot else ["-no-reboot"]) + (devices or [])


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    out = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 0, f"qemu exited {proc.returncode}: {proc.stderr.decode()}\n{out}"
    return out


def blk(path: Path, ident: str = "d0", *, extra: str = "", drive: str = "") -> list[str]:
    return ["-device", f"virtio-blk-pci,drive={ident},disable-legacy=on{extra}",
            "-drive", f"if=none,id={ident},file={path},format=raw{drive}"]


RNG = ["-device", "virtio-rng-pci,disable-legacy=on"]


def pattern(first: int, count: int, seed: int = 0x5A) -> bytes:
    """guests/vblk.c: the byte at disk offset o is (o // 512 * 131 + o % 512 * 7 + seed) & 0xff."""
    return bytes(((o >> 9) * 131 + (o & 511) * 7 + seed) & 0xFF
                 for o in range(first * SECTOR, (first + count) * SECTOR))


# ---- ACPI ------------------------------------------------------------------------------


def test_acpi_walk_and_poweroff(qemu: str) -> None:
    # No -no-reboot: a reset would boot the guest a second time (and print it all again);
    # only a power-off ends QEMU after one run.
    out = run(qemu_cmd(qemu, "acpi.elf", "expect_cpus=4 expect_hw_reduced", smp=4, reboot=True))
    assert out.count("rsdp: ") == 1, out
    tables = dict(re.findall(r"^table (\w{4}) at 0x[0-9a-f]+ length \d+ revision \d+ checksum (\w+)$",
                             out, re.M))
    assert {"XSDT", "FACP", "APIC", "DSDT"} <= tables.keys(), out
    assert set(tables.values()) == {"ok"}
    assert re.search(r"^madt: 4 cpus, lapic 0xfee00000", out, re.M), out
    flags = int(re.search(r"^fadt: flags 0x([0-9a-f]+) hw_reduced 1 ", out, re.M)[1], 16)
    assert flags & (1 << 20)  # ACPI 6.5 Table 5.10: HW_REDUCED_ACPI
    assert results(out) == [("PASS", "acpi", "4 tables 4 cpus")]
    assert "acpi: powering off" in out and "still running" not in out


def test_acpi_detects_wrong_cpu_count(qemu: str) -> None:
    out = run(qemu_cmd(qemu, "acpi.elf", "expect_cpus=3 nopoweroff", smp=2))
    assert "FAIL madt cpus 2, expected 3" in out
    assert results(out) == [("FAIL", "acpi", "1 checks failed")]


# ---- SMP -------------------------------------------------------------------------------


def smp_checksum(index: int, n: int) -> int:
    """guests/smp.c: h = 0x811c9dc5 ^ index; h = ((h ^ i) * 0x01000193) mod 2^32 for i < n."""
    h = 0x811C9DC5 ^ index
    for i in range(n):
        h = ((h ^ i) * 0x01000193) & 0xFFFFFFFF
    return h


def test_smp_every_cpu_runs_ring3(qemu: str) -> None:
    n = 20000
    out = run(qemu_cmd(qemu, "smp.elf", f"expect_cpus=4 iterations={n}", smp=4))
    lines = re.findall(r"^cpu (\d+) apic (\d+) ok 0x([0-9a-f]{8})$", out, re.M)
    assert sorted(int(c) for c, _, _ in lines) == [0, 1, 2, 3], out
    assert sorted(int(a) for _, a, _ in lines) == [0, 1, 2, 3]  # QEMU numbers APIC ids 0..n-1
    for cpu, _, h in lines:
        assert int(h, 16) == smp_checksum(int(cpu), n)
    assert "started 3 application processors" in out
    assert results(out) == [("PASS", "smp", "4")]


# ---- PCI -------------------------------------------------------------------------------


def test_pci_enumerates_bus0(qemu: str, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(b"\0" * (1 << 20))
    out = run(qemu_cmd(qemu, "pci.elf", "expect_devices=3 expect_ecam",
                       devices=blk(img) + RNG))
    fns = re.findall(r"^00:([0-9a-f]{2})\.(\d) ([0-9a-f]{4}):([0-9a-f]{4}) class ([0-9a-f]{6})", out, re.M)
    ids = {(d, f): (v, dev, c) for d, f, v, dev, c in fns}
    # virtio 1.2 4.1.2.1: vendor 0x1af4, device 0x1040 + type (2 block, 4 entropy).
    assert ids[("01", "0")][:2] == ("1af4", "1042"), out
    assert ids[("02", "0")][:2] == ("1af4", "1044"), out
    assert ids[("00", "0")][2] == "060000"  # PCI Code and ID Assignment: host bridge
    bars = re.findall(r"^  BAR(\d) (mem32|mem64|io) 0x([0-9a-f]+) size 0x([0-9a-f]+)", out, re.M)
    assert bars, out
    for _, kind, addr, size in bars:
        a, s = int(addr, 16), int(size, 16)
        assert s & (s - 1) == 0 and a % s == 0, (kind, addr, size)  # naturally aligned powers of 2
        if kind != "io":
            assert 0xC000_0000 <= a < 0xE000_0000  # microvm's 32-bit window (DSDT PCI0._CRS)
    assert out.count("  caps:") == 2 and all(" 11@" in c and " 09@" in c
                                             for c in re.findall(r"^  caps:.*$", out, re.M))
    assert "cf8: absent" in out  # microvm's PCIe host has ECAM only
    assert results(out) == [("PASS", "pci", "3 functions")]


# ---- virtio-blk ------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xee" * (8 << 20))
    return path


def test_vblk_write_read_flush_discard_zeroes(qemu: str, image: Path) -> None:
    cmd = "sector=2048 count=8 discard=4096,16 zeroes=6144,8 expect_serial=XENOPUS-SN1 expect_sectors=16384"
    out = run(qemu_cmd(qemu, "vblk.elf", cmd, devices=blk(
        image, extra=",serial=XENOPUS-SN1", drive=",discard=unmap,cache=none,aio=threads")))
    assert results(out) == [("PASS", "vblk", "")], out
    assert re.search(r"^msix: [1-9]\d* interrupt\(s\) on vector 48", out, re.M), out
    assert "serial: XENOPUS-SN1\n" in out
    data = image.read_bytes()
    assert data[2048 * SECTOR:2056 * SECTOR] == pattern(2048, 8)
    assert data[4096 * SECTOR:4112 * SECTOR] == bytes(16 * SECTOR)  # discarded: a hole here
    assert data[6144 * SECTOR:6152 * SECTOR] == bytes(8 * SECTOR)
    untouched = data[:2048 * SECTOR] + data[2056 * SECTOR:4096 * SECTOR] + data[6152 * SECTOR:]
    assert untouched == b"\xee" * len(untouched)
    with open(image, "rb") as f:
        assert os.lseek(f.fileno(), 4096 * SECTOR, os.SEEK_HOLE) == 4096 * SECTOR


def test_vblk_readonly_refuses_writes(qemu: str, image: Path) -> None:
    out = run(qemu_cmd(qemu, "vblk.elf", "expect_ro sector=16 count=2",
                       devices=blk(image, drive=",readonly=on")))
    assert "write to read-only disk: status 1\n" in out  # VIRTIO_BLK_S_IOERR (5.2.6)
    assert results(out) == [("PASS", "vblk", "ro")], out
    assert image.read_bytes() == b"\xee" * (8 << 20)


@pytest.mark.parametrize("mode", ["bench=seq ops=16", "bench=rand ops=2000 rw=write"])
def test_vblk_bench_smoke(qemu: str, image: Path, mode: str) -> None:
    out = run(qemu_cmd(qemu, "vblk.elf", mode, mem=128, devices=blk(image, drive=",cache=none,aio=threads")))
    m = re.search(r"^bench: (seq|rand) (read|write) bs=(\d+) qd=(\d+) ops=(\d+) bytes=(\d+) us=(\d+) "
                  r"MiB/s=(\d+)\.(\d) IOPS=(\d+) errors=0$", out, re.M)
    assert m, out
    assert int(m[6]) == int(m[3]) * int(m[5])
    assert results(out)[0][:2] == ("PASS", "vblk")


# ---- virtio-console and virtio-rng -------------------------------------------------------


def test_vconsole_echo(qemu: str, tmp_path: Path) -> None:
    path = str(tmp_path / "vc.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(TIMEOUT)
        devs = ["-device", "virtio-serial-pci,disable-legacy=on",
                "-chardev", f"socket,id=vc0,path={path}", "-device", "virtconsole,chardev=vc0"]
        proc = subprocess.Popen(qemu_cmd(qemu, "vconsole.elf", "echo", devices=devs),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = srv.accept()  # QEMU connects at start-up
            with conn:
                conn.settimeout(TIMEOUT)
                got = b""
                deadline = time.monotonic() + TIMEOUT
                while b"READY\n" not in got and time.monotonic() < deadline:
                    chunk = conn.recv(4096)
                    assert chunk, got
                    got += chunk
                assert got.startswith(b"hello from the xenopus vconsole guest\n"), got
                conn.sendall(b"ping from host 42\n")
                while b"ECHO: ping from host 42\n" not in got and time.monotonic() < deadline:
                    chunk = conn.recv(4096)
                    assert chunk, got
                    got += chunk
                assert b"ECHO: ping from host 42\n" in got
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace").replace("\r\n", "\n")
    assert "vconsole echo: ping from host 42\n" in text, text
    assert results(text) == [("PASS", "vconsole", "echo")]


def test_vrng(qemu: str) -> None:
    out = run(qemu_cmd(qemu, "vrng.elf", devices=RNG))
    reads = re.findall(r"^vrng: read \d: 64 bytes ([0-9a-f]{128})$", out, re.M)
    assert len(reads) == 2 and reads[0] != reads[1], out
    assert results(out) == [("PASS", "vrng", "64+64 bytes")]


# ---- hostile descriptors ----------------------------------------------------------------

CASES = ["good", "loop", "long", "oob", "overflow", "rodata", "order", "nested"]


@pytest.mark.parametrize("case", CASES)
def test_hostile(qemu: str, tmp_path: Path, case: str) -> None:
    img = tmp_path / "h.img"
    img.write_bytes(b"\0" * (1 << 20))
    out = run(qemu_cmd(qemu, "hostile.elf", f"case={case}", devices=blk(img) + RNG))
    assert re.search(r"^other device \(virtio-rng 00:02\.0\): 16 bytes$", out, re.M), out
    assert re.search(r"^blk after( reset)?: ok$", out, re.M), out
    assert results(out) == [("PASS", "hostile", case)], out


def test_hostile_second_blk(qemu: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"\0" * (1 << 20))
    b.write_bytes(b"\0" * (1 << 20))
    out = run(qemu_cmd(qemu, "hostile.elf", "case=loop other=blk", devices=blk(a) + blk(b, "d1")))
    # QEMU marks the device broken on a descriptor loop (virtio_error): the guest resets it.
    assert "DEVICE_NEEDS_RESET" in out and "blk after reset: ok" in out, out
    assert "other device (virtio-blk 00:02.0): read ok" in out
    assert results(out) == [("PASS", "hostile", "loop")]


# ---- virtio-net through a tap in a network namespace --------------------------------------

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.2.2", 5555))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
data, peer = s.recvfrom(2048)
print("got", data.decode(), peer[0], peer[1], flush=True)
s.sendto(b"pong:" + data, peer)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace holding tap xvtap0 (10.0.2.2/24), removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace with a tap")
    name = f"xvtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for args in (["ip", "tuntap", "add", "xvtap0", "mode", "tap"],
                     ["ip", "addr", "add", "10.0.2.2/24", "dev", "xvtap0"],
                     ["ip", "link", "set", "xvtap0", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *args], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_vnet_udp_exchange(qemu: str, netns: str) -> None:
    server = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", UDP_ECHO, str(TIMEOUT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"  # bound before the guest sends
        tap_mac = subprocess.run(["ip", "netns", "exec", netns, "cat", "/sys/class/net/xvtap0/address"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        devs = ["-netdev", "tap,id=n0,ifname=xvtap0,script=no,downscript=no",
                "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:12:34:56"]
        out = run(["ip", "netns", "exec", netns] + qemu_cmd(
            qemu, "vnet.elf", "src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 src_port=4444 "
            "payload=ping-42 expect_reply=pong:ping-42", devices=devs))
        got = server.stdout.readline()
    finally:
        server.kill()
        server.wait()
    assert got == "got ping-42 10.0.2.15 4444\n", (got, out)
    assert "mac 52:54:00:12:34:56" in out
    assert f"vnet: 10.0.2.2 is at {tap_mac}\n" in out  # resolved by ARP
    assert "vnet reply from 10.0.2.2:5555: pong:ping-42\n" in out
    assert results(out) == [("PASS", "vnet", "")]
