"""Why a guest stopped running."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopKind = Literal["poweroff", "reboot", "crash", "watchdog"]


@dataclass(frozen=True)
class StopReason:
    """`kind` decides what the toolstack does next (xl.cfg on_poweroff/on_reboot/on_crash/
    on_watchdog);
    `detail` is for humans: for a crash, the exit, the registers and the instruction bytes."""

    kind: StopKind
    detail: str = ""
