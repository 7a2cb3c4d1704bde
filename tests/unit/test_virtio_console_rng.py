"""virtio-console (virtio 1.2 §5.3), virtio-rng (§5.4), and the device worker thread:
doorbell eventfd → process → interrupt, with plain eventfds and a fake interrupt sink."""

from __future__ import annotations

import os
import queue
import threading

import pytest

from tests.unit.test_virtqueue import VqDriver
from xenopus.devices.virtio.console import VirtioConsole
from xenopus.devices.virtio.device import VirtioDevice
from xenopus.devices.virtio.rng import VirtioRng
from xenopus.memory.guest import GuestMemory

TIMEOUT = 5.0


@pytest.fixture
def mem():
    m = GuestMemory.create(16 << 20)
    yield m
    m.close()


class Sink:
    """An InterruptSink that records which queue interrupted."""

    def __init__(self) -> None:
        self.events: queue.Queue[str | int] = queue.Queue()

    def signal_queue(self, queue_index: int) -> None:
        self.events.put(queue_index)

    def signal_config(self) -> None:
        self.events.put("config")

    def wait(self) -> str | int:
        return self.events.get(timeout=TIMEOUT)


def two_drivers(mem: GuestMemory) -> tuple[VqDriver, VqDriver]:
    return VqDriver(mem, base=0x10000, buf_base=0x100000), VqDriver(
        mem, base=0x20000, buf_base=0x400000
    )


def test_rng_fills_writable_buffers(mem: GuestMemory) -> None:
    rng = VirtioRng()
    assert rng.device_id == 4 and rng.config == b""  # §5.4.1, §5.4.4: no config
    d = VqDriver(mem)
    rng.queues = [d.queue()]
    a, b = d.buffer(64), d.buffer(200)
    d.post(d.chain([(*a, True), (*b, True)]))
    rng.process(0)
    assert d.used_elem(0) == (0, 264)
    got = mem.read(a[0], 64) + mem.read(b[0], 200)
    assert got != bytes(264) and len(set(got)) > 50  # random, not zeros


def test_rng_ignores_readable_buffers(mem: GuestMemory) -> None:
    rng = VirtioRng()
    d = VqDriver(mem)
    rng.queues = [d.queue()]
    r = d.buffer(b"x" * 16)
    d.post(d.chain([(*r, False)]))
    rng.process(0)
    assert d.used_elem(0) == (0, 0) and mem.read(r[0], 16) == b"x" * 16


def test_console_transmit(mem: GuestMemory) -> None:
    out: list[bytes] = []
    con = VirtioConsole(out.append)
    assert con.device_id == 3
    rx, tx = two_drivers(mem)
    con.queues = [rx.queue(), tx.queue()]  # §5.3.2: receiveq 0, transmitq 1
    tx.post(tx.chain([(*tx.buffer(b"hello, "), False), (*tx.buffer(b"world\n"), False)]))
    con.process(1)
    assert out == [b"hello, world\n"] and tx.used_elem(0) == (0, 0)


def test_console_input_waits_for_buffers(mem: GuestMemory) -> None:
    con = VirtioConsole(lambda b: None)
    rx, tx = two_drivers(mem)
    con.queues = [rx.queue(), tx.queue()]
    con.receive(b"abc")
    con.receive(b"defgh")
    con.process(0)  # no receive buffers yet: kept
    assert rx.used_idx == 0 and con.pending == 8
    b1 = rx.buffer(5)
    rx.post(rx.chain([(*b1, True)]))
    con.process(0)
    assert rx.used_elem(0) == (0, 5) and mem.read(b1[0], 5) == b"abcde"
    b2 = rx.buffer(16)
    rx.post(rx.chain([(*b2, True)]))
    con.process(0)
    assert rx.used_elem(1) == (1, 3) and mem.read(b2[0], 3) == b"fgh"
    assert con.pending == 0


def test_console_config_and_emergency_write(mem: GuestMemory) -> None:
    out: list[bytes] = []
    con = VirtioConsole(out.append, cols=80, rows=25)
    # §5.3.4: cols le16 @0, rows le16 @2, max_nr_ports le32 @4, emerg_wr le32 @8
    assert con.config_read(0, 2) == 80 and con.config_read(2, 2) == 25
    assert con.features & 1 and con.features & 4  # F_SIZE (0), F_EMERG_WRITE (2)
    assert con.negotiate(con.features)
    con.config_write(8, 4, ord("!"))
    assert out == [b"!"]


def test_console_input_backlog_is_bounded() -> None:
    con = VirtioConsole(lambda b: None)
    con.receive(bytes(100_000))
    assert con.pending == 64 * 1024 and con.dropped == 100_000 - 64 * 1024


# -- the worker thread ----------------------------------------------------------------


def test_worker_kick_process_interrupt(mem: GuestMemory) -> None:
    """A doorbell eventfd wakes the worker, which processes and interrupts, off this
    thread; with EVENT_IDX the interrupt waits for used_event."""
    rng = VirtioRng()
    sink = Sink()
    rng.bind(sink)
    d = VqDriver(mem)
    kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    runs: queue.Queue[str] = queue.Queue()
    real_run = rng._run

    def run(i: int) -> None:
        real_run(i)  # process, then interrupt
        runs.put(threading.current_thread().name)

    rng._run = run  # type: ignore[method-assign]
    try:
        w = d.buffer(32)
        rng.activate([d.queue()], [kick])
        assert runs.get(timeout=TIMEOUT) == "virtio-rng"  # the initial sweep at activation
        d.post(d.chain([(*w, True)]))
        os.eventfd_write(kick, 1)
        assert sink.wait() == 0
        assert runs.get(timeout=TIMEOUT) == "virtio-rng"
        assert d.used_elem(0) == (0, 32)
        # EVENT_IDX: used_event = 5 means "not before the 6th used entry" (§2.7.10).
        rng.queues[0].event_idx = True
        mem.write_u16(d.avail_addr + 4 + 2 * d.size, 5)
        d.post(d.chain([(*w, True)]))
        os.eventfd_write(kick, 1)
        assert runs.get(timeout=TIMEOUT) == "virtio-rng"
        d.post(d.chain([(*w, True)]))
        rng.kick(0)  # the slow path: a doorbell write that reached userspace
        assert runs.get(timeout=TIMEOUT) == "virtio-rng"
        assert d.used_idx == 3
        assert sink.events.empty()
    finally:
        rng.reset()
        os.close(kick)
    assert not rng.active


def test_worker_reset_stops_thread(mem: GuestMemory) -> None:
    con = VirtioConsole(lambda b: None)
    rx, tx = two_drivers(mem)
    con.activate([rx.queue(), tx.queue()], [])
    worker = con._worker
    assert worker is not None and worker.thread.is_alive()
    con.reset()
    assert not worker.thread.is_alive() and con.queues == [] and con.driver_features == 0


def test_console_receive_from_another_thread_reaches_guest(mem: GuestMemory) -> None:
    sink = Sink()
    con = VirtioConsole(lambda b: None)
    con.bind(sink)
    rx, tx = two_drivers(mem)
    b = rx.buffer(16)
    rx.post(rx.chain([(*b, True)]))
    con.activate([rx.queue(), tx.queue()], [])
    try:
        threading.Thread(target=con.receive, args=(b"ping",)).start()
        assert sink.wait() == 0
        assert mem.read(b[0], 4) == b"ping"
    finally:
        con.reset()


def test_broken_queue_on_worker_sets_needs_reset(mem: GuestMemory) -> None:
    sink = Sink()
    rng = VirtioRng()
    rng.bind(sink)
    d = VqDriver(mem)
    rng.activate([d.queue()], [])
    try:
        mem.write_u16(d.avail_addr + 2, 1000)  # avail idx jumps by more than the size
        rng.kick(0)
        assert sink.wait() == "config"  # §2.1.2: config change interrupt
        assert rng.needs_reset_flag
    finally:
        rng.reset()
    assert not rng.needs_reset_flag


def test_device_bug_does_not_kill_worker(mem: GuestMemory) -> None:
    class Buggy(VirtioDevice):
        name = "buggy"

        def process(self, queue_index: int) -> None:
            raise RuntimeError("bug")

    sink = Sink()
    dev = Buggy(queue_sizes=[8])
    dev.bind(sink)
    dev.activate([VqDriver(mem).queue()], [])
    try:
        assert sink.wait() == "config" and dev.needs_reset_flag
        assert dev._worker is not None and dev._worker.thread.is_alive()
    finally:
        dev.reset()


def test_feature_negotiation_base() -> None:
    rng = VirtioRng()
    # §6: INDIRECT_DESC 28, EVENT_IDX 29, VERSION_1 32 offered by every device.
    assert rng.features == (1 << 28) | (1 << 29) | (1 << 32)
    assert not rng.negotiate(1 << 28)  # no VERSION_1
    assert not rng.negotiate((1 << 32) | (1 << 5))  # a bit not offered
    assert rng.negotiate((1 << 32) | (1 << 29))
    assert rng.has(29) and not rng.has(28)
