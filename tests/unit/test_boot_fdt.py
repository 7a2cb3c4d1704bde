"""boot/fdt.py against dtc, the reference devicetree compiler (Devicetree Specification
v0.4 chapter 5): dtc must read our blob without a warning and decompile it to the tree we
built."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from xenopus.boot.fdt import FDT_MAGIC, FdtError, Node

DTC = shutil.which("dtc")
needs_dtc = pytest.mark.skipif(DTC is None, reason="dtc (Debian's device-tree-compiler) is not installed")


def sample() -> Node:
    root = Node("")
    root.u32("#address-cells", 2).u32("#size-cells", 2).string("compatible", "linux,dummy-virt")
    mem = root.child("memory@40000000")
    mem.string("device_type", "memory").u64("reg", 0x4000_0000, 0x1000_0000)
    chosen = root.child("chosen")
    chosen.string("bootargs", "console=ttyAMA0 earlycon")
    chosen.u64("linux,initrd-start", 0x4800_0000)
    gic = root.child("intc@8000000")
    gic.string("compatible", "arm,gic-v3").prop("interrupt-controller").u32("phandle", 1)
    gic.u32("#interrupt-cells", 3).u32("#address-cells", 0)
    gic.u64("reg", 0x800_0000, 0x1_0000, 0x80A_0000, 0x2_0000)
    return root


def dtc_source(blob: bytes) -> str:
    assert DTC is not None
    result = subprocess.run([DTC, "-I", "dtb", "-O", "dts", "-"], input=blob,
                            capture_output=True, check=True, timeout=30)
    assert result.stderr == b"", result.stderr.decode()
    return result.stdout.decode()


@needs_dtc
def test_dtc_reads_our_blob_as_built() -> None:
    source = dtc_source(sample().to_dtb(reserve=[(0x4000_0000, 0x1000)]))
    lines = [line.strip() for line in source.splitlines()]
    assert "/memreserve/\t0x0000000040000000 0x0000000000001000;" in source
    assert '#address-cells = <0x02>;' in lines
    assert 'compatible = "linux,dummy-virt";' in lines
    assert "memory@40000000 {" in lines
    assert "reg = <0x00 0x40000000 0x00 0x10000000>;" in lines
    assert 'bootargs = "console=ttyAMA0 earlycon";' in lines
    assert "linux,initrd-start = <0x00 0x48000000>;" in lines
    assert "interrupt-controller;" in lines
    assert "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x20000>;" in lines


@needs_dtc
def test_dtc_round_trip_is_identical() -> None:
    """dtc recompiling its own decompilation of our blob gives the same tree: compare the
    two decompilations (dtc orders strings its own way, so the blobs may differ)."""
    assert DTC is not None
    ours = sample().to_dtb()
    again = subprocess.run([DTC, "-I", "dts", "-O", "dtb", "-"], input=dtc_source(ours).encode(),
                           capture_output=True, check=True, timeout=30).stdout
    assert dtc_source(again) == dtc_source(ours)


def test_header_fields() -> None:
    blob = sample().to_dtb()
    magic, total, off_struct, off_strings, off_rsv, version, last, _, size_strings, size_struct = (
        struct.unpack_from(">10I", blob))
    assert (magic, version, last) == (FDT_MAGIC, 17, 16)
    assert total == len(blob)
    assert off_rsv % 8 == 0 and off_struct % 4 == 0
    assert off_strings + size_strings == total
    assert off_struct + size_struct == off_strings
    assert struct.unpack_from(">I", blob, off_strings - 4)[0] == 0x9  # FDT_END


@pytest.mark.parametrize("bad", ["a" * 32, "bad name", "x/y", ""])
def test_bad_node_names_refused(bad: str) -> None:
    with pytest.raises(FdtError, match="node"):
        Node("").child(bad) if bad else Node("x").to_dtb()


def test_bad_properties_refused() -> None:
    node = Node("")
    with pytest.raises(FdtError, match="property name"):
        node.u32("no spaces", 1)
    node.u32("a", 1)
    with pytest.raises(FdtError, match="already has a property"):
        node.u32("a", 2)
    with pytest.raises(FdtError, match="32 bits"):
        node.u32("b", 1 << 32)
    with pytest.raises(FdtError, match="NUL"):
        node.string("c", "a\0b")
