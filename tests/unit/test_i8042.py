"""8042 keyboard controller, driven as Linux's i8042.c and atkbd.c drive it.

Numbers: drivers/input/serio/i8042.h (status/CTR bits, commands, I8042_RET_CTL_TEST
= 0x55), i8042.c's i8042_check_aux() (which AUX_TEST answers mean "no aux port"),
atkbd.c/libps2.c (ACK 0xFA, BAT 0xAA, keyboard ID 0xAB 0x83).
"""

from __future__ import annotations

import pytest

from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.i8042 import I8042

OBF, SYS, CMDDAT, KEYLOCK, AUXDATA = 0x01, 0x04, 0x08, 0x10, 0x20


class Guest:
    def __init__(self) -> None:
        self.resets = 0
        self.irqs: list[bool] = []
        self.kbc = I8042(self._reset, self.irqs.append)
        self.bus = Bus("pio")
        self.bus.register(platform.I8042_DATA_PORT, 1, self.kbc, "i8042-data")
        self.bus.register(platform.I8042_CMD_PORT, 1, self.kbc, "i8042-cmd")

    def _reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.bus.read(0x64, 1)

    def command(self, cmd: int, *args: int) -> None:
        self.bus.write(0x64, 1, cmd)
        for a in args:
            self.bus.write(0x60, 1, a)

    def send(self, byte: int) -> None:
        self.bus.write(0x60, 1, byte)

    def replies(self) -> list[int]:
        got = []
        while self.status() & OBF:
            got.append(self.bus.read(0x60, 1))
        return got


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_ports() -> None:
    assert (platform.I8042_DATA_PORT, platform.I8042_CMD_PORT) == (0x60, 0x64)


def test_initial_status(g: Guest) -> None:
    st = g.status()
    assert not st & OBF
    # i8042_controller_init() warns "Keylock active" when this bit is clear.
    assert st & KEYLOCK
    assert not st & 0x02  # IBF: never busy


def test_self_test(g: Guest) -> None:
    g.command(0xAA)
    assert g.status() & OBF
    assert g.replies() == [0x55]
    assert g.status() & SYS
    assert not g.status() & OBF


def test_ctr_round_trip(g: Guest) -> None:
    g.command(0x60, 0x47)
    g.command(0x20)
    assert g.replies() == [0x47]
    g.command(0x60, 0x74)
    g.command(0x20)
    assert g.replies() == [0x74]


def test_cmd_data_status_bit(g: Guest) -> None:
    g.command(0x20)
    assert g.status() & CMDDAT
    g.replies()
    g.send(0xF4)
    assert not g.status() & CMDDAT


def test_0xfe_pulses_reset(g: Guest) -> None:
    g.command(0xFF)  # pulses no line
    assert g.resets == 0
    g.command(0xFE)
    assert g.resets == 1


def test_pulse_codes_with_bit0_clear_reset(g: Guest) -> None:
    g.command(0xF0)
    g.command(0xFC)
    g.command(0xFD)  # bit 0 set: the reset line is not pulsed
    assert g.resets == 2


def test_output_port_write_with_bit0_clear_resets(g: Guest) -> None:
    g.command(0xD1, 0x03)
    assert g.resets == 0
    g.command(0xD0)
    assert g.replies() == [0x03]
    g.command(0xD1, 0x02)
    assert g.resets == 1


def test_interface_tests(g: Guest) -> None:
    g.command(0xAB)
    assert g.replies() == [0x00]
    g.command(0xA9)
    (aux,) = g.replies()
    # i8042_check_aux(): anything but 0x00, 0xFA or 0xFF means no aux port.
    assert aux not in (0x00, 0xFA, 0xFF)


def test_aux_loop_gets_no_answer(g: Guest) -> None:
    # Linux's AUX_LOOP (0xD3, param 0x5A) on a controller without an aux port:
    # nothing comes back, so it cannot pass the loopback check.
    g.command(0xD3, 0x5A)
    assert not g.status() & (OBF | AUXDATA)
    g.command(0xD4, 0xF4)  # a byte for the missing mouse vanishes too
    assert not g.status() & OBF


def test_linux_probe_finds_keyboard_only(g: Guest) -> None:
    # The order of i8042_probe(): selftest, read/write CTR, check_aux, enable kbd.
    g.command(0xAA)
    assert g.replies() == [0x55]
    g.command(0x20)
    (ctr,) = g.replies()
    g.command(0x60, (ctr | 0x10) & ~0x01)
    g.command(0xD3, 0x5A)
    assert g.replies() == []
    g.command(0xA9)
    assert g.replies()[0] not in (0x00, 0xFA, 0xFF)
    g.command(0x60, (ctr & ~0x10) | 0x01)
    g.command(0x20)
    assert g.replies() == [(ctr & ~0x10) | 0x01]


def test_kbd_enable_disable_in_ctr(g: Guest) -> None:
    g.command(0xAD)
    g.command(0x20)
    assert g.replies()[0] & 0x10
    g.command(0xAE)
    g.command(0x20)
    assert not g.replies()[0] & 0x10
    g.command(0xA7)
    g.command(0x20)
    assert g.replies()[0] & 0x20


def test_keyboard_reset(g: Guest) -> None:
    g.send(0xFF)
    assert g.replies() == [0xFA, 0xAA]


def test_keyboard_identify(g: Guest) -> None:
    g.send(0xF2)
    assert g.replies() == [0xFA, 0xAB, 0x83]


def test_keyboard_commands_with_argument(g: Guest) -> None:
    g.send(0xED)  # set LEDs
    assert g.replies() == [0xFA]
    g.send(0x07)
    assert g.replies() == [0xFA]
    assert g.kbc.leds == 0x07
    g.send(0xF3)  # typematic rate
    g.send(0x20)
    assert g.replies() == [0xFA, 0xFA]
    g.send(0xF0)  # query scan code set
    g.send(0x00)
    assert g.replies() == [0xFA, 0xFA, 0x02]


def test_keyboard_simple_commands(g: Guest) -> None:
    g.send(0xF5)
    g.send(0xF4)
    assert g.replies() == [0xFA, 0xFA]
    g.send(0xEE)
    assert g.replies() == [0xEE]  # echo answers without ACK
    g.send(0x12)
    assert g.replies() == [0xFE]  # not a command: resend request


def test_keyboard_loopback(g: Guest) -> None:
    g.command(0xD2, 0x9C)
    assert g.replies() == [0x9C]


def test_irq_follows_pending_data(g: Guest) -> None:
    g.command(0x60, 0x01)  # KBDINT on
    g.send(0xFF)  # two bytes pending
    assert g.irqs == [True]
    assert g.bus.read(0x60, 1) == 0xFA
    assert g.irqs == [True, False, True]  # a fresh edge for the second byte
    assert g.bus.read(0x60, 1) == 0xAA
    assert g.irqs == [True, False, True, False]


def test_no_irq_without_kbdint(g: Guest) -> None:
    g.command(0x60, 0x00)
    g.send(0xF2)
    assert g.replies() == [0xFA, 0xAB, 0x83]
    assert g.irqs == []
