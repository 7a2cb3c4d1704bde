"""xl's CPULIST grammar, as the `cpus=` key (xl.cfg(5) "cpus") and `xl vcpu-pin` (xl(1))
take it; the only parser of it.

Grammar (Xen tools/xl/xl_parse.c `parse_cpurange`, `update_cpumap_range`, `parse_range`):
comma-separated items, applied left to right to an initially empty set (strtok_r skips
empty items):

    item := ["^"] ["node:" | "nodes:"] ("all" | N | N "-" M)      with N <= M

"all" adds every host CPU; "N"/"N-M" adds CPUs (or, after "node:", the CPUs of those NUMA
nodes); a leading "^" removes instead of adding. "^all" is refused, as xl refuses it.
xl.cfg(5)'s examples: "all", "0-3,5,^1", "all,^7", "nodes:0-3,^node:2", "1,node:1,^6".

Differences from xl: blanks around an item are ignored (xl's strtoul skips only leading
ones), and a CPU number above `MAX_HOST_CPU` is refused before a range is expanded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass

from xenopus.host import host_cpus, node_cpus

MAX_HOST_CPU = 8191  # Linux's largest NR_CPUS; bounds a "0-N" range before expanding it
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True)
class CpuListItem:
    """One item of a CPULIST: what it adds or (`exclude`) removes."""

    text: str  # as written, for messages
    exclude: bool  # "^"
    nodes: bool  # "node:"/"nodes:": the numbers are NUMA nodes, not CPUs
    span: range | None  # None: "all"


def cpulist_items(text: str) -> Iterator[CpuListItem]:
    """The items of `text`, in order; ValueError names the first malformed one."""
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        body = item.removeprefix("^")
        exclude = body != item
        nodes = body.startswith(("node:", "nodes:"))
        body = body.partition(":")[2] if nodes else body
        if body == "all":
            if exclude:
                raise ValueError("can't combine \"^\" and \"all\"")
            yield CpuListItem(item, exclude, nodes, None)
            continue
        m = _RANGE.fullmatch(body)
        if not m:
            raise ValueError(f"invalid CPU range `{item}'"
                             " (expected N, N-M or all, each optionally after ^ or nodes:)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"invalid CPU range `{item}': {hi} is less than {lo}")
        if hi > MAX_HOST_CPU:
            raise ValueError(f"CPU {hi} in `{item}' is beyond any host (max {MAX_HOST_CPU})")
        yield CpuListItem(item, exclude, nodes, range(lo, hi + 1))


def parse_cpus(
    text: str,
    host: Set[int] | None = None,
    nodes: Callable[[int], set[int]] = node_cpus,
) -> set[int]:
    """The host CPUs `text` names (possibly none). `host` is the set "all" stands for
    (default: the host's online CPUs); `nodes(n)` the CPUs of NUMA node n. CPUs are not
    checked against `host`: pinning names any the host lacks."""
    cpus: set[int] = set()
    for item in cpulist_items(text):
        if item.span is None:
            chosen = set(host if host is not None else host_cpus())
        elif item.nodes:
            chosen = set().union(*(nodes(n) for n in item.span))
        else:
            chosen = set(item.span)
        cpus = cpus - chosen if item.exclude else cpus | chosen
    return cpus


def parse_affinity(text: str) -> list[int] | None:
    """A `cpus=` entry resolved without asking the host: the sorted CPUs, or None for
    "all" (no pinning). Refused, since they depend on the host the domain will run on:
    NUMA nodes, and "all" with exclusions. Selecting no CPU is refused too."""
    chosen: set[int] = set()
    every = excluded = False
    for item in cpulist_items(text):
        if item.nodes:
            raise ValueError(f"`{item.text}': NUMA node affinity is not supported; list CPUs")
        if item.span is None:
            every = True
            continue
        excluded |= item.exclude
        chosen = chosen - set(item.span) if item.exclude else chosen | set(item.span)
    if every:
        if excluded:
            raise ValueError("\"all\" with \"^\" exclusions is not supported; list the CPUs")
        return None
    if not chosen:
        raise ValueError(f"`{text}' selects no CPUs")
    return sorted(chosen)
