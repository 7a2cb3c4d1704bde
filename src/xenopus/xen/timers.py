"""Per-vCPU Xen timers: the one-shot timer (set_timer_op, VCPUOP_set_singleshot_timer) and
the periodic one (VCPUOP_set_periodic_timer) of every vCPU, on one host thread.

Deadlines are host CLOCK_BOOTTIME instants in seconds; the domain converts guest system
time to them. A timer that fires calls `fire(vcpu)` on the timer thread (the domain raises
VIRQ_TIMER there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("xenopus.xen")


class VcpuTimers:
    """Per-vCPU one-shot and periodic timers on one host thread; `fire(vcpu)` runs there."""

    def __init__(self, fire: Callable[[int], None]):
        self._fire = fire
        self._cond = threading.Condition()
        self._oneshot: dict[int, float] = {}
        self._periodic: dict[int, tuple[float, int]] = {}  # vCPU -> (next, period ns)
        self._fired: dict[int, int] = {}
        self._closed = False
        self._paused = False
        self._thread: threading.Thread | None = None

    def _now(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def _ensure(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xen-timers", daemon=True)
            self._thread.start()

    def set_oneshot(self, vcpu: int, deadline: float | None) -> None:
        with self._cond:
            if deadline is None:
                self._oneshot.pop(vcpu, None)
            else:
                self._oneshot[vcpu] = deadline
                self._ensure()
            self._cond.notify_all()

    def set_periodic(self, vcpu: int, period_ns: int) -> None:
        with self._cond:
            if period_ns <= 0:
                self._periodic.pop(vcpu, None)
            else:
                self._periodic[vcpu] = (self._now() + period_ns / 1e9, period_ns)
                self._ensure()
            self._cond.notify_all()

    def pending(self) -> tuple[dict[int, float], dict[int, tuple[float, int]]]:
        """Every armed timer: one-shot deadlines and periodic (next deadline, period ns),
        by vCPU (what a save keeps)."""
        with self._cond:
            return dict(self._oneshot), dict(self._periodic)

    def set_periodic_from(self, vcpu: int, first: float, period_ns: int) -> None:
        """A periodic timer whose next expiry is `first` (a restored one)."""
        with self._cond:
            self._periodic[vcpu] = (first, period_ns)
            self._ensure()
            self._cond.notify_all()

    def pause(self) -> None:
        """Fire nothing until `resume` (a save: a timer firing while guest RAM is being
        written would set its event in a page already written, and drop the timer)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def fired_count(self, vcpu: int) -> int:
        with self._cond:
            return self._fired.get(vcpu, 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _due(self) -> tuple[list[int], float | None]:
        now = self._now()
        due = [v for v, t in self._oneshot.items() if t <= now]
        for v in due:
            del self._oneshot[v]
        for v, (t, period) in list(self._periodic.items()):
            if t <= now:
                due.append(v)
                # Skip missed periods rather than firing a burst after a stall.
                missed = int((now - t) * 1e9 // period) + 1
                self._periodic[v] = (t + missed * period / 1e9, period)
        pending = [*self._oneshot.values(), *(t for t, _ in self._periodic.values())]
        return due, (min(pending) - now if pending else None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if self._paused:
                    self._cond.wait()
                    continue
                due, wait = self._due()
                for v in due:
                    self._fired[v] = self._fired.get(v, 0) + 1
                if not due:
                    self._cond.wait(wait)
                    continue
            for v in due:
                try:
                    self._fire(v)
                except Exception:
                    log.exception("timer of vCPU %d", v)


__all__ = ["VcpuTimers"]
