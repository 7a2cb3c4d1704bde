"""Two Linux guests on one host, each with its own disk and vif; destroying one leaves the
other running: it finishes its check (typed `go` on its console) and powers off."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.linux.linuxguest import BOOT_TIMEOUT, Xenopus, console_dir, kernel_file, read_lines

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
READY = "xenopus-wait: ready vda=yes eth0=yes"


def start(netns: Xenopus, tmp_path: Path, name: str) -> subprocess.Popen:
    disk = tmp_path / f"{name}.img"
    disk.write_bytes(b"")
    with disk.open("r+b") as f:
        f.truncate(16 << 20)
    cfg = netns.config(name, kernel_file("6.1", "pvh"), "wait",
                       extra=f'disk = ["format=raw, vdev=vda, access=rw, target={disk}"]\n'
                             f'vif = ["vifname=t{name}"]\n')
    return subprocess.Popen(netns.command("create", "-c", str(cfg)), env=netns.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_destroying_one_guest_leaves_the_other_running(netns: Xenopus, tmp_path: Path) -> None:
    # The session's daemon is running (the netns fixture started it): two CLIs that both
    # found none would race to start one, and the loser's create would fail.
    guests = {name: start(netns, tmp_path, name) for name in ("ga", "gb")}
    lines = {name: [] for name in guests}
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        for name, proc in guests.items():
            log = console_dir() / f"two-{name}.log"
            assert read_lines(proc, lines[name], deadline, log, until=READY), \
                f"{name} did not come up:\n" + "\n".join(lines[name][-40:])
        destroyed = netns.run("destroy", "ga")
        assert destroyed.returncode == 0, destroyed.stderr
        assert guests["ga"].wait(timeout=60) is not None  # its console ended with it
        listed = netns.names()
        assert "gb" in listed and "ga" not in listed, f"{listed}\n--- daemon log ---\n{netns.log()}"
        guests["gb"].stdin.write(b"go\n")
        guests["gb"].stdin.flush()
        assert read_lines(guests["gb"], lines["gb"], time.monotonic() + 120,
                          console_dir() / "two-gb.log"), "\n".join(lines["gb"][-40:])
        tail = "\n".join(lines["gb"][-40:])
        assert any("RESULT: PASS wait got=go vda=yes eth0=yes" in ln for ln in lines["gb"]), tail
        assert guests["gb"].wait(timeout=60) == 0, tail
    finally:
        for proc in guests.values():
            proc.kill()
