"""The zygote's spare pool (toolstack/zygote.py): a replacement spare that is not needed
yet starts at the lowest CPU priority, and is back at normal priority as soon as no spare
is ready (a create waits for it). Stand-in spares are real processes (`sleep`), so the
priorities read back are the kernel's."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
from collections.abc import Iterator

import pytest

from xenopus.toolstack import zygote


def nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


class StandInForker:
    """Forks nothing: each "spare" is a `sleep` started here, niced as the real child
    niced itself (the child branch of SparePool._start does not run in this process)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.next_nice = 0

    def fork(self) -> int:
        nice_now = self.next_nice
        proc = subprocess.Popen(["sleep", "60"],
                                preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, nice_now))
        self.procs.append(proc)
        return proc.pid


@pytest.fixture
def pool() -> Iterator[tuple[zygote.SparePool, StandInForker]]:
    forker = StandInForker()
    sel = selectors.DefaultSelector()
    p = zygote.SparePool(2, forker, sel)  # type: ignore[arg-type]
    yield p, forker
    for proc in forker.procs:
        proc.kill()
        proc.wait()
    for sock in p.starting.values():
        sock.close()
    sel.close()


def test_a_replacement_not_needed_yet_starts_niced_and_is_boosted_when_none_is_ready(
        pool: tuple[zygote.SparePool, StandInForker]) -> None:
    p, forker = pool
    ready_sock, _peer = socket.socketpair()
    p.ready.append((forker.fork(), ready_sock))  # one spare ready
    forker.next_nice = zygote.BACKGROUND_NICE
    p._start()  # its replacement: another is ready, so in the background
    (background,) = p.starting
    assert background in p.niced and nice(background) == zygote.BACKGROUND_NICE
    taken = p.take()  # a create takes the ready one: the next create would wait
    assert taken is not None and taken[1] is ready_sock
    assert nice(background) == 0 and not p.niced
    ready_sock.close()
    _peer.close()


def test_a_spare_started_while_none_is_ready_is_not_niced(
        pool: tuple[zygote.SparePool, StandInForker]) -> None:
    p, _ = pool
    p._start()
    (pid,) = p.starting
    assert pid not in p.niced and nice(pid) == 0
