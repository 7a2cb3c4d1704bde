"""What the two UART models (`serial.Serial16550`, `pl011.Pl011`) share: host input that
waits, in order and bounded, for room in the receiver FIFO.

A real UART's line delivers bytes no faster than the guest can drain them; our host end
writes whole pastes at once. Rather than overrun the FIFO (the guest would see OE and
lose bytes), the bytes wait here and move into the FIFO as the guest reads it.
"""

from __future__ import annotations

from collections import deque

BACKLOG_LIMIT = 64 * 1024  # bytes; what a paste beyond this loses is counted, not kept


class HostInput:
    """Host bytes not yet "on the wire": kept in order up to BACKLOG_LIMIT, the rest
    counted in `dropped`."""

    def __init__(self, data: bytes = b"") -> None:
        self._bytes: deque[int] = deque(data[:BACKLOG_LIMIT])
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._bytes)

    def __bytes__(self) -> bytes:
        return bytes(self._bytes)

    def feed(self, data: bytes) -> None:
        room = BACKLOG_LIMIT - len(self._bytes)
        self._bytes.extend(data[:room])
        self.dropped += max(len(data) - room, 0)

    def fill(self, fifo: deque[int], capacity: int) -> None:
        """Move waiting bytes into `fifo` until it holds `capacity`."""
        while self._bytes and len(fifo) < capacity:
            fifo.append(self._bytes.popleft())

    def load(self, data: bytes) -> None:
        """Replace what waits (a restored UART's saved backlog)."""
        self._bytes = deque(data[:BACKLOG_LIMIT])

    def give_back(self, byte: int) -> None:
        """A byte the FIFO no longer has room for (it shrank): first in line again."""
        self._bytes.appendleft(byte)
