"""The ACPI hardware-reduced power device: sleep control/status, reset, and a GED event.

A hardware-reduced platform (ACPI 6.5 §4.1) has no PM1 blocks and no SCI; instead the
FADT points at a sleep control and a sleep status register (§4.8.3.7, §4.8.3.8) and a
reset register (§4.8.3.6), and events arrive through a Generic Event Device (ACPI0013,
§5.6.9) whose interrupt runs the DSDT's `_EVT` method. All four registers sit in one
MMIO page at `platform.ACPI_REGS_BASE`, byte registers first:

    +0  SLEEP_CONTROL  8 bits   write SLP_TYP << 2 | SLP_EN: SLP_TYP 5 (S5) powers off
    +1  SLEEP_STATUS   8 bits   WAK_STS (bit 7), never set: we never wake from sleep
    +2  RESET          8 bits   write RESET_VALUE to reset the machine
    +4  GED_EVENT     32 bits   latched events (bit 0: power button, bit 1: a CPU
                                hotplug change, xenopus.devices.cpu_hotplug); a read returns
                                them and clears the bits it returned, and the GED
                                interrupt is level-high while any bit is latched

Read-to-clear (rather than write-1-to-clear) keeps `_EVT` to one field read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from xenopus.devices.bus import ones
from xenopus.stream import check_state

log = logging.getLogger("xenopus.devices.acpi_power")

SLEEP_CONTROL = 0x0
SLEEP_STATUS = 0x1
RESET = 0x2
GED_EVENT = 0x4
GED_EVENT_SIZE = 4
REGS_SIZE = GED_EVENT + GED_EVENT_SIZE

# §4.8.3.7 sleep control register: SLP_TYPx bits 2-4, SLP_EN bit 5.
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 1 << 5
# §4.8.3.8 sleep status register: WAK_STS bit 7.
WAK_STS = 1 << 7
# The SLP_TYP our DSDT's \_S5 package names; S1-S4 are not offered.
SLP_TYP_S5 = 5
# Any value will do (§4.8.3.6); the FADT announces it.
RESET_VALUE = 0x01

GED_POWER_BUTTON = 1 << 0
GED_CPU_HOTPLUG = 1 << 1  # _EVT runs the CPU scan method (\_SB.CPUS.CSCN)


class AcpiPowerDevice:
    """A `BusDevice` for the register block above."""

    def __init__(
        self,
        irq: Callable[[bool], None],
        on_poweroff: Callable[[], None],
        on_reset: Callable[[], None],
    ) -> None:
        self._irq = irq
        self._on_poweroff = on_poweroff
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._events = 0
        self._warned: set[str] = set()

    def press_power_button(self) -> None:
        """Latch the power-button event and raise the GED interrupt (any thread)."""
        self._latch(GED_POWER_BUTTON)

    def signal_cpu_hotplug(self) -> None:
        """Latch the CPU hotplug event and raise the GED interrupt (any thread)."""
        self._latch(GED_CPU_HOTPLUG)

    def _latch(self, bits: int) -> None:
        # The line follows the latch under the lock, so a racing read-clear cannot
        # leave it high with nothing latched, or low with an event pending.
        with self._lock:
            self._events |= bits
            self._irq(True)

    STATE_VERSION = 1

    def save_state(self) -> dict:
        with self._lock:
            return {"version": self.STATE_VERSION, "events": self._events}

    def restore_state(self, state: object) -> None:
        """The latched events, and the GED line at the level they hold it."""
        s = check_state(state, "acpi-power", self.STATE_VERSION)
        with self._lock:
            self._events = s["events"]
            self._irq(bool(self._events))

    def reset(self) -> None:
        with self._lock:
            self._events = 0
            self._irq(False)

    def read(self, base: int, offset: int, size: int) -> int:
        if offset >= GED_EVENT and offset + size <= REGS_SIZE:
            shift = 8 * (offset - GED_EVENT)
            with self._lock:
                value = (self._events >> shift) & ones(size)
                if value:
                    self._events &= ~(value << shift)
                    if not self._events:
                        self._irq(False)
            return value
        # SLEEP_CONTROL and RESET read as zero; SLEEP_STATUS has WAK_STS clear.
        return 0

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        if offset == SLEEP_CONTROL:
            self._sleep(value & 0xFF)
        elif offset == RESET:
            if value & 0xFF == RESET_VALUE:
                self._on_reset()
            else:
                self._warn("reset", f"reset register written with {value:#x}, ignored")
        elif offset == SLEEP_STATUS:
            pass  # WAK_STS is write-1-to-clear, and never set
        else:
            self._warn("write", f"write of {value:#x} ({size} bytes) at +{offset:#x} ignored")

    def _sleep(self, value: int) -> None:
        if not value & SLP_EN:
            return
        slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
        if slp_typ == SLP_TYP_S5:
            self._on_poweroff()
        else:
            self._warn("sleep", f"sleep type {slp_typ} requested; only S5 is offered")

    def _warn(self, key: str, message: str) -> None:
        # Logged once per kind: a guest looping on a bad write must not flood the log.
        if key not in self._warned:
            self._warned.add(key)
            log.warning("acpi power device: %s", message)
