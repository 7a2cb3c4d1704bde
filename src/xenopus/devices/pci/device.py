"""The PCI function base class: BARs, command-register decoding, MSI-X hookup.

BAR semantics (PCI Local Bus 3.0 §6.2.5.1): the low bits say what the BAR decodes (bit 0
I/O, bits 2:1 memory type 00 = 32-bit / 10 = 64-bit, bit 3 prefetchable) and are
read-only; the address bits below the BAR's size are hardwired to zero. Software sizes a
BAR by writing all ones and reading back: what stays zero is the size. A 64-bit BAR takes
two registers, the upper one all address bits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from xenopus.devices.bus import BusDevice
from xenopus.devices.pci import config as c
from xenopus.devices.pci.config import PciConfig
from xenopus.devices.pci.msix import CTRL, Msix
from xenopus.stream import StateError, check_state

log = logging.getLogger("xenopus.devices.pci")

BarKind = Literal["mmio32", "mmio64", "io"]

BAR_IO = 0x1
BAR_MEM64 = 0x4
BAR_PREFETCH = 0x8
IO_BAR_MIN = 4  # §6.2.5.1: I/O BARs decode at least 4 bytes
MEM_BAR_MIN = 16  # and memory BARs at least 16 bytes (we use 4 KiB pages in practice)
IO_DECODE = 0xFFFF  # x86 port space is 16 bits; upper I/O BAR bits hardwired to 0


@dataclass
class PciBar:
    """One BAR: `size` bytes (a power of two) decoded by `handler`, a BusDevice addressed
    relative to the BAR. `handler` may be None when the BAR holds only the MSI-X table and
    PBA (the device's `msix` then serves it)."""

    index: int
    size: int
    kind: BarKind
    handler: BusDevice | None
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("mmio32", "mmio64", "io"):
            raise ValueError(f"BAR kind must be mmio32, mmio64 or io, not {self.kind!r}")
        low = IO_BAR_MIN if self.kind == "io" else MEM_BAR_MIN
        if self.size < low or self.size & (self.size - 1):
            raise ValueError(
                f"BAR {self.index}: size {self.size:#x} is not a power of two >= {low}"
            )
        last = self.index + (1 if self.kind == "mmio64" else 0)
        if self.index < 0 or last >= c.BAR_COUNT:
            raise ValueError(f"BAR {self.index} ({self.kind}) does not fit in BARs 0-5")
        if self.kind == "io" and self.size > 256:
            raise ValueError("§6.2.5.1: an I/O BAR asks for at most 256 bytes")

    @property
    def flags(self) -> int:
        """The read-only low bits of the BAR register."""
        if self.kind == "io":
            return BAR_IO
        return (BAR_MEM64 if self.kind == "mmio64" else 0) | (
            BAR_PREFETCH if self.prefetchable else 0
        )

    @property
    def offset(self) -> int:
        """The BAR's register offset in config space."""
        return c.BAR0 + 4 * self.index


class _SplitHandler:
    """A BAR shared by the device's registers and the MSI-X table/PBA."""

    def __init__(self, msix: Msix, rest: BusDevice | None):
        self.msix = msix
        self.rest = rest

    def read(self, base: int, offset: int, size: int) -> int:
        if self.msix.covers(offset) or self.rest is None:
            return self.msix.read(base, offset, size)
        return self.rest.read(base, offset, size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        if self.msix.covers(offset) or self.rest is None:
            self.msix.write(base, offset, size, value)
        else:
            self.rest.write(base, offset, size, value)


class PciDevice:
    """A PCI function: its config space, BARs and optional MSI-X.

    Subclasses build a `PciConfig`, their `PciBar`s and `Msix` and pass them here; they
    override `config_read`/`config_write` only for registers of their own (calling super).
    `on_change` is set by the host bridge: it is called after the guest moved a BAR or
    toggled memory/I/O decoding, so the bridge can re-register the BARs on its buses.
    """

    name = "pci-device"

    def __init__(self, config: PciConfig, bars: Iterable[PciBar] = (), msix: Msix | None = None):
        self.config = config
        self.bars: dict[int, PciBar] = {}
        for bar in bars:
            taken = {bar.index, bar.index + 1} if bar.kind == "mmio64" else {bar.index}
            used = set(self.bars) | {b.index + 1 for b in self.bars.values() if b.kind == "mmio64"}
            if taken & used:
                raise ValueError(f"{self.name}: BAR {bar.index} overlaps another BAR")
            self.bars[bar.index] = bar
        self.msix = msix
        if msix is not None:
            if msix.bar_index not in self.bars:
                raise ValueError(f"{self.name}: MSI-X lives in BAR {msix.bar_index}, not declared")
            bar = self.bars[msix.bar_index]
            if max(msix.table_offset + msix.table_size, msix.pba_offset + msix.pba_size) > bar.size:
                raise ValueError(f"{self.name}: MSI-X table/PBA do not fit in BAR {bar.index}")
            msix.attach(config)
        self.on_change: Callable[[PciDevice], None] | None = None
        self.intx: Callable[[bool], None] | None = None  # set by the host bridge
        for bar in self.bars.values():
            self._init_bar(bar)

    def _init_bar(self, bar: PciBar) -> None:
        cfg = self.config
        cfg.set(bar.offset, 4, bar.flags)
        if bar.kind == "io":
            cfg.set_wmask(bar.offset, 4, IO_DECODE & ~(bar.size - 1) & ~0x3)
        else:
            mask = ~(bar.size - 1) & 0xFFFFFFFFFFFFFFF0
            cfg.set_wmask(bar.offset, 4, mask & 0xFFFFFFFF)
            if bar.kind == "mmio64":
                cfg.set_wmask(bar.offset + 4, 4, mask >> 32)

    # --- BAR state -------------------------------------------------------------------------
    def bar_address(self, index: int) -> int:
        """The address the BAR's registers hold now (the guest may be mid-sizing)."""
        bar = self.bars[index]
        if bar.kind == "io":
            return self.config.get(bar.offset, 4) & ~0x3 & IO_DECODE
        value = self.config.get(bar.offset, 4) & ~0xF
        if bar.kind == "mmio64":
            value |= self.config.get(bar.offset + 4, 4) << 32
        return value

    def set_bar_address(self, index: int, address: int) -> None:
        """Program a BAR as firmware would (the host bridge's placement)."""
        bar = self.bars[index]
        if address & (bar.size - 1):
            raise ValueError(f"BAR {index}: {address:#x} is not aligned to {bar.size:#x}")
        self.config.set(bar.offset, 4, (address & 0xFFFFFFFF) | bar.flags)
        if bar.kind == "mmio64":
            self.config.set(bar.offset + 4, 4, address >> 32)

    def decoding(self, bar: PciBar) -> bool:
        """Whether the command register lets the BAR decode (§6.2.2 bits 0/1)."""
        cmd = self.config.command
        return bool(cmd & (c.CMD_IO if bar.kind == "io" else c.CMD_MEMORY))

    def bar_handler(self, index: int) -> BusDevice:
        """What the host registers for BAR `index` (MSI-X table/PBA split out)."""
        bar = self.bars[index]
        if self.msix is not None and self.msix.bar_index == index:
            return _SplitHandler(self.msix, bar.handler)
        assert bar.handler is not None, f"BAR {index} has no handler"
        return bar.handler

    # --- save/restore -----------------------------------------------------------------------
    STATE_VERSION = 1

    def save_state(self) -> dict:
        """Config space as the guest left it (BAR addresses, command register,
        capabilities' registers) and the MSI-X table and PBA."""
        with self.config.lock:
            config = bytes(self.config.data)
        return {"version": self.STATE_VERSION, "config": config,
                "msix": self.msix.save_state() if self.msix is not None else None}

    def restore_state(self, state: object) -> None:
        """Into the same function of a guest built from the same config: the identity
        registers must match. The BARs are then mapped where the guest had moved them
        (`on_change`, the host bridge's remap) and the MSI-X routes rebuilt."""
        s = check_state(state, self.name, self.STATE_VERSION)
        cfg = self.config
        saved = s["config"]
        if not isinstance(saved, bytes) or len(saved) != len(cfg.data):
            raise StateError(f"{self.name}: saved config space is not {len(cfg.data)} octets")
        if saved[: c.COMMAND] != bytes(cfg.data[: c.COMMAND]):  # vendor and device ID
            raise StateError(f"{self.name}: saved state is of another function "
                             f"(vendor/device {saved[:4].hex()})")
        with cfg.lock:
            cfg.data[:] = saved
        if self.msix is not None:
            self.msix.restore_state(s["msix"])
        if self.on_change is not None:
            self.on_change(self)

    # --- config space access -----------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        cfg = self.config
        with cfg.lock:
            before = (cfg.command, [self.bar_address(i) for i in self.bars])
            cfg.write(offset, size, value)
            after = (cfg.command, [self.bar_address(i) for i in self.bars])
        if self.msix is not None:
            ctrl = self.msix.cap_offset + CTRL
            if offset < ctrl + 2 and ctrl < offset + size:
                self.msix.control_written()
        if before != after and self.on_change is not None:
            self.on_change(self)

    def reset(self) -> None:
        """Function-level reset of the PCI state this class owns (subclasses extend)."""
        self.config.set(c.COMMAND, 2, 0)
        if self.msix is not None:
            self.msix.reset()
        if self.on_change is not None:
            self.on_change(self)

    def close(self) -> None:
        if self.msix is not None:
            self.msix.close()
