"""A built guest's inventory lists every stateful part (needs /dev/kvm: it builds a VM)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest

from xenopus.domain.builder import build_guest
from xenopus.domain.config import DomainConfig
from xenopus.domain.devspec import parse_disk
from xenopus.domain.xenguest import StoreProxy

pytestmark = pytest.mark.kvm


def test_the_inventory_has_every_part_of_a_xen_guest(guests: Path, tmp_path: Path) -> None:
    image = tmp_path / "vda.img"
    image.write_bytes(b"")
    os.truncate(image, 1 << 20)
    config = DomainConfig(name="inv", kernel=str(guests / "xenhello.elf"), memory=32, vcpus=2,
                          xen_platform="1", disks=[parse_disk(f"{image},raw,vda,rw")],
                          virtio_rng=1)
    loop = asyncio.new_event_loop()
    guest = build_guest(config, console_out=lambda b: None, debug_out=lambda b: None,
                        store=StoreProxy(loop, None))
    try:
        parts = guest.inventory.describe()
        kinds = Counter(p["kind"] for p in parts)
        assert kinds["vcpu"] == 2
        for kind in ("irqchip", "pit", "clock", "memory", "pci-host", "xen"):
            assert kinds[kind] == 1, kind
        legacy = {p["name"]: p for p in parts if p["kind"] == "legacy"}
        assert legacy["serial0"]["base"] == 0x3F8 and legacy["rtc"]["base"] == 0x70
        assert {"i8042-data", "i8042-command", "debugcon", "post", "acpi-power"} <= set(legacy)
        # Two virtio devices: each a transport on the PCI bus and a device behind it; the
        # host bridge is the third function.
        assert kinds["virtio-pci"] == 2 and kinds["pci"] == 1
        disk = next(p for p in parts if p["kind"] == "disk")
        assert (disk["name"], disk["model"], disk["target"], disk["mode"]) == (
            "vda", "virtio-blk", str(image), "w")
        assert any(p["kind"] == "rng" for p in parts)
        assert any(p["name"] == "xen-console" for p in parts)
        # The Xen part describes the live XenDomain: what the guest does later shows.
        xen = next(p for p in parts if p["kind"] == "xen")
        assert (xen["path"], xen["shared_info"], xen["vcpu_info"]) == (
            guest.xen_path, None, [None, None])
        assert xen["store_port"] == guest.xen.store_port > 0
        guest.xen.domain.map_shared_info(0x80000)  # XENMEM_add_to_physmap, as a guest would
        xen = next(p for p in guest.inventory.describe() if p["kind"] == "xen")
        assert (xen["shared_info"], xen["vcpu_info"]) == (0x80000, [0x80000, 0x80000 + 64])
        assert len({(p["kind"], p["name"]) for p in parts}) == len(parts)  # names are unique
    finally:
        guest.close()
        loop.close()
