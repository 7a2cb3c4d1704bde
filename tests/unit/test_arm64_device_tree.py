"""The arm64 guest's device tree (domain/builder_arm64.py) through dtc, whose checks know
the bindings' basic rules (reg sizes against #address-cells, interrupt providers, unit
addresses against reg): it must decompile with no warning and name what Linux looks for."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from xenopus.boot.arm64 import Arm64Layout
from xenopus.domain.builder_arm64 import device_tree

DTC = shutil.which("dtc")


class FakeMachine:
    """What device_tree reads of an Arm64Machine: its vCPUs' MPIDRs and redistributors."""

    def __init__(self, n: int) -> None:
        self.vcpus = list(range(n))
        self.redist_size = n * 0x20000

    def mpidr(self, index: int) -> int:
        return index  # KVM's default: Aff0 = the vCPU index (below 16)


@pytest.mark.skipif(DTC is None, reason="dtc (Debian's device-tree-compiler) is not installed")
def test_device_tree_passes_dtc() -> None:
    layout = Arm64Layout(kernel=0x4000_0000, kernel_end=0x4100_0000, initrd=0x4700_0000,
                         initrd_size=0x1234, dtb=0x47E0_0000)
    tree = device_tree(FakeMachine(2), 128 << 20, "console=ttyAMA0", layout)  # type: ignore[arg-type]
    assert DTC is not None
    out = subprocess.run([DTC, "-I", "dtb", "-O", "dts", "-"], input=tree.to_dtb(),
                         capture_output=True, check=True, timeout=30)
    assert out.stderr == b"", out.stderr.decode()
    lines = [line.strip() for line in out.stdout.decode().splitlines()]
    assert 'bootargs = "console=ttyAMA0";' in lines
    assert "linux,initrd-start = <0x00 0x47000000>;" in lines
    assert "linux,initrd-end = <0x00 0x47001234>;" in lines
    assert "cpu@1 {" in lines and 'enable-method = "psci";' in lines
    assert 'compatible = "arm,gic-v3";' in lines
    assert "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;" in lines
    assert 'compatible = "arm,pl011\\0arm,primecell";' in lines
    assert "interrupts = <0x00 0x01 0x04>;" in lines  # SPI 1, level high
    assert 'compatible = "arm,pl031\\0arm,primecell";' in lines
    # the timer's PPIs 13, 14, 11, 10 (INTIDs 29, 30, 27, 26), as QEMU virt writes them
    assert ("interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;"
            in lines)


@pytest.mark.skipif(DTC is None, reason="dtc (Debian's device-tree-compiler) is not installed")
def test_virtio_mmio_nodes_pass_dtc() -> None:
    """virtio/mmio.yaml nodes where QEMU virt puts its transports: 0x200 apart from
    0x0A000000, SPIs 16 up, edge-triggered (their interrupt is an irqfd)."""
    layout = Arm64Layout(kernel=0x4000_0000, kernel_end=0x4100_0000, initrd=0, initrd_size=0,
                         dtb=0x47E0_0000)
    tree = device_tree(FakeMachine(1), 128 << 20, "", layout, virtio=2)  # type: ignore[arg-type]
    assert DTC is not None
    out = subprocess.run([DTC, "-I", "dtb", "-O", "dts", "-"], input=tree.to_dtb(),
                         capture_output=True, check=True, timeout=30)
    assert out.stderr == b"", out.stderr.decode()
    text = out.stdout.decode()
    for i, (base, spi) in enumerate(((0xA000000, 0x10), (0xA000200, 0x11))):
        node = text[text.index(f"virtio_mmio@{base:x} {{"):]
        node = node[:node.index("};")]
        assert 'compatible = "virtio,mmio";' in node, i
        assert f"reg = <0x00 {base:#x} 0x00 0x200>;" in node, node
        assert f"interrupts = <0x00 {spi:#04x} 0x01>;" in node, node
        assert "dma-coherent;" in node
    assert "virtio_mmio@a000400" not in text
