"""What the two UART models (`serial.Serial16550`, `pl011.Pl011`) share: host input that
waits, in order and bounded, for room in the receiver FIFO.

A real UART's line delivers bytes no faster than the guest can drain them; our host end
writes whole pastes at once. Rather than overrun the FIFO (the guest would see OE and
lose bytes), the bytes wait here and move into the FIFO as the guest reads it.
"""

from __future__ import annotations

import threading
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


class UartHostSide:
    """The host side both UARTs have: bytes typed on the host go through the backlog into
    the receiver FIFO. A subclass sets `_lock`, `_rx` and `_backlog` and moves bytes in
    `_refill`, recomputing its interrupt line in `_update_irq`."""

    _lock: threading.Lock
    _rx: deque[int]
    _backlog: HostInput

    def _refill(self) -> None:
        raise NotImplementedError

    def _update_irq(self) -> None:
        raise NotImplementedError

    def receive(self, data: bytes) -> None:
        """Bytes typed on the host; what the FIFO cannot take yet waits in order."""
        with self._lock:
            self._backlog.feed(data)
            self._refill()
            self._update_irq()

    @property
    def pending(self) -> int:
        """Host bytes not yet read by the guest (FIFO plus backlog)."""
        with self._lock:
            return len(self._rx) + len(self._backlog)

    @property
    def dropped(self) -> int:
        """Host bytes refused because the backlog was full."""
        return self._backlog.dropped
