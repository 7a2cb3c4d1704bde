"""Progress on a terminal for save, restore and migrate (toolstack/transfer.py): a tqdm
bar on stderr when, and only when, stderr is a terminal (a pty here), with the pages
sent and their rate, and for a migration the pre-copy round and the estimated downtime
(needs /dev/kvm)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_until
from tests.vm.test_save_restore import COUNT, _checksum, _counts, _start_counter

pytestmark = pytest.mark.kvm


def _on_a_terminal(x: Xenopus, *args: str, size: tuple[int, int] = (24, 160)
                   ) -> tuple[int, str]:
    """Run a verb with stderr on a pty of `size` (rows, columns; (0, 0) as a bare pty
    reports); its return code and what the terminal got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(x.cmd(*args), env=x.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every holder of the terminal's other side is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(timeout=120), seen.decode(errors="replace")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    tmp = tmp_path_factory.mktemp("receiver")
    x = Xenopus(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)


def test_save_and_restore_show_progress_on_a_terminal_only(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    console = _start_counter(xenopus, "shown")
    before = read_until(console.stdout, b"count 20\r\n")
    image = tmp_path / "shown.img"
    rc, seen = _on_a_terminal(xenopus, "save", "shown", str(image))
    assert rc == 0, seen
    assert "Saving shown" in seen and "pages=" in seen and "B/s" in seen, seen
    before += console.communicate(timeout=60)[0]
    rc, seen = _on_a_terminal(xenopus, "restore", "-p", str(image), size=(0, 0))
    assert rc == 0, seen
    assert f"Restoring {image.name}" in seen and "pages=" in seen, seen
    after = xenopus.popen("console", "shown")
    assert xenopus.run("unpause", "shown").returncode == 0
    plain = xenopus.run("save", "-c", "shown", str(tmp_path / "again.img"))  # not a terminal
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    text = (before + after.communicate(timeout=120)[0]).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text


def test_migrate_shows_rounds_pages_and_downtime_on_a_terminal(
    xenopus: Xenopus, receiver: Xenopus,
) -> None:
    console = _start_counter(xenopus, "watched")
    before = read_until(console.stdout, b"count 20\r\n")
    host = f"PATH={Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    rc, seen = _on_a_terminal(xenopus, "migrate", "-s",
                              f"env XENOPUS_RUN_DIR={receiver.run_dir}", "watched", host)
    assert rc == 0, seen
    assert "Migrating watched" in seen, seen
    assert "round=stop-and-copy" in seen and "pages=" in seen and "downtime=~" in seen, seen
    assert "watched" in receiver.domains()
    before += console.communicate(timeout=60)[0]
    after = receiver.popen("console", "watched").communicate(timeout=120)[0]
    text = (before + after).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text
