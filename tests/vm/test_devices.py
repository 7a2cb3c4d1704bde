"""The platform devices under xenopus, driven by the guest kit's ACPI, SMP, PCI and virtio
guests through the CLI (the same guests pass under QEMU: test_guests_qemu_devices.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import boot, read_until

pytestmark = pytest.mark.kvm

SECTOR = 512
MiB = 1 << 20


def test_acpi_tables_and_power_off(xenopus: Xenopus) -> None:
    r = boot(xenopus, "acpi-t", "acpi.elf", vcpus=4, cmdline="expect_cpus=4 expect_hw_reduced expect_mcfg")
    assert r.returncode == 0, r.stderr
    assert "RESULT: PASS acpi" in r.stdout, r.stdout
    for sig in ("XSDT", "FACP", "APIC", "MCFG", "DSDT"):
        assert re.search(rf"table {sig} at 0x[0-9a-f]+ length \d+ revision \d+ checksum ok", r.stdout)
    assert "madt: 4 cpus" in r.stdout
    # The guest left through ACPI S5, which on_poweroff (destroy) handled.
    assert "poweroff: ACPI S5" in (xenopus.run_dir / "log" / "acpi-t.log").read_text()


def test_smp_brings_up_every_vcpu(xenopus: Xenopus) -> None:
    r = boot(xenopus, "smp-t", "smp.elf", vcpus=4, cmdline="expect_cpus=4")
    assert "RESULT: PASS smp 4" in r.stdout, r.stdout
    apics = sorted(int(m) for m in re.findall(r"cpu \d+ apic (\d+) ok", r.stdout))
    assert apics == [0, 1, 2, 3]


def test_vcpu_list_and_pin(xenopus: Xenopus) -> None:
    cfg = xenopus.config("pinned", "powerbtn.elf", vcpus=2)
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    try:
        rows = [line.split() for line in xenopus.run("vcpu-list", "pinned", check=True).stdout.splitlines()[1:]]
        assert [row[2] for row in rows] == ["0", "1"]  # one row per vCPU
        assert xenopus.run("vcpu-pin", "pinned", "1", "0").returncode == 0
        rows = [line.split() for line in xenopus.run("vcpu-list", "pinned", check=True).stdout.splitlines()[1:]]
        assert rows[1][-3:] == ["0", "/", "all"], rows
        bad = xenopus.run("vcpu-pin", "pinned", "1", "999")
        assert bad.returncode != 0 and "999" in bad.stderr
    finally:
        xenopus.run("destroy", "pinned")


def test_pci_bus_seen_through_cf8_and_ecam(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "pci.img"
    disk.write_bytes(b"")
    os.truncate(disk, MiB)
    r = boot(xenopus, "pci-t", "pci.elf", disk=[f"{disk},raw,vda,rw"], virtio_rng=1,
             cmdline="expect_cf8 expect_ecam expect_devices=3")
    assert "RESULT: PASS pci 3 functions" in r.stdout, r.stdout
    assert "cf8 and ecam agree (3 / 3 functions)" in r.stdout
    assert "1af4:1042 class 018000" in r.stdout  # virtio-blk, modern id (virtio 1.2 §4.1.2)
    assert "1af4:1044" in r.stdout  # virtio-rng


def pattern(offset: int, seed: int = 0x5A) -> int:
    """The byte the vblk guest writes at disk offset `offset` (guests/vblk.c)."""
    return (offset // SECTOR * 131 + offset % SECTOR * 7 + seed) & 0xFF


def test_virtio_blk_reaches_the_image(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "vblk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(4096 * SECTOR)
        f.write(b"\xAA" * 64 * SECTOR)  # to be discarded
        f.seek(8192 * SECTOR)
        f.write(b"\xFF" * 16 * SECTOR)  # to be zeroed
    r = boot(xenopus, "vblk-t", "vblk.elf", disk=[f"{disk},raw,vda,rw"],
             cmdline="sector=2048 count=8 discard=4096,64 zeroes=8192,16 expect_sectors=131072")
    assert "RESULT: PASS vblk" in r.stdout, r.stdout
    assert "ok get_id by msi-x interrupt" in r.stdout
    data = disk.read_bytes()
    start = 2048 * SECTOR
    assert data[start : start + 8 * SECTOR] == bytes(pattern(o) for o in range(start, start + 8 * SECTOR))
    assert data[8192 * SECTOR : 8208 * SECTOR] == bytes(16 * SECTOR)
    assert data[4096 * SECTOR : 4160 * SECTOR] == bytes(64 * SECTOR)
    with open(disk, "rb") as f:  # discard punched a hole, not just zeroes
        assert os.lseek(f.fileno(), 4096 * SECTOR, os.SEEK_HOLE) == 4096 * SECTOR


def test_read_only_disk_refuses_writes(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "ro.img"
    disk.write_bytes(bytes(range(256)) * (4 * MiB // 256))  # past the guest's sector 2048
    before = disk.read_bytes()
    r = boot(xenopus, "ro-t", "vblk.elf", disk=[f"{disk},raw,vda,ro"], cmdline="expect_ro")
    assert "write to read-only disk: status 1" in r.stdout, r.stdout  # VIRTIO_BLK_S_IOERR
    assert "RESULT: PASS vblk ro" in r.stdout
    assert disk.read_bytes() == before


def test_virtio_rng(xenopus: Xenopus) -> None:
    r = boot(xenopus, "rng-t", "vrng.elf", virtio_rng=1)
    assert "RESULT: PASS vrng" in r.stdout, r.stdout


def test_virtio_console_port(xenopus: Xenopus) -> None:
    cfg = xenopus.config("vcon", "vconsole.elf", virtio_console=1, cmdline="echo timeout_ms=30000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "-t", "virtio", "vcon", stdin=subprocess.PIPE)
    assert con.stdin is not None and con.stdout is not None
    read_until(con.stdout, b"READY")
    con.stdin.write(b"through-virtio\n")
    con.stdin.flush()
    out, _ = con.communicate(timeout=60)
    assert b"ECHO: through-virtio" in out
    no = xenopus.run("console", "-t", "virtio", "vcon")  # the domain is gone by now
    assert no.returncode != 0


HOSTILE = ["loop", "long", "oob", "overflow", "rodata", "order", "nested"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_descriptors_fail_only_their_request(xenopus: Xenopus, case: str) -> None:
    disk = xenopus.tmp / f"hostile-{case}.img"
    disk.write_bytes(b"")
    os.truncate(disk, MiB)
    r = boot(xenopus, f"hostile-{case}", "hostile.elf", disk=[f"{disk},raw,vda,rw"], virtio_rng=1,
             cmdline=f"case={case}")
    assert f"RESULT: PASS hostile {case}" in r.stdout, r.stdout
    # The request failed (IOERR) or the device asked for a reset; never a silent success.
    assert "status 0x1" in r.stdout or "DEVICE_NEEDS_RESET" in r.stdout, r.stdout
    assert re.search(r"other device \(virtio-rng [0-9a-f:.]+\): 16 bytes", r.stdout)
    assert r.returncode == 0  # the VMM stayed up and the guest powered off normally


NS = f"xenopus-test-{os.getpid()}"


@pytest.fixture
def netns(tmp_path):
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    x = Xenopus(tmp_path / "run", tmp_path, prefix=("ip", "netns", "exec", NS))
    try:
        yield x
    finally:
        x.run("daemon", "--stop", timeout=60)
        subprocess.run(["ip", "netns", "del", NS], check=False)


RESPONDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.2.2", 5555))
s.settimeout(60)
print("bound", flush=True)
data, peer = s.recvfrom(2048)
s.sendto(b"pong-from-host", peer)
print("got", data.decode(), peer[0], flush=True)
"""


def test_virtio_net_udp_through_a_tap(netns: Xenopus) -> None:
    cfg = netns.config("net-t", "vnet.elf", vif=["model=virtio, vifname=xnptap0, mtu=1400"],
                       cmdline="src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 "
                               "payload=ping-from-guest expect_reply=pong-from-host timeout_ms=30000")
    assert netns.run("create", "-q", "-p", str(cfg)).returncode == 0  # paused: the tap exists
    subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", "xnptap0"], check=True)
    link = subprocess.run(["ip", "-n", NS, "link", "show", "xnptap0"], capture_output=True,
                          text=True, check=True).stdout
    assert " mtu 1400 " in link, link  # the vif's mtu= reached the tap
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", RESPONDER],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "bound"
        listing = netns.run("network-list", "net-t", check=True).stdout
        assert re.search(r"^0\s+00:16:3e:[0-9a-f:]{8}\s+00:[0-9a-f]{2}\.0\s+xnptap0", listing, re.M), listing
        # Attached before the guest runs: it powers off as soon as it has its reply, and a
        # console asked for after that finds no domain.
        console = netns.popen("console", "net-t")
        assert netns.run("unpause", "net-t").returncode == 0
        try:
            out = console.communicate(timeout=120)[0].decode(errors="replace")
        finally:
            console.kill()
        assert "RESULT: PASS vnet" in out, out
        assert "vnet reply from 10.0.2.2:5555: pong-from-host" in out
        assert responder.communicate(timeout=60)[0].startswith("got ping-from-guest 10.0.2.15")
    finally:
        responder.kill()
