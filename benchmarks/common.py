"""What the benchmark scripts share (each runs as `python benchmarks/NAME.py`, so this
module is importable as `common`)."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_guest(guest: Path) -> None:
    """Build just this benchmark's guest (guests/Makefile target out/<name>.elf)."""
    target = guest.relative_to(ROOT / "guests")
    if subprocess.run(["make", "-s", "-C", str(ROOT / "guests"), str(target)]).returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).stem}: building guests/{target} failed")


def xenopus_command() -> list[str]:
    """The `xenopus` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("xenopus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "xenopus"]


def timed_run(argv: list[str], marker: re.Pattern[bytes], timeout: float,
              env: dict[str, str] | None = None) -> tuple[float | None, float, bytes]:
    """Run `argv` to its exit, its output read as it comes: (seconds from the start to the
    first `marker` match, or None; seconds to the exit; everything it printed). Killed,
    and the benchmark ended with its output's tail, if it runs past `timeout` s."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    seen = b""
    marked = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not sel.select(max(0.0, start + timeout - time.monotonic())):
                proc.kill()
                sys.exit(f"{Path(sys.argv[0]).stem}: {argv[0]} ran past {timeout:.0f} s:\n"
                         f"{seen[-3000:].decode(errors='replace')}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if marked is None and marker.search(seen):
                marked = time.monotonic() - start
    proc.wait()
    return marked, time.monotonic() - start, seen
