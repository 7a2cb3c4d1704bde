"""The arm64 hello guest through the toolstack, as a user runs it: `xenopus create -c -F`
with the daemon, the zygote and a jailed domain process that builds an arm64 domain
(domain/builder_arm64.py) because the host is arm64."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.arm64.test_hello import HELLO
from tests.arm64.test_hello import pytestmark as arm64_host  # the same skips
from tests.vm.conftest import Xenopus

pytestmark = arm64_host


@pytest.fixture(scope="module")
def xenopus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    tmp = tmp_path_factory.mktemp("xenopus")
    x = Xenopus(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)


def config(x: Xenopus, name: str, kernel: Path, **keys: object) -> Path:
    lines = [f'name = "{name}"', f'kernel = "{kernel}"', "memory = 64", 'on_reboot = "destroy"']
    lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()]
    path = x.tmp / f"{name}.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_create_console_and_poweroff(xenopus: Xenopus) -> None:
    r = xenopus.run("create", "-c", "-F", str(config(xenopus, "hello-arm64", HELLO)), timeout=300)
    assert r.returncode == 0, r.stderr + xenopus.log()[-3000:]
    assert "Hello from an arm64 xenopus guest" in r.stdout
    assert "x0 points at a device tree" in r.stdout
    assert "hello-arm64" not in xenopus.domains()


def test_unsupported_keys_are_refused_by_name(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    cfg = config(xenopus, "disk-arm64", HELLO, disk=[f"{disk},raw,xvda,rw"])
    r = xenopus.run("create", "-F", str(cfg), timeout=300)
    assert r.returncode != 0
    assert "disk= is not supported on arm64 yet" in r.stderr + r.stdout
