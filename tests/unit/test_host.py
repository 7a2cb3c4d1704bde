"""xenopus.host reads the host's CPU time from /proc/stat (proc(5)) in one place."""

from __future__ import annotations

from xenopus import host


def test_busy_time_per_cpu_covers_the_online_cpus_and_fits_in_the_total() -> None:
    per_cpu = host.busy_seconds_per_cpu()
    total_after = host.busy_cpu_seconds()
    # /proc/stat has a "cpuN" line per online CPU; the first line sums them (and any CPU
    # that has gone offline), so the per-CPU times cannot exceed a later total.
    assert set(per_cpu) == set(host.host_cpus())
    assert all(busy >= 0 for busy in per_cpu.values())
    assert 0 < sum(per_cpu.values()) <= total_after + 0.01


def test_current_cpu_is_an_online_cpu() -> None:
    assert host.current_cpu() in host.host_cpus()
