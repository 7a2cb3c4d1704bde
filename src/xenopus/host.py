"""Facts about the host machine (Domain-0 in xl's terms), read from /proc."""

from __future__ import annotations

import os

ONLINE_CPUS = "/sys/devices/system/cpu/online"


def kernel_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,8", Documentation/admin-guide/cputopology.rst) as a set."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def online_cpus() -> set[int]:
    """The host's online CPUs; OSError where sysfs cannot be read."""
    with open(ONLINE_CPUS) as f:
        return kernel_cpu_list(f.read())


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
