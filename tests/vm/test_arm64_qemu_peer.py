"""The arm64 test guests and our arm64 device tree under QEMU's `-M virt` (TCG), the peer.

QEMU virt puts its GICv3, PL011 and RAM where xenopus/arm64 does (vm/arm64.py,
devices/platform.py), so the device tree domain/builder_arm64.py writes describes QEMU's
machine too: passed with `-dtb`, Debian's arm64 kernel must boot to userspace on it
(GICv3, the architected timer, the PL011 as console, PSCI SYSTEM_OFF at the end), and the
test guests must behave as under xenopus. No KVM is involved: this runs on any host.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import GUESTS, ROOT
from xenopus.boot.arm64 import Arm64Layout
from xenopus.domain.builder_arm64 import device_tree

pytestmark = pytest.mark.qemu

OUT = GUESTS / "out" / "arm64"
ARM64 = ROOT / "build" / "arm64"
QEMU = next((str(p) for p in (ARM64 / "qemu10" / "qemu-system-aarch64",) if p.exists()),
            shutil.which("qemu-system-aarch64"))
needs_qemu = pytest.mark.skipif(QEMU is None, reason="no qemu-system-aarch64 (scripts/fetch-arm64 "
                                "fetches QEMU 10's, Debian's qemu-system-arm has one)")
RAM_MIB = 256
CMDLINE = "console=ttyAMA0 earlycon=pl011,0x9000000 panic=-1"


class OneCpu:
    """What device_tree reads of a machine: one vCPU at MPIDR affinity 0, as QEMU's CPU 0."""

    vcpus = [0]
    redist_size = 0x20000

    def mpidr(self, index: int) -> int:
        return index


def our_dtb(tmp_path: Path) -> Path:
    layout = Arm64Layout(kernel=0x4000_0000, kernel_end=0x4000_0000, initrd=0, initrd_size=0,
                         dtb=0)  # QEMU places the kernel and initrd and fills /chosen's initrd
    path = tmp_path / "xenopus.dtb"
    path.write_bytes(device_tree(OneCpu(), RAM_MIB << 20, CMDLINE, layout).to_dtb())  # type: ignore[arg-type]
    return path


def qemu(*args: str, smp: int = 1, timeout: float = 30) -> str:
    assert QEMU is not None
    out = subprocess.run([QEMU, "-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on",
                          "-smp", str(smp), "-m", str(RAM_MIB), "-accel", "tcg", "-nodefaults",
                          "-no-reboot", "-display", "none", "-serial", "stdio", *args],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode(errors="replace")


def image(name: str) -> Path:
    path = OUT / f"{name}.Image"
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)}: make -C guests/arm64 (needs gcc-aarch64-linux-gnu)")
    return path


@needs_qemu
def test_hello_under_qemu_with_our_device_tree(tmp_path: Path) -> None:
    out = qemu("-kernel", str(image("hello")), "-dtb", str(our_dtb(tmp_path)))
    assert out == "Hello from an arm64 xenopus guest\nx0 points at a device tree\n"


@needs_qemu
def test_smp_under_qemu() -> None:
    out = qemu("-kernel", str(image("smp")), smp=2)
    assert out == "cpu0: starting cpu1 with PSCI CPU_ON\ncpu0: cpu1 ran with its context ID\n"


@needs_qemu
@pytest.mark.arm64_fetched
def test_debian_kernel_boots_on_our_device_tree(tmp_path: Path) -> None:
    out = qemu("-kernel", str(ARM64 / "Image"), "-initrd", str(ARM64 / "guest-initramfs.cpio"),
               "-dtb", str(our_dtb(tmp_path)), "-append", CMDLINE, timeout=300)
    assert "Machine model: xenopus arm64" in out  # our tree, not QEMU's
    assert "GICv3: CPU0: found redistributor 0" in out
    assert "arch_timer: cp15 timer(s) running" in out
    assert "ttyAMA0 at MMIO 0x9000000" in out
    assert "rtc-pl031 9010000.pl031: registered as rtc0" in out
    assert "XENOPUS-ARM64-USERSPACE" in out
    assert "reboot: Power down" in out


@needs_qemu
def test_timer_interrupts_under_qemu_with_our_device_tree(tmp_path: Path) -> None:
    """guests/arm64/timer.S never powers off: read its console until three ticks."""
    assert QEMU is not None
    proc = subprocess.Popen([QEMU, "-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on",
                             "-m", str(RAM_MIB), "-accel", "tcg", "-nodefaults", "-no-reboot",
                             "-display", "none", "-serial", "stdio", "-kernel", str(image("timer")),
                             "-dtb", str(our_dtb(tmp_path))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = threading.Timer(60, proc.kill)  # a guest that never ticks ends the pipe
    deadline.start()
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        deadline.cancel()
        proc.kill()
        proc.wait(30)
    assert lines == [b"timer guest: GICv3 and the virtual timer\n"] + [b"tick\n"] * 3
