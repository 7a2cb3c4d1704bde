"""xl's CPU-list syntax, as `xl vcpu-pin` and the `cpus=` key take it.

Grammar (Xen tools/xl/xl_parse.c `parse_cpurange` / `update_cpumap_range`, and xl(1)
"vcpu-pin"): comma-separated items applied left to right to an initially empty set;
"all" adds every CPU; "N" or "N-M" adds CPUs; "node:N" / "nodes:N-M" adds the CPUs of NUMA
nodes; a leading "^" removes instead of adding ("^all" is refused, as xl does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xenopus.host import kernel_cpu_list as kernel_list
from xenopus.host import online_cpus as host_cpus

SYS_NODE = Path("/sys/devices/system/node")


def node_cpus(node: int) -> set[int]:
    """The CPUs of NUMA node `node`; ValueError when the host has no such node."""
    try:
        return kernel_list((SYS_NODE / f"node{node}" / "cpulist").read_text())
    except FileNotFoundError:
        raise ValueError(f"the host has no NUMA node {node}") from None


def _range(item: str, whole: str) -> range:
    """xl_parse.c parse_range: "N" or "N-M" with N <= M, nothing else."""
    lo, dash, hi = item.partition("-")
    if not lo.isdigit() or (dash and not hi.isdigit()) or int(hi or lo) < int(lo):
        raise ValueError(f"invalid CPU list item {whole!r} (expected N, N-M, all or nodes:N)")
    return range(int(lo), int(hi or lo) + 1)


def parse_cpus(
    spec: str,
    host: set[int] | None = None,
    nodes: Callable[[int], set[int]] = node_cpus,
) -> set[int]:
    """The CPU set `spec` names. `host` is the set "all" stands for (default: the host's
    online CPUs). CPUs are not checked against `host` here: the pinning itself names any
    the host lacks."""
    cpus: set[int] = set()
    for whole in spec.split(","):
        item = whole.strip()
        if not item:  # xl splits with strtok_r, which skips empty items
            continue
        remove = item.startswith("^")
        item = item.removeprefix("^")
        by_node = item.startswith(("node:", "nodes:"))
        item = item.partition(":")[2] if by_node else item
        if item == "all":
            if remove:
                raise ValueError('"^" cannot be combined with "all"')
            chosen = set(host if host is not None else host_cpus())
        else:
            ids = _range(item, whole)
            chosen = set().union(*(nodes(n) for n in ids)) if by_node else set(ids)
        cpus = cpus - chosen if remove else cpus | chosen
    return cpus
