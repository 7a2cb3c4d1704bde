"""The virtio-pci modern transport (virtio 1.2 §4.1).

One 64-bit memory BAR holds every structure the vendor capabilities (§4.1.4) point at:

    0x0000 common configuration (§4.1.4.3)
    0x1000 ISR status (§4.1.4.5)
    0x2000 device-specific configuration (§4.1.4.6)
    0x3000 notifications (§4.1.4.4): queue i's doorbell at i * NOTIFY_MULTIPLIER
    0x4000 MSI-X table, 0x6000 PBA (PCI 3.0 §6.8.2)

Each doorbell is a KVM ioeventfd: a guest kick signals the device's worker thread in the
kernel, with no exit to userspace. A write that still reaches us (another width, or the
BAR not yet registered) kicks the worker the slow way. Interrupts go out through the
queue's MSI-X vector (an irqfd), or through the ISR and INTx when MSI-X is off.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Protocol

from xenopus.devices.pci import config as c
from xenopus.devices.pci.config import PciConfig
from xenopus.devices.pci.device import PciBar, PciDevice
from xenopus.devices.pci.msix import Msix, Routing
from xenopus.devices.ratelimit import LimitedLog
from xenopus.devices.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VirtioDevice,
    next_status,
)
from xenopus.devices.virtio.queue import MAX_QUEUE_SIZE, DescriptorError, SplitQueue
from xenopus.kvm.system import KvmError
from xenopus.memory.guest import GuestMemory
from xenopus.stream import StateError, check_state

log = logging.getLogger("xenopus.virtio")

VIRTIO_PCI_VENDOR_ID = 0x1AF4  # §4.1.2
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040  # §4.1.2: 0x1040 + virtio device ID
VIRTIO_PCI_REVISION = 1  # §4.1.2.1: non-transitional devices have revision ≥ 1

# PCI class codes (base, sub-class, interface) per device type, as PCI drivers expect.
CLASS_CODES = {
    1: 0x020000,  # network controller, Ethernet
    2: 0x018000,  # mass storage, other
    3: 0x078000,  # simple communication controller, other
    4: 0xFF0000,  # unassigned class
}

# §4.1.4 cfg_type values.
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

VIRTIO_MSI_NO_VECTOR = 0xFFFF  # §4.1.4.3
ISR_QUEUE = 0x1  # §4.1.4.5
ISR_CONFIG = 0x2

BAR_INDEX = 0
BAR_SIZE = 0x8000
COMMON_OFFSET, COMMON_SIZE = 0x0000, 0x1000
ISR_OFFSET, ISR_SIZE = 0x1000, 0x1000
DEVICE_OFFSET, DEVICE_SIZE = 0x2000, 0x1000
NOTIFY_OFFSET, NOTIFY_SIZE = 0x3000, 0x1000
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x6000
NOTIFY_MULTIPLIER = 4  # §4.1.4.4: a distinct doorbell per queue (no notification data)
MAX_QUEUES = NOTIFY_SIZE // NOTIFY_MULTIPLIER


class VirtioPciCap(ctypes.LittleEndianStructure):
    """§4.1.4 struct virtio_pci_cap (after cap_vndr and cap_next, which PciConfig adds)."""

    _pack_ = 1
    _fields_ = [
        ("cap_len", ctypes.c_uint8),
        ("cfg_type", ctypes.c_uint8),
        ("bar", ctypes.c_uint8),
        ("id", ctypes.c_uint8),
        ("padding", ctypes.c_uint8 * 2),
        ("offset", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
    ]


CAP_HEADER = 2  # cap_vndr, cap_next
CAP_BAR = CAP_HEADER + VirtioPciCap.bar.offset
CAP_OFFSET = CAP_HEADER + VirtioPciCap.offset.offset
CAP_LENGTH = CAP_HEADER + VirtioPciCap.length.offset
CAP_EXTRA = CAP_HEADER + ctypes.sizeof(VirtioPciCap)  # notify_off_multiplier / pci_cfg_data


class VirtioPciCommonCfg(ctypes.LittleEndianStructure):
    """§4.1.4.3 struct virtio_pci_common_cfg (virtio 1.2 adds the last two fields)."""

    _pack_ = 1
    _fields_ = [
        ("device_feature_select", ctypes.c_uint32),
        ("device_feature", ctypes.c_uint32),
        ("driver_feature_select", ctypes.c_uint32),
        ("driver_feature", ctypes.c_uint32),
        ("config_msix_vector", ctypes.c_uint16),
        ("num_queues", ctypes.c_uint16),
        ("device_status", ctypes.c_uint8),
        ("config_generation", ctypes.c_uint8),
        ("queue_select", ctypes.c_uint16),
        ("queue_size", ctypes.c_uint16),
        ("queue_msix_vector", ctypes.c_uint16),
        ("queue_enable", ctypes.c_uint16),
        ("queue_notify_off", ctypes.c_uint16),
        ("queue_desc", ctypes.c_uint64),
        ("queue_driver", ctypes.c_uint64),
        ("queue_device", ctypes.c_uint64),
        ("queue_notify_data", ctypes.c_uint16),
        ("queue_reset", ctypes.c_uint16),
    ]


# (offset, size) of every common-config field, by name.
COMMON = {
    name: (getattr(VirtioPciCommonCfg, name).offset, getattr(VirtioPciCommonCfg, name).size)
    for name, _ in VirtioPciCommonCfg._fields_
}
_COMMON_BY_OFFSET = sorted((off, size, name) for name, (off, size) in COMMON.items())


class MachineLike(Routing, Protocol):
    """What the transport needs of `xenopus.vm.machine.Machine`: its memory, MSI routes
    (`allocate_msi`, for the MSI-X vectors) and ioeventfds (the doorbells)."""

    memory: GuestMemory

    def ioeventfd(
        self, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None
    ) -> int: ...

    def remove_ioeventfd(self, fd: int) -> None: ...


class _QueueRegs:
    """The per-queue registers of the common configuration (§4.1.4.3)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.msix_vector = VIRTIO_MSI_NO_VECTOR
        self.enabled = False
        self.desc = self.driver = self.device = 0


class VirtioPciDevice(PciDevice):
    """`device` behind the modern virtio-pci transport of `machine`."""

    def __init__(self, device: VirtioDevice, machine: MachineLike):
        nq = len(device.queue_sizes)
        if not 0 < nq <= MAX_QUEUES:
            raise ValueError(f"virtio-pci supports 1-{MAX_QUEUES} queues, not {nq}")
        for s in device.queue_sizes:
            if not 0 < s <= MAX_QUEUE_SIZE or s & (s - 1):
                raise ValueError(f"queue size {s} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        if len(device.config) > DEVICE_SIZE:
            raise ValueError("device configuration larger than its BAR region")
        self.name = f"virtio-{device.name}"
        self.device = device
        self.machine = machine
        self.memory = machine.memory
        config = PciConfig(
            VIRTIO_PCI_VENDOR_ID,
            VIRTIO_PCI_DEVICE_ID_BASE + device.device_id,
            CLASS_CODES.get(device.device_id, 0xFF0000),
            revision=VIRTIO_PCI_REVISION,
            subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
            subsystem_id=VIRTIO_PCI_DEVICE_ID_BASE + device.device_id,
            interrupt_pin=1,  # INTA#, for drivers without MSI-X
        )
        msix = Msix(nq + 1, BAR_INDEX, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET, machine)
        bar = PciBar(BAR_INDEX, BAR_SIZE, "mmio64", _BarRegisters(self))
        self._lock = threading.RLock()  # vCPU threads vs each other
        self._doorbells: list[int | None] = []  # ioeventfds, one per queue (None: refused)
        self._log = LimitedLog(log)  # the guest decides where (and how often) the BAR goes
        self._doorbell_base: int | None = None
        self._add_caps(config, nq)
        super().__init__(config, [bar], msix)

        self.queues = [_QueueRegs(s) for s in device.queue_sizes]
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.config_msix_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_select = 0
        self.status = 0
        self.isr = 0
        self._isr_lock = threading.Lock()  # device threads set it, vCPU reads clear it
        device.bind(self)

    def _add_caps(self, config: PciConfig, nq: int) -> None:
        def cap(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> int:
            body = VirtioPciCap(
                cap_len=CAP_EXTRA + len(extra),
                cfg_type=cfg_type,
                bar=BAR_INDEX,
                offset=offset,
                length=length,
            )
            return config.add_capability(c.CAP_VENDOR, bytes(body) + extra)

        cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, ctypes.sizeof(VirtioPciCommonCfg))
        mult = NOTIFY_MULTIPLIER.to_bytes(4, "little")
        cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, nq * NOTIFY_MULTIPLIER, mult)
        cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1)
        if self.device.config:
            cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, len(self.device.config))
        # §4.1.4.9: the config access window. bar, offset, length and pci_cfg_data are
        # written by the driver; pci_cfg_data accesses go through to the BAR.
        self.pci_cfg_cap = cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, bytes(4))
        config.set_wmask(self.pci_cfg_cap + CAP_BAR, 1, 0xFF)
        config.set_wmask(self.pci_cfg_cap + CAP_OFFSET, 4, 0xFFFFFFFF)
        config.set_wmask(self.pci_cfg_cap + CAP_LENGTH, 4, 0xFFFFFFFF)

    # -- PCI config space: the §4.1.4.9 window -------------------------------------------

    def _window(self, offset: int, size: int) -> tuple[int, int] | None:
        """(BAR offset, length) of a pci_cfg_data access, or None if not one / invalid."""
        data = self.pci_cfg_cap + CAP_EXTRA
        if offset != data:
            return None
        cfg = self.config
        bar = cfg.get(self.pci_cfg_cap + CAP_BAR, 1)
        off = cfg.get(self.pci_cfg_cap + CAP_OFFSET, 4)
        length = cfg.get(self.pci_cfg_cap + CAP_LENGTH, 4)
        # §4.1.4.9.1: length 1, 2 or 4, offset aligned to it, inside the BAR.
        if bar != BAR_INDEX or length not in (1, 2, 4) or off % length or off + length > BAR_SIZE:
            return None
        return off, min(length, size)

    def config_read(self, offset: int, size: int) -> int:
        win = self._window(offset, size)
        if win is not None:
            return self.bar_handler(BAR_INDEX).read(0, *win)
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        win = self._window(offset, size)
        if win is not None:
            off, n = win
            self.bar_handler(BAR_INDEX).write(0, off, n, value & ((1 << (8 * n)) - 1))
            return
        super().config_write(offset, size, value)
        self._sync_doorbells()

    def set_bar_address(self, index: int, address: int) -> None:
        super().set_bar_address(index, address)
        self._sync_doorbells(placed=True)

    # -- doorbells -------------------------------------------------------------------------

    def _sync_doorbells(self, placed: bool = False) -> None:
        """Keep one ioeventfd per queue at the BAR's notify region. The host bridge places
        the BAR (`placed`) before it enables decoding; after that, follow the guest."""
        bar = self.bars[BAR_INDEX]
        addr = self.bar_address(BAR_INDEX)
        want = addr if addr and (placed or self.decoding(bar)) else None
        with self._lock:
            if want == self._doorbell_base:
                return
            # The old doorbells go first, so a move back to where they were (or onto an
            # address one of them held) cannot collide with them.
            for fd in self._doorbells:
                if fd is not None:
                    self.machine.remove_ioeventfd(fd)
            self._doorbells = []
            self._doorbell_base = want
            if want is not None:
                for i in range(len(self.queues)):
                    a = want + NOTIFY_OFFSET + i * NOTIFY_MULTIPLIER
                    self._doorbells.append(self._doorbell(a))
            self.device.replace_kicks(self._doorbells)

    def _doorbell(self, addr: int) -> int | None:
        """An ioeventfd at `addr`, or None where KVM refuses one: the guest moved the BAR
        onto another device's doorbell (EEXIST) or an address KVM cannot watch. That queue
        is then kicked only through a write that reaches the BAR (`notify_write`)."""
        try:
            return self.machine.ioeventfd(addr, 2)
        except KvmError as e:
            self._log.log(logging.WARNING, "%s: no doorbell at %#x: %s", self.name, addr, e)
            return None

    # -- interrupts (InterruptSink) ----------------------------------------------------------

    def signal_queue(self, queue_index: int) -> None:
        self._signal(self.queues[queue_index].msix_vector, ISR_QUEUE)

    def signal_config(self) -> None:
        self._signal(self.config_msix_vector, ISR_CONFIG)

    def _signal(self, vector: int, isr_bit: int) -> None:
        msix = self.msix
        assert msix is not None
        if msix.enabled:
            # §4.1.5.1.2: with MSI-X on, the ISR is unused; NO_VECTOR means no interrupt.
            if vector != VIRTIO_MSI_NO_VECTOR:
                msix.notify(vector)
            return
        with self._isr_lock:
            self.isr |= isr_bit
        if self.intx is not None and not self.config.command & c.CMD_INTX_DISABLE:
            self.intx(True)

    def _read_isr(self) -> int:
        """§4.1.4.5.1: reading the ISR clears it and deasserts the INTx line."""
        with self._isr_lock:
            value, self.isr = self.isr, 0
        if value and self.intx is not None:
            self.intx(False)
        return value

    # -- common configuration (§4.1.4.3) -----------------------------------------------------

    @property
    def device_status(self) -> int:
        s = self.status
        if self.device.needs_reset_flag and s & STATUS_DRIVER_OK:
            s |= STATUS_DEVICE_NEEDS_RESET
        return s

    def _selected(self) -> _QueueRegs | None:
        qs = self.queue_select
        return self.queues[qs] if qs < len(self.queues) else None

    def common_read(self, offset: int, size: int) -> int:
        field = _field_at(offset, size)
        if field is None:
            return 0
        name, shift, _ = field
        with self._lock:
            value = self._common_value(name)
        return (value >> (8 * shift)) & ((1 << (8 * size)) - 1)

    def _common_value(self, name: str) -> int:
        q = self._selected()
        match name:
            case "device_feature_select":
                return self.device_feature_select
            case "device_feature":
                sel = self.device_feature_select
                return (self.device.features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case "driver_feature_select":
                return self.driver_feature_select
            case "driver_feature":
                sel = self.driver_feature_select
                return (self.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case "config_msix_vector":
                return self.config_msix_vector
            case "num_queues":
                return len(self.queues)
            case "device_status":
                return self.device_status
            case "config_generation":
                return self.device.config_generation
            case "queue_select":
                return self.queue_select
            case "queue_notify_off":
                return self.queue_select if q else 0
            case "queue_size":
                return q.size if q else 0  # §4.1.4.3.2: 0 = queue not available
            case "queue_msix_vector":
                return q.msix_vector if q else VIRTIO_MSI_NO_VECTOR
            case "queue_enable":
                return int(q.enabled) if q else 0
            case "queue_desc":
                return q.desc if q else 0
            case "queue_driver":
                return q.driver if q else 0
            case "queue_device":
                return q.device if q else 0
        return 0  # queue_notify_data, queue_reset: features we do not offer

    def common_write(self, offset: int, size: int, value: int) -> None:
        field = _field_at(offset, size)
        if field is None:
            return
        name, shift, fsize = field
        # §4.1.3.1: fields are written at their natural width; 64-bit ones may be split
        # into 32-bit halves (Linux does so).
        if size != fsize and not (fsize == 8 and size == 4):
            self.device.log_once(f"common config {name}: {size}-byte write ignored")
            return
        with self._lock:
            self._common_store(name, shift, size, value)

    def _common_store(self, name: str, shift: int, size: int, value: int) -> None:
        if name == "device_status":
            self._write_status(value & 0xFF)
            return
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "driver_feature_select":
            self.driver_feature_select = value
        elif name == "driver_feature":
            sel = self.driver_feature_select
            # §3.1.1: features are fixed once FEATURES_OK is set.
            if sel < 2 and not self.status & STATUS_FEATURES_OK:
                mask = 0xFFFFFFFF << (32 * sel)
                self.driver_features = (self.driver_features & ~mask) | (
                    (value & 0xFFFFFFFF) << (32 * sel)
                )
        elif name == "config_msix_vector":
            self.config_msix_vector = self._vector(value)
        elif name == "queue_select":
            self.queue_select = value
        else:
            q = self._selected()
            # §4.1.4.3.2: queue registers are set up before DRIVER_OK.
            if q is None or self.status & STATUS_DRIVER_OK:
                return
            if name == "queue_size":
                if value and not value & (value - 1) and value <= q.max_size:
                    q.size = value
                else:
                    self.device.log_once(f"queue size {value} refused (max {q.max_size})")
            elif name == "queue_msix_vector":
                q.msix_vector = self._vector(value)
            elif name == "queue_enable":
                if value == 1:
                    q.enabled = True
            elif name in ("queue_desc", "queue_driver", "queue_device"):
                # (queue_notify_off, queue_notify_data and queue_reset are read-only here.)
                attr = name.removeprefix("queue_")
                mask = ((1 << (8 * size)) - 1) << (8 * shift)
                old = getattr(q, attr)
                setattr(q, attr, (old & ~mask) | ((value << (8 * shift)) & mask))

    def _vector(self, value: int) -> int:
        """§4.1.5.1.2: a vector the device cannot use reads back as NO_VECTOR."""
        assert self.msix is not None
        return value if value < self.msix.vectors else VIRTIO_MSI_NO_VECTOR

    def _write_status(self, value: int) -> None:
        """The status state machine of §2.1/§3.1.1; writing 0 resets (§2.4, §4.1.4.3.2)."""
        if value == 0:
            self.reset_virtio()
            return
        old = self.status
        self.status = next_status(self.device, old, value, self.driver_features)
        if self.status & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self._activate()

    def _activate(self, rings: list[dict] | None = None) -> None:
        """DRIVER_OK: build the queues from their registers and start the device; a
        restore passes each queue's saved ring positions (`rings`) to carry on from."""
        dev = self.device
        queues = []
        failed: str | None = None
        for i, regs in enumerate(self.queues):
            q = SplitQueue(self.memory, regs.size, f"{self.name}.{i}")
            if regs.enabled:
                q.desc_addr, q.avail_addr, q.used_addr = regs.desc, regs.driver, regs.device
                q.event_idx = dev.has(VIRTIO_F_RING_EVENT_IDX)
                q.indirect = dev.has(VIRTIO_F_INDIRECT_DESC)
                try:
                    q.enable()
                except DescriptorError as e:
                    failed = failed or f"queue {i}: {e.reason}"
                if rings is not None and q.ready:
                    q.restore_state(rings[i])
            queues.append(q)
        if failed is not None:
            # Every queue stops before the worker can see one; needs_reset (once the
            # queues are the device's) then raises DEVICE_NEEDS_RESET for all of them.
            for q in queues:
                q.broken = True
        dev.activate(queues, self._doorbells)
        if failed is not None:
            dev.needs_reset(failed)

    # -- save/restore ----------------------------------------------------------------------

    TRANSPORT_STATE_VERSION = 1

    def save_state(self) -> dict:
        """The PCI function (config space, BARs, MSI-X) plus the transport: status,
        feature selection, vectors, each queue's registers and, once the driver is on,
        each queue's ring positions. The device must be paused (`VirtioDevice.pause`)."""
        state = super().save_state()
        dev = self.device
        with self._lock:
            with self._isr_lock:
                isr = self.isr
            state["transport"] = {
                "version": self.TRANSPORT_STATE_VERSION, "status": self.status,
                "device_feature_select": self.device_feature_select,
                "driver_feature_select": self.driver_feature_select,
                "driver_features": self.driver_features,
                "config_msix_vector": self.config_msix_vector,
                "queue_select": self.queue_select, "isr": isr,
                "queues": [{"size": q.size, "msix_vector": q.msix_vector,
                            "enabled": q.enabled, "desc": q.desc, "driver": q.driver,
                            "device": q.device} for q in self.queues],
                "rings": [q.save_state(dev.held(i)) for i, q in enumerate(dev.queues)],
            }
        return state

    def restore_state(self, state: object) -> None:
        """After the device's own restore (the inventory lists it first): the PCI
        function, then the doorbells at the BAR's restored address, then the transport;
        a driver that was on gets its queues back at their ring positions and the device
        worker starts, looking at every queue once."""
        t = check_state(state, self.name, self.STATE_VERSION).get("transport")
        t = check_state(t, f"{self.name} transport", self.TRANSPORT_STATE_VERSION)
        if len(t["queues"]) != len(self.queues):
            raise StateError(f"{self.name}: {len(t['queues'])} queues saved, "
                             f"this device has {len(self.queues)}")
        super().restore_state(state)
        self._sync_doorbells()
        with self._lock:
            self.status = t["status"]
            self.device_feature_select = t["device_feature_select"]
            self.driver_feature_select = t["driver_feature_select"]
            self.driver_features = t["driver_features"]
            self.config_msix_vector = t["config_msix_vector"]
            self.queue_select = t["queue_select"]
            with self._isr_lock:
                self.isr = t["isr"]
            for regs, saved in zip(self.queues, t["queues"], strict=True):
                if not 0 < saved["size"] <= regs.max_size:
                    raise StateError(f"{self.name}: saved queue size {saved['size']}")
                regs.size, regs.msix_vector, regs.enabled = (
                    saved["size"], saved["msix_vector"], saved["enabled"])
                regs.desc, regs.driver, regs.device = saved["desc"], saved["driver"], saved["device"]
            if self.status & STATUS_DRIVER_OK:
                rings = t["rings"]
                if len(rings) != len(self.queues):
                    raise StateError(f"{self.name}: ring positions of {len(rings)} queues")
                self._activate(rings)
        if self.isr and self.intx is not None and not self.config.command & c.CMD_INTX_DISABLE:
            self.intx(True)

    def reset_virtio(self) -> None:
        """§2.4: the device and every queue back to their initial state."""
        with self._lock:
            self.device.reset()
            self.device.replace_kicks(self._doorbells)
            for q in self.queues:
                q.reset()
            self.status = 0
            self.driver_features = 0
            self.device_feature_select = self.driver_feature_select = 0
            self.config_msix_vector = VIRTIO_MSI_NO_VECTOR
            self.queue_select = 0
            with self._isr_lock:
                isr, self.isr = self.isr, 0
            if isr and self.intx is not None:
                self.intx(False)

    def reset(self) -> None:
        """PCI function reset: the virtio state goes too."""
        self.reset_virtio()
        super().reset()

    def close(self) -> None:
        self.device.close()
        with self._lock:
            fds, self._doorbells = self._doorbells, []
            self._doorbell_base = None
        for fd in fds:
            if fd is not None:
                self.machine.remove_ioeventfd(fd)
        super().close()

    # -- the rest of the BAR ---------------------------------------------------------------

    def notify_write(self, offset: int) -> None:
        """A doorbell write that reached userspace: kick the worker the slow way."""
        index = offset // NOTIFY_MULTIPLIER
        if index < len(self.queues):
            self.device.kick(index)


def _field_at(offset: int, size: int) -> tuple[str, int, int] | None:
    """The common-config field an access falls in: (name, byte shift, field size). An
    access must stay inside one field (§4.1.3.1: fields are accessed at their width; 64-bit
    ones may be split into two 32-bit halves)."""
    for off, fsize, name in _COMMON_BY_OFFSET:
        if off <= offset < off + fsize:
            if offset + size > off + fsize:
                return None
            return name, offset - off, fsize
    return None


class _BarRegisters:
    """The BusDevice of the virtio structures in the BAR (offsets relative to it)."""

    def __init__(self, pci: VirtioPciDevice):
        self.pci = pci

    def read(self, base: int, offset: int, size: int) -> int:
        pci = self.pci
        if offset < COMMON_OFFSET + COMMON_SIZE:
            return pci.common_read(offset - COMMON_OFFSET, size)
        if ISR_OFFSET <= offset < ISR_OFFSET + ISR_SIZE:
            return pci._read_isr() if offset == ISR_OFFSET else 0
        if DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_SIZE:
            return pci.device.config_read(offset - DEVICE_OFFSET, size)
        return 0

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        pci = self.pci
        if offset < COMMON_OFFSET + COMMON_SIZE:
            pci.common_write(offset - COMMON_OFFSET, size, value)
        elif DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_SIZE:
            pci.device.config_write(offset - DEVICE_OFFSET, size, value)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + NOTIFY_SIZE:
            pci.notify_write(offset - NOTIFY_OFFSET)
