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


# One daemon for the session (and one in the network namespace), not one per test: on the
# nested test host every Python process runs under TCG, and a fresh daemon costs about 40 s
# (daemon, zygote and the first spare each importing xenopus) before its first domain can
# start, plus its stop. The tests share it as a Xen host's toolstack is shared; each test
# destroys what it left (destroy_all), so the next one starts from an empty host.
@pytest.fixture(scope="session")
def _daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    x = Xenopus(tmp_path_factory.mktemp("xenopus"))
    x.start()
    yield x
    x.stop()


@pytest.fixture(scope="session")
def _netns_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    x = Xenopus(tmp_path_factory.mktemp("xenopus-netns"), prefix=("ip", "netns", "exec", NS))
    try:
        x.start()
        yield x
    finally:
        x.stop()
        subprocess.run(["ip", "netns", "del", NS], check=False)


def _for_test(daemon: Xenopus, tmp_path: Path) -> Iterator[Xenopus]:
    x = daemon.for_test(tmp_path)
    x.destroy_all()  # an earlier test's, should it have left any
    yield x
    x.destroy_all()
    x.keep_domain_logs()


@pytest.fixture
def xenopus(_daemon: Xenopus, tmp_path: Path) -> Iterator[Xenopus]:
    """The session's xenopus daemon, empty of domains; the test's files in tmp_path."""
    yield from _for_test(_daemon, tmp_path)


@pytest.fixture
def netns(_netns_daemon: Xenopus, tmp_path: Path) -> Iterator[Xenopus]:
    """The session's xenopus daemon in network namespace NS (its taps land there)."""
    yield from _for_test(_netns_daemon, tmp_path)
