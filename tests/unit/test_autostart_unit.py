"""The autostart unit (dist/xenopus-autostart.service.in) as `make install-autostart`
fills it in is a valid systemd unit (systemd-analyze verify: its syntax, and that the
commands it runs exist) that runs the autostart module; the module's config choice."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xenopus.toolstack import autostart

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "dist" / "xenopus-autostart.service.in"


def installed(tmp_path: Path, python: str) -> Path:
    """The unit as the Makefile's sed writes it."""
    text = UNIT.read_text().replace("@PYTHON@", python).replace("@SRCDIR@", str(ROOT))
    path = tmp_path / "xenopus-autostart.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = installed(tmp_path, sys.executable)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr  # not even a warning
    # the check has teeth: a command that does not exist is refused
    broken = installed(tmp_path, str(tmp_path / "no-python"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True)
    assert r.returncode != 0 and "no-python" in r.stderr


def test_unit_runs_the_autostart_module_both_ways() -> None:
    lines = UNIT.read_text().splitlines()
    assert "ExecStart=-@PYTHON@ -m xenopus.toolstack.autostart start" in lines
    assert "ExecStop=@PYTHON@ -m xenopus.toolstack.autostart stop" in lines
    assert "Type=oneshot" in lines and "RemainAfterExit=true" in lines
    assert "WantedBy=multi-user.target" in lines
    makefile = (ROOT / "Makefile").read_text()
    assert "install-autostart:" in makefile
    run_target = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "autostart" not in run_target  # make run installs nothing


def test_configs_are_the_directorys_files_in_name_order(tmp_path: Path) -> None:
    for name in ("b.cfg", "a", ".hidden", "c.cfg~"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "b.cfg")
    assert [p.name for p in autostart.configs(str(tmp_path))] == ["a", "b.cfg", "link"]
    assert autostart.configs(str(tmp_path / "missing")) == []
