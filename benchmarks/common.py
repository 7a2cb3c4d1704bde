"""What the benchmark scripts share (each runs as `python benchmarks/NAME.py`, so this
module is importable as `common`)."""

from __future__ import annotations

import subprocess
import sys
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
