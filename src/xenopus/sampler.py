"""Where a domain process's threads spend their time: a debug-only sampling profiler.

With XENOPUS_PROFILE=HZ (e.g. 25) in its environment a domain process samples every
thread's Python stack HZ times a second (`sys._current_frames`) and, as it ends, writes
the counts to its log as collapsed stacks ("thread;outer;...;inner count", the input of
flamegraph.pl), most frequent first. A thread blocked in a system call (KVM_RUN, epoll,
a lock) is sampled where it waits, so a stack's share is wall time, not CPU time.

Pure Python and inside the process, so it works in the jail, where an outside profiler
(py-spy) cannot open the interpreter's files. It costs a stack walk per thread per
sample: keep HZ low on a slow host.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from types import FrameType

ENV = "XENOPUS_PROFILE"
MAX_DEPTH = 24  # innermost frames kept per stack


def _stack(frame: FrameType | None) -> str:
    names: list[str] = []
    while frame is not None and len(names) < MAX_DEPTH:
        code = frame.f_code
        names.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        frame = frame.f_back
    return ";".join(reversed(names))


class StackSampler:
    """Samples every other thread's stack `hz` times a second until `stop`."""

    def __init__(self, hz: float) -> None:
        if not 0 < hz <= 1000:
            raise ValueError(f"{ENV}={hz}: samples a second must be in (0, 1000]")
        self.interval = 1 / hz
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xenopus-sampler", daemon=True)

    @classmethod
    def from_env(cls) -> StackSampler | None:
        text = os.environ.get(ENV, "")
        return cls(float(text)) if text else None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.counts[f"{names.get(ident, ident)};{_stack(frame)}"] += 1
            self.samples += 1

    def report(self) -> str:
        """Every stack seen, collapsed, most frequent first, after a header line."""
        lines = [f"{ENV}: {self.samples} samples every {self.interval * 1000:.0f} ms"]
        lines += [f"{stack} {n}" for stack, n in self.counts.most_common()]
        return "\n".join(lines)


__all__ = ["ENV", "StackSampler"]
