"""devices/pl031.py against the PL031 TRM (ARM DDI 0224) and what Linux's rtc-pl031 and
amba bus read."""

from __future__ import annotations

from xenopus.devices.pl031 import Pl031

BASE = 0x0901_0000
DR, MR, LR, CR, IMSC, RIS, MIS, ICR = 0x0, 0x4, 0x8, 0xC, 0x10, 0x14, 0x18, 0x1C


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counter_follows_the_host_clock_and_load() -> None:
    clock = Clock(1_700_000_000.7)
    rtc = Pl031(irq=lambda level: None, clock=clock)
    assert rtc.read(BASE, DR, 4) == 1_700_000_000
    rtc.write(BASE, LR, 4, 1000)  # the guest sets its time
    clock.now += 5
    assert rtc.read(BASE, DR, 4) == 1005
    assert rtc.read(BASE, CR, 4) & 1  # started


def test_match_interrupt() -> None:
    clock = Clock(100.0)
    levels: list[bool] = []
    rtc = Pl031(irq=levels.append, clock=clock)
    rtc.write(BASE, MR, 4, 103)
    rtc.write(BASE, IMSC, 4, 1)
    assert rtc.read(BASE, RIS, 4) == 0 and levels == []
    clock.now = 103.2
    assert rtc.read(BASE, MIS, 4) == 1 and levels == [True]
    rtc.write(BASE, ICR, 4, 1)
    assert rtc.read(BASE, RIS, 4) == 0 and levels == [True, False]
    clock.now = 200  # a match fires once, until RTCMR is written again
    assert rtc.read(BASE, RIS, 4) == 0


def test_amba_identification() -> None:
    rtc = Pl031(irq=lambda level: None)
    periph = sum((rtc.read(BASE, 0xFE0 + 4 * i, 4) & 0xFF) << (8 * i) for i in range(4))
    cell = sum((rtc.read(BASE, 0xFF0 + 4 * i, 4) & 0xFF) << (8 * i) for i in range(4))
    assert periph & 0x000FFFFF == 0x00041031  # rtc-pl031's amba id (ARM variant)
    assert cell == 0xB105F00D
