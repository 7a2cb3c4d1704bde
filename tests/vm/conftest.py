"""A private xenopus daemon per test module, driven through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUESTS


class Xenopus:
    """Runs `xenopus` verbs against a daemon in a private run directory."""

    def __init__(self, run_dir: Path, tmp: Path, prefix: tuple[str, ...] = ()):
        self.run_dir = run_dir
        self.tmp = tmp
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NS): run in a network namespace
        self.env = {**os.environ, "XENOPUS_RUN_DIR": str(run_dir)}

    def cmd(self, *args: str) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "xenopus", *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(*args), env=self.env, input=input, capture_output=True, text=True,
            timeout=timeout, check=check, stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(
            self.cmd(*args), env=self.env, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def config(self, name: str, kernel: str, **keys: object) -> Path:
        """Write an xl.cfg for a guest in guests/out and return its path."""
        lines = [f'name = "{name}"', f'kernel = "{GUESTS / "out" / kernel}"']
        keys.setdefault("memory", 32)
        keys.setdefault("on_reboot", "destroy")
        for k, v in keys.items():
            lines.append(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}")
        path = self.tmp / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def domains(self) -> dict[str, list[str]]:
        """`xenopus list` parsed: name -> the row's fields."""
        out = self.run("list", check=True).stdout.splitlines()
        return {line.split()[0]: line.split() for line in out[1:]}

    def log(self) -> str:
        return (self.run_dir / "xenopus.log").read_text()


@pytest.fixture(scope="module")
def xenopus(tmp_path_factory: pytest.TempPathFactory, guests: Path) -> Iterator[Xenopus]:
    tmp = tmp_path_factory.mktemp("xenopus")
    x = Xenopus(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)
