"""The Bochs/QEMU debug console: port 0xE9, one byte out per write.

Bochs documents the "port E9 hack": bytes written to 0xE9 go to the host
console, and reading the port returns 0xE9, which is how a guest can tell the
port is there (QEMU's isa-debugcon reads back the same by default).
"""

from __future__ import annotations

from collections.abc import Callable

DEBUGCON_MAGIC = 0xE9  # what a read returns


class DebugCon:
    """Register at `platform.DEBUGCON_PORT`, length 1."""

    def __init__(self, output: Callable[[bytes], None]) -> None:
        self._output = output

    def read(self, base: int, offset: int, size: int) -> int:
        return int.from_bytes(bytes([DEBUGCON_MAGIC]) * size, "little")

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self._output(value.to_bytes(size, "little"))
