"""benchmarks/hypercall.py's guest (guests/xenbench.c) through `xenopus create -c`, so that it
cannot rot between benchmark runs: each mode with a small N must report its N round trips."""

from __future__ import annotations

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import boot

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("mode", ["version", "evtchn", "null"])
def test_xenbench_modes_complete(xenopus: Xenopus, mode: str) -> None:
    r = boot(xenopus, f"xenbench-{mode}", "xenbench.elf", xen_platform=1, memory=64,
             cmdline=f"mode={mode} iterations=50")
    assert r.returncode == 0, r.stderr
    assert f"RESULT: PASS xenbench {mode} 50" in r.stdout, r.stdout
    if mode == "evtchn":
        # Every send reached the other end of the pair through the upcall handler.
        assert "events: 50 sent, 50 seen on port" in r.stdout, r.stdout


def test_xenbench_refuses_an_unknown_mode(xenopus: Xenopus) -> None:
    r = boot(xenopus, "xenbench-bad", "xenbench.elf", xen_platform=1, memory=64,
             cmdline="mode=bogus iterations=5")
    assert "RESULT: FAIL xenbench bogus unknown-mode" in r.stdout, r.stdout
