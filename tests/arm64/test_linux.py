"""Debian's arm64 6.12 kernel to busybox userspace on xenopus/arm64: the Image protocol,
the generated device tree (memory, PSCI, GICv3, the architected timer, the PL011 as
console and earlycon) and PSCI SYSTEM_OFF from `poweroff -f`. The kernel and initramfs
come from scripts/fetch-arm64 (make test-arm64 runs it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.arm64.test_hello import pytestmark as arm64_host  # the same skips
from tests.arm64.test_hello import run_guest

pytestmark = arm64_host
ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "build" / "arm64" / "Image"
INITRAMFS = ROOT / "build" / "arm64" / "guest-initramfs.cpio"
MARKER = b"XENOPUS-ARM64-USERSPACE"
# Linux under KVM inside QEMU's TCG: the previous session measured 210 s to userspace.
TIMEOUT = float(os.environ.get("ARM64_LINUX_TIMEOUT", "600"))


@pytest.mark.skipif(not IMAGE.exists() or not INITRAMFS.exists(),
                    reason="build/arm64/Image and guest-initramfs.cpio come from scripts/fetch-arm64")
def test_debian_kernel_reaches_userspace_and_powers_off() -> None:
    start = time.monotonic()
    reason, out = run_guest(IMAGE, vcpus=1, timeout=TIMEOUT, memory_mib=256, ramdisk=INITRAMFS,
                            cmdline="console=ttyAMA0 earlycon=pl011,0x9000000 panic=-1 rdinit=/init")
    elapsed = time.monotonic() - start
    text = out.decode(errors="replace")
    assert MARKER in out, text[-3000:]
    assert "Booting Linux on physical CPU" in text
    assert "GICv3" in text  # irq-gic-v3 probed our distributor and redistributor
    assert "ttyAMA0" in text  # amba-pl011 took the UART the device tree names
    assert reason.kind == "poweroff", reason
    print(f"Debian arm64 6.12 to userspace and power-off: {elapsed:.1f} s")
