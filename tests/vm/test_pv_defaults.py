"""Device defaults as libxl makes them for a PVH domU with the Xen interface on: a disk
whose vdev does not ask for virtio is a Xen PV disk (here sdb: blkfront finds it at
virtual-device 8 << 8 | 1 << 4, docs/misc/vbd-interface.txt), and block-list shows it
among the PV devices; with xen_platform = 0 the same config gives a virtio-blk disk."""

from __future__ import annotations

import os

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_devices import pattern
from tests.vm.test_xen import xen_boot

pytestmark = pytest.mark.kvm

SDB = 8 << 8 | 1 << 4  # 2064


def test_an_sd_disk_is_a_xen_pv_disk_when_xen_is_on(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "sdb.img"
    disk.write_bytes(b"")
    os.truncate(disk, 16 << 20)
    r = xen_boot(xenopus, "pv-sdb", "xenblk.elf", disk=[f"{disk},raw,sdb,rw"],
                 cmdline=f"vdev={SDB} sector=8 count=2")
    assert "RESULT: PASS xenblk" in r.stdout, r.stdout
    data = disk.read_bytes()
    assert data[8 * 512:10 * 512] == bytes(pattern(o) for o in range(8 * 512, 10 * 512))


def test_the_same_disk_is_virtio_with_xen_off(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "sdb-off.img"
    disk.write_bytes(b"")
    os.truncate(disk, 16 << 20)
    cfg = xenopus.config("virtio-sdb", "vblk.elf", xen_platform=0, disk=[f"{disk},raw,sdb,rw"])
    assert xenopus.run("create", "-p", str(cfg)).returncode == 0
    try:
        listing = xenopus.run("block-list", "virtio-sdb", check=True).stdout
        # the virtio table (a PCI function), not xl's PV one (BE-path and the rest)
        assert listing.splitlines()[0].split() == ["Vdev", "Idx", "PCI", "Mode", "Target"]
        assert listing.splitlines()[1].split()[:3] == ["sdb", "0", "00:01.0"], listing
    finally:
        xenopus.run("destroy", "virtio-sdb")
