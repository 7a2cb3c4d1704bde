"""A domain's console: the output since boot, and any number of attached clients.

Guest output arrives on vCPU threads a byte or a few at a time; it is batched under a
lock and handed to the event loop once per batch (FLUSH_DELAY), so a chatty guest costs
one wakeup per burst, not one per byte. Clients attach over a Unix socket: each first gets the
history (so a late attach sees the boot), then the live stream; what they type goes to
the guest's UART.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("xenopus.console")

HISTORY_LIMIT = 1 << 20  # bytes of output kept for late attaches
# A UART hands over one byte per guest write: gather them for this long (seconds) before
# waking the clients, so a line costs one send per client rather than one per byte.
FLUSH_DELAY = 0.002


class Console:
    def __init__(self, loop: asyncio.AbstractEventLoop, history_limit: int = HISTORY_LIMIT):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._scheduled = False
        self.history = bytearray()
        self.history_limit = history_limit
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._server: asyncio.AbstractServer | None = None
        self.on_input: Callable[[bytes], None] = lambda data: None

    def write(self, data: bytes) -> None:
        """Guest output; safe to call from any thread."""
        with self._lock:
            self._pending += data
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._loop.call_later, FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            self._scheduled = False
        if not data:
            return
        self.history += data
        if len(self.history) > self.history_limit:
            del self.history[: len(self.history) - self.history_limit]
        for w in self._clients.values():
            if not w.is_closing():
                w.write(data)

    async def serve(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._client, path=path)
        os.chmod(path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._flush()
        writer.write(bytes(self.history))
        self._clients[task] = writer
        try:
            while data := await reader.read(4096):
                self.on_input(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def close(self) -> None:
        self._flush()
        if self._server is not None:
            self._server.close()
        # Deliver what is buffered, then end each client's stream: it sees the domain go.
        for w in list(self._clients.values()):
            with contextlib.suppress(ConnectionError, OSError):
                await w.drain()
            w.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2)
