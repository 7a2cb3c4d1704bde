"""Start-up tracing: `XENOPUS_TRACE=FILE` makes every xenopus process (CLI, daemon,
zygote, spares, domain processes) append one line per stage it passes to FILE:

    <time.monotonic()> <pid> <stage>

CLOCK_MONOTONIC is one clock for the whole host, so the lines of all processes merge into
one timeline (benchmarks/startup_trace.py reads them). The file is opened when this module
is imported, before any jail: a domain process keeps writing to it from inside its jail.
Unset (the default), `mark` is one test of a global."""

from __future__ import annotations

import os
import time

ENV = "XENOPUS_TRACE"


def _open() -> int | None:
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None


_fd = _open()


def mark(stage: str) -> None:
    """Record that this process reached `stage` now (no-op unless XENOPUS_TRACE is set)."""
    if _fd is not None:
        try:  # noqa: SIM105 - the CLI imports this module, and not contextlib
            os.write(_fd, f"{time.monotonic():.6f} {os.getpid()} {stage}\n".encode())
        except OSError:
            pass
