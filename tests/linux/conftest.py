"""The opt-in stock-Linux boot tests: run by `make test-linux`, skipped by `make test`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "linux: boots Debian's cloud kernel (slow; `make test-linux`, needs scripts/fetch-linux)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Opt-in: only a run that selects the marker (`-m linux`) boots Linux.
    if "linux" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in (minutes on nested KVM): run `make test-linux`")
    for item in items:
        if "linux" in item.keywords:
            item.add_marker(skip)
