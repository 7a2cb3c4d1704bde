"""The debug sampler (xenopus/sampler.py): it sees where other threads wait."""

from __future__ import annotations

import threading

import pytest

from xenopus.sampler import StackSampler


def _parked_here(release: threading.Event) -> None:
    release.wait()


def test_the_sampler_counts_where_a_thread_waits() -> None:
    release = threading.Event()
    parked = threading.Thread(target=_parked_here, args=(release,), name="parked")
    parked.start()
    sampler = StackSampler(200)
    sampler.start()
    try:
        while sampler.samples < 5:
            release.wait(0.01)
    finally:
        sampler.stop()
        release.set()
        parked.join()
    lines = sampler.report().splitlines()
    assert lines[0].startswith("XENOPUS_PROFILE: ") and "every 5 ms" in lines[0]
    mine = [ln for ln in lines[1:] if ln.startswith("parked;")]
    assert mine and all("_parked_here (test_sampler.py:" in ln for ln in mine)
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in mine) >= 4  # one per sample, about


def test_a_bad_rate_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="XENOPUS_PROFILE=0"):
        StackSampler(0)
