"""Facts about the host machine (Domain-0 in xl's terms), read from /proc and sysfs.

The one place that asks which host CPUs (and NUMA nodes) exist.
"""

from __future__ import annotations

import os

ONLINE_CPUS = "/sys/devices/system/cpu/online"
NODE_CPUS = "/sys/devices/system/node/node{}/cpulist"


def kernel_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,8", Documentation/admin-guide/cputopology.rst) as a set."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def host_cpus() -> frozenset[int]:
    """The host's online CPUs (Documentation/ABI/testing/sysfs-devices-system-cpu), or
    0..cpu_count-1 where sysfs cannot be read."""
    try:
        with open(ONLINE_CPUS) as f:
            return frozenset(kernel_cpu_list(f.read()))
    except OSError:
        return frozenset(range(os.cpu_count() or 1))


def node_cpus(node: int) -> set[int]:
    """The CPUs of NUMA node `node`; ValueError when the host has no such node."""
    try:
        with open(NODE_CPUS.format(node)) as f:
            return kernel_cpu_list(f.read())
    except FileNotFoundError:
        raise ValueError(f"the host has no NUMA node {node}") from None


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


def current_cpu() -> int:
    """The host CPU this process last ran on (proc(5) /proc/PID/stat field 39), or -1."""
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[39 - 3])
    except (OSError, ValueError, IndexError):
        return -1


def _busy_seconds(ticks: list[str]) -> float:
    """A /proc/stat "cpu" line's time outside idle and iowait: of user nice system idle
    iowait irq softirq steal (proc(5), in USER_HZ ticks), all but the 4th and 5th."""
    busy = sum(int(v) for i, v in enumerate(ticks[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the host spent outside idle and iowait (the first line of /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            return _busy_seconds(f.readline().split()[1:])
    except (OSError, ValueError):
        return 0.0


def busy_seconds_per_cpu() -> dict[int, float]:
    """`busy_cpu_seconds` of each host CPU (the "cpuN" lines of /proc/stat)."""
    per_cpu = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                per_cpu[int(name[3:])] = _busy_seconds(ticks)
    return per_cpu
