"""xl's CPU-list syntax (xl(1) vcpu-pin; Xen tools/xl/xl_parse.c parse_cpurange)."""

from __future__ import annotations

import pytest

from xenopus.toolstack.cpulist import kernel_list, parse_cpus

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
        ("^all", '"\\^" cannot be combined with "all"'),
        ("3-1", "invalid CPU list item '3-1'"),
        ("x", "invalid CPU list item 'x'"),
        ("1-", "invalid CPU list item '1-'"),
        ("-1", "invalid CPU list item '-1'"),
        ("1-2-3", "invalid CPU list item '1-2-3'"),
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
