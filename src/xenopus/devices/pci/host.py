"""The PCI host bridge: bus 0's configuration access and BAR placement.

Two ways into configuration space reach the same registers:
- mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): a dword write to CONFIG_ADDRESS (0xCF8)
  latches enable bit 31, bus 23:16, device 15:11, function 10:8 and register 7:2; an
  access of any width at CONFIG_DATA + k (0xCFC–0xCFF) then reaches register + k;
- ECAM (PCIe base spec §7.2.2): MMIO at ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg),
  the whole 4 KiB of each function.
Functions that are not there read as all ones and ignore writes (§6.1: a master abort).

The bridge itself is function 00:00.0: a host bridge (class 06/00/00) with Red Hat's ID
for a generic virtual PCIe host bridge, 1b36:0008 (QEMU docs/specs/pci-ids.rst), which no
Linux driver binds to or quirks, unlike a real chipset's ID.

BARs are placed when a device is added, as firmware would, naturally aligned, largest
first per window; then memory/I/O decoding is switched on. When the guest rewrites a BAR
or toggles decoding, the BAR is unregistered from its old range and registered at the new
one; a range that overlaps something is logged and left unmapped, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from xenopus.devices import platform as p
from xenopus.devices.bus import Bus, BusConflictError, ones
from xenopus.devices.pci import config as c
from xenopus.devices.pci.config import PciConfig
from xenopus.devices.pci.device import PciBar, PciDevice
from xenopus.devices.ratelimit import LimitedLog
from xenopus.stream import check_state

log = logging.getLogger("xenopus.devices.pci")

HOST_VENDOR_ID = 0x1B36  # Red Hat, Inc.
HOST_DEVICE_ID = 0x0008  # "PCIe host bridge"
CLASS_HOST_BRIDGE = 0x060000

SLOTS = 32
FUNCTIONS = 8
CONFIG_ADDRESS_ENABLE = 1 << 31

# Legacy INTx: INTA#–INTD# of slot s swizzle onto these four IOAPIC pins, the usual
# (slot + pin) mod 4 of PCI-to-PCI Bridge 1.2 §9.1; level-triggered, active-low lines
# (PCI 3.0 §2.2.6) that the DSDT's _PRT must describe the same way.
INTX_GSIS = (16, 17, 18, 19)


def devfn(slot: int, function: int = 0) -> int:
    return slot << 3 | function


class PciHostBridgeFunction(PciDevice):
    name = "host-bridge"

    def __init__(self) -> None:
        super().__init__(PciConfig(HOST_VENDOR_ID, HOST_DEVICE_ID, CLASS_HOST_BRIDGE))


@dataclass
class _Window:
    """A window BARs are placed in, bump-allocated upwards."""

    name: str
    base: int
    size: int
    next: int = 0

    def take(self, size: int) -> int:
        start = -(-max(self.next, self.base) // size) * size  # natural alignment
        if start + size > self.base + self.size:
            raise ValueError(f"PCI {self.name} window is full: no room for {size:#x} bytes")
        self.next = start + size
        return start


@dataclass(frozen=True)
class _Mapping:
    """Where a BAR is mapped: its bus and base address."""

    bus: Bus
    base: int


class PciHostBridge:
    """Bus 0: config mechanism #1 on `pio`, ECAM on `mmio`, BARs on the bus of their kind.

    `irq(gsi, level)` drives legacy INTx lines (e.g. `Machine.set_irq`); without it devices
    have MSI-X only. `ram_end` places the 64-bit window above RAM (`platform.mmio64_window`).
    """

    def __init__(
        self,
        pio: Bus,
        mmio: Bus,
        irq: Callable[[int, bool], None] | None = None,
        *,
        ram_end: int = 0,
        ecam_base: int = p.ECAM_BASE,
    ):
        self.pio = pio
        self.mmio = mmio
        self.irq = irq
        self.ecam_base = ecam_base
        self.devices: dict[int, PciDevice] = {}  # devfn -> function on bus 0
        self._lock = threading.RLock()
        self._address = 0  # CONFIG_ADDRESS latch
        self._mapped: dict[tuple[int, int], _Mapping] = {}  # (devfn, BAR) -> where
        self._log = LimitedLog(log)  # the guest decides how often it moves a BAR
        m64_base, m64_size = p.mmio64_window(ram_end)
        self.windows = {
            "mmio32": _Window("32-bit MMIO", p.MMIO32_BASE, p.MMIO32_SIZE),
            "mmio64": _Window("64-bit MMIO", m64_base, m64_size),
            "io": _Window("I/O", p.PCI_IO_BASE, p.PCI_IO_SIZE),
        }
        pio.register(p.PCI_CONFIG_PORT, p.PCI_CONFIG_PORT_SIZE, _ConfigPorts(self), "pci-cf8")
        mmio.register(ecam_base, p.ECAM_SIZE, _Ecam(self), "pci-ecam")
        self.add(PciHostBridgeFunction(), slot=0)

    # --- devices -----------------------------------------------------------------------------
    def add(self, device: PciDevice, slot: int | None = None, *, enable: bool = True) -> int:
        """Put `device` at function 0 of `slot` (the first free one if None), place its
        BARs and, if `enable`, switch its decoding on as firmware would. Returns the devfn
        (bus 0, so also the BDF)."""
        with self._lock:
            if slot is None:
                slot = next((s for s in range(SLOTS) if devfn(s) not in self.devices), None)
                if slot is None:
                    raise ValueError("PCI bus 0 is full")
            if not 0 <= slot < SLOTS:
                raise ValueError(f"PCI slot {slot} is not in 0-{SLOTS - 1}")
            df = devfn(slot)
            if df in self.devices:
                raise ValueError(f"PCI slot {slot} is taken by {self.devices[df].name}")
            for bar in sorted(device.bars.values(), key=lambda b: -b.size):
                device.set_bar_address(bar.index, self._place(bar))
            pin = device.config.interrupt_pin
            if pin and self.irq is not None:
                gsi = INTX_GSIS[(slot + pin - 1) % 4]
                device.config.set(c.INTERRUPT_LINE, 1, gsi)
                irq = self.irq
                device.intx = lambda level, gsi=gsi: irq(gsi, level)
            self.devices[df] = device
            device.on_change = lambda d, df=df: self._remap(df)
            if enable and device.bars:
                cmd = device.config.command
                for bar in device.bars.values():
                    cmd |= c.CMD_IO if bar.kind == "io" else c.CMD_MEMORY
                device.config.set(c.COMMAND, 2, cmd)
            self._remap(df)
            log.info("PCI 00:%02x.%d: %s", slot, 0, device.name)
            return df

    def _place(self, bar: PciBar) -> int:
        """A naturally aligned address for `bar`. A 64-bit BAR goes below 4 GiB while the
        32-bit window has room, as PC firmware (SeaBIOS, OVMF) places small ones: guests
        that map only the low 4 GiB (32-bit kernels, early boot code) can reach it."""
        if bar.kind == "mmio64":
            with contextlib.suppress(ValueError):
                return self.windows["mmio32"].take(bar.size)
        return self.windows[bar.kind].take(bar.size)

    def _remap(self, df: int) -> None:
        """Make the buses match the BARs and command register of function `df`."""
        with self._lock:
            device = self.devices.get(df)
            if device is None:
                return
            for bar in device.bars.values():
                key = (df, bar.index)
                want = self._wanted(device, bar)
                have = self._mapped.get(key)
                if have == want:
                    continue
                if have is not None:
                    have.bus.unregister(have.base)
                    del self._mapped[key]
                if want is None:
                    continue
                name = f"pci-{df >> 3:02x}.{df & 7}-bar{bar.index}"
                try:
                    want.bus.register(want.base, bar.size, device.bar_handler(bar.index), name)
                except (BusConflictError, ValueError) as e:
                    self._log.log(logging.WARNING, "%s: BAR %d left unmapped: %s",
                                  device.name, bar.index, e)
                    continue
                self._mapped[key] = want

    def _wanted(self, device: PciDevice, bar: PciBar) -> _Mapping | None:
        if not device.decoding(bar):
            return None
        addr = device.bar_address(bar.index)
        if addr == 0:  # never a valid placement: unassigned
            return None
        return _Mapping(self.pio if bar.kind == "io" else self.mmio, addr)

    # --- save/restore -------------------------------------------------------------------------
    STATE_VERSION = 1

    def save_state(self) -> dict:
        """The CONFIG_ADDRESS latch; each function saves its own config space."""
        with self._lock:
            return {"version": self.STATE_VERSION, "address": self._address}

    def restore_state(self, state: object) -> None:
        s = check_state(state, "pci host bridge", self.STATE_VERSION)
        with self._lock:
            self._address = s["address"]

    # --- configuration cycles ----------------------------------------------------------------
    def config_read(self, bus: int, df: int, offset: int, size: int) -> int:
        device = self.devices.get(df) if bus == 0 else None
        if device is None:
            return ones(size)
        try:
            return device.config_read(offset, size)
        except Exception:
            self._log.log(logging.ERROR, "%s: config read %#x/%d failed", device.name, offset,
                          size, exc_info=True)
            return ones(size)

    def config_write(self, bus: int, df: int, offset: int, size: int, value: int) -> None:
        device = self.devices.get(df) if bus == 0 else None
        if device is None:
            return
        try:
            device.config_write(offset, size, value)
        except Exception:
            self._log.log(logging.ERROR, "%s: config write %#x/%d failed", device.name, offset,
                          size, exc_info=True)

    def close(self) -> None:
        for device in self.devices.values():
            device.close()


class _ConfigPorts:
    """0xCF8–0xCFF: CONFIG_ADDRESS and CONFIG_DATA (§3.2.2.3.2)."""

    def __init__(self, host: PciHostBridge):
        self.host = host

    def read(self, base: int, offset: int, size: int) -> int:
        h = self.host
        if offset < 4:
            # Only a dword access is CONFIG_ADDRESS; narrower ones are other registers
            # (e.g. 0xCF9, the reset control register of PC chipsets) we do not have.
            return h._address if offset == 0 and size == 4 else ones(size)
        with h._lock:
            target = self._target(offset, size)
            return ones(size) if target is None else h.config_read(*target, size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        h = self.host
        if offset < 4:
            if offset == 0 and size == 4:
                h._address = value & 0x80FFFFFC  # bits 30:24 reserved, 1:0 read as 0
            return
        with h._lock:
            target = self._target(offset, size)
            if target is not None:
                h.config_write(*target, size, value)

    def _target(self, offset: int, size: int) -> tuple[int, int, int] | None:
        addr = self.host._address
        lane = offset - 4
        if not addr & CONFIG_ADDRESS_ENABLE or lane + size > 4:
            return None
        return (addr >> 16) & 0xFF, (addr >> 8) & 0xFF, (addr & 0xFC) + lane


class _Ecam:
    """The ECAM window (PCIe base spec §7.2.2)."""

    def __init__(self, host: PciHostBridge):
        self.host = host

    def read(self, base: int, offset: int, size: int) -> int:
        bus, df, reg = offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF
        if size not in (1, 2, 4) or reg & (size - 1):
            return ones(size)  # §7.2.2.2: unaligned/wider accesses are unsupported
        with self.host._lock:
            return self.host.config_read(bus, df, reg, size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        bus, df, reg = offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF
        if size not in (1, 2, 4) or reg & (size - 1):
            return
        with self.host._lock:
            self.host.config_write(bus, df, reg, size, value)
