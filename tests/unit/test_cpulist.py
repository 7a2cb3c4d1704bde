"""xl's CPU-list syntax (xl(1) vcpu-pin, xl.cfg(5) cpus; Xen tools/xl/xl_parse.c
parse_cpurange)."""

from __future__ import annotations

import pytest

from xenopus.domain.cpulist import parse_affinity, parse_cpus
from xenopus.host import kernel_cpu_list as kernel_list

HOST = set(range(8))
NODES = {0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}}


def nodes(n: int) -> set[int]:
    if n not in NODES:
        raise ValueError(f"the host has no NUMA node {n}")
    return NODES[n]


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [
        ("all", HOST),
        ("3", {3}),
        ("0-3,5", {0, 1, 2, 3, 5}),
        ("all,^1", HOST - {1}),
        ("0-7,^2-4", {0, 1, 5, 6, 7}),
        ("^1", set()),  # items apply in order to an empty set: nothing to remove from
        ("^1,1", {1}),
        ("nodes:1", {4, 5, 6, 7}),
        ("node:0-1,^nodes:0", {4, 5, 6, 7}),
        ("nodes:all", HOST),
        ("1,,2", {1, 2}),  # strtok_r skips empty items
        ("12", {12}),  # not checked against the host here; pinning names it
    ],
)
def test_parse(spec: str, cpus: set[int]) -> None:
    assert parse_cpus(spec, HOST, nodes) == cpus


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("^all", 'can\'t combine "\\^" and "all"'),
        ("^nodes:all", 'can\'t combine "\\^" and "all"'),
        ("3-1", "invalid CPU range `3-1': 1 is less than 3"),
        ("x", "invalid CPU range `x'"),
        ("1-", "invalid CPU range `1-'"),
        ("-1", "invalid CPU range `-1'"),
        ("1-2-3", "invalid CPU range `1-2-3'"),
        ("node:x", "invalid CPU range `node:x'"),
        ("0-8192", "CPU 8192 in `0-8192' is beyond any host"),
        ("nodes:5", "no NUMA node 5"),
    ],
)
def test_refused(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_cpus(spec, HOST, nodes)


def test_kernel_list() -> None:
    # Documentation/admin-guide/cputopology.rst: "0-3,8" style lists in sysfs
    assert kernel_list("0-3,8\n") == {0, 1, 2, 3, 8}
    assert kernel_list("0\n") == {0}
    assert kernel_list("\n") == set()


# xl.cfg(5) "cpus=" (docs/man/xl.cfg.5.pod.in), on its own example host: CPUs 0-3 in node
# 0, 4-7 in node 1, 8-11 in node 2, 12-15 in node 3.
DOC_HOST = set(range(16))


def doc_nodes(n: int) -> set[int]:
    return set(range(4 * n, 4 * n + 4))


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [
        ("all", DOC_HOST),
        ("0-3,5,^1", {0, 2, 3, 5}),  # "run on CPUs 0,2,3,5"
        ("all,^7", DOC_HOST - {7}),  # "all the CPUs of the host except CPU 7"
        ("nodes:0-3,^node:2", set(range(8)) | set(range(12, 16))),  # "CPUs 0-7,12-15"
        ("1,node:1,^6", {1, 4, 5, 7}),  # "that would be CPUs 1,4,5,7"
        ("all,^node:1", DOC_HOST - {4, 5, 6, 7}),
        ("3-8,^5", {3, 4, 6, 7, 8}),  # "CPUs 3,4,6,7,8 of the host (excluding CPU 5)"
        ("node:0,node:2,^9-11,18-20", {0, 1, 2, 3, 8, 18, 19, 20}),
    ],
)
def test_xl_cfg_examples(spec: str, cpus: set[int]) -> None:
    assert parse_cpus(spec, DOC_HOST, doc_nodes) == cpus


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("all", None), ("all,3", None), ("0-3,5,^1", [0, 2, 3, 5]), ("^1,1", [1]), (" 2 , 3", [2, 3])],
)
def test_affinity(spec: str, cpus: list[int] | None) -> None:
    # A domain's `cpus=` is resolved without the host: "all" stays "no pinning".
    assert parse_affinity(spec) == cpus


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("nodes:0", "`nodes:0': NUMA node affinity is not supported"),
        ("all,^7", '"all" with "\\^" exclusions is not supported'),
        ("1,^1", "`1,\\^1' selects no CPUs"),
    ],
)
def test_affinity_refused(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_affinity(spec)
