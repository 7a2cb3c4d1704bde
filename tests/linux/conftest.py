"""The opt-in stock-Linux boot tests: run by `make test-linux`, skipped by `make test`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.linux.linuxguest import Xenopus

NS = f"xenopus-linux-{os.getpid()}"  # a private network namespace for taps


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "linux: boots Debian's cloud kernel (slow; `make test-linux`, needs scripts/fetch-linux)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Opt-in: only a run that selects the marker (`-m linux`) boots Linux.
    if "linux" in (config.getoption("markexpr") or ""):
        for item in items:  # several Linux boots under nested KVM: far above the suite's cap
            item.add_marker(pytest.mark.timeout(3600))
        return
    skip = pytest.mark.skip(reason="opt-in (minutes on nested KVM): run `make test-linux`")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def xenopus(tmp_path: Path) -> Iterator[Xenopus]:
    """A private xenopus daemon."""
    x = Xenopus(tmp_path)
    yield x
    x.stop()


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Xenopus]:
    """A private xenopus daemon in network namespace NS (its taps land there)."""
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    x = Xenopus(tmp_path, prefix=("ip", "netns", "exec", NS))
    try:
        yield x
    finally:
        x.stop()
        subprocess.run(["ip", "netns", "del", NS], check=False)
