"""An Arm PrimeCell PL011 UART (ARM DDI 0183, "PrimeCell UART (PL011) Technical
Reference Manual", r1p5), the console of arm64 guests (Linux's amba-pl011 driver and its
`earlycon=pl011,<addr>`, QEMU virt's UART).

Register offsets, bits and reset values follow the TRM's §3.2 "Summary of registers" and
§3.3 "Register descriptions"; interrupts its §3.4 "Interrupts". Transmission is immediate,
so the transmit FIFO is always empty (UARTFR TXFE) and each write to UARTDR raises the
transmit interrupt afterwards (the FIFO passed its trigger level on the way down), as
QEMU's pl011 does. Like QEMU, a byte is sent whether or not UARTCR.UARTEN is set: Linux's
earlycon writes UARTDR before any driver enables the UART.
Host input arrives through `receive()` from another thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from xenopus.devices.uart import HostInput, UartHostSide

# Register offsets (§3.2, Table 3-1)
UARTDR = 0x000
UARTRSR_ECR = 0x004
UARTFR = 0x018
UARTILPR = 0x020
UARTIBRD = 0x024
UARTFBRD = 0x028
UARTLCR_H = 0x02C
UARTCR = 0x030
UARTIFLS = 0x034
UARTIMSC = 0x038
UARTRIS = 0x03C
UARTMIS = 0x040
UARTICR = 0x044
UARTDMACR = 0x048
UARTPERIPHID0 = 0xFE0
UARTPCELLID0 = 0xFF0
MMIO_SIZE = 0x1000  # the PrimeCell's 4 KiB frame

# UARTFR (§3.3.3)
FR_CTS = 1 << 0
FR_DSR = 1 << 1
FR_DCD = 1 << 2
FR_BUSY = 1 << 3
FR_RXFE = 1 << 4
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6
FR_TXFE = 1 << 7

# UARTLCR_H (§3.3.7): FEN enables the FIFOs (16 entries each on r1p5); else 1-byte holding registers
LCR_H_FEN = 1 << 4
# UARTCR (§3.3.8): reset value 0x0300 (TXE, RXE)
CR_UARTEN = 1 << 0
CR_LBE = 1 << 7
CR_TXE = 1 << 8
CR_RXE = 1 << 9
CR_RESET = CR_TXE | CR_RXE
# UARTIFLS (§3.3.9): reset 0x12, both FIFOs at half (8 of 16); bits 2:0 TX, 5:3 RX
IFLS_RESET = 0x12
FIFO_LEVELS = (2, 4, 8, 12, 14)  # 1/8, 1/4, 1/2, 3/4, 7/8 of 16

# Interrupt bits, the same in UARTIMSC/RIS/MIS/ICR (§3.3.10-13)
INT_RI = 1 << 0
INT_CTS = 1 << 1
INT_DCD = 1 << 2
INT_DSR = 1 << 3
INT_RX = 1 << 4
INT_TX = 1 << 5
INT_RT = 1 << 6  # receive timeout
INT_FE = 1 << 7
INT_PE = 1 << 8
INT_BE = 1 << 9
INT_OE = 1 << 10
INT_ALL = (1 << 11) - 1

# Identification registers (§3.3.14-15): PeriphID = 0x00_14_10_11 (part 0x011, designer
# 0x41 "ARM", revision 1), PCellID = 0xB105F00D. Linux's amba bus matches 0x00041011
# under mask 0x000fffff; revision < 3 tells amba-pl011 the FIFOs hold 16 entries.
PERIPH_ID = (0x11, 0x10, 0x14, 0x00)
PCELL_ID = (0x0D, 0xF0, 0x05, 0xB1)

FIFO_SIZE = 16


class Pl011(UartHostSide):
    """`irq(level)` is called when UARTMIS's OR changes (the combined UARTINTR line);
    `output(data)` receives each transmitted byte (unless in loopback)."""

    def __init__(self, irq: Callable[[bool], None], output: Callable[[bytes], None]) -> None:
        self._irq = irq
        self._output = output
        self._lock = threading.Lock()
        self._level = False
        self._rx: deque[int] = deque()
        self._backlog = HostInput()
        self._ris = 0  # the latched (non-FIFO-level) raw interrupt bits
        self._imsc = 0
        self._lcr_h = 0
        self._cr = CR_RESET
        self._ifls = IFLS_RESET
        self._ibrd = self._fbrd = self._ilpr = self._dmacr = 0

    # (the host side, receive/pending/dropped: UartHostSide)

    # -- guest side (BusDevice) -------------------------------------------------

    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            value = self._read_reg(offset & ~3) >> (8 * (offset & 3))
            self._update_irq()
        return value & ((1 << (8 * size)) - 1)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        sent = bytearray()
        with self._lock:
            self._write_reg(offset & ~3, (value << (8 * (offset & 3))) & 0xFFFF_FFFF, sent)
            self._update_irq()
        if sent:  # outside the lock: a slow console must not stall other vCPUs
            self._output(bytes(sent))

    # -- registers -------------------------------------------------------------

    def _read_reg(self, offset: int) -> int:
        if offset == UARTDR:
            if not self._rx:
                return 0
            byte = self._rx.popleft()
            self._refill()
            return byte  # bits 11:8 (OE, BE, PE, FE): no line errors on our wire
        if offset == UARTFR:
            fr = FR_TXFE | FR_CTS | FR_DSR | FR_DCD  # the host end is attached and ready
            fr |= FR_RXFE if not self._rx else 0
            fr |= FR_RXFF if len(self._rx) >= self._capacity() else 0
            return fr
        if offset == UARTRIS:
            return self._raw()
        if offset == UARTMIS:
            return self._raw() & self._imsc
        registers = {UARTRSR_ECR: 0, UARTILPR: self._ilpr, UARTIBRD: self._ibrd,
                     UARTFBRD: self._fbrd, UARTLCR_H: self._lcr_h, UARTCR: self._cr,
                     UARTIFLS: self._ifls, UARTIMSC: self._imsc, UARTDMACR: self._dmacr}
        if offset in registers:
            return registers[offset]
        if UARTPERIPHID0 <= offset < UARTPERIPHID0 + 16:
            return PERIPH_ID[(offset - UARTPERIPHID0) // 4]
        if UARTPCELLID0 <= offset < UARTPCELLID0 + 16:
            return PCELL_ID[(offset - UARTPCELLID0) // 4]
        return 0  # reserved: reads as zero

    def _write_reg(self, offset: int, value: int, sent: bytearray) -> None:
        if offset == UARTDR:
            byte = value & 0xFF
            if self._cr & CR_LBE:
                self._to_receiver(byte)  # §3.3.8 LBE: UARTTXD is fed to UARTRXD
            else:
                sent.append(byte)
            self._ris |= INT_TX
        elif offset == UARTRSR_ECR:
            self._ris &= ~(INT_FE | INT_PE | INT_BE | INT_OE)  # any write clears the errors
        elif offset == UARTLCR_H:
            if (value ^ self._lcr_h) & LCR_H_FEN:
                # Disabling the FIFOs leaves a 1-byte holding register: keep the oldest byte.
                while len(self._rx) > (FIFO_SIZE if value & LCR_H_FEN else 1):
                    self._backlog.give_back(self._rx.pop())
            self._lcr_h = value & 0xFF
            self._refill()
        elif offset == UARTCR:
            was_loop = self._cr & CR_LBE
            self._cr = value & 0xFF87  # bits 6:3 reserved (§3.3.8)
            if was_loop and not self._cr & CR_LBE:
                self._refill()
        elif offset == UARTIMSC:
            self._imsc = value & INT_ALL
        elif offset == UARTICR:
            self._ris &= ~value
        elif offset == UARTIBRD:
            self._ibrd = value & 0xFFFF
        elif offset == UARTFBRD:
            self._fbrd = value & 0x3F
        elif offset == UARTIFLS:
            self._ifls = value & 0x3F
        elif offset == UARTILPR:
            self._ilpr = value & 0xFF
        elif offset == UARTDMACR:
            self._dmacr = value & 0x7
        # UARTFR, RIS, MIS and the ID registers are read-only.

    # -- receiver --------------------------------------------------------------

    def _capacity(self) -> int:
        return FIFO_SIZE if self._lcr_h & LCR_H_FEN else 1

    def _rx_trigger(self) -> int:
        level = (self._ifls >> 3) & 7
        return FIFO_LEVELS[level] if level < len(FIFO_LEVELS) else FIFO_LEVELS[2]

    def _to_receiver(self, byte: int) -> None:
        if len(self._rx) < self._capacity():
            self._rx.append(byte)
        else:
            self._ris |= INT_OE  # §3.4 UARTOEINTR: the FIFO was full, the byte is lost

    def _refill(self) -> None:
        if self._cr & CR_LBE:  # loopback disconnects UARTRXD: host bytes wait
            return
        self._backlog.fill(self._rx, self._capacity())

    # -- interrupts (§3.4) -------------------------------------------------------

    def _raw(self) -> int:
        """UARTRIS: the latched bits and the receive ones, which follow the FIFO: RX when
        it holds the trigger level (or a byte, FIFOs off), RT when bytes wait below it
        (the TRM raises RT after 32 idle bit periods; we raise it at once)."""
        raw = self._ris
        if self._rx:
            if self._lcr_h & LCR_H_FEN and len(self._rx) < self._rx_trigger():
                raw |= INT_RT
            else:
                raw |= INT_RX
        return raw

    def _update_irq(self) -> None:
        level = bool(self._raw() & self._imsc)
        if level != self._level:
            self._level = level
            self._irq(level)
