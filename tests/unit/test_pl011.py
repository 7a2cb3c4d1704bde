"""devices/pl011.py against the PL011 TRM (ARM DDI 0183) and what Linux's amba bus and
amba-pl011 driver read from it."""

from __future__ import annotations

import pytest

from xenopus.devices.pl011 import Pl011

BASE = 0x0900_0000
DR, FR, LCR_H, CR, IFLS, IMSC, RIS, MIS, ICR = (
    0x00, 0x18, 0x2C, 0x30, 0x34, 0x38, 0x3C, 0x40, 0x44)
TXFE, RXFF, TXFF, RXFE, BUSY = 0x80, 0x40, 0x20, 0x10, 0x08
RXIM, TXIM, RTIM, OEIM = 1 << 4, 1 << 5, 1 << 6, 1 << 10
FEN, LBE = 1 << 4, 1 << 7


class Rig:
    def __init__(self) -> None:
        self.levels: list[bool] = []
        self.out = bytearray()
        self.uart = Pl011(irq=self.levels.append, output=self.out.extend)

    def r(self, off: int) -> int:
        return self.uart.read(BASE, off, 4)

    def w(self, off: int, value: int) -> None:
        self.uart.write(BASE, off, 4, value)

    @property
    def line(self) -> bool:
        return bool(self.levels) and self.levels[-1]


def test_reset_values() -> None:
    rig = Rig()
    assert rig.r(FR) & (TXFE | RXFE | TXFF | RXFF | BUSY) == TXFE | RXFE  # TRM 3.3.3
    assert rig.r(CR) == 0x300  # TRM 3.3.8
    assert rig.r(IFLS) == 0x12  # TRM 3.3.9
    assert rig.r(IMSC) == 0 and rig.r(MIS) == 0


def test_amba_identification() -> None:
    """Linux's amba bus reads the 4 PeriphID and 4 PCellID bytes, one per word
    (drivers/amba/bus.c amba_read_periphid), and amba-pl011 matches 0x00041011 under
    mask 0x000fffff; the PrimeCell ID must be 0xB105F00D."""
    rig = Rig()
    periph = sum((rig.r(0xFE0 + 4 * i) & 0xFF) << (8 * i) for i in range(4))
    cell = sum((rig.r(0xFF0 + 4 * i) & 0xFF) << (8 * i) for i in range(4))
    assert periph & 0x000FFFFF == 0x00041011
    assert cell == 0xB105F00D
    assert (periph >> 20) & 0xF < 3  # revision < 3: amba-pl011's 16-entry FIFOs


def test_transmit_and_tx_interrupt() -> None:
    rig = Rig()
    rig.w(IMSC, TXIM)
    assert not rig.line  # nothing sent yet
    rig.w(DR, ord("h"))
    rig.uart.write(BASE, DR, 1, ord("i"))  # earlycon's byte-wide store
    assert bytes(rig.out) == b"hi"
    assert rig.r(MIS) == TXIM and rig.line
    rig.w(ICR, TXIM)
    assert rig.r(RIS) & TXIM == 0 and not rig.line


def test_receive_without_fifo_overruns() -> None:
    rig = Rig()
    rig.w(IMSC, RXIM | OEIM)
    rig.uart.receive(b"ab")  # one-byte holding register; the rest waits on the host side
    assert rig.line and rig.r(MIS) == RXIM
    assert rig.r(FR) & (RXFE | RXFF) == RXFF
    assert rig.r(DR) == ord("a")
    assert rig.r(DR) == ord("b")
    assert rig.r(FR) & RXFE and not rig.line
    rig.w(CR, 0x300 | LBE | 1)  # loopback: a second byte while one waits is an overrun
    rig.w(DR, 1)
    rig.w(DR, 2)
    assert rig.r(RIS) & OEIM
    assert rig.r(DR) == 1


def test_fifo_trigger_level_and_timeout() -> None:
    rig = Rig()
    rig.w(LCR_H, FEN | 0x60)  # 8 bits, FIFOs on
    rig.w(IMSC, RXIM | RTIM)
    rig.uart.receive(b"1234567")  # below the reset trigger (1/2 of 16 = 8): timeout
    assert rig.r(MIS) == RTIM and rig.line
    rig.uart.receive(b"8")
    assert rig.r(MIS) == RXIM
    rig.uart.receive(b"x" * 20)  # 16 in the FIFO, the rest waits
    assert rig.r(FR) & RXFF and rig.uart.pending == 28
    got = bytes(rig.r(DR) for _ in range(28))
    assert got == b"12345678" + b"x" * 20
    assert rig.r(FR) & RXFE and not rig.line


@pytest.mark.parametrize("offset", [0x4C, 0x80, 0xFDC])
def test_reserved_reads_zero_and_writes_are_ignored(offset: int) -> None:
    rig = Rig()
    rig.w(offset, 0xFFFFFFFF)
    assert rig.r(offset) == 0
    assert rig.r(CR) == 0x300
