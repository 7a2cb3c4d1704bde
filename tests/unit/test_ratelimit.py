"""Guest-driven logging is rate-limited like Xen's printk (xen/drivers/char/console.c,
__printk_ratelimit: a burst, then a steady rate, dropped lines counted and reported)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from xenopus.devices import platform
from xenopus.devices.bus import UNCLAIMED_TRACKED, Bus
from xenopus.devices.ratelimit import XEN_BURST, LimitedLog, RateLimit
from xenopus.domain import process
from xenopus.domain.config import DomainConfig
from xenopus.memory.guest import GuestMemory
from xenopus.xen.abi import XEN_HYPERCALL_MSR
from xenopus.xen.hypercall import HypercallTable, TrapPath


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_rate_and_missed_count():
    clock = Clock()
    limit = RateLimit(rate=2, burst=3, clock=clock)
    assert [limit.take() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now = 0.4  # 0.8 of a token: still nothing
    assert limit.take() is None
    clock.now = 0.5  # one token: the line goes, after the 3 that did not
    assert limit.take() == 3
    assert limit.take() is None
    clock.now = 100  # refills to the burst, no further
    assert [limit.take() for _ in range(4)] == [1, 0, 0, None]


def test_limited_log_reports_what_it_dropped(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    limited = LimitedLog(logging.getLogger("test.ratelimit"), clock=clock)
    with caplog.at_level(logging.INFO, "test.ratelimit"):
        for i in range(1000):
            limited.log(logging.INFO, "line %d", i)
        clock.now = 5  # Xen's printk_ratelimit_ms: one more line after 5 s
        limited.log(logging.INFO, "later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"line {i}" for i in range(XEN_BURST)] + [
        f"{1000 - XEN_BURST} messages suppressed", "later"]


def test_unclaimed_accesses_are_bounded(caplog: pytest.LogCaptureFixture):
    bus = Bus("mmio")
    with caplog.at_level(logging.INFO, "xenopus.devices"):
        for addr in range(3 * UNCLAIMED_TRACKED):
            bus.read(platform.MMIO_HOLE_START + addr, 4)
    assert len(bus.unclaimed) == UNCLAIMED_TRACKED
    assert bus.unclaimed_elsewhere == 2 * UNCLAIMED_TRACKED
    assert len(caplog.records) <= XEN_BURST


def test_hypercall_msr_junk_writes_log_a_burst(caplog: pytest.LogCaptureFixture):
    memory = GuestMemory.create(2 * 1024 * 1024)
    trap = TrapPath(HypercallTable(), memory)
    with caplog.at_level(logging.INFO, "xenopus.xen"):
        for _ in range(1000):
            assert trap.wrmsr(0, XEN_HYPERCALL_MSR, 0x7FFF_F000) is False  # not RAM: #GP
            trap.write(0, 0, 1, 0)  # a string OUT to the port
    assert len(caplog.records) <= XEN_BURST


def test_guest_console_flood_is_rate_limited(tmp_path, monkeypatch):
    ours, theirs = socket.socketpair()
    proc = process.DomainProcess(3, DomainConfig("d", "/k"), theirs, tmp_path)
    sent: list[str] = []
    monkeypatch.setattr(proc, "_host_log", sent.append)
    start = time.monotonic()
    for i in range(10 * process.GUEST_LOG_BURST):  # a guest printing in a loop
        proc.debug.write(b"spam %d\n" % i)
    refilled = (time.monotonic() - start) * process.GUEST_LOG_RATE
    # The burst, what refilled meanwhile, and at most one "N lines suppressed" per line
    # let through after drops.
    assert len(sent) <= process.GUEST_LOG_BURST + 2 * (refilled + 1)
    assert sent[0] == "(d3) spam 0"
    assert all(line.startswith("(d3) ") for line in sent)
    ours.close()
    theirs.close()
