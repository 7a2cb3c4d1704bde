"""The PC's CMOS real-time clock: a Motorola MC146818A behind ports 0x70/0x71.

Register layout, bits and timing are those of the MC146818A datasheet
("Address Map", "Registers A-D", "Update Cycle"); the century byte at 0x32 is
the IBM PC AT convention (also what ACPI's FADT.century usually names).

The clock shows the host's UTC time (as Xen and QEMU do with localtime=0)
plus an offset the guest sets through the SET bit. Time registers are computed
from `clock()` at the moment they are read. No interrupts are generated (no
timer thread): the register C flags (UF, AF, PF) are computed when C is read,
from the time elapsed since the previous read.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from xenopus.devices.bus import read_lanes, write_lanes
from xenopus.stream import check_state

NMI_DISABLE = 0x80  # bit 7 of the index port on PCs

SECONDS = 0x00
SECONDS_ALARM = 0x01
MINUTES = 0x02
MINUTES_ALARM = 0x03
HOURS = 0x04
HOURS_ALARM = 0x05
WEEKDAY = 0x06  # 1 = Sunday
DAY = 0x07
MONTH = 0x08
YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
CENTURY = 0x32
TIME_REGS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)

A_UIP = 0x80
A_DIVIDER = 0x70  # DV2-0; 010 = 32.768 kHz time base, running
A_RATE = 0x0F  # RS3-0, periodic interrupt rate
A_DEFAULT = 0x26  # 32.768 kHz, 1024 Hz periodic rate: what PC firmware programs

B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
B_DSE = 0x01
B_DEFAULT = B_24H  # BCD, 24-hour

C_IRQF = 0x80
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10

D_VRT = 0x80  # valid RAM and time: the battery is good

HOUR_PM = 0x80  # 12-hour mode: bit 7 of the hours byte
ALARM_ANY = 0xC0  # an alarm byte of 11xxxxxx matches every value

# Update cycle with a 32.768 kHz time base: UIP rises 244 µs before the
# update (tBUC) and the update itself takes 1984 µs (tUC).
UIP_LEAD = 244e-6
UPDATE_TIME = 1984e-6


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


def _periodic_hz(rate: int) -> float:
    """RS3-0 → interrupt rate with a 32.768 kHz time base (0 = off)."""
    if rate == 0:
        return 0.0
    if rate <= 2:
        return 256.0 / rate  # 1: 256 Hz, 2: 128 Hz
    return 65536.0 / (1 << rate)  # 3: 8192 Hz ... 15: 2 Hz


class CmosRtc:
    """Register at `platform.RTC_PORT` with length 2 (index and data port)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        irq: Callable[[bool], None] | None = None,
    ) -> None:
        self._clock = clock
        self._irq = irq  # kept for a future timer; never driven (see module docstring)
        self._lock = threading.Lock()
        self.ram = bytearray(128)  # the CMOS bytes; time registers are computed instead
        self.ram[REG_A] = A_DEFAULT
        self.ram[REG_B] = B_DEFAULT
        self.index = 0
        self.nmi_disabled = False
        self._offset = 0  # whole seconds added to the host clock
        self._frozen: dict[int, int] | None = None  # raw time registers while SET
        self._last_c = self._now()

    # -- save/restore ------------------------------------------------------------

    STATE_VERSION = 1

    def save_state(self) -> dict:
        """The CMOS bytes and the guest's offset from the host clock: a restored RTC
        keeps the guest's idea of the time zone and drift, and runs on from the host's
        clock as a real one ran on while the machine was off."""
        with self._lock:
            frozen = None if self._frozen is None else [[r, v] for r, v in self._frozen.items()]
            return {
                "version": self.STATE_VERSION, "ram": bytes(self.ram), "index": self.index,
                "nmi_disabled": self.nmi_disabled, "offset": self._offset, "frozen": frozen,
                "last_c": self._last_c - self._offset,
            }

    def restore_state(self, state: object) -> None:
        s = check_state(state, "rtc", self.STATE_VERSION)
        with self._lock:
            self.ram = bytearray(s["ram"])
            self.index, self.nmi_disabled, self._offset = s["index"], s["nmi_disabled"], s["offset"]
            self._frozen = None if s["frozen"] is None else {r: v for r, v in s["frozen"]}
            self._last_c = s["last_c"] + self._offset

    # -- BusDevice -------------------------------------------------------------

    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            return read_lanes(self._read_port, offset, size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            write_lanes(self._write_port, offset, size, value)

    def _read_port(self, port: int) -> int:
        if port == 0:
            return 0xFF  # the index port is write-only
        return self._read_reg(self.index)

    def _write_port(self, port: int, value: int) -> None:
        if port == 0:
            self.nmi_disabled = bool(value & NMI_DISABLE)
            self.index = value & 0x7F
        else:
            self._write_reg(self.index, value)

    # -- time ------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() + self._offset

    def _mode(self) -> int:
        return self.ram[REG_B]

    def _encode(self, reg: int, value: int, mode: int) -> int:
        pm = 0
        if reg in (HOURS, HOURS_ALARM) and not mode & B_24H:
            pm = HOUR_PM if value >= 12 else 0
            value = value % 12 or 12
        return (value if mode & B_DM_BINARY else _bcd(value)) | pm

    def _decode(self, reg: int, raw: int, mode: int) -> int:
        if reg in (HOURS, HOURS_ALARM) and not mode & B_24H:
            hour = raw & ~HOUR_PM
            hour = hour if mode & B_DM_BINARY else _unbcd(hour)
            return hour % 12 + (12 if raw & HOUR_PM else 0)
        return raw if mode & B_DM_BINARY else _unbcd(raw)

    def _fields(self, t: float) -> dict[int, int]:
        d = time.gmtime(math.floor(t))
        return {
            SECONDS: min(d.tm_sec, 59),  # (gmtime's leap second 60 has no register value)
            MINUTES: d.tm_min,
            HOURS: d.tm_hour,
            WEEKDAY: (d.tm_wday + 1) % 7 + 1,  # tm_wday: Monday 0; the RTC's: Sunday 1
            DAY: d.tm_mday,
            MONTH: d.tm_mon,
            YEAR: d.tm_year % 100,
            CENTURY: d.tm_year // 100,
        }

    def _raw_time(self, mode: int) -> dict[int, int]:
        return {r: self._encode(r, v, mode) for r, v in self._fields(self._now()).items()}

    def _set_time(self, raw: dict[int, int], mode: int) -> None:
        """Make the clock show `raw` (time registers in `mode`) from now on."""
        f = {r: self._decode(r, v, mode) for r, v in raw.items()}
        year, month, day = f[CENTURY] * 100 + f[YEAR], f[MONTH], f[DAY]
        if not (1 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= _days_in(year, month)
                and f[HOURS] < 24 and f[MINUTES] < 60 and f[SECONDS] < 60):
            return  # an impossible date: keep the clock as it was
        when = (_days_from_civil(year, month, day) * 86400 + f[HOURS] * 3600
                + f[MINUTES] * 60 + f[SECONDS])
        # Whole seconds only, so the host's sub-second phase (and UIP) carries on.
        # The weekday follows from the date, whatever the guest wrote.
        self._offset = when - math.floor(self._clock())

    def _uip(self) -> bool:
        if self._mode() & B_SET:
            return False  # SET inhibits updates and clears UIP
        frac = self._now() % 1.0
        return frac >= 1.0 - UIP_LEAD or frac < UPDATE_TIME

    # -- registers ---------------------------------------------------------------

    def _read_reg(self, reg: int) -> int:
        if reg in TIME_REGS:
            if self._frozen is not None:
                return self._frozen[reg]
            return self._raw_time(self._mode())[reg]
        if reg == REG_A:
            return self.ram[REG_A] | (A_UIP if self._uip() else 0)
        if reg == REG_C:
            return self._read_c()
        if reg == REG_D:
            return D_VRT
        return self.ram[reg]

    def _write_reg(self, reg: int, value: int) -> None:
        mode = self._mode()
        if reg in TIME_REGS:
            if self._frozen is not None:
                self._frozen[reg] = value
            else:
                raw = self._raw_time(mode)
                raw[reg] = value
                self._set_time(raw, mode)
        elif reg == REG_A:
            self.ram[REG_A] = value & ~A_UIP  # UIP is read-only
        elif reg == REG_B:
            if value & B_SET:
                value &= ~B_UIE  # SET going high clears UIE
                if self._frozen is None:
                    self._frozen = self._raw_time(value)
            elif self._frozen is not None:
                # Clearing SET: the registers as written become the time; they
                # were written in the mode that was in force while SET was high.
                self._set_time(self._frozen, mode)
                self._frozen = None
            self.ram[REG_B] = value
        elif reg in (REG_C, REG_D):
            pass  # read-only
        else:
            self.ram[reg] = value

    def _read_c(self) -> int:
        """Flags for events since the last read of C; reading clears them."""
        now = self._now()
        last, self._last_c = self._last_c, now
        mode = self._mode()
        flags = 0
        if not mode & B_SET:
            # An update ends UPDATE_TIME after each second boundary.
            first = math.floor(last - UPDATE_TIME) + 1
            end = math.floor(now - UPDATE_TIME)
            if end >= first:
                flags |= C_UF
                if self._alarm_hit(first, end, mode):
                    flags |= C_AF
        hz = _periodic_hz(self.ram[REG_A] & A_RATE)
        if hz and math.floor(now * hz) > math.floor(last * hz):
            flags |= C_PF
        enabled = (C_PF if mode & B_PIE else 0) | (C_AF if mode & B_AIE else 0)
        enabled |= C_UF if mode & B_UIE else 0
        if flags & enabled:
            flags |= C_IRQF
        return flags

    def _alarm_hit(self, first: int, last: int, mode: int) -> bool:
        """Did any update from second `first` to `last` match the alarm bytes?"""
        alarms = ((HOURS, HOURS_ALARM), (MINUTES, MINUTES_ALARM), (SECONDS, SECONDS_ALARM))
        want = [
            None if self.ram[a] & ALARM_ANY == ALARM_ANY else self._decode(r, self.ram[a], mode)
            for r, a in alarms
        ]
        # Any alarm that can match does so within a day: look at most that far back.
        for t in range(max(first, last - 86400), last + 1):
            h, rest = divmod(t % 86400, 3600)
            m, s = divmod(rest, 60)
            if all(w is None or w == v for w, v in zip(want, (h, m, s), strict=True)):
                return True
        return False


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    days_from_civil; not the datetime module, which each domain process would import
    for this alone)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
