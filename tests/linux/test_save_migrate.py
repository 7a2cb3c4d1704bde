"""A Linux guest with a disk saved and restored, then live-migrated (to this same host, as
`xl migrate DOM localhost` does), carrying on in the same boot with its disk intact: the
save/restore issue's real-Linux test. The guest side is tests/linux/guest/checks/persist.sh:
each `round N` typed on its console writes fresh data to the raw virtio disk and reports
the disk's SHA-256 as read back through Linux's virtio-blk driver, with its uptime."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.linux.linuxguest import (
    BOOT_TIMEOUT,
    Xenopus,
    console_dir,
    kernel_file,
    read_lines,
    with_check,
)

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
ROUND = re.compile(r"xenopus-persist: round (\d+) uptime=([\d.]+) disk=([0-9a-f]{64})")
ROUND_BYTES = 4 * 65536  # persist.sh: 256 KiB a round
STEP_TIMEOUT = 600.0  # a save, restore or migration of 128 MiB from Python under TCG


class Console:
    """The domain's console with input: one `xenopus console` at a time (a restored or
    migrated domain is a new one, attached afresh); every line seen kept in `lines`."""

    def __init__(self, x: Xenopus, name: str, log: Path) -> None:
        self.x, self.name, self.log = x, name, log
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def attach(self) -> None:
        self.detach()
        self.proc = subprocess.Popen(self.x.command("console", self.name), env=self.x.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def detach(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None

    def wait_for(self, text: str, timeout: float) -> None:
        assert self.proc is not None
        assert read_lines(self.proc, self.lines, time.monotonic() + timeout, self.log, until=text), \
            f"no {text!r} within {timeout:.0f} s:\n" + "\n".join(self.lines[-40:])

    def type(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def round(self, n: int) -> tuple[float, str]:
        """Type `round n`; the guest's uptime and disk digest after it."""
        self.type(f"round {n}")
        self.wait_for(f"xenopus-persist: round {n} ", 120)
        found = [m for m in map(ROUND.search, self.lines) if m and m[1] == str(n)]
        assert found, "\n".join(self.lines[-20:])
        return float(found[-1][2]), found[-1][3]


def disk_digest(disk: Path, rounds: int) -> str:
    """SHA-256 of the image up to the end of round `rounds` (what persist.sh reads back)."""
    with disk.open("rb") as f:
        return hashlib.sha256(f.read((rounds + 1) * ROUND_BYTES)).hexdigest()


def test_a_linux_guest_with_a_disk_survives_save_restore_and_live_migration(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    name = "persist"
    disk = tmp_path / "persist.img"
    with disk.open("wb") as f:
        f.truncate(16 << 20)
    kernel = with_check(kernel_file("6.1", "pvh"), "persist", tmp_path / "initramfs.cpio")
    cfg = xenopus.config(name, kernel, "persist", memory=128,
                         extra=f'disk = ["format=raw, vdev=vda, access=rw, target={disk}"]\n')
    log = console_dir() / "persist.log"
    log.unlink(missing_ok=True)
    created = xenopus.run("create", "-q", str(cfg))
    assert created.returncode == 0, created.stderr
    console = Console(xenopus, name, log)
    try:
        console.attach()
        console.wait_for("xenopus-persist: ready", BOOT_TIMEOUT)
        up1, sum1 = console.round(1)
        assert sum1 == disk_digest(disk, 1)

        image = tmp_path / "persist.save"
        console.detach()
        saved = xenopus.run("save", name, str(image), timeout=STEP_TIMEOUT)
        assert saved.returncode == 0, saved.stderr
        assert name not in xenopus.names()  # save without -c destroys it
        restored = xenopus.run("restore", str(image), timeout=STEP_TIMEOUT)
        assert restored.returncode == 0, restored.stderr
        console.attach()
        up2, sum2 = console.round(2)
        assert up2 > up1, "the restored guest booted again"
        assert sum2 == disk_digest(disk, 2)

        # Live, to this same host: `migrate -s SSHCMD DOM HOST` runs `SSHCMD HOST xenopus
        # migrate-receive`; SSHCMD an `env` naming this daemon, HOST a PATH with xenopus.
        console.detach()
        host = f"PATH={Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
        moved = xenopus.run("migrate", "-s", f"env XENOPUS_RUN_DIR={xenopus.run_dir}", name,
                            host, timeout=STEP_TIMEOUT)
        assert moved.returncode == 0, moved.stderr
        console.attach()
        up3, sum3 = console.round(3)
        assert up3 > up2, "the migrated guest booted again"
        assert sum3 == disk_digest(disk, 3)

        console.type("end")
        console.wait_for("RESULT: ", 120)
        result = next(ln for ln in console.lines if "RESULT: " in ln)
        assert "RESULT: PASS persist rounds=3" in result, "\n".join(console.lines[-40:])
    finally:
        console.detach()
