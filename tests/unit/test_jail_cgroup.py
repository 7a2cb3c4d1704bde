"""The per-domain cgroup v2 steps of the jail on a directory laid out as a delegated
cgroup v2 subtree (this build host has no cgroup v2; tests/vm/test_jail.py checks a
real one where the host has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenopus.domain import jail


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cgroup.subtree_control").write_text("")
    base = tmp_path / "xenopus"
    base.mkdir()
    monkeypatch.setenv("XENOPUS_CGROUP", str(base))
    return base


def test_only_the_offered_controllers_are_enabled(base: Path) -> None:
    (base / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb\n")
    missing = jail.enter_cgroup(str(base), 7, 64 << 20, 2)
    assert missing == ["pids"]
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"
    own = base / "domain-7"
    assert (own / "memory.max").read_text() == str((64 << 20) + jail.MEMORY_OVERHEAD)
    assert (own / "cpu.max").read_text() == f"{2 * jail.CPU_PERIOD_US} {jail.CPU_PERIOD_US}"
    assert (own / "cgroup.procs").read_text() == "0"


def test_without_the_memory_controller_no_memory_limit_is_written(base: Path) -> None:
    (base / "cgroup.controllers").write_text("cpu pids\n")
    assert jail.enter_cgroup(str(base), 3, 32 << 20, 1) == ["memory"]
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert not (base / "domain-3" / "memory.max").exists()


def test_no_delegation_is_a_jail_error(tmp_path: Path) -> None:
    with pytest.raises(jail.JailError, match="no cgroup v2 delegation"):
        jail.enter_cgroup(str(tmp_path / "nowhere" / "xenopus"), 1, 1 << 20, 1)


def test_a_gone_domains_cgroup_is_removed_and_stale_ones_found(base: Path) -> None:
    for domid in (1, 2, 5):
        (base / f"domain-{domid}").mkdir()
    (base / "other").mkdir()
    assert jail.stale_cgroups([2]) == [1, 5]
    assert jail.remove_cgroup(1)
    assert not (base / "domain-1").exists()
    (base / "domain-5" / "cgroup.procs").write_text("")  # a directory that is not empty
    assert not jail.remove_cgroup(5)  # (the kernel's EBUSY for one holding a task)
    assert not jail.remove_cgroup(9)
    assert os.path.isdir(base / "domain-5")
