"""The command the autostart unit runs (xenopus.toolstack.autostart, xendomains' start and
stop) against a directory of configs: both start, a second start skips them, a broken
config is reported without stopping the others, stop shuts every domain down."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_until

pytestmark = pytest.mark.kvm


def autostart(x: Xenopus, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenopus.toolstack.autostart", *args],
                          env=x.env, capture_output=True, text=True, timeout=180)


def test_autostart_starts_the_directorys_configs_and_stop_shuts_them_down(xenopus: Xenopus) -> None:
    auto = xenopus.tmp / "auto"
    auto.mkdir()
    for name, kernel in (("auto-pv", "xenctl.elf"), ("auto-acpi", "powerbtn.elf")):
        cfg = xenopus.config(name, kernel, xen_platform=1, memory=64)
        (auto / f"{name}.cfg").write_text(cfg.read_text())
    (auto / "zz-broken.cfg").write_text('name = "broken"\n')  # no kernel
    r = autostart(xenopus, "start", str(auto))
    assert r.returncode == 1, r.stdout + r.stderr
    first = r.stdout.splitlines()
    assert first[0] == "Starting auto Xen domains: auto-acpi.cfg auto-pv.cfg zz-broken.cfg"
    assert first[1].startswith("An error occurred while creating domain zz-broken.cfg:")
    assert "kernel" in first[1]
    domains = xenopus.domains()
    assert {"auto-pv", "auto-acpi"} <= set(domains), domains
    again = autostart(xenopus, "start", str(auto))
    assert again.stdout.startswith(
        "Starting auto Xen domains: auto-acpi.cfg(skip) auto-pv.cfg(skip) zz-broken.cfg"), again.stdout
    assert sorted(n for n in xenopus.domains() if n.startswith("auto-")) == ["auto-acpi", "auto-pv"]
    # Each guest ready for its request (watching control/shutdown; the button enabled)
    for name, ready in (("auto-pv", b"xenctl: ready"), ("auto-acpi", b"READY")):
        con = xenopus.popen("console", "-t", "serial", name)
        read_until(con.stdout, ready)
        con.kill()
        con.wait()
    # stop: the PV one through control/shutdown, the ACPI one by its power button
    r = autostart(xenopus, "stop", str(auto), "--maxwait", "120")
    assert r.returncode == 0, r.stderr
    assert "Timeout" not in r.stdout, r.stdout  # each shut down on its own
    assert not any(n.startswith("auto-") for n in xenopus.domains())
