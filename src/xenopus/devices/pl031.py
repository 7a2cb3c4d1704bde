"""An Arm PrimeCell PL031 real-time clock (ARM DDI 0224, "PrimeCell Real Time Clock
(PL031) Technical Reference Manual"), the RTC of QEMU virt and of arm64 guests here;
Linux's rtc-pl031 drives it.

Registers and bits follow the TRM's §3.2 "Summary of RTC registers" and §3.3 "Register
descriptions". The counter is the host's UTC seconds plus an offset the guest sets by
writing RTCLR (as QEMU's pl031 with its default `-rtc base=utc`). Like devices/rtc.py, no
timer thread: the match interrupt's raw status (RTCRIS) is computed when read, from
whether the counter has reached RTCMR since the match was set; the interrupt line is
driven then and on every other access.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Register offsets (§3.2, Table 3-1)
RTCDR = 0x000  # data: the counter, read-only
RTCMR = 0x004  # match
RTCLR = 0x008  # load
RTCCR = 0x00C  # control: bit 0 starts the counter (it cannot be stopped once started)
RTCIMSC = 0x010  # interrupt mask set/clear
RTCRIS = 0x014  # raw interrupt status
RTCMIS = 0x018  # masked interrupt status
RTCICR = 0x01C  # interrupt clear, write-only
PERIPHID0 = 0xFE0
PCELLID0 = 0xFF0
MMIO_SIZE = 0x1000
INT_RTC = 1 << 0  # the one interrupt bit of RTCIMSC/RIS/MIS/ICR
CR_START = 1 << 0

# §3.3.10-11: PeriphID 0x00041031 (part 0x031, designer 0x41 "ARM"), PCellID 0xB105F00D;
# Linux's amba bus matches rtc-pl031 on 0x00041031 under mask 0x000fffff.
PERIPH_ID = (0x31, 0x10, 0x04, 0x00)
PCELL_ID = (0x0D, 0xF0, 0x05, 0xB1)


class Pl031:
    """`irq(level)` is called when RTCMIS changes; `clock()` gives host seconds."""

    def __init__(self, irq: Callable[[bool], None], clock: Callable[[], float] = time.time) -> None:
        self._irq = irq
        self._clock = clock
        self._lock = threading.Lock()
        self._offset = 0  # guest counter - host seconds
        self._match = 0
        self._imsc = 0
        self._ris = 0
        self._armed = False  # a match set and not yet reached
        self._level = False

    def _counter(self) -> int:
        return (int(self._clock()) + self._offset) & 0xFFFF_FFFF

    def _check_match(self) -> None:
        if self._armed and self._counter() >= self._match:
            self._ris |= INT_RTC
            self._armed = False

    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            self._check_match()
            value = self._read_reg(offset & ~3) >> (8 * (offset & 3))
            self._update_irq()
        return value & ((1 << (8 * size)) - 1)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write_reg(offset & ~3, value & 0xFFFF_FFFF)
            self._check_match()
            self._update_irq()

    def _read_reg(self, offset: int) -> int:
        if offset == RTCDR:
            return self._counter()
        if offset == RTCMR:
            return self._match
        if offset == RTCLR:
            return self._counter()  # QEMU's reading too; the TRM leaves it to the counter
        if offset == RTCCR:
            return CR_START  # always running (as QEMU: the host clock never stops)
        if offset == RTCIMSC:
            return self._imsc
        if offset == RTCRIS:
            return self._ris
        if offset == RTCMIS:
            return self._ris & self._imsc
        if PERIPHID0 <= offset < PERIPHID0 + 16:
            return PERIPH_ID[(offset - PERIPHID0) // 4]
        if PCELLID0 <= offset < PCELLID0 + 16:
            return PCELL_ID[(offset - PCELLID0) // 4]
        return 0

    def _write_reg(self, offset: int, value: int) -> None:
        if offset == RTCLR:
            self._offset = value - int(self._clock())
        elif offset == RTCMR:
            self._match = value
            self._armed = True
        elif offset == RTCIMSC:
            self._imsc = value & INT_RTC
        elif offset == RTCICR:
            self._ris &= ~value
        # RTCDR, RTCCR (started for good), RIS, MIS and the IDs ignore writes.

    def _update_irq(self) -> None:
        level = bool(self._ris & self._imsc)
        if level != self._level:
            self._level = level
            self._irq(level)
