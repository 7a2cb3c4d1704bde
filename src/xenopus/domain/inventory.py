"""A built guest's inventory: one list of every stateful part of it, in build order.

vCPUs, the in-kernel interrupt controllers and PIT, the VM's clock, memory, each legacy
device, the PCI host bridge and each PCI function, each virtio transport and device, the
Xen domain state and each PV backend: each is a `Part` with a kind, a name and a
`describe()` that says what it is (the toolstack's `block-list` and `network-list` read
the disks and NICs from it, virtio and Xen PV alike).

A part wraps the object that holds its state rather than being it, so the models stay
free of toolstack concerns; save/restore and migration will add `save_state()` and
`restore_state()` to the Protocol and to each part here, and walk the same list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from xenopus.devices.bus import BusDevice
from xenopus.devices.pci.device import PciDevice
from xenopus.devices.pci.host import PciHostBridge
from xenopus.devices.virtio.device import VirtioDevice
from xenopus.devices.virtio.pci import VirtioPciDevice
from xenopus.domain.xenguest import XenGuest
from xenopus.memory import GuestMemory
from xenopus.vm.vcpu import Vcpu
from xenopus.xen import abi
from xenopus.xen.backends.blkback import BlkBack
from xenopus.xen.backends.netback import NetBack
from xenopus.xen.domain import XenDomain
from xenopus.xen.xenstore.wire import XsError


class Part(Protocol):
    """One stateful part of a guest."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, object]:
        """What the part is, as JSON-ready values (no `kind`/`name`: the inventory adds them)."""
        ...


def pci_address(bdf: int) -> str:
    """Bus 0's device/function as lspci prints it, "00:03.0"."""
    return f"00:{bdf >> 3:02x}.{bdf & 7}"


@dataclass
class VcpuPart:
    vcpu: Vcpu
    kind: str = "vcpu"

    @property
    def name(self) -> str:
        return f"vcpu{self.vcpu.index}"

    def describe(self) -> dict[str, object]:
        return {"index": self.vcpu.index}


@dataclass
class KvmPart:
    """State KVM keeps for the whole VM (the in-kernel irqchip, the PIT, the clock)."""

    kind: str
    name: str
    facts: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return dict(self.facts)


@dataclass
class MemoryPart:
    memory: GuestMemory
    kind: str = "memory"
    name: str = "ram"

    def describe(self) -> dict[str, object]:
        return {"ram_size": self.memory.ram_size,
                "ranges": [list(r) for r in self.memory.ram_ranges()]}


@dataclass
class BusPart:
    """A device at fixed addresses on the port or MMIO bus (a legacy or platform device)."""

    name: str
    bus: str  # "pio" | "mmio"
    base: int
    length: int
    device: BusDevice
    kind: str = "legacy"

    def describe(self) -> dict[str, object]:
        return {"bus": self.bus, "base": self.base, "length": self.length,
                "model": type(self.device).__name__}


@dataclass
class PciHostPart:
    bridge: PciHostBridge
    kind: str = "pci-host"
    name: str = "pci0"

    def describe(self) -> dict[str, object]:
        return {"ecam": self.bridge.ecam_base, "functions": len(self.bridge.devices)}


@dataclass
class PciFunctionPart:
    """A function on the PCI bus; for a virtio device, its transport (virtio 1.2 §4.1)."""

    bdf: int
    device: PciDevice

    @property
    def kind(self) -> str:
        return "virtio-pci" if isinstance(self.device, VirtioPciDevice) else "pci"

    @property
    def name(self) -> str:
        return pci_address(self.bdf)

    def describe(self) -> dict[str, object]:
        return {"bdf": self.bdf, "model": self.device.name}


@dataclass
class VirtioPart:
    """A virtio device behind its PCI transport: a disk, NIC, console or entropy source."""

    kind: str  # control.DISK | control.NIC | "console" | "rng"
    name: str
    index: int  # the devid xl would show (position in the config's list)
    bdf: int
    device: VirtioDevice
    detail: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {"model": f"virtio-{self.device.name}", "index": self.index, "bdf": self.bdf,
                "pci": pci_address(self.bdf), **self.detail}


@dataclass
class XenPart:
    """The domain's Xen state, read from its live `XenDomain` each time it is described:
    the hypercall entry path, where the guest placed shared_info and each vcpu_info, its
    upcall, the grant table's size, and the XenStore and console event channels."""

    domain: XenDomain
    path: str  # the hypercall entry path: "kernel" | "trap"
    kind: str = "xen"
    name: str = "xen"

    def describe(self) -> dict[str, object]:
        d = self.domain
        return {
            "domid": d.domid, "path": self.path,
            "store_port": d.params.get(abi.HVM_PARAM_STORE_EVTCHN),
            "console_port": d.params.get(abi.HVM_PARAM_CONSOLE_EVTCHN),
            "shared_info": d.shared_info,
            "vcpu_info": [d.evtchn.vcpu_info_gpa(v) for v in range(d.nr_vcpus)],
            "callback_vector": d.callback_vector, "callback_gsi": d.callback_gsi,
            "upcall_vectors": dict(d.upcall_vectors), "grant_frames": d.grants.nr_frames,
        }


@dataclass
class XenConsolePart:
    """The Xen PV console: its ring's frame and event channel, as xenconsoled reads them."""

    xen: XenGuest
    kind: str = "console"
    name: str = "xen-console"

    def describe(self) -> dict[str, object]:
        return {"model": "xen-console", **self.xen.console_nodes()}


@dataclass
class PvDevicePart:
    """A Xen PV disk or NIC: its backend, and the frontend's xenbus nodes that `xl
    block-list`/`network-list` show, read from XenStore as libxl_device_disk_getinfo and
    libxl_device_nic_getinfo read them (-1 for a node that is absent or unreadable)."""

    kind: str  # control.DISK | control.NIC
    name: str
    backend: BlkBack | NetBack

    def describe(self) -> dict[str, object]:
        b = self.backend
        info: dict[str, object] = {
            "model": f"xen-{b.kind}", "backend": b.be, "backend_id": b.backend_domid,
            "frontend_id": b.domid, **b.describe(),
        }
        for node in b.listed_nodes:
            info[node] = self._frontend_number(node)
        return info

    def _frontend_number(self, node: str) -> int:
        try:
            raw = self.backend.read_fe(node)
        except (XsError, OSError):  # the store is gone: the domain is being torn down
            return -1
        return int(raw) if raw is not None and raw.strip().isdigit() else -1


class Inventory:
    """The parts of one guest, in the order they were built."""

    def __init__(self, parts: Iterable[Part] = ()):
        self.parts: list[Part] = list(parts)

    def add(self, part: Part) -> None:
        self.parts.append(part)

    def of_kind(self, *kinds: str) -> list[Part]:
        return [p for p in self.parts if p.kind in kinds]

    def describe(self) -> list[dict[str, object]]:
        return [{"kind": p.kind, "name": p.name, **p.describe()} for p in self.parts]
