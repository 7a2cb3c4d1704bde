"""16550A UART, driven through its registers as a guest driver does.

Expected values come from the PC16550D datasheet (register descriptions, the
"UART Reset Configuration" and "Interrupt Control Functions" tables) and from
what Linux's drivers/tty/serial/8250/8250_port.c checks in autoconfig().
"""

from __future__ import annotations

import threading
import time

import pytest

from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.serial import Serial16550
from xenopus.devices.uart import BACKLOG_LIMIT

THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7


class Guest:
    """COM1 on a port bus, with the IRQ line and the console output recorded."""

    def __init__(self) -> None:
        self.irqs: list[bool] = []
        self.out: list[bytes] = []
        self.uart = Serial16550(self.irqs.append, self.out.append)
        self.bus = Bus("pio")
        self.bus.register(platform.COM1_PORT, 8, self.uart, "com1")

    def inb(self, reg: int) -> int:
        return self.bus.read(platform.COM1_PORT + reg, 1)

    def outb(self, reg: int, value: int) -> None:
        self.bus.write(platform.COM1_PORT + reg, 1, value)

    @property
    def level(self) -> bool:
        return bool(self.irqs) and self.irqs[-1]

    def drain(self) -> bytes:
        got = bytearray()
        while self.inb(LSR) & 0x01:
            got.append(self.inb(RBR))
        return bytes(got)


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_com1_constants() -> None:
    assert (platform.COM1_PORT, platform.COM1_IRQ) == (0x3F8, 4)


def test_reset_values(g: Guest) -> None:
    # UART Reset Configuration: IER 0, IIR 0x01, LCR 0, MCR 0, LSR 0x60.
    assert g.inb(IER) == 0
    assert g.inb(IIR) == 0x01
    assert g.inb(LCR) == 0
    assert g.inb(MCR) == 0
    assert g.inb(LSR) == 0x60
    assert g.irqs == []


def test_scratch_round_trip(g: Guest) -> None:
    for v in (0xA5, 0x5A, 0x00, 0xFF):
        g.outb(SCR, v)
        assert g.inb(SCR) == v


def test_ier_probe_as_linux_autoconfig(g: Guest) -> None:
    # autoconfig(): IER=0 must read 0, IER=0x0F must read 0x0F (low nibble).
    g.outb(IER, 0)
    assert g.inb(IER) & 0x0F == 0
    g.outb(IER, 0x0F)
    assert g.inb(IER) & 0x0F == 0x0F
    g.outb(IER, 0xFF)
    assert g.inb(IER) == 0x0F  # bits 7:4 are always 0


def test_divisor_latch_does_not_disturb_thr_ier(g: Guest) -> None:
    g.outb(IER, 0x05)
    g.outb(LCR, 0x83)  # DLAB + 8N1
    g.outb(DLL, 0x01)
    g.outb(DLM, 0x02)
    assert (g.inb(DLL), g.inb(DLM)) == (0x01, 0x02)
    assert g.out == []  # the DLL write was not transmitted
    g.outb(LCR, 0x03)
    assert g.inb(IER) == 0x05
    assert g.inb(LCR) == 0x03
    g.outb(THR, ord("x"))
    assert g.out == [b"x"]
    g.outb(LCR, 0x83)
    assert (g.inb(DLL), g.inb(DLM)) == (0x01, 0x02)  # the THR write left DLL alone


def test_output_gets_transmitted_bytes(g: Guest) -> None:
    for ch in b"hello\r\n":
        assert g.inb(LSR) & 0x20  # THRE: ready for the next byte
        g.outb(THR, ch)
    assert b"".join(g.out) == b"hello\r\n"
    assert g.inb(LSR) & 0x60 == 0x60  # THRE and TEMT: all sent


def test_loopback_test_as_linux_autoconfig(g: Guest) -> None:
    # autoconfig(): MCR = LOOP | 0x0A (RTS, OUT2) must give MSR & 0xF0 == DCD|CTS (0x90).
    g.outb(MCR, 0x10 | 0x0A)
    assert g.inb(MSR) & 0xF0 == 0x90


@pytest.mark.parametrize(
    ("mcr", "msr_high"),
    [(0x01, 0x20), (0x02, 0x10), (0x04, 0x40), (0x08, 0x80), (0x0F, 0xF0), (0x00, 0x00)],
)
def test_loopback_mirrors_modem_lines(g: Guest, mcr: int, msr_high: int) -> None:
    # MCR bit 4: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
    g.outb(MCR, 0x10 | mcr)
    assert g.inb(MSR) & 0xF0 == msr_high


def test_loopback_data_comes_back_not_out(g: Guest) -> None:
    g.outb(MCR, 0x10)
    g.outb(THR, 0x41)
    assert g.out == []
    assert g.inb(LSR) & 0x01
    assert g.inb(RBR) == 0x41
    assert not g.inb(LSR) & 0x01
    g.outb(MCR, 0x00)
    g.outb(THR, 0x42)
    assert g.out == [b"B"]
    assert not g.inb(LSR) & 0x01


def test_modem_status_deltas(g: Guest) -> None:
    # Outside loopback the host end shows DCD, DSR, CTS; entering loopback with
    # all outputs low drops them, which the delta bits report once.
    assert g.inb(MSR) == 0xB0
    g.outb(MCR, 0x10)
    assert g.inb(MSR) == 0x0B  # DDCD | DDSR | DCTS, lines now low
    assert g.inb(MSR) == 0x00  # deltas clear on read
    g.outb(MCR, 0x14)  # OUT1 → RI rises: no TERI on a leading edge
    assert g.inb(MSR) == 0x40
    g.outb(MCR, 0x10)  # RI falls: TERI
    assert g.inb(MSR) == 0x04


def test_fifo_enable_shows_in_iir(g: Guest) -> None:
    g.outb(FCR, 0x01)
    assert g.inb(IIR) == 0xC1  # bits 7:6 = 11: 16550A with working FIFOs
    g.outb(FCR, 0x00)
    assert g.inb(IIR) == 0x01


def test_fifo_holds_16_and_17th_overruns(g: Guest) -> None:
    g.outb(FCR, 0x07)
    g.outb(MCR, 0x10)
    for b in range(17):
        g.outb(THR, b)
    assert g.inb(LSR) == 0x63  # DR, OE, THRE, TEMT
    assert g.inb(LSR) == 0x61  # OE clears on read
    assert g.drain() == bytes(range(16))  # the 17th byte was lost


def test_holding_register_overrun_without_fifo(g: Guest) -> None:
    g.outb(MCR, 0x10)
    g.outb(THR, 1)
    g.outb(THR, 2)
    assert g.inb(LSR) & 0x03 == 0x03
    assert g.drain() == b"\x02"  # the new byte overwrote RBR


def test_fifo_reset_empties(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.outb(MCR, 0x10)
    for b in b"abcde":
        g.outb(THR, b)
    assert g.inb(LSR) & 0x01
    g.outb(FCR, 0x03)  # enable + RX reset
    assert not g.inb(LSR) & 0x01
    assert g.inb(IIR) & 0xC0 == 0xC0  # still in FIFO mode


def test_disabling_fifos_clears_them(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.outb(MCR, 0x10)
    g.outb(THR, 0x55)
    g.outb(FCR, 0x00)
    assert not g.inb(LSR) & 0x01


def test_iir_priorities(g: Guest) -> None:
    g.outb(FCR, 0x01)  # trigger level 1
    g.outb(MCR, 0x10)  # loopback: also sets modem-status deltas
    for b in range(17):  # fill the FIFO and overrun it
        g.outb(THR, b)
    g.outb(IER, 0x0F)
    assert g.inb(IIR) == 0xC6  # receiver line status first
    g.inb(LSR)
    assert g.inb(IIR) == 0xC4  # then received data available
    g.drain()
    assert g.inb(IIR) == 0xC2  # then THR empty; this read clears it
    assert g.inb(IIR) == 0xC0  # then modem status
    g.inb(MSR)
    assert g.inb(IIR) == 0xC1
    assert g.irqs == [True, False]


def test_character_timeout_below_trigger(g: Guest) -> None:
    g.outb(FCR, 0xC1)  # trigger level 14
    g.outb(MCR, 0x10)
    g.outb(IER, 0x01)
    for b in range(3):
        g.outb(THR, b)
    assert g.inb(IIR) == 0xCC  # data waiting below the trigger: timeout code
    for b in range(11):
        g.outb(THR, b)
    assert g.inb(IIR) == 0xC4  # 14 bytes: trigger level reached
    g.drain()
    assert g.inb(IIR) == 0xC1
    assert g.irqs == [True, False]


def test_thre_interrupt_on_enable_cleared_by_iir_read(g: Guest) -> None:
    g.outb(IER, 0x02)
    assert g.irqs == [True]
    assert g.inb(IIR) == 0x02
    assert g.irqs == [True, False]
    assert g.inb(IIR) == 0x01
    g.outb(THR, ord("a"))  # the byte leaves at once: THR empty again
    assert g.irqs == [True, False, True]
    assert g.out == [b"a"]
    g.outb(IER, 0x00)
    assert g.irqs == [True, False, True, False]


def test_irq_callable_sees_level_changes_only(g: Guest) -> None:
    g.outb(IER, 0x02)
    g.outb(IER, 0x02)  # no new edge: ETBEI was already on
    g.inb(LSR)
    g.inb(MSR)
    g.outb(SCR, 1)
    assert g.irqs == [True]
    g.inb(IIR)
    g.inb(IIR)
    assert g.irqs == [True, False]
    g.outb(IER, 0x03)
    g.uart.receive(b"xy")
    g.drain()
    assert all(a != b for a, b in zip(g.irqs, g.irqs[1:], strict=False))


@pytest.mark.parametrize("fcr", [0x00, 0x01, 0xC1])
def test_receive_100_bytes_all_reach_guest_in_order(g: Guest, fcr: int) -> None:
    g.outb(FCR, fcr)
    g.outb(IER, 0x01)
    data = bytes((i * 7) & 0xFF for i in range(100))
    g.uart.receive(data)
    assert g.level
    assert g.drain() == data
    assert not g.level
    assert g.uart.pending == 0
    assert g.uart.dropped == 0


def test_receive_overflow_drops_and_counts(g: Guest) -> None:
    data = bytes(i & 0xFF for i in range(BACKLOG_LIMIT + 10))
    g.uart.receive(data)
    assert g.uart.dropped == 10  # the backlog is full; the FIFO had not taken any yet
    assert g.uart.pending == BACKLOG_LIMIT
    assert g.drain() == data[:BACKLOG_LIMIT]


def test_host_input_waits_during_loopback(g: Guest) -> None:
    g.outb(MCR, 0x10)
    g.uart.receive(b"typed")
    assert not g.inb(LSR) & 0x01  # the serial input is disconnected
    g.outb(MCR, 0x00)
    assert g.drain() == b"typed"


def test_receive_from_another_thread() -> None:
    g = Guest()
    g.outb(FCR, 0x01)
    data = bytes(i & 0xFF for i in range(20000))

    def host() -> None:
        for i in range(0, len(data), 100):
            g.uart.receive(data[i : i + 100])

    t = threading.Thread(target=host)
    t.start()
    got = bytearray()
    deadline = time.monotonic() + 30
    while len(got) < len(data) and time.monotonic() < deadline:
        got += g.drain()
    t.join()
    assert bytes(got) == data
