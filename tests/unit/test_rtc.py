"""MC146818A CMOS RTC through ports 0x70/0x71, with a controllable clock.

Register numbers, formats and timing (UIP 244 µs before the update, 1984 µs
update cycle) are from the MC146818A datasheet; 0x32 is the PC AT century byte.
The expected dates are worked out by hand (2026-11-25 is a Wednesday: weekday 4
counting Sunday as 1).
"""

from __future__ import annotations

import calendar

import pytest

from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.rtc import CmosRtc

SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
ALARM_S, ALARM_M, ALARM_H = 0x01, 0x03, 0x05
REG_A, REG_B, REG_C, REG_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
FIELDS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)

T0 = calendar.timegm((2026, 11, 25, 15, 40, 3)) + 0.5


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Guest:
    def __init__(self, t: float = T0) -> None:
        self.clock = Clock(t)
        self.rtc = CmosRtc(self.clock)
        self.bus = Bus("pio")
        self.bus.register(platform.RTC_PORT, 2, self.rtc, "rtc")

    def read(self, reg: int) -> int:
        self.bus.write(0x70, 1, reg)
        return self.bus.read(0x71, 1)

    def write(self, reg: int, value: int) -> None:
        self.bus.write(0x70, 1, reg)
        self.bus.write(0x71, 1, value)

    def fields(self) -> list[int]:
        return [self.read(r) for r in FIELDS]


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_ports_and_irq() -> None:
    assert (platform.RTC_PORT, platform.RTC_PORT_SIZE, platform.RTC_IRQ) == (0x70, 2, 8)


def test_bcd_24h_is_the_default(g: Guest) -> None:
    assert g.read(REG_B) & 0x06 == 0x02
    assert g.fields() == [0x03, 0x40, 0x15, 0x04, 0x25, 0x11, 0x26, 0x20]


def test_binary_24h(g: Guest) -> None:
    g.write(REG_B, 0x06)
    assert g.fields() == [3, 40, 15, 4, 25, 11, 26, 20]


@pytest.mark.parametrize("b", [0x00, 0x04])
def test_12h_pm_flag(g: Guest, b: int) -> None:
    g.write(REG_B, b)
    assert g.read(HOURS) == 0x83  # 3 PM: 3 with bit 7 (BCD and binary agree)


@pytest.mark.parametrize(
    ("hour", "bcd", "binary"),
    [(0, 0x12, 0x0C), (11, 0x11, 0x0B), (12, 0x92, 0x8C), (23, 0x91, 0x8B)],
)
def test_12h_edges(hour: int, bcd: int, binary: int) -> None:
    g = Guest(calendar.timegm((2026, 11, 25, hour, 0, 0)) + 0.5)
    g.write(REG_B, 0x00)
    assert g.read(HOURS) == bcd
    g.write(REG_B, 0x04)
    assert g.read(HOURS) == binary


def test_time_follows_the_clock(g: Guest) -> None:
    g.clock.t += 60 * 60 * 9  # 15:40:03 + 9 h = 00:40:03 next day, Thursday
    assert g.fields() == [0x03, 0x40, 0x00, 0x05, 0x26, 0x11, 0x26, 0x20]


@pytest.mark.parametrize(
    ("frac", "uip"),
    [
        (0.5, False),
        (0.9990, False),  # 1 ms before the boundary: not yet
        (0.99980, True),  # within 244 µs of the boundary
        (0.0005, True),  # inside the 1984 µs update cycle
        (0.0019, True),
        (0.0025, False),  # the update has ended
    ],
)
def test_uip_window(frac: float, uip: bool) -> None:
    g = Guest(calendar.timegm((2026, 11, 25, 15, 40, 3)) + frac)
    assert bool(g.read(REG_A) & 0x80) is uip


def test_register_a_divider_writable_uip_not(g: Guest) -> None:
    g.clock.t = calendar.timegm((2026, 11, 25, 15, 40, 3)) + 0.5
    g.write(REG_A, 0xA6)
    assert g.read(REG_A) == 0x26
    g.write(REG_A, 0x2F)
    assert g.read(REG_A) == 0x2F


def test_set_mode_write_then_time_runs_from_it(g: Guest) -> None:
    g.write(REG_B, 0x82)  # SET, BCD, 24 h
    for reg, v in [(SECONDS, 0x58), (MINUTES, 0x59), (HOURS, 0x23), (DAY, 0x31), (MONTH, 0x12),
                   (YEAR, 0x99), (CENTURY, 0x19)]:  # fmt: skip
        g.write(reg, v)
    g.clock.t += 5  # frozen while SET
    assert g.read(SECONDS) == 0x58
    assert not g.read(REG_A) & 0x80  # no update in progress while SET
    g.write(REG_B, 0x02)
    assert [g.read(r) for r in (SECONDS, MINUTES, HOURS)] == [0x58, 0x59, 0x23]
    g.clock.t += 63  # 1999-12-31 23:59:58 + 63 s = 2000-01-01 00:01:01, a Saturday
    assert g.fields() == [0x01, 0x01, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]


def test_set_mode_in_binary_12h(g: Guest) -> None:
    g.write(REG_B, 0x84)  # SET, binary, 12 h
    g.write(HOURS, 0x80 | 12)  # 12 PM = noon
    g.write(MINUTES, 0)
    g.write(SECONDS, 0)
    g.write(REG_B, 0x06)  # clear SET and go 24 h
    assert [g.read(r) for r in (HOURS, MINUTES, SECONDS)] == [12, 0, 0]


def test_set_clears_uie(g: Guest) -> None:
    g.write(REG_B, 0x12)
    g.write(REG_B, g.read(REG_B) | 0x80)
    assert g.read(REG_B) == 0x82


def test_register_c_flags_clear_on_read(g: Guest) -> None:
    g.write(REG_A, 0x20)  # RS = 0: no periodic flag in the way
    g.read(REG_C)
    assert g.read(REG_C) == 0x00
    g.clock.t += 1
    assert g.read(REG_C) == 0x10  # UF: an update ended; no IRQF as UIE is off
    assert g.read(REG_C) == 0x00
    g.write(REG_B, 0x12)  # UIE
    g.clock.t += 1
    assert g.read(REG_C) == 0x90  # IRQF | UF


def test_alarm_flag(g: Guest) -> None:
    g.write(REG_A, 0x20)
    g.read(REG_C)
    g.write(ALARM_H, 0x15)
    g.write(ALARM_M, 0x40)
    g.write(ALARM_S, 0x05)
    g.write(REG_B, 0x22)  # AIE
    g.clock.t += 1  # 15:40:04.5
    assert g.read(REG_C) == 0x10
    g.clock.t += 1  # 15:40:05.5: the alarm second has been reached
    assert g.read(REG_C) == 0xB0  # IRQF | AF | UF
    g.write(ALARM_S, 0xC0)  # "don't care": matches every second
    g.clock.t += 1
    assert g.read(REG_C) & 0x20


def test_periodic_flag(g: Guest) -> None:
    g.write(REG_A, 0x26)  # 1024 Hz
    g.read(REG_C)
    g.clock.t += 0.002
    assert g.read(REG_C) == 0x40  # PF, and no IRQF while PIE is off
    g.write(REG_B, 0x42)  # PIE
    g.clock.t += 0.002
    assert g.read(REG_C) == 0xC0
    g.write(REG_A, 0x20)  # RS = 0 stops the periodic flag
    g.clock.t += 0.002
    assert g.read(REG_C) == 0x00


def test_register_d_valid_ram_and_time(g: Guest) -> None:
    assert g.read(REG_D) == 0x80
    g.write(REG_D, 0x00)
    assert g.read(REG_D) == 0x80


def test_nmi_bit_is_masked_off_the_index(g: Guest) -> None:
    g.bus.write(0x70, 1, 0x80 | REG_D)
    assert g.bus.read(0x71, 1) == 0x80
    assert g.rtc.nmi_disabled
    g.bus.write(0x70, 1, 0x80 | SECONDS)
    assert g.bus.read(0x71, 1) == 0x03


def test_cmos_ram_round_trip(g: Guest) -> None:
    for reg in (0x0E, 0x40, 0x7F):
        g.write(reg, reg ^ 0x5A)
    assert [g.read(r) for r in (0x0E, 0x40, 0x7F)] == [0x0E ^ 0x5A, 0x40 ^ 0x5A, 0x7F ^ 0x5A]


def test_civil_dates_match_the_datetime_module() -> None:
    """rtc's own date arithmetic (it avoids importing datetime in every domain process)
    against datetime, over every day of 1900-2100 and the ends of its range."""
    from datetime import UTC, date, datetime, timedelta

    from xenopus.devices import rtc

    day, end = date(1900, 1, 1), date(2100, 12, 31)
    while day <= end:
        epoch = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        assert rtc._days_from_civil(day.year, day.month, day.day) * 86400 == epoch, day
        assert rtc._days_in(day.year, day.month) == (
            (date(day.year + day.month // 12, day.month % 12 + 1, 1) - timedelta(days=1)).day)
        day += timedelta(days=1)
    for y, m, d in ((1, 1, 1), (9999, 12, 31)):
        assert rtc._days_from_civil(y, m, d) == (date(y, m, d) - date(1970, 1, 1)).days
