"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2): the arm64 guest's virtio devices.

One 0x200-byte register window per device (§4.2.2, Table "MMIO Device Register Layout"),
the device-specific configuration from offset 0x100. QueueNotify is a KVM ioeventfd per
queue (datamatch = the queue index): a kick signals the device's worker thread in the
kernel with no exit to userspace. The device's interrupt is edge-triggered (`interrupt`,
an irqfd on the arm64 machine): InterruptStatus says why (§4.2.2: bit 0 used buffer,
bit 1 configuration change) until the driver acknowledges it through InterruptACK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

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

log = logging.getLogger("xenopus.virtio")

MMIO_SIZE = 0x200
MAGIC_VALUE = 0x74726976  # "virt", little-endian (§4.2.2)
VERSION = 2  # §4.2.2: 2 is the modern interface (1 is legacy, §4.2.4)
# §4.2.2 VendorID is the subsystem vendor; Linux's driver only prints it. "XNPS".
VENDOR_ID = 0x53504E58
CONFIG = 0x100  # the device-specific configuration (§4.2.2 Config)


class R(IntEnum):
    """The control registers' offsets (§4.2.2), each 32 bits wide."""

    MAGIC = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    QUEUE_RESET = 0x0C0
    CONFIG_GENERATION = 0x0FC


INTERRUPT_USED_BUFFER = 0x1
INTERRUPT_CONFIG_CHANGE = 0x2

# The queue address registers: offset -> (attribute, high half).
_QUEUE_ADDRESS = {
    R.QUEUE_DESC_LOW: ("desc", False), R.QUEUE_DESC_HIGH: ("desc", True),
    R.QUEUE_DRIVER_LOW: ("driver", False), R.QUEUE_DRIVER_HIGH: ("driver", True),
    R.QUEUE_DEVICE_LOW: ("device", False), R.QUEUE_DEVICE_HIGH: ("device", True),
}


class MmioMachine(Protocol):
    """What the transport needs of the machine: its memory and ioeventfds."""

    memory: GuestMemory

    def ioeventfd(
        self, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None
    ) -> int: ...

    def remove_ioeventfd(self, fd: int) -> None: ...


class _Queue:
    """The per-queue registers (§4.2.2 QueueNum..QueueDeviceHigh)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc = self.driver = self.device = 0


class VirtioMmioDevice:
    """`device` behind a virtio-mmio register window at `base` of `machine`; `interrupt`
    raises the device's (edge-triggered) interrupt, `intid` names it (for describing the
    device only). A `BusDevice`."""

    def __init__(self, device: VirtioDevice, machine: MmioMachine, base: int,
                 interrupt: Callable[[], None], *, intid: int = 0):
        nq = len(device.queue_sizes)
        if nq == 0:
            raise ValueError("a virtio device needs at least one queue")
        for s in device.queue_sizes:
            if not 0 < s <= MAX_QUEUE_SIZE or s & (s - 1):
                raise ValueError(f"queue size {s} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        if len(device.config) > MMIO_SIZE - CONFIG:
            raise ValueError("device configuration larger than the register window")
        self.name = f"virtio-{device.name}"
        self.device = device
        self.machine = machine
        self.base = base
        self.intid = intid
        self._interrupt = interrupt
        self._lock = threading.RLock()  # vCPU threads vs each other
        self._isr_lock = threading.Lock()  # device threads set it, vCPU writes clear it
        self.queues = [_Queue(s) for s in device.queue_sizes]
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.status = 0
        self.isr = 0
        # One doorbell per queue: QueueNotify written with the queue's index (§4.2.2).
        self._doorbells: list[int | None] = [self._doorbell(i) for i in range(nq)]
        device.bind(self)
        device.replace_kicks(self._doorbells)

    def _doorbell(self, index: int) -> int | None:
        try:
            return self.machine.ioeventfd(self.base + R.QUEUE_NOTIFY, 4, datamatch=index)
        except KvmError as e:  # then the write reaches `write` and kicks the slow way
            log.warning("%s: no doorbell for queue %d: %s", self.name, index, e)
            return None

    # -- interrupts (InterruptSink) -------------------------------------------------------

    def signal_queue(self, queue_index: int) -> None:
        self._signal(INTERRUPT_USED_BUFFER)

    def signal_config(self) -> None:
        self._signal(INTERRUPT_CONFIG_CHANGE)

    def _signal(self, bit: int) -> None:
        with self._isr_lock:
            self.isr |= bit
        self._interrupt()

    # -- registers ------------------------------------------------------------------------

    @property
    def device_status(self) -> int:
        s = self.status
        if self.device.needs_reset_flag and s & STATUS_DRIVER_OK:
            s |= STATUS_DEVICE_NEEDS_RESET
        return s

    def _selected(self) -> _Queue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def read(self, base: int, offset: int, size: int) -> int:
        if offset >= CONFIG:
            return self.device.config_read(offset - CONFIG, size)
        if size != 4 or offset % 4:
            return 0  # §4.2.2.2: control registers are read 32 bits wide
        with self._lock:
            return self._register(offset)

    def _register(self, offset: int) -> int:
        q = self._selected()
        match offset:
            case R.MAGIC:
                return MAGIC_VALUE
            case R.VERSION:
                return VERSION
            case R.DEVICE_ID:
                return self.device.device_id
            case R.VENDOR_ID:
                return VENDOR_ID
            case R.DEVICE_FEATURES:
                sel = self.device_features_sel
                return (self.device.features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case R.QUEUE_NUM_MAX:
                return q.max_size if q else 0  # §4.2.2: 0 = queue not available
            case R.QUEUE_READY:
                return int(q.ready) if q else 0
            case R.INTERRUPT_STATUS:
                with self._isr_lock:
                    return self.isr
            case R.STATUS:
                return self.device_status
            case R.SHM_LEN_LOW | R.SHM_LEN_HIGH | R.SHM_BASE_LOW | R.SHM_BASE_HIGH:
                return 0xFFFFFFFF  # §4.2.2: no shared memory region: length (and base) ~0
            case R.CONFIG_GENERATION:
                return self.device.config_generation
        if q is not None and offset in _QUEUE_ADDRESS:
            attr, high = _QUEUE_ADDRESS[offset]
            value = getattr(q, attr)
            return value >> 32 if high else value & 0xFFFFFFFF
        return 0

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG:
            self.device.config_write(offset - CONFIG, size, value)
            return
        if size != 4 or offset % 4:
            self.device.log_once(f"register {offset:#x}: {size}-byte write ignored")
            return
        if offset == R.QUEUE_NOTIFY:  # a kick that reached userspace: no doorbell for it
            if value < len(self.queues):
                self.device.kick(value)
            return
        with self._lock:
            self._store(offset, value)

    def _store(self, offset: int, value: int) -> None:
        match offset:
            case R.DEVICE_FEATURES_SEL:
                self.device_features_sel = value
                return
            case R.DRIVER_FEATURES:
                sel = self.driver_features_sel
                # §3.1.1: features are fixed once FEATURES_OK is set.
                if sel < 2 and not self.status & STATUS_FEATURES_OK:
                    mask = 0xFFFFFFFF << (32 * sel)
                    self.driver_features = (self.driver_features & ~mask) | (value << (32 * sel))
                return
            case R.DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
                return
            case R.QUEUE_SEL:
                self.queue_sel = value
                return
            case R.INTERRUPT_ACK:
                with self._isr_lock:
                    self.isr &= ~value
                return
            case R.STATUS:
                self._write_status(value & 0xFF)
                return
        q = self._selected()
        # §4.2.3.2: the queue is set up while QueueReady is 0, before DRIVER_OK.
        if q is None or self.status & STATUS_DRIVER_OK:
            return
        if offset == R.QUEUE_NUM:
            if value and not value & (value - 1) and value <= q.max_size:
                q.size = value
            else:
                self.device.log_once(f"queue size {value} refused (max {q.max_size})")
        elif offset == R.QUEUE_READY:
            q.ready = bool(value & 1)
        elif offset in _QUEUE_ADDRESS and not q.ready:
            attr, high = _QUEUE_ADDRESS[offset]
            old = getattr(q, attr)
            new = (old & 0xFFFFFFFF) | value << 32 if high else (old & ~0xFFFFFFFF) | value
            setattr(q, attr, new)

    def _write_status(self, value: int) -> None:
        """The status state machine of §2.1/§3.1.1; writing 0 resets (§4.2.3.1)."""
        if value == 0:
            self.reset()
            return
        old = self.status
        self.status = next_status(self.device, old, value, self.driver_features)
        if self.status & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self._activate()

    def _activate(self) -> None:
        """DRIVER_OK: build the queues from their registers and start the device."""
        dev = self.device
        queues = []
        failed: str | None = None
        for i, regs in enumerate(self.queues):
            q = SplitQueue(self.machine.memory, regs.size, f"{self.name}.{i}")
            if regs.ready:
                q.desc_addr, q.avail_addr, q.used_addr = regs.desc, regs.driver, regs.device
                q.event_idx = dev.has(VIRTIO_F_RING_EVENT_IDX)
                q.indirect = dev.has(VIRTIO_F_INDIRECT_DESC)
                try:
                    q.enable()
                except DescriptorError as e:
                    failed = failed or f"queue {i}: {e.reason}"
            queues.append(q)
        if failed is not None:
            for q in queues:
                q.broken = True
        dev.activate(queues, self._doorbells)
        if failed is not None:
            dev.needs_reset(failed)

    def reset(self) -> None:
        """§2.4: the device and every queue back to their initial state."""
        with self._lock:
            self.device.reset()
            self.device.replace_kicks(self._doorbells)
            for q in self.queues:
                q.reset()
            self.status = 0
            self.driver_features = 0
            self.device_features_sel = self.driver_features_sel = 0
            self.queue_sel = 0
            with self._isr_lock:
                self.isr = 0

    def close(self) -> None:
        self.device.close()
        with self._lock:
            fds, self._doorbells = self._doorbells, []
        for fd in fds:
            if fd is not None:
                self.machine.remove_ioeventfd(fd)
