"""Facts about the host machine (Domain-0 in xl's terms), read from /proc."""

from __future__ import annotations

import os


def memory_mib() -> int:
    """MemTotal from /proc/meminfo, or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def busy_cpu_seconds() -> float:
    """CPU time the host spent outside idle and iowait (the first line of /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0
