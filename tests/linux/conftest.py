"""The opt-in stock-Linux boot tests: run by `make test-linux`, skipped by `make test`."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.linux.linuxguest import Xenopus

NS = f"xenopus-linux-{os.getpid()}"  # a private network namespace for taps


# Each test's seconds in one nested host (tests/linux/durations.json, from a full run's
# `--durations=0`): what `--shard` balances by.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard", metavar="I/N", default=None,
        help="run only part I of N (1-based) of the selected tests: a deterministic "
             "partition balanced by tests/linux/durations.json (scripts/test-linux runs "
             "one nested host per part)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "linux: boots Debian's cloud kernel (slow; `make test-linux`, needs scripts/fetch-linux)"
    )
    if config.getoption("--shard"):
        config.pluginmanager.register(Shard(config.getoption("--shard")), "linux-shard")


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` as (I, N), 1 <= I <= N."""
    try:
        part, _, count = text.partition("/")
        index, total = int(part), int(count)
    except ValueError:
        raise pytest.UsageError(f"--shard {text!r}: expected I/N, e.g. 1/2") from None
    if not 1 <= index <= total:
        raise pytest.UsageError(f"--shard {text!r}: I must be between 1 and N")
    return index, total


def partition(nodeids: list[str], seconds: dict[str, float], parts: int,
              together: dict[str, str] | None = None) -> list[list[str]]:
    """`nodeids` in `parts` lists of about equal total seconds: the longest first, each to
    the part with the least so far (ties: the lower part), each part in the given order.
    Tests with the same key in `together` go to one part, as one (a module-scoped fixture
    they share, which a second part would run again). A test the table does not know
    counts as its median. Deterministic: the same tests and table give the same parts on
    every host."""
    default = statistics.median(seconds.values()) if seconds else 60.0
    order = {n: i for i, n in enumerate(nodeids)}
    groups: dict[str, list[str]] = {}
    for nodeid in nodeids:
        groups.setdefault((together or {}).get(nodeid, nodeid), []).append(nodeid)
    cost = {key: sum(seconds.get(n, default) for n in members) for key, members in groups.items()}
    load = [0.0] * parts
    chosen: list[list[str]] = [[] for _ in range(parts)]
    for key in sorted(groups, key=lambda k: (-cost[k], order[groups[k][0]])):
        part = min(range(parts), key=lambda p: (load[p], p))
        load[part] += cost[key]
        chosen[part] += groups[key]
    return [sorted(part, key=order.__getitem__) for part in chosen]


def shared_fixture(item: pytest.Item) -> str | None:
    """The first fixture of `item` that is set up once for several tests but not for the
    whole session (module, class or package scope), as `module::name`; None if none."""
    info = getattr(item, "_fixtureinfo", None)
    for name in info.names_closure if info else ():
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope in ("module", "class", "package"):
            return f"{item.nodeid.split('::')[0]}::{name}"
    return None


class Shard:
    """`--shard I/N`: keeps part I of the tests left once -m and -k have deselected
    theirs (trylast: after pytest's own deselection), reporting the rest deselected."""

    def __init__(self, text: str) -> None:
        self.index, self.total = parse_shard(text)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        seconds = json.loads(DURATIONS.read_text())["seconds"] if DURATIONS.exists() else {}
        together = {item.nodeid: key for item in items if (key := shared_fixture(item))}
        parts = partition([item.nodeid for item in items], seconds, self.total, together)
        keep = set(parts[self.index - 1])
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in keep])
        items[:] = [i for i in items if i.nodeid in keep]


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
