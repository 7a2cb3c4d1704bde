"""The guest inventory's parts and the block-list / network-list formats that read it."""

from __future__ import annotations

from dataclasses import dataclass, field

from xenopus.control import DISK, NIC
from xenopus.devices.bus import NullDevice
from xenopus.domain.inventory import (
    BusPart,
    Inventory,
    KvmPart,
    PvDevicePart,
    VirtioPart,
    pci_address,
)
from xenopus.toolstack import xlformat
from xenopus.xen.xenstore.wire import XsError


@dataclass
class FakeBackend:
    """What PvDevicePart uses of a BlkBack: the xenbus identity and the frontend's nodes."""

    nodes: dict[str, str] = field(default_factory=dict)
    kind: str = "vbd"
    be: str = "/local/domain/0/backend/vbd/3/51712"
    backend_domid: int = 0
    domid: int = 3
    devid: int = 51712
    listed_nodes: tuple[str, ...] = ("state", "event-channel", "ring-ref")
    broken: bool = False

    def read_fe(self, name: str) -> str | None:
        if self.broken:
            raise XsError("EIO")
        return self.nodes.get(name)

    def describe(self) -> dict[str, object]:
        return {"devid": self.devid, "vdev": "xvda", "target": "/img", "mode": "w"}


class FakeVirtio:
    name = "blk"


def test_pci_address_is_lspcis() -> None:
    assert pci_address(0x18) == "00:03.0" and pci_address(0x1F) == "00:03.7"


def test_inventory_describes_every_part_with_kind_and_name() -> None:
    inv = Inventory([KvmPart("pit", "pit", {"irq": 0})])
    inv.add(BusPart("post", "pio", 0x80, 1, NullDevice()))
    inv.add(VirtioPart(DISK, "vda", 0, 0x18, FakeVirtio(), {"vdev": "vda"}))  # type: ignore[arg-type]
    assert inv.describe() == [
        {"kind": "pit", "name": "pit", "irq": 0},
        {"kind": "legacy", "name": "post", "bus": "pio", "base": 0x80, "length": 1,
         "model": "NullDevice"},
        {"kind": "disk", "name": "vda", "model": "virtio-blk", "index": 0, "bdf": 0x18,
         "pci": "00:03.0", "vdev": "vda"},
    ]
    assert [p.name for p in inv.of_kind(DISK, NIC)] == ["vda"]


def test_a_pv_disk_shows_the_frontends_nodes_as_libxl_reads_them() -> None:
    backend = FakeBackend({"state": "4", "event-channel": "9", "ring-ref": "8"})
    part = PvDevicePart(DISK, "xvda", backend)  # type: ignore[arg-type]
    info = part.describe()
    assert info["model"] == "xen-vbd" and info["backend"] == backend.be
    assert (info["backend_id"], info["frontend_id"]) == (0, 3)
    assert (info["state"], info["event-channel"], info["ring-ref"]) == (4, 9, 8)
    # Absent nodes (a frontend that has not connected) and a store that is gone: -1.
    assert PvDevicePart(DISK, "xvda", FakeBackend({"state": "1"})).describe()["ring-ref"] == -1  # type: ignore[arg-type]
    assert PvDevicePart(DISK, "xvda", FakeBackend(broken=True)).describe()["state"] == -1  # type: ignore[arg-type]


XEN_DISK = {"kind": "disk", "model": "xen-vbd", "devid": 51712, "backend_id": 0, "frontend_id": 3,
            "state": 4, "event-channel": 9, "ring-ref": 8,
            "backend": "/local/domain/0/backend/vbd/3/51712"}
VIRTIO_DISK = {"kind": "disk", "model": "virtio-blk", "vdev": "vda", "index": 1, "pci": "00:02.0",
               "mode": "w", "target": "/img/vda"}


def test_block_list_prints_xen_disks_as_xl_and_virtio_disks_as_before() -> None:
    # xl_block.c: printf("%-5s %-3s %-6s %-5s %-6s %-8s %-30s\n", "Vdev", "BE", "handle",
    # "state", "evt-ch", "ring-ref", "BE-path") and "%-5d %-3d %-6d %-5d %-6d %-8d %-30s\n".
    assert xlformat.block_list([XEN_DISK, VIRTIO_DISK]) == [
        "Vdev  BE  handle state evt-ch ring-ref BE-path                       ",
        "51712 0   3      4     9      8        /local/domain/0/backend/vbd/3/51712",
        "",
        "Vdev  Idx PCI     Mode Target",
        "vda   1   00:02.0 w    /img/vda",
    ]
    assert xlformat.block_list([VIRTIO_DISK])[0] == "Vdev  Idx PCI     Mode Target"
    # no device at all: xl's own output, its header alone
    assert xlformat.block_list([]) == [xlformat.XL_BLOCK_HEADER]
    assert xlformat.network_list([]) == [xlformat.XL_NETWORK_HEADER]
    assert xlformat.block_list([XEN_DISK])[0].startswith("Vdev  BE  handle")


def test_network_list_prints_xen_nics_as_xl() -> None:
    # xl_nic.c: "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s\n" for the header; a row is
    # "%-3d %-2d " + the MAC + "%6d %5d %6d %5d/%-11d %-30s\n".
    nic = {"kind": "nic", "model": "xen-vif", "devid": 0, "backend_id": 0, "frontend_id": 3,
           "mac": "00:16:3e:0a:0b:0c", "state": 4, "event-channel": 10, "tx-ring-ref": 768,
           "rx-ring-ref": 769, "backend": "/local/domain/0/backend/vif/3/0"}
    assert xlformat.network_list([nic]) == [
        "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       ",
        "0   0  00:16:3e:0a:0b:0c     0     4     10   768/769         /local/domain/0/backend/vif/3/0",
    ]
