"""The hardware-reduced ACPI power device: S5 power-off, reset, and the GED power button.

The guest-side values are the ones an OS writes: ACPICA's hwsleep.c writes
`(SLP_TYPa << ACPI_X_SLEEP_TYPE_POSITION) | ACPI_X_SLEEP_ENABLE` to the FADT's sleep
control register, with ACPI_X_SLEEP_TYPE_POSITION = 2 and ACPI_X_SLEEP_ENABLE = 0x20
(actypes.h; ACPI 6.3 §4.8.3.7), and SLP_TYPa comes from the DSDT's \\_S5 package.
"""

from __future__ import annotations

import threading

import pytest

from xenopus.devices import platform
from xenopus.devices.acpi_power import (
    GED_EVENT,
    RESET,
    RESET_VALUE,
    SLEEP_CONTROL,
    SLEEP_STATUS,
    AcpiPowerDevice,
)
from xenopus.devices.bus import Bus

BASE = platform.ACPI_REGS_BASE
S5_WRITE = (5 << 2) | 0x20


class Rig:
    def __init__(self) -> None:
        self.levels: list[bool] = []
        self.poweroffs = 0
        self.resets = 0
        self.dev = AcpiPowerDevice(self.levels.append, self.poweroff, self.reset)
        self.bus = Bus("mmio")
        self.bus.register(BASE, platform.ACPI_POWER_SIZE, self.dev, "acpi-power")

    def poweroff(self) -> None:
        self.poweroffs += 1

    def reset(self) -> None:
        self.resets += 1

    @property
    def line(self) -> bool:
        return bool(self.levels) and self.levels[-1]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_s5_with_slp_en_powers_off(rig: Rig) -> None:
    rig.bus.write(BASE + SLEEP_CONTROL, 1, S5_WRITE)
    assert (rig.poweroffs, rig.resets) == (1, 0)


@pytest.mark.parametrize(
    "value",
    [
        5 << 2,  # S5 without SLP_EN: only arms the type
        (3 << 2) | 0x20,  # S3 is not offered
        (1 << 2) | 0x20,
        0,
    ],
)
def test_other_sleep_writes_do_nothing(rig: Rig, value: int) -> None:
    rig.bus.write(BASE + SLEEP_CONTROL, 1, value)
    assert (rig.poweroffs, rig.resets) == (0, 0)


def test_reset_register(rig: Rig) -> None:
    rig.bus.write(BASE + RESET, 1, RESET_VALUE ^ 0xFF)
    assert rig.resets == 0
    rig.bus.write(BASE + RESET, 1, RESET_VALUE)
    assert (rig.poweroffs, rig.resets) == (0, 1)


def test_sleep_status_has_wak_sts_clear(rig: Rig) -> None:
    # ACPICA clears WAK_STS (bit 7, write-1-to-clear) before sleeping: harmless here.
    rig.bus.write(BASE + SLEEP_STATUS, 1, 0x80)
    assert rig.bus.read(BASE + SLEEP_STATUS, 1) & 0x80 == 0


def test_power_button_raises_and_the_guest_read_clears(rig: Rig) -> None:
    assert rig.bus.read(BASE + GED_EVENT, 4) == 0
    rig.dev.press_power_button()
    assert rig.line
    # _EVT reads the DWORD event register: bit 0 is the power button.
    assert rig.bus.read(BASE + GED_EVENT, 4) == 1
    assert not rig.line
    assert rig.bus.read(BASE + GED_EVENT, 4) == 0
    assert (rig.poweroffs, rig.resets) == (0, 0)  # the guest decides what to do


def test_narrow_read_clears_only_what_it_returns(rig: Rig) -> None:
    rig.dev.press_power_button()
    assert rig.bus.read(BASE + GED_EVENT + 1, 1) == 0  # another byte lane
    assert rig.line
    assert rig.bus.read(BASE + GED_EVENT, 1) == 1
    assert not rig.line


def test_press_from_another_thread(rig: Rig) -> None:
    raised = threading.Event()
    dev = AcpiPowerDevice(lambda level: level and raised.set(), rig.poweroff, rig.reset)
    threading.Thread(target=dev.press_power_button).start()
    assert raised.wait(5)
    assert dev.read(BASE, GED_EVENT, 4) == 1


def test_reset_clears_a_pending_event(rig: Rig) -> None:
    rig.dev.press_power_button()
    rig.dev.reset()
    assert not rig.line
    assert rig.bus.read(BASE + GED_EVENT, 4) == 0


def test_stray_accesses_are_harmless(rig: Rig) -> None:
    rig.bus.write(BASE + 0x80, 4, 0xFFFFFFFF)
    rig.bus.write(BASE + GED_EVENT, 4, 0xFFFFFFFF)  # read-to-clear: writes ignored
    assert rig.bus.read(BASE + 0x80, 8) == 0
    assert rig.bus.read(BASE + GED_EVENT, 4) == 0
    assert (rig.poweroffs, rig.resets, rig.levels) == (0, 0, [])
