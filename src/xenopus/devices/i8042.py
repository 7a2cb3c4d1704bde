"""The PC's 8042 keyboard controller, with a keyboard and no auxiliary (mouse) port.

Modelled as far as Linux's drivers/input/serio/i8042.c probes it and
drivers/input/keyboard/atkbd.c talks to the keyboard, and as far as guests
use it to reset the machine (command 0xFE, or the output port's reset line).
Status, CTR bits and command numbers are those of drivers/input/serio/i8042.h.

There is no aux port, as on an AT-type controller: i8042_check_aux() first
sends AUX_LOOP (0xD3), which such a controller does not answer (Linux reads a
timeout, logged at debug level only; the polling costs the guest about 0.5 s
once, which `i8042.noaux` on its command line avoids), then AUX_TEST (0xA9),
which we answer with 0x02 ("clock line stuck high", what an unconnected port
reads). Any answer other than 0x00/0xFA/0xFF makes i8042_check_aux() return -1
and the driver carries on with the keyboard alone, without an error message.
No key presses are ever generated: the guest's console is the serial port.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from xenopus.devices import platform
from xenopus.stream import check_state

# Status register (i8042.h I8042_STR_*)
STR_OBF = 0x01
STR_IBF = 0x02
STR_SYS = 0x04
STR_CMDDAT = 0x08  # last write was to the command port
STR_KEYLOCK = 0x10  # set = keyboard not inhibited by the key lock
STR_AUXDATA = 0x20

# Controller configuration byte, internal RAM byte 0 (i8042.h I8042_CTR_*)
CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLATE = 0x40
# What a BIOS leaves behind: keyboard interrupt on, POST passed, translation on.
CTR_DEFAULT = CTR_KBDINT | CTR_SYS | CTR_XLATE

# Output port (command 0xD0/0xD1): bit 0 drives the CPU reset line, active low.
OUT_RESET = 0x01
OUT_A20 = 0x02
OUT_DEFAULT = OUT_RESET | OUT_A20

# Controller commands (i8042.h I8042_CMD_*, low byte)
CMD_READ_RAM = 0x20  # 0x20-0x3F: read internal RAM; 0x20 = CTR
CMD_WRITE_RAM = 0x60  # 0x60-0x7F: write internal RAM; 0x60 = CTR
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_KBD_LOOP = 0xD2
CMD_AUX_LOOP = 0xD3
CMD_AUX_SEND = 0xD4
CMD_A20_OFF = 0xDD
CMD_A20_ON = 0xDF
CMD_PULSE = 0xF0  # 0xF0-0xFF: pulse output lines whose bit in the low nibble is 0

SELF_TEST_OK = 0x55  # i8042.h I8042_RET_CTL_TEST
KBD_TEST_OK = 0x00
AUX_TEST_CLOCK_HIGH = 0x02

# Keyboard commands and replies (atkbd.c ATKBD_CMD_* / ATKBD_RET_*)
KBD_SET_LEDS = 0xED
KBD_ECHO = 0xEE
KBD_SCANCODE_SET = 0xF0
KBD_GET_ID = 0xF2
KBD_SET_REP = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5
KBD_DEFAULTS = 0xF6
KBD_RESEND = 0xFE
KBD_RESET = 0xFF
KBD_ACK = 0xFA
KBD_NAK = 0xFE
KBD_BAT_OK = 0xAA
# MF2 keyboard ID; the first byte is what libps2.c ps2_is_keyboard_id() accepts.
KBD_ID = (0xAB, 0x83)
_KBD_WITH_ARG = (KBD_SET_LEDS, KBD_SET_REP, KBD_SCANCODE_SET)

log = logging.getLogger("xenopus.devices")


class I8042:
    """Register at `platform.I8042_DATA_PORT` and `platform.I8042_CMD_PORT` (length 1
    each), this object for both."""

    def __init__(
        self, reset: Callable[[], None], irq_kbd: Callable[[bool], None] | None = None
    ) -> None:
        self._reset = reset
        self._irq = irq_kbd
        self._lock = threading.Lock()
        self._level = False
        self._out: deque[int] = deque()  # the output buffer, front first
        self._last_out = 0
        self._ram = bytearray(32)
        self._ram[0] = CTR_DEFAULT
        self._outport = OUT_DEFAULT
        self._cmd_last = False
        self._await: int | None = None  # controller command waiting for its data byte
        self._kbd_await: int | None = None  # keyboard command waiting for its argument
        self._scanning = True
        self._scanset = 2
        self.leds = 0

    @property
    def ctr(self) -> int:
        return self._ram[0]

    STATE_VERSION = 1

    def save_state(self) -> dict:
        with self._lock:
            return {
                "version": self.STATE_VERSION, "out": bytes(self._out),
                "last_out": self._last_out, "ram": bytes(self._ram), "outport": self._outport,
                "cmd_last": self._cmd_last, "await": self._await, "kbd_await": self._kbd_await,
                "scanning": self._scanning, "scanset": self._scanset, "leds": self.leds,
                "level": self._level,
            }

    def restore_state(self, state: object) -> None:
        s = check_state(state, "i8042", self.STATE_VERSION)
        with self._lock:
            self._out = deque(s["out"])
            self._last_out, self._ram, self._outport = s["last_out"], bytearray(s["ram"]), s["outport"]
            self._cmd_last, self._await, self._kbd_await = s["cmd_last"], s["await"], s["kbd_await"]
            self._scanning, self._scanset, self.leds = s["scanning"], s["scanset"], s["leds"]
            self._level = bool(s["level"])
            if self._irq is not None:
                self._irq(self._level)

    # -- BusDevice ---------------------------------------------------------------

    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            if base == platform.I8042_CMD_PORT:
                return self._status()
            if self._out:
                self._last_out = self._out.popleft()
                # The ISA line is edge-triggered: drop it so that a further
                # pending byte raises a fresh edge.
                self._set_level(False)
                self._update_irq()
            return self._last_out  # an empty buffer keeps its last byte

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            self._cmd_last = base == platform.I8042_CMD_PORT
            reset = self._command(value) if self._cmd_last else self._data(value)
            self._update_irq()
        if reset:
            log.info("i8042: reset line pulsed")
            self._reset()

    # -- state -------------------------------------------------------------------

    def _status(self) -> int:
        # IBF is never set: every write is consumed before the exit returns.
        return (
            (STR_OBF if self._out else 0)
            | (STR_SYS if self.ctr & CTR_SYS else 0)
            | (STR_CMDDAT if self._cmd_last else 0)
            | STR_KEYLOCK
        )

    def _put(self, *data: int) -> None:
        self._out.extend(data)

    def _command(self, cmd: int) -> bool:
        """A write to port 0x64; True if it resets the machine."""
        self._await = None  # a new command abandons one waiting for data
        if CMD_READ_RAM <= cmd < CMD_READ_RAM + 0x20:
            self._put(self._ram[cmd & 0x1F])
        elif CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + 0x20 or cmd in (
            CMD_WRITE_OUTPUT,
            CMD_KBD_LOOP,
            CMD_AUX_LOOP,
            CMD_AUX_SEND,
        ):
            self._await = cmd
        elif cmd == CMD_AUX_DISABLE:
            self._ram[0] |= CTR_AUXDIS
        elif cmd == CMD_AUX_ENABLE:
            self._ram[0] &= ~CTR_AUXDIS
        elif cmd == CMD_AUX_TEST:
            self._put(AUX_TEST_CLOCK_HIGH)
        elif cmd == CMD_SELF_TEST:
            self._ram[0] |= CTR_SYS  # a passed self test sets the system flag
            self._put(SELF_TEST_OK)
        elif cmd == CMD_KBD_TEST:
            self._put(KBD_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self._ram[0] |= CTR_KBDDIS
        elif cmd == CMD_KBD_ENABLE:
            self._ram[0] &= ~CTR_KBDDIS
        elif cmd == CMD_READ_OUTPUT:
            self._put(self._outport)
        elif cmd == CMD_A20_OFF:
            self._outport &= ~OUT_A20
        elif cmd == CMD_A20_ON:
            self._outport |= OUT_A20
        elif cmd >= CMD_PULSE:
            return not cmd & OUT_RESET  # 0xFE (and 0xF0, ...) pulse the reset line
        else:
            log.debug("i8042: ignoring controller command %#x", cmd)
        return False

    def _data(self, value: int) -> bool:
        """A write to port 0x60: a controller command's data byte, else for the keyboard."""
        cmd, self._await = self._await, None
        if cmd is None:
            self._keyboard(value)
        elif cmd == CMD_WRITE_OUTPUT:
            # A20 is not gated under KVM; only the reset line has an effect.
            self._outport = value
            return not value & OUT_RESET
        elif cmd == CMD_KBD_LOOP:
            self._put(value)  # comes back as if the keyboard had sent it
        elif cmd in (CMD_AUX_LOOP, CMD_AUX_SEND):
            pass  # no aux port: nothing answers (see the module docstring)
        else:
            self._ram[cmd & 0x1F] = value
        return False

    def _keyboard(self, byte: int) -> None:
        """A byte sent to the keyboard, answered as an MF2 keyboard does."""
        arg_for, self._kbd_await = self._kbd_await, None
        if arg_for is not None:
            if arg_for == KBD_SET_LEDS:
                self.leds = byte & 0x07
            elif arg_for == KBD_SCANCODE_SET:
                if byte == 0:  # query: ACK, then the current set
                    self._put(KBD_ACK, self._scanset)
                    return
                if byte in (1, 2, 3):
                    self._scanset = byte
            self._put(KBD_ACK)
        elif byte == KBD_ECHO:
            self._put(KBD_ECHO)
        elif byte == KBD_RESET:
            self._scanning, self._scanset, self.leds = True, 2, 0
            self._put(KBD_ACK, KBD_BAT_OK)
        elif byte == KBD_GET_ID:
            self._put(KBD_ACK, *KBD_ID)
        elif byte == KBD_RESEND:
            self._put(self._last_out)
        elif byte in _KBD_WITH_ARG:
            self._kbd_await = byte
            self._put(KBD_ACK)
        elif byte in (KBD_ENABLE, KBD_DISABLE):
            self._scanning = byte == KBD_ENABLE
            self._put(KBD_ACK)
        elif KBD_DEFAULTS <= byte <= 0xFD:
            self._put(KBD_ACK)  # defaults and the scan set 3 key-type commands
        else:
            self._put(KBD_NAK)

    # -- interrupt ---------------------------------------------------------------

    def _update_irq(self) -> None:
        self._set_level(bool(self._out) and bool(self.ctr & CTR_KBDINT))

    def _set_level(self, level: bool) -> None:
        if level != self._level:
            self._level = level
            if self._irq is not None:
                self._irq(level)
