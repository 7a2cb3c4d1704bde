"""The arm64 hello guest through the toolstack, as a user runs it: `xenopus create -c -F`
with the daemon, the zygote and a jailed domain process that builds an arm64 domain
(domain/builder_arm64.py) because the host is arm64."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.arm64.test_hello import HELLO
from tests.arm64.test_hello import pytestmark as arm64_host  # the same skips
from tests.vm.conftest import Xenopus

pytestmark = arm64_host
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def xenopus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    tmp = tmp_path_factory.mktemp("xenopus")
    x = Xenopus(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)


def config(x: Xenopus, name: str, kernel: Path, **keys: object) -> Path:
    lines = [f'name = "{name}"', f'kernel = "{kernel}"', "memory = 64", 'on_reboot = "destroy"']
    lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()]
    path = x.tmp / f"{name}.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_create_console_and_poweroff(xenopus: Xenopus) -> None:
    r = xenopus.run("create", "-c", "-F", str(config(xenopus, "hello-arm64", HELLO)), timeout=300)
    assert r.returncode == 0, r.stderr + xenopus.log()[-3000:]
    assert "Hello from an arm64 xenopus guest" in r.stdout
    assert "x0 points at a device tree" in r.stdout
    assert "hello-arm64" not in xenopus.domains()


def test_pause_unpause_destroy(xenopus: Xenopus) -> None:
    """The timer guest (GIC interrupts forever) through create, pause, unpause, destroy."""
    cfg = config(xenopus, "timer-arm64", HELLO.with_name("timer.Image"))
    r = xenopus.run("create", "-q", str(cfg), timeout=300)
    assert r.returncode == 0, r.stderr + xenopus.log()[-3000:]
    try:
        assert xenopus.domains()["timer-arm64"][4] == "r-----"
        assert xenopus.run("pause", "timer-arm64", timeout=120).returncode == 0
        assert xenopus.domains()["timer-arm64"][4] == "--p---"
        assert xenopus.run("unpause", "timer-arm64", timeout=120).returncode == 0
        assert xenopus.domains()["timer-arm64"][4] == "r-----"
    finally:
        assert xenopus.run("destroy", "timer-arm64", timeout=120).returncode == 0
    assert "timer-arm64" not in xenopus.domains()


def test_triggers_and_reboot_on_arm64(xenopus: Xenopus) -> None:
    """No power button and no local APIC on arm64: those triggers are refused by name; the
    reset trigger (reboot -F) reboots, which on_reboot = "destroy" turns into the end."""
    cfg = config(xenopus, "trig-arm64", HELLO.with_name("timer.Image"))
    r = xenopus.run("create", "-q", str(cfg), timeout=300)
    assert r.returncode == 0, r.stderr + xenopus.log()[-3000:]
    try:
        power = xenopus.run("trigger", "trig-arm64", "power", timeout=120)
        assert power.returncode != 0 and "no power button" in power.stderr, power.stderr
        nmi = xenopus.run("trigger", "trig-arm64", "nmi", timeout=120)
        assert nmi.returncode != 0 and "not available on arm64" in nmi.stderr, nmi.stderr
        reboot = xenopus.run("reboot", "-F", "-ww", "trig-arm64", timeout=300)
        assert reboot.returncode == 0, reboot.stderr
        assert "trig-arm64" not in xenopus.domains()
        assert "(trig-arm64) reboot → destroy" in xenopus.log()
    finally:
        xenopus.run("destroy", "trig-arm64", timeout=120)


def test_xen_pv_disk_is_refused_by_name(xenopus: Xenopus) -> None:
    """There is no Xen interface on arm64 (README): an xvd* disk, a Xen PV vbd, is refused."""
    disk = xenopus.tmp / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    cfg = config(xenopus, "disk-arm64", HELLO, disk=[f"{disk},raw,xvda,rw"])
    r = xenopus.run("create", "-F", str(cfg), timeout=300)
    assert r.returncode != 0
    assert "disk xvda is a Xen PV disk; arm64 has no Xen interface" in r.stderr + r.stdout


LINUX = ROOT / "build" / "arm64" / "Image"
INITRAMFS = ROOT / "build" / "arm64" / "guest-initramfs.cpio"
BRIDGE, HOST_IP = "xnabr0", "10.0.64.1"  # scripts/fetch-arm64's NET_HOST


@pytest.mark.skipif(not LINUX.exists() or not INITRAMFS.exists(),
                    reason="build/arm64/Image and guest-initramfs.cpio come from scripts/fetch-arm64")
def test_debian_kernel_with_virtio_blk_net_rng(xenopus: Xenopus) -> None:
    """Debian's arm64 6.12 through `xenopus create` with a `disk=`, a `vif=` on a bridge
    that has the host's address, and virtio_rng: Linux's virtio_mmio driver finds the
    three devices in our device tree; its init reads sector 0 of the disk (which we wrote)
    and writes sector 1 (which we read back), pings the host through virtio-net, and reads
    the hwrng."""
    for cmd in (["link", "add", "name", BRIDGE, "type", "bridge"],
                ["addr", "add", f"{HOST_IP}/24", "dev", BRIDGE], ["link", "set", BRIDGE, "up"]):
        subprocess.run(["ip", *cmd], check=True, timeout=30)
    disk = xenopus.tmp / "vda.img"
    disk.write_bytes(b"XENOPUS-ARM64-DISK-SECTOR0".ljust(512, b"\0") + bytes(1 << 20))
    try:
        cfg = config(xenopus, "linux-arm64", LINUX, memory=256, ramdisk=str(INITRAMFS),
                     cmdline="console=ttyAMA0 panic=-1 rdinit=/init", virtio_rng=1,
                     disk=[f"{disk},raw,vda,rw"], vif=[f"bridge={BRIDGE},mac=00:16:3e:64:00:02"])
        r = xenopus.run("create", "-c", "-F", str(cfg), timeout=900)
        out = r.stdout
        assert r.returncode == 0, out[-3000:] + r.stderr + xenopus.log()[-3000:]
        assert "virtio_mmio" in out or "XENOPUS-ARM64-USERSPACE" in out, out[-3000:]
        assert "XENOPUS-ARM64-USERSPACE" in out, out[-3000:]
        assert "disk: read XENOPUS-ARM64-DISK-SECTOR0" in out, out[-3000:]
        assert "disk: wrote sector 1" in out, out[-3000:]
        assert disk.read_bytes()[512:512 + 26] == b"XENOPUS-ARM64-DISK-WRITTEN"
        assert "net: eth0 00:16:3e:64:00:02" in out, out[-3000:]
        assert f"net: ping {HOST_IP} ok" in out, out[-3000:]
        rng = [line for line in out.splitlines() if line.startswith("rng: ")]
        assert rng and len(rng[0].strip()) == len("rng: ") + 16, out[-3000:]
        assert "linux-arm64" not in xenopus.domains()
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], timeout=30)
