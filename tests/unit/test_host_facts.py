"""host.py's new facts (for xl info and xl top), against the kernel's own files."""

from __future__ import annotations

import os

import pytest

from xenopus import host


def test_meminfo_and_uptime():
    info = host.meminfo()
    assert info["MemTotal"] // 1024 == host.memory_mib()
    assert 0 < info["MemAvailable"] <= info["MemTotal"]
    with open("/proc/uptime") as f:
        assert abs(host.uptime_seconds() - float(f.read().split()[0])) < 60


def test_topology_covers_every_cpu():
    nodes, cores, threads = host.topology()
    cpus = host.host_cpus()
    assert nodes >= 1 and cores * threads <= len(cpus) * nodes
    rows = host.cpu_topology()
    assert [r[0] for r in rows] == sorted(cpus)
    assert {r[3] for r in rows} <= {n for n, *_ in host.numa_nodes()} | {-1}


def test_numa_nodes_have_a_distance_to_each_node():
    nodes = host.numa_nodes()
    for node, total, free, dists in nodes:
        assert 0 <= free <= total
        assert len(dists) == len(nodes) and dists[[n for n, *_ in nodes].index(node)] == 10


def test_net_bytes_reads_the_interfaces_counters():
    rx, tx = host.net_bytes("lo")
    with open("/sys/class/net/lo/statistics/rx_bytes") as f:
        assert 0 <= rx <= int(f.read())  # read after: the counter only grows
    assert tx >= 0
    assert host.net_bytes("no-such-if0") == (0, 0)
    assert not os.path.exists("/sys/class/net/no-such-if0")


def test_syscall_numbers_per_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numbers the jail calls through syscall(2): x86-64's <asm/unistd_64.h> and the
    arm64 (asm-generic) table, as Debian's arm64 6.1 headers define them."""
    from xenopus import host

    monkeypatch.setattr(host, "machine", lambda: "aarch64")
    assert host.architecture() == "arm64"
    assert [host.syscall_number(n) for n in ("pivot_root", "capset", "seccomp")] == [41, 91, 277]
    monkeypatch.setattr(host, "machine", lambda: "x86_64")
    assert [host.syscall_number(n) for n in ("pivot_root", "capset", "seccomp")] == [155, 126, 317]
    monkeypatch.setattr(host, "machine", lambda: "riscv64")
    with pytest.raises(OSError, match="riscv64"):
        host.syscall_number("capset")
