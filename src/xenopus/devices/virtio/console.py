"""virtio-console with a single port (virtio 1.2 §5.3): receiveq 0 and transmitq 1.

No MULTIPORT: the port is the console itself. Host input (`receive`, like the UART's)
is buffered until the guest posts receive buffers; output goes to the `output` callable.
VIRTIO_CONSOLE_F_EMERG_WRITE gives the guest a config register that prints one byte,
usable before the queues are up.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Callable

from xenopus.devices.virtio.device import VIRTIO_ID_CONSOLE, VirtioDevice, bit
from xenopus.devices.virtio.queue import scatter, split_views
from xenopus.stream import StateError

QUEUE_SIZE = 64
RECEIVEQ = 0
TRANSMITQ = 1
# Host input waiting for receive buffers beyond this is dropped (and counted).
BACKLOG_LIMIT = 64 * 1024

# §5.3.3 feature bits.
VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2


class VirtioConsoleConfig(ctypes.LittleEndianStructure):
    """§5.3.4 struct virtio_console_config."""

    _pack_ = 1
    _fields_ = [
        ("cols", ctypes.c_uint16),
        ("rows", ctypes.c_uint16),
        ("max_nr_ports", ctypes.c_uint32),
        ("emerg_wr", ctypes.c_uint32),
    ]


EMERG_WR_OFFSET = VirtioConsoleConfig.emerg_wr.offset


class VirtioConsole(VirtioDevice):
    device_id = VIRTIO_ID_CONSOLE
    name = "console"

    def __init__(
        self,
        output: Callable[[bytes], None],
        *,
        cols: int = 0,
        rows: int = 0,
        queue_size: int = QUEUE_SIZE,
    ):
        features = bit(VIRTIO_CONSOLE_F_EMERG_WRITE)
        if cols and rows:
            features |= bit(VIRTIO_CONSOLE_F_SIZE)
        cfg = VirtioConsoleConfig(cols=cols, rows=rows, max_nr_ports=1)
        super().__init__(features=features, queue_sizes=[queue_size] * 2, config=bytes(cfg))
        self.output = output
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._backlog_lock = threading.Lock()
        self.dropped = 0

    # -- host side -------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes typed on the host (any thread); they reach the guest as it posts buffers."""
        with self._backlog_lock:
            room = BACKLOG_LIMIT - self._backlog_bytes
            if room < len(data):
                self.dropped += len(data) - max(room, 0)
                data = data[: max(room, 0)]
            if data:
                self._backlog.append(bytes(data))
                self._backlog_bytes += len(data)
        self.kick(RECEIVEQ)

    @property
    def pending(self) -> int:
        with self._backlog_lock:
            return self._backlog_bytes

    def save_device_state(self) -> object:
        """Host input the guest has not taken yet."""
        with self._backlog_lock:
            return {"backlog": b"".join(self._backlog)}

    def restore_device_state(self, state: object) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("backlog"), bytes):
            raise StateError("virtio-console: saved state has no backlog")
        with self._backlog_lock:
            self._backlog = deque([state["backlog"]] if state["backlog"] else [])
            self._backlog_bytes = len(state["backlog"])

    # -- guest side ------------------------------------------------------------------

    def config_write(self, offset: int, size: int, value: int) -> None:
        # §5.3.4: a write to emerg_wr prints its low byte on the port.
        if offset == EMERG_WR_OFFSET and self.has(VIRTIO_CONSOLE_F_EMERG_WRITE):
            self.output(bytes([value & 0xFF]))

    def process(self, queue_index: int) -> None:
        if queue_index == TRANSMITQ:
            self._transmit()
        elif queue_index == RECEIVEQ:
            self._deliver()

    def _transmit(self) -> None:
        q = self.queues[TRANSMITQ]
        while (chain := self.pop(TRANSMITQ)) is not None:
            if chain.readable:
                self.output(b"".join(chain.readable))
            q.push(chain, 0)

    def _deliver(self) -> None:
        q = self.queues[RECEIVEQ]
        with self._backlog_lock:
            while self._backlog:
                chain = self.pop(RECEIVEQ)
                if chain is None:
                    return  # the rest waits for the guest's next buffers
                views, written = chain.writable, 0
                while self._backlog and views:
                    data = self._backlog[0]
                    n = scatter(views, data)
                    written += n
                    self._backlog_bytes -= n
                    if n < len(data):
                        self._backlog[0] = data[n:]
                        break
                    self._backlog.popleft()
                    _, views = split_views(views, n)
                q.push(chain, written)
