"""GRUB's Xen PVH image (Debian's grub-xen-host) as a real client of xenopus's Xen interface.

`grub-i386-xen_pvh.bin` is what a Xen user gives as `kernel =` to boot a distribution
from its own disk: a 32-bit PVH guest nobody here wrote that finds its disk through
XenStore, grants and an event channel (its blkfront writes `protocol` = "x86_32-abi"),
reads /boot/grub/grub.cfg from an ext4 partition and boots the chosen entry with its
Linux loader. Here the disk holds our bootinfo guest as a bzImage and a ramdisk; the
guest checks what GRUB handed over. scripts/fetch-grub-xen fetches the image (`make
test` runs it); mke2fs (e2fsprogs) builds the file system without mounting anything.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GUEST_OUT, ROOT
from tests.vm.conftest import Xenopus
from tests.vm.test_cli import boot

pytestmark = pytest.mark.kvm

GRUB = ROOT / "build" / "grub-xen" / "grub-i386-xen_pvh.bin"
MiB = 1 << 20
DISK_MB = 16
PART_START = 1 * MiB  # the first partition at sector 2048, as fdisk places it


def mbr_with_one_partition(disk: Path, size_mb: int = DISK_MB) -> None:
    """A DOS partition table (one Linux partition, type 0x83, LBA only: CHS all ones)."""
    sectors = size_mb * MiB // 512 - PART_START // 512
    entry = struct.pack("<B3sB3sII", 0, b"\xff" * 3, 0x83, b"\xff" * 3, PART_START // 512, sectors)
    with disk.open("r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")


def make_disk(tmp: Path, grub_cfg: str, files: dict[str, bytes], size_mb: int = DISK_MB) -> Path:
    """An MBR disk image whose one partition is ext4 holding `files` and
    /boot/grub/grub.cfg, where grub-i386-xen_pvh.bin's embedded config looks."""
    root = tmp / "root"
    for name, data in {**files, "boot/grub/grub.cfg": grub_cfg.encode()}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    disk = tmp / "disk.img"
    with disk.open("wb") as f:
        f.truncate(size_mb * MiB)
    mbr_with_one_partition(disk, size_mb)
    # ext4 inside the partition (-E offset), filled from root/ (-d): no mount, no loop device
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={PART_START}",
                    "-d", str(root), str(disk), f"{size_mb * 1024 - PART_START // 1024}k"],
                   check=True, capture_output=True)
    return disk


@pytest.fixture(scope="module")
def grub() -> Path:
    if not GRUB.exists():
        pytest.skip(f"{GRUB} is missing: run scripts/fetch-grub-xen (make test does)")
    if shutil.which("mke2fs") is None:
        pytest.skip("mke2fs (e2fsprogs) is missing: it builds the test disk's ext4")
    return GRUB


def test_grub_boots_the_chosen_entry_from_a_pv_disk(xenopus: Xenopus, grub: Path,
                                                   tmp_path: Path) -> None:
    ramdisk = os.urandom(5000)
    cfg = f"""set timeout=0
set default=1
menuentry 'first' {{
  linux /boot/vmlinuz console=ttyS0 entry=first
}}
menuentry 'chosen' {{
  linux /boot/vmlinuz console=ttyS0 entry=chosen expect_proto=linux expect_initrd_size={len(ramdisk)} expect_initrd_sum={sum(ramdisk):#x}
  initrd /boot/initrd.img
}}
"""
    disk = make_disk(tmp_path, cfg, {"boot/vmlinuz": (GUEST_OUT / "bootinfo.bzImage").read_bytes(),
                                     "boot/initrd.img": ramdisk})
    r = boot(xenopus, "grubx", str(grub), xen_platform=1, memory=64, timeout=600,
             disk=[f"{disk},raw,xvda,r"])
    out = r.stdout
    # GRUB read grub.cfg from the ext4 partition through blkfront, took entry 1 and
    # loaded our bzImage and ramdisk from the same disk: bootinfo checks both.
    assert "command line: BOOT_IMAGE=/boot/vmlinuz console=ttyS0 entry=chosen" in out, out
    assert "entry=first" not in out
    assert "ramdisk: addr" in out and f"size {len(ramdisk)} sum {sum(ramdisk) & 0xFFFFFFFF:#010x}" in out, out
    assert "RESULT: PASS bootinfo linux" in out, out
    log = (xenopus.run_dir / "log" / "grubx.log").read_text()
    assert "pvh kernel" in log and "grub-i386-xen_pvh.bin" in log
