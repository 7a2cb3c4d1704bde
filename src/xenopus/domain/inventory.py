"""A built guest's inventory: one list of every stateful part of it, in build order.

vCPUs, the in-kernel interrupt controllers and PIT, the VM's clock, memory, each legacy
device, the PCI host bridge and each PCI function, each virtio transport and device, the
Xen domain state and each PV backend: each is a `Part` with a kind, a name and a
`describe()` that says what it is (the toolstack's `block-list` and `network-list` read
the disks and NICs from it, virtio and Xen PV alike).

A part wraps the object that holds its state rather than being it, so the models stay
free of toolstack concerns. Save/restore walks the same list: `save_state()` returns the
part's state as plain data (a versioned dict of ints, strings, bytes and lists, or None for
a part without state) and `restore_state()` takes it back into the same part of a guest
built from the same config (domain/snapshot.py). A part whose model runs work of its own
(a virtio device's worker) is also `Pausable`, so that nothing moves while it is saved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from xenopus.devices.bus import BusDevice
from xenopus.devices.pci.device import PciDevice
from xenopus.devices.pci.host import PciHostBridge
from xenopus.domain.xenguest import XenGuest
from xenopus.memory import GuestMemory, image
from xenopus.stream import StateError, check_state
from xenopus.vm import state as kvm_state
from xenopus.vm.cpu_policy import CpuPolicy, PolicyError, host_facts, host_max
from xenopus.vm.machine import Machine
from xenopus.vm.vcpu import Vcpu
from xenopus.xen import abi
from xenopus.xen.domain import XenDomain
from xenopus.xen.xenstore.wire import XsError

if TYPE_CHECKING:
    # The device models and PV backends a guest has are imported where it gets them
    # (domain/builder.py, domain/xenguest.py), not by every domain process.
    from xenopus.devices.virtio.device import VirtioDevice
    from xenopus.xen.backends.blkback import BlkBack
    from xenopus.xen.backends.channel import ChannelBack
    from xenopus.xen.backends.netback import NetBack


class Part(Protocol):
    """One stateful part of a guest."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, object]:
        """What the part is, as JSON-ready values (no `kind`/`name`: the inventory adds them)."""
        ...

    def save_state(self) -> object:
        """The part's state (`stream.encode_state` values); the guest is paused."""
        ...

    def restore_state(self, state: object) -> None:
        """Take `save_state`'s value into this part of a guest not yet started; raises
        `StateError` (or a KVM error) for a state it cannot take."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A device model that saves and restores itself (versioned plain data)."""

    def save_state(self) -> object: ...

    def restore_state(self, state: object) -> None: ...


@runtime_checkable
class Pausable(Protocol):
    """A part that works on its own (a device worker): `pause` returns once it is idle
    between two requests, `resume` lets it go on."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@runtime_checkable
class ForeignWritten(Protocol):
    """A part that knows guest pages other processes may write (a live save sends them
    again once the guest is stopped: no dirty log of ours sees those writes)."""

    def foreign_written(self) -> list[int]: ...


class NotSaveable(StateError):
    """A part whose state cannot be saved yet."""


def pci_address(bdf: int) -> str:
    """Bus 0's device/function as lspci prints it, "00:03.0"."""
    return f"00:{bdf >> 3:02x}.{bdf & 7}"


@dataclass
class CpuPolicyPart:
    """The domain's CPU policy (vm/cpu_policy.py). Saved first in the stream; restoring
    refuses, before any RAM is read, a policy this host cannot offer, and otherwise gives
    the vCPUs the saved policy (a guest keeps the CPU it booted on across a migration)."""

    machine: Machine
    kind: str = "cpu-policy"
    name: str = "cpu"
    STATE_VERSION = 1

    def describe(self) -> dict[str, object]:
        p = self.machine.cpu_policy
        return {"vendor": p.vendor, "features": len(p.features())} if p is not None else {}

    def save_state(self) -> object:
        p = self.machine.cpu_policy
        return {"version": self.STATE_VERSION, "policy": p.to_dict() if p is not None else None}

    def restore_state(self, state: object) -> None:
        s = check_state(state, "cpu-policy", self.STATE_VERSION)
        if s["policy"] is None:
            return
        try:
            saved = CpuPolicy.from_dict(s["policy"], "saved CPU policy")
        except PolicyError as e:
            raise StateError(str(e)) from None
        m = self.machine
        missing = saved.missing_from(host_max(host_facts(m.kvm)))
        if missing:
            raise StateError("this host cannot offer the domain's CPU policy; it lacks "
                             + ", ".join(missing))
        mine = m.cpu_policy
        if mine is None or (mine.cpuid, mine.msrs) != (saved.cpuid, saved.msrs):
            m.set_cpu_policy(saved)


@dataclass
class VcpuPart:
    """One vCPU's state."""

    vcpu: Vcpu
    machine: Machine
    kind: str = "vcpu"

    @property
    def name(self) -> str:
        return f"vcpu{self.vcpu.index}"

    def describe(self) -> dict[str, object]:
        return {"index": self.vcpu.index}

    def save_state(self) -> object:
        m = self.machine
        assert m.vm is not None
        return kvm_state.save_vcpu(self.vcpu.fd, kvm_state.saved_msrs(m.kvm),
                                   kvm_state.xsave_size(m.vm), kvm_state.has_sregs2(m.vm))

    def restore_state(self, state: object) -> None:
        vm = self.machine.vm
        assert vm is not None
        kvm_state.restore_vcpu(self.vcpu.fd, state, kvm_state.xsave_size(vm),
                               kvm_state.has_sregs2(vm))


@dataclass
class KvmPart:
    """State KVM keeps for the whole VM: `kind` is "irqchip" (the PIC pair and IOAPIC),
    "pit" or "clock"."""

    kind: str
    name: str
    facts: Mapping[str, object] = field(default_factory=dict)
    machine: Machine | None = None

    def describe(self) -> dict[str, object]:
        return dict(self.facts)

    def save_state(self) -> object:
        assert self.machine is not None and self.machine.vm is not None
        vm = self.machine.vm
        return {"irqchip": kvm_state.save_irqchip, "pit": kvm_state.save_pit,
                "clock": kvm_state.save_clock}[self.kind](vm)

    def restore_state(self, state: object) -> None:
        assert self.machine is not None and self.machine.vm is not None
        vm = self.machine.vm
        {"irqchip": kvm_state.restore_irqchip, "pit": kvm_state.restore_pit,
         "clock": kvm_state.restore_clock}[self.kind](vm, state)


@dataclass
class MemoryPart:
    """Guest RAM. Its state is the layout; the pages follow it in the stream as PAGE_DATA
    records (memory/image.py). Restoring checks the layout and discards the target's RAM,
    so that the pages the stream leaves out (all zeros) read as zero."""

    memory: GuestMemory
    kind: str = "memory"
    name: str = "ram"
    STATE_VERSION = 1

    def describe(self) -> dict[str, object]:
        return {"ram_size": self.memory.ram_size,
                "ranges": [list(r) for r in self.memory.ram_ranges()]}

    def save_state(self) -> object:
        return {"version": self.STATE_VERSION,
                "ranges": [list(r) for r in self.memory.ram_ranges()]}

    def restore_state(self, state: object) -> None:
        s = check_state(state, "memory", self.STATE_VERSION)
        have = [list(r) for r in self.memory.ram_ranges()]
        if s["ranges"] != have:
            raise StateError(f"memory: saved RAM layout {s['ranges']} is not this guest's {have}")
        image.discard(self.memory)


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

    def save_state(self) -> object:
        """The device's own state; None for a stateless one (debugcon, the POST sink)."""
        return self.device.save_state() if isinstance(self.device, Stateful) else None

    def restore_state(self, state: object) -> None:
        if isinstance(self.device, Stateful):
            self.device.restore_state(state)
        elif state is not None:
            raise StateError(f"{self.name}: {type(self.device).__name__} keeps no state")


@dataclass
class PciHostPart:
    """The PCI host bridge."""

    bridge: PciHostBridge
    kind: str = "pci-host"
    name: str = "pci0"

    def describe(self) -> dict[str, object]:
        return {"ecam": self.bridge.ecam_base, "functions": len(self.bridge.devices)}

    def save_state(self) -> object:
        return self.bridge.save_state()

    def restore_state(self, state: object) -> None:
        self.bridge.restore_state(state)


@dataclass
class PciFunctionPart:
    """A function on the PCI bus; for a virtio device, its transport (virtio 1.2 §4.1)."""

    bdf: int
    device: PciDevice

    @property
    def kind(self) -> str:
        # No VirtioPciDevice exists unless its module was imported (by the builder, for a
        # guest with virtio devices): a guest without any need not import it to say so.
        virtio_pci = sys.modules.get("xenopus.devices.virtio.pci")
        if virtio_pci is not None and isinstance(self.device, virtio_pci.VirtioPciDevice):
            return "virtio-pci"
        return "pci"

    @property
    def name(self) -> str:
        return pci_address(self.bdf)

    def describe(self) -> dict[str, object]:
        return {"bdf": self.bdf, "model": self.device.name}

    def save_state(self) -> object:
        return self.device.save_state()

    def restore_state(self, state: object) -> None:
        self.device.restore_state(state)


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

    def save_state(self) -> object:
        return self.device.save_state()

    def restore_state(self, state: object) -> None:
        self.device.restore_state(state)

    def pause(self) -> None:
        self.device.pause()

    def resume(self) -> None:
        self.device.resume()


@dataclass
class VirtioMmioPart:
    """A virtio device behind its virtio-mmio transport (arm64): a disk, NIC, console or
    entropy source at an MMIO window with its SPI."""

    kind: str  # control.DISK | control.NIC | "console" | "rng"
    name: str
    index: int  # the devid xl would show (position in the config's list)
    base: int
    intid: int
    device: VirtioDevice
    detail: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {"model": f"virtio-{self.device.name}", "index": self.index,
                "mmio": f"{self.base:#x}", "intid": self.intid, **self.detail}

    def save_state(self) -> object:
        raise StateError(f"{self.name}: saving a virtio-mmio device is not implemented")

    def restore_state(self, state: object) -> None:
        raise StateError(f"{self.name}: restoring a virtio-mmio device is not implemented")

    def pause(self) -> None:
        self.device.pause()

    def resume(self) -> None:
        self.device.resume()


@dataclass
class XenPart:
    """The domain's Xen state, described from its live `XenDomain` (the hypercall entry
    path, where the guest placed shared_info and each vcpu_info, its upcall, the grant
    table's size, the XenStore and console event channels) and saved by `holder`, the
    `XenGuest` (shared info, event channels, grant table, timers, the hypercall page)."""

    domain: XenDomain
    path: str  # the hypercall entry path: "kernel" | "trap"
    holder: Stateful
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

    def save_state(self) -> object:
        return self.holder.save_state()

    def restore_state(self, state: object) -> None:
        self.holder.restore_state(state)

    def foreign_written(self) -> list[int]:
        """Pages another domain may write behind our back: what the guest grants with
        write access (`GrantTable.writable_pages`)."""
        return self.domain.grants.writable_pages()

    def pause(self) -> None:
        if isinstance(self.holder, Pausable):
            self.holder.pause()

    def resume(self) -> None:
        if isinstance(self.holder, Pausable):
            self.holder.resume()


@dataclass
class XenConsolePart:
    """The Xen PV console: its ring's frame and event channel, as xenconsoled reads them.
    Its state is the ring in guest RAM and the event channel in the Xen part: none here."""

    xen: XenGuest
    kind: str = "console"
    name: str = "xen-console"

    def describe(self) -> dict[str, object]:
        return {"model": "xen-console", **self.xen.console_nodes()}

    def save_state(self) -> object:
        return None

    def restore_state(self, state: object) -> None:
        if state is not None:
            raise StateError(f"{self.name}: a state for a part that keeps none")


@dataclass
class PvChannelPart:
    """A PV channel (xl.cfg channel=): a named console and its host end."""

    backend: ChannelBack
    kind: str = "channel"

    @property
    def name(self) -> str:
        return f"channel{self.backend.devid}"

    def describe(self) -> dict[str, object]:
        b = self.backend
        return {"channel": b.name, "backend": b.be, "connection": b.backend_nodes()["connection"]}

    def save_state(self) -> object:
        """Host input not yet in the ring; the rings are guest RAM and the frontend's
        nodes travel with the domain's XenStore subtree."""
        return self.backend.save_state()

    def restore_state(self, state: object) -> None:
        self.backend.restore_state(state)

    def pause(self) -> None:
        self.backend.pause()

    def resume(self) -> None:
        self.backend.resume()


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

    @property
    def saveable(self) -> bool:
        return self.backend.saveable

    def save_state(self) -> object:
        """The backend's own state (its ring's private indexes, persistent grants); the
        frontend's nodes travel with the domain's XenStore subtree."""
        if not self.backend.saveable:
            raise NotSaveable(f"{self.name}: Xen PV {self.backend.kind} backends cannot be "
                              "saved yet")
        return self.backend.save_state()

    def restore_state(self, state: object) -> None:
        if not self.backend.saveable:
            raise NotSaveable(f"{self.name}: Xen PV {self.backend.kind} backends cannot be "
                              "restored yet")
        self.backend.restore_state(state)

    def pause(self) -> None:
        self.backend.pause()

    def resume(self) -> None:
        self.backend.resume()

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

    def remove(self, part: Part) -> None:
        """A part that went while the guest runs (xl block-detach)."""
        self.parts.remove(part)

    def of_kind(self, *kinds: str) -> list[Part]:
        return [p for p in self.parts if p.kind in kinds]

    def describe(self) -> list[dict[str, object]]:
        return [{"kind": p.kind, "name": p.name, **p.describe()} for p in self.parts]
