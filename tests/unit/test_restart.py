"""on_crash = "restart" backs off when a domain crashes soon after it starts: xl's 2 s
wait (tools/xl/xl_vmcontrol.c), doubling, xend's 60 s as the run that resets it."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from xenopus.domain import process
from xenopus.domain.config import DomainConfig
from xenopus.domain.restart import FIRST_DELAY, MAX_DELAY, MINIMUM_RESTART_TIME, RestartBackoff
from xenopus.vm import StopReason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quick_crashes_wait_longer_each_time_and_a_long_run_resets():
    clock = Clock()
    backoff = RestartBackoff(clock)
    delays = []
    for _ in range(8):  # a domain that crashes 1 s into every boot
        clock.now += 1
        delays.append(backoff.delay())
        clock.now += delays[-1]
        backoff.started()
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert delays[0] == FIRST_DELAY and max(delays) == MAX_DELAY
    clock.now += MINIMUM_RESTART_TIME  # ran a minute: restart at once, and start over
    assert backoff.delay() == 0
    clock.now += 1
    backoff.started()
    clock.now += 1
    assert backoff.delay() == FIRST_DELAY


class FakeGuest:
    def close(self) -> None:
        pass


class FakeLoop:
    def __init__(self) -> None:
        self.later: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback) -> None:
        self.later.append((delay, callback))


def test_a_crash_loop_in_the_domain_process_is_delayed(tmp_path, monkeypatch):
    ours, theirs = socket.socketpair()
    proc = process.DomainProcess(3, DomainConfig("d", "/k", on_crash="restart"), theirs, tmp_path)
    started: list[bool] = []

    def start_guest(paused: bool = False) -> None:
        proc.guest = FakeGuest()  # type: ignore[assignment]
        started.append(True)

    monkeypatch.setattr(proc, "_start_guest", start_guest)
    monkeypatch.setattr(proc, "_loop", FakeLoop(), raising=False)
    for console in ("console", "vconsole", "pvconsole"):  # made by run(), on its loop
        monkeypatch.setattr(proc, console, SimpleNamespace(on_input=None), raising=False)
    proc.guest = FakeGuest()  # type: ignore[assignment]
    proc._on_stop(proc.guest, StopReason("crash", "triple fault"))  # type: ignore[arg-type]
    assert not started and proc.state == "crashed"  # not at once ...
    ((delay, restart),) = proc._loop.later  # type: ignore[attr-defined]
    assert delay == FIRST_DELAY  # ... but after xl's 2 s
    restart()
    assert started == [True]
    # A reboot is not a crash: it restarts at once.
    proc.config = DomainConfig("d", "/k", on_reboot="restart")
    proc._on_stop(proc.guest, StopReason("reboot", "guest asked"))  # type: ignore[arg-type]
    assert started == [True, True]
    ours.close()
    theirs.close()
