"""The transport-independent part of a virtio device (virtio 1.2 §2) and its worker thread.

A device subclass sets `device_id`, its feature bits, its queue sizes and its config
space, and implements `process(queue_index)`. The transport (`pci.py`) negotiates
features, builds the `SplitQueue`s, then calls `activate(queues, kicks)`: from then on a
worker thread owned by the device waits (epoll) on the queues' doorbell eventfds and runs
`process` — never a vCPU thread — and interrupts the driver through the `InterruptSink`
the transport bound. A malformed chain fails its request or, when the queue itself is
broken, sets DEVICE_NEEDS_RESET (§2.1.2); either way only this device is affected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from xenopus.devices.virtio.queue import Chain, DescriptorError, SplitQueue
from xenopus.stream import StateError, check_state

log = logging.getLogger("xenopus.virtio")

# §5 device IDs.
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5  # §5.5, the traditional memory balloon

# §2.1 device status field.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# §6 reserved feature bits the base offers for every device.
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
BASE_FEATURES = (
    (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_RING_EVENT_IDX) | (1 << VIRTIO_F_VERSION_1)
)

_INT = {
    1: struct.Struct("<B"),
    2: struct.Struct("<H"),
    4: struct.Struct("<I"),
    8: struct.Struct("<Q"),
}


def bit(n: int) -> int:
    return 1 << n


def next_status(device: VirtioDevice, old: int, value: int, driver_features: int) -> int:
    """One non-zero device-status write, the same on every transport (§2.1, §3.1.1): bits
    are only cleared by a reset; the device refuses features by leaving FEATURES_OK clear
    (§3.1.1 steps 5/6), and DRIVER_OK without FEATURES_OK is ignored. The transport
    activates the device when DRIVER_OK is newly set in what this returns."""
    new = old | value
    if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK \
            and not device.negotiate(driver_features):
        device.log_once(f"driver features {driver_features:#x} refused")
        new &= ~STATUS_FEATURES_OK
    if new & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK and not new & STATUS_FEATURES_OK:
        device.log_once("DRIVER_OK without FEATURES_OK ignored")
        new &= ~STATUS_DRIVER_OK
    return new


class InterruptSink(Protocol):
    """What a transport gives a device to interrupt the driver."""

    def signal_queue(self, queue_index: int) -> None: ...

    def signal_config(self) -> None: ...


class VirtioDevice:
    """Base class of every virtio device model."""

    device_id: int = 0
    name: str = "virtio"
    # A malformed chain is answered with 0 bytes written where that is a safe answer
    # (entropy, console output: nothing was lost). Devices whose answer lives inside the
    # chain (virtio-blk's status byte) cannot answer it at all: they go NEEDS_RESET.
    reset_on_malformed_chain = False

    def __init__(self, *, features: int = 0, queue_sizes: Sequence[int] = (), config: bytes = b""):
        self.device_features = features  # device-specific bits
        self.queue_sizes = list(queue_sizes)
        self.config = bytearray(config)  # §4.1.4.6 device-specific configuration
        self.config_generation = 0  # bumped whenever the device changes `config`
        self.driver_features = 0
        self.queues: list[SplitQueue] = []
        self.sink: InterruptSink | None = None
        self.needs_reset_flag = False
        self._worker: _Worker | None = None
        self._paused: tuple[list[int | None], list[tuple[int, Callable[[], None]]]] | None = None
        self._watch_list: list[tuple[int, Callable[[], None]]] = []
        self._logged: set[str] = set()

    # -- features and config (§2.2, §2.5) ----------------------------------------

    @property
    def features(self) -> int:
        """Everything offered to the driver: the device's bits plus the base's."""
        return self.device_features | BASE_FEATURES

    def negotiate(self, driver_features: int) -> bool:
        """FEATURES_OK (§3.1.1 step 5): refuse bits not offered, and a driver without
        VERSION_1 (§6.1: a device may refuse to work without it; ours are modern-only)."""
        if driver_features & ~self.features or not driver_features & bit(VIRTIO_F_VERSION_1):
            return False
        self.driver_features = driver_features
        return True

    def has(self, feature: int) -> bool:
        """Whether the driver accepted feature bit `feature`."""
        return bool(self.driver_features & bit(feature))

    def config_read(self, offset: int, size: int) -> int:
        """A little-endian field of the config space (§2.5: fields are le); 0 past the end."""
        if size not in _INT or offset < 0 or offset + size > len(self.config):
            return 0
        return _INT[size].unpack_from(self.config, offset)[0]

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Most config fields are read-only; devices with writable ones override this."""

    def config_changed(self) -> None:
        """The device changed `config`: new generation (§2.5.1) and a config interrupt."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.sink is not None:
            self.sink.signal_config()

    # -- lifecycle -----------------------------------------------------------------

    def bind(self, sink: InterruptSink) -> None:
        self.sink = sink

    def activate(self, queues: list[SplitQueue], kicks: Sequence[int | None] = ()) -> None:
        """DRIVER_OK (§3.1.1 step 8): the queues are live. `kicks[i]` is the eventfd the
        transport's doorbell for queue i signals (None where there is none). The features
        negotiated before stay."""
        self._stop_worker()
        self.queues = queues
        self.on_activate()
        worker = _Worker(self, list(kicks))
        self._worker = worker
        worker.start()

    def reset(self) -> None:
        """§2.4: stop the worker, forget the queues and the negotiated features."""
        self._stop_worker()
        for q in self.queues:
            q.reset()
        self.queues = []
        self.driver_features = 0
        self.needs_reset_flag = False
        self.on_reset()

    def close(self) -> None:
        self.reset()

    def _stop_worker(self) -> None:
        self._paused = None
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    # -- save/restore ----------------------------------------------------------------

    STATE_VERSION = 1

    def pause(self) -> None:
        """Stop the worker once the request in hand is done: `process` handles a chain from
        pop to push in one go, so nothing is in flight afterwards except what `held`
        counts. The doorbells and watched fds stay registered; `resume` goes on."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            self._paused = (worker.kick_list, worker.watched())

    def resume(self) -> None:
        """Restart the worker `pause` stopped, with the same doorbells and watches; it
        looks at every queue first, so kicks that came in the meantime are not lost."""
        paused, self._paused = self._paused, None
        if paused is not None and self._worker is None:
            kicks, watched = paused
            self._watch_list.extend(watched)
            self._worker = _Worker(self, kicks)
            self._worker.start()

    def held(self, queue_index: int) -> int:
        """How many chains of queue `queue_index` the device has popped and not used yet
        (virtio-net's posted receive buffers). A saved queue is rewound by that many: the
        restored device pops them again, in the order the driver made them available."""
        return 0

    def save_state(self) -> dict:
        """What the driver negotiated and the device's config space; the queues' ring
        positions are the transport's to save (it rebuilds the queues on restore)."""
        return {
            "version": self.STATE_VERSION, "driver_features": self.driver_features,
            "config": bytes(self.config), "config_generation": self.config_generation,
            "needs_reset": self.needs_reset_flag, "device": self.save_device_state(),
        }

    def restore_state(self, state: object) -> None:
        """Into a device not activated yet; the transport's restore activates it."""
        s = check_state(state, f"virtio-{self.name}", self.STATE_VERSION)
        if len(s["config"]) != len(self.config):
            raise StateError(f"virtio-{self.name}: saved config space of {len(s['config'])} "
                             f"octets, this device has {len(self.config)}")
        if s["driver_features"] & ~self.features:
            raise StateError(f"virtio-{self.name}: the driver had features "
                             f"{s['driver_features']:#x}, this device offers {self.features:#x}")
        self.driver_features = s["driver_features"]
        self.config[:] = s["config"]
        self.config_generation = s["config_generation"]
        self.needs_reset_flag = s["needs_reset"]
        self.restore_device_state(s["device"])

    def save_device_state(self) -> object:
        """Hook: device-specific state beyond the config space (None: there is none)."""
        return None

    def restore_device_state(self, state: object) -> None:
        """Hook: take `save_device_state`'s value."""

    def on_activate(self) -> None:
        """Hook: runs before the worker starts (e.g. `watch` a backend fd)."""

    def on_reset(self) -> None:
        """Hook: drop per-activation state."""

    @property
    def active(self) -> bool:
        return self._worker is not None

    # -- work ----------------------------------------------------------------------

    def process(self, queue_index: int) -> None:
        """Drain queue `queue_index`; runs on the worker thread."""
        raise NotImplementedError

    def kick(self, queue_index: int) -> None:
        """Have the worker run `process(queue_index)` soon; callable from any thread."""
        worker = self._worker
        if worker is not None:
            worker.poke(queue_index)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Have the worker call `callback` when `fd` is readable (call from on_activate
        or on the worker thread)."""
        worker = self._worker
        if worker is None:
            self._watch_list.append((fd, callback))
        else:
            worker.watch(fd, callback)

    def set_watch(self, fd: int, enabled: bool) -> None:
        """Take a watched fd out of the worker's poll set, or put it back (a level-
        triggered fd with nowhere to put its data would spin the worker)."""
        worker = self._worker
        if worker is not None:
            with contextlib.suppress(OSError, ValueError):
                worker.ep.modify(fd, select.EPOLLIN if enabled else 0)

    def replace_kicks(self, kicks: Sequence[int | None]) -> None:
        """The transport moved its doorbells (the guest moved the BAR): wait on these
        eventfds from now on. Takes effect on a running worker; `activate` gets them too."""
        worker = self._worker
        if worker is not None:
            worker.set_kicks(list(kicks))

    def log_once(self, reason: str) -> None:
        """Warn about a guest error once per device and reason (guests can repeat them)."""
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("virtio-%s: %s", self.name, reason)

    def interrupt(self, queue_index: int) -> None:
        """Notify the driver about used buffers of queue `queue_index` if it wants it."""
        q = self.queues[queue_index]
        if q.needs_notify() and self.sink is not None:
            self.sink.signal_queue(queue_index)

    def needs_reset(self, reason: str) -> None:
        """§2.1.2: the device hit an error it cannot recover from; stop using the queues
        and tell the driver through DEVICE_NEEDS_RESET and a config interrupt."""
        if self.needs_reset_flag:
            return
        log.error("virtio-%s: needs reset: %s", self.name, reason)
        self.needs_reset_flag = True
        for q in self.queues:
            q.broken = True
        if self.sink is not None:
            self.sink.signal_config()

    def pop(self, queue_index: int) -> Chain | None:
        """`queues[i].pop()` with the failure policy applied: a malformed request is
        answered with 0 bytes written and skipped, or (`reset_on_malformed_chain`) resets
        the device like a broken ring does."""
        q = self.queues[queue_index]
        while True:
            try:
                return q.pop()
            except DescriptorError as e:
                if e.fatal or self.reset_on_malformed_chain:
                    self.needs_reset(f"queue {queue_index}: {e.reason}")
                    return None
                q.push(e.head, 0)

    def _run(self, queue_index: int) -> None:
        try:
            self.process(queue_index)
        except DescriptorError as e:
            self.needs_reset(f"queue {queue_index}: {e.reason}")
        except Exception as e:  # a device bug must not take the VMM down with it
            log.exception("virtio-%s: queue %d processing failed", self.name, queue_index)
            self.needs_reset(f"internal error {e!r}")
        for i in range(len(self.queues)):
            self.interrupt(i)


class _Worker:
    """One thread per device: epoll over the doorbells, a poke eventfd and watched fds."""

    def __init__(self, dev: VirtioDevice, kicks: list[int | None]):
        self.dev = dev
        self.ep = select.epoll()
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.poke_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.poked: set[int] = set()
        self.poke_lock = threading.Lock()
        self.stopped = False
        self.handlers: dict[int, Callable[[], None]] = {}
        self._add(self.stop_fd, lambda: None)
        self._add(self.poke_fd, self._on_poke)
        self.kicks: list[int] = []
        self.kick_list: list[int | None] = []  # by queue index, as given
        self.set_kicks(kicks)
        for fd, cb in dev._watch_list:
            self._add(fd, cb)
        dev._watch_list.clear()
        self.thread = threading.Thread(target=self._loop, name=f"virtio-{dev.name}", daemon=True)

    def _kick_handler(self, fd: int, index: int) -> Callable[[], None]:
        def handle() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            self.dev._run(index)

        return handle

    def _add(self, fd: int, cb: Callable[[], None]) -> None:
        self.handlers[fd] = cb
        self.ep.register(fd, select.EPOLLIN)

    def watch(self, fd: int, cb: Callable[[], None]) -> None:
        self._add(fd, cb)

    def set_kicks(self, kicks: list[int | None]) -> None:
        for fd in self.kicks:
            self.handlers.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(fd)
        self.kick_list = list(kicks)
        self.kicks = [fd for fd in kicks if fd is not None]
        for i, fd in enumerate(kicks):
            if fd is not None:
                self._add(fd, self._kick_handler(fd, i))

    def watched(self) -> list[tuple[int, Callable[[], None]]]:
        """The backend fds `watch` added, with their callbacks."""
        own = {self.stop_fd, self.poke_fd, *self.kicks}
        return [(fd, cb) for fd, cb in self.handlers.items() if fd not in own]

    def poke(self, index: int) -> None:
        with self.poke_lock:
            if self.stopped:
                return
            self.poked.add(index)
            os.eventfd_write(self.poke_fd, 1)

    def _on_poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.poke_fd)
        with self.poke_lock:
            todo, self.poked = self.poked, set()
        for i in sorted(todo):
            self.dev._run(i)

    def start(self) -> None:
        # Work the driver queued before DRIVER_OK (or before we listened) is not lost.
        for i in range(len(self.dev.queues)):
            self.poked.add(i)
        os.eventfd_write(self.poke_fd, 1)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                events = self.ep.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self.stop_fd:
                    self._close()
                    return
                cb = self.handlers.get(fd)
                if cb is None:
                    continue
                try:
                    cb()
                except Exception as e:  # a backend bug must not kill the worker silently
                    log.exception("virtio-%s: handler for fd %d failed", self.dev.name, fd)
                    self.dev.needs_reset(f"internal error {e!r}")

    def _close(self) -> None:
        with self.poke_lock:
            self.stopped = True
        self.ep.close()
        os.close(self.stop_fd)
        os.close(self.poke_fd)

    def stop(self) -> None:
        """Stop the loop; joins unless called from the worker itself (then the loop ends
        after the current handler returns)."""
        os.eventfd_write(self.stop_fd, 1)
        if threading.current_thread() is not self.thread:
            self.thread.join()
