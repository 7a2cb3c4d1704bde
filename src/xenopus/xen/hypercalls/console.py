"""HYPERVISOR_console_io (xen.h): the hypervisor console a guest writes before (or
beside) its PV console; lines go to the domain's log with Xen's ``(dN)`` prefix."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

CONSOLE_WRITE_MAX = 64 * 1024  # bytes per CONSOLEIO_write
CONSOLE_LINE_MAX = 1024


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_console_io, domain.console.console_io)


class HypervisorConsole:
    """Printable ASCII of CONSOLEIO_write, a line at a time, to `out`."""

    def __init__(self, domid: int, out: Callable[[str], None]):
        self.domid = domid
        self.out = out
        self._line = bytearray()
        self._lock = threading.Lock()

    def console_io(self, call: Call) -> int:
        cmd, count, buf = call.args[0], call.args[1] & 0xFFFFFFFF, call.args[2]
        if cmd == abi.CONSOLEIO_read:
            return 0
        if cmd != abi.CONSOLEIO_write:
            return -abi.XEN_ENOSYS
        if count > CONSOLE_WRITE_MAX:
            return -abi.XEN_E2BIG
        self.write(call.access.read(buf, count))
        return 0

    def write(self, data: bytes) -> None:
        with self._lock:  # one writer at a time keeps lines whole and in order
            for byte in data:
                if byte == 0x0A or len(self._line) >= CONSOLE_LINE_MAX:
                    self.out(f"(d{self.domid}) {self._line.decode('ascii')}")
                    self._line.clear()
                if byte != 0x0A and (0x20 <= byte < 0x7F or byte == 0x09):
                    self._line.append(byte)
