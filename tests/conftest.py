"""Shared fixtures: the KVM marker, built guests, and a private xenopus daemon."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"
GUEST_OUT = GUESTS / "out"
HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_KVM:
        return
    skip = pytest.mark.skip(reason="needs /dev/kvm, which this host does not have (or cannot open)")
    for item in items:
        # The marker itself, not `"kvm" in item.keywords`: keywords also hold the names of
        # parent nodes, so a directory or module called kvm would match.
        if item.get_closest_marker("kvm") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guests() -> Path:
    """The built test guests (guests/out), built here if `make` has not done it."""
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return GUEST_OUT
