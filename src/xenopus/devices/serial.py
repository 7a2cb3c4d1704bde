"""A 16550A UART, as described by the TI/National PC16550D datasheet.

Register numbers, bits and reset values follow the datasheet's register summary,
its "UART Reset Configuration" and "Interrupt Control Functions" tables and the
per-register descriptions of its "Registers" chapter, cited below by register
name. Transmission is immediate,
so THR and the transmitter shift register are always empty (LSR THRE|TEMT).
Host input arrives through `receive()` from another thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from xenopus.devices.bus import read_lanes, write_lanes
from xenopus.devices.uart import HostInput, UartHostSide
from xenopus.stream import check_state

# Register offsets; DLAB (LCR bit 7) turns offsets 0/1 into the divisor latch.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# Interrupt Enable Register
IER_RDA = 0x01  # ERBFI: received data available (and character timeout)
IER_THRE = 0x02  # ETBEI: transmitter holding register empty
IER_RLS = 0x04  # ELSI: receiver line status
IER_MS = 0x08  # EDSSI: modem status

# Interrupt Identification Register: bit 0 clear = interrupt pending; the
# "Interrupt Control Functions" table gives priorities and reset methods.
IIR_NONE = 0x01
IIR_RLS = 0x06  # priority 1
IIR_RDA = 0x04  # priority 2
IIR_TIMEOUT = 0x0C  # priority 2 (FIFO mode)
IIR_THRE = 0x02  # priority 3
IIR_MS = 0x00  # priority 4
IIR_FIFOS = 0xC0  # bits 7:6 set when FCR0 = 1

# FIFO Control Register
FCR_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04
TRIGGER_LEVELS = (1, 4, 8, 14)  # FCR bits 7:6

LCR_DLAB = 0x80

# Modem Control Register
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

# Line Status Register
LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# Modem Status Register: deltas in the low nibble, line states in the high nibble.
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
# With no loopback the host end looks like an attached, ready modem.
MSR_IDLE_LINES = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_SIZE = 16


class Serial16550(UartHostSide):
    """COM port. `irq(level)` is called only when the computed level changes;
    `output(data)` receives each transmitted byte (unless in loopback)."""

    def __init__(self, irq: Callable[[bool], None], output: Callable[[bytes], None]) -> None:
        self._irq = irq
        self._output = output
        self._lock = threading.Lock()
        self._level = False
        self._rx: deque[int] = deque()  # the receiver FIFO (holding register when FIFOs off)
        self._backlog = HostInput()
        # Reset values: the datasheet's "UART Reset Configuration" table.
        self._rbr = 0
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._dll = 0
        self._dlm = 0
        self._errors = 0  # LSR bits 1-4, cleared by reading LSR
        self._fifo = False
        self._trigger = 1
        self._thr_pending = False
        self._lines = MSR_IDLE_LINES
        self._deltas = 0

    # (the host side, receive/pending/dropped: UartHostSide)

    # -- save/restore -----------------------------------------------------------

    STATE_VERSION = 1

    def save_state(self) -> dict:
        with self._lock:
            return {
                "version": self.STATE_VERSION, "rx": bytes(self._rx),
                "backlog": bytes(self._backlog), "rbr": self._rbr, "ier": self._ier,
                "lcr": self._lcr, "mcr": self._mcr, "scr": self._scr, "dll": self._dll,
                "dlm": self._dlm, "errors": self._errors, "fifo": self._fifo,
                "trigger": self._trigger, "thr_pending": self._thr_pending,
                "lines": self._lines, "deltas": self._deltas, "level": self._level,
            }

    def restore_state(self, state: object) -> None:
        """Take `save_state`'s registers and FIFOs; the IRQ line is driven again to the
        saved level (the interrupt controller's restored state expects it there)."""
        s = check_state(state, "16550", self.STATE_VERSION)
        with self._lock:
            self._rx = deque(s["rx"])
            self._backlog.load(s["backlog"])
            self._rbr, self._ier, self._lcr = s["rbr"], s["ier"], s["lcr"]
            self._mcr, self._scr, self._dll, self._dlm = s["mcr"], s["scr"], s["dll"], s["dlm"]
            self._errors, self._fifo, self._trigger = s["errors"], s["fifo"], s["trigger"]
            self._thr_pending, self._lines, self._deltas = (
                s["thr_pending"], s["lines"], s["deltas"])
            self._level = bool(s["level"])
            self._irq(self._level)

    # -- guest side (BusDevice) -------------------------------------------------

    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            value = read_lanes(self._read_reg, offset, size)
            self._update_irq()
        return value

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        sent = bytearray()
        with self._lock:
            write_lanes(lambda o, v: self._write_reg(o, v, sent), offset, size, value)
            self._update_irq()
        # Outside the lock: a slow console must not stall other vCPUs' register
        # accesses. The guest serialises its own THR writes.
        if sent:
            self._output(bytes(sent))

    # -- registers -------------------------------------------------------------

    def _read_reg(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR:
            if dlab:
                return self._dll
            if self._rx:
                self._rbr = self._rx.popleft()
                self._refill()
            return self._rbr  # an empty RBR keeps showing its last byte
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR:
            iir = self._iir()
            # Interrupt Control Functions: reading IIR resets the THRE interrupt if it is the source.
            if iir & 0x0F == IIR_THRE:
                self._thr_pending = False
            return iir
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            lsr = (LSR_DR if self._rx else 0) | self._errors | LSR_THRE | LSR_TEMT
            self._errors = 0  # LSR: OE/PE/FE/BI are reset when LSR is read
            return lsr
        if offset == MSR:
            msr = self._lines | self._deltas
            self._deltas = 0  # MSR: the delta bits are reset when MSR is read
            return msr
        return self._scr

    def _write_reg(self, offset: int, value: int, sent: bytearray) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self._dll = value
                return
            if self._mcr & MCR_LOOP:
                self._to_receiver(value)  # MCR bit 4: loopback feeds the TSR into the RSR
            else:
                sent.append(value)
            # Writing THR clears the THRE interrupt; the byte leaves at once, so
            # THR is empty again and the interrupt is set anew.
            self._thr_pending = True
        elif offset == IER:
            if dlab:
                self._dlm = value
                return
            enabling = value & IER_THRE and not self._ier & IER_THRE
            self._ier = value & 0x0F
            if enabling:
                # THR is empty, so enabling ETBEI raises THRE at once (Linux's
                # serial8250_startup relies on this to detect UART_BUG_THRE).
                self._thr_pending = True
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            was_loop = self._mcr & MCR_LOOP
            self._mcr = value & 0x1F
            self._set_lines(self._loop_lines() if self._mcr & MCR_LOOP else MSR_IDLE_LINES)
            if was_loop and not self._mcr & MCR_LOOP:
                self._refill()
        elif offset == SCR:
            self._scr = value
        # LSR and MSR writes (for factory test only) are ignored.

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo:
            self._rx.clear()  # FCR: changing FCR0 clears both FIFOs
            self._fifo = enable
        if enable:  # FCR: other bits are only programmed with FCR0 = 1
            if value & FCR_RX_RESET:
                self._rx.clear()
            self._trigger = TRIGGER_LEVELS[value >> 6]
        self._refill()

    # -- receiver --------------------------------------------------------------

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo else 1

    def _to_receiver(self, byte: int) -> None:
        if len(self._rx) < self._capacity():
            self._rx.append(byte)
            return
        # LSR bit 1, overrun error. Without FIFOs the new byte overwrites RBR;
        # with FIFOs the FIFO is kept and the byte in the shift register is lost.
        self._errors |= LSR_OE
        if not self._fifo:
            self._rx[0] = byte

    def _refill(self) -> None:
        # Loopback disconnects the serial input (MCR bit 4), so host bytes wait.
        if self._mcr & MCR_LOOP:
            return
        self._backlog.fill(self._rx, self._capacity())

    # -- modem lines -----------------------------------------------------------

    def _loop_lines(self) -> int:
        # MCR bit 4: in loopback DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
        m = self._mcr
        return (
            (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )

    def _set_lines(self, lines: int) -> None:
        changed = lines ^ self._lines
        if changed & MSR_CTS:
            self._deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self._deltas |= MSR_DDCD
        if self._lines & MSR_RI and not lines & MSR_RI:
            self._deltas |= MSR_TERI  # trailing edge only
        self._lines = lines

    # -- interrupts ------------------------------------------------------------

    def _iir(self) -> int:
        ier = self._ier
        if ier & IER_RLS and self._errors:
            ident = IIR_RLS
        elif ier & IER_RDA and self._rx:
            # With FIFOs, below the trigger level the datasheet raises the
            # character timeout after 4 character times; we raise it at once
            # so data that is waiting always gets an interrupt.
            ident = IIR_TIMEOUT if self._fifo and len(self._rx) < self._trigger else IIR_RDA
        elif ier & IER_THRE and self._thr_pending:
            ident = IIR_THRE
        elif ier & IER_MS and self._deltas:
            ident = IIR_MS
        else:
            ident = IIR_NONE
        return ident | (IIR_FIFOS if self._fifo else 0)

    def _update_irq(self) -> None:
        # Called with the lock held so level changes reach the line in order.
        level = not self._iir() & IIR_NONE
        if level != self._level:
            self._level = level
            self._irq(level)
