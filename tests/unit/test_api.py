"""The Python API (`import xenopus`) against a real daemon in a private run directory.

Nothing here boots a guest (tests/vm/test_xl.py does): these are the daemon's host-wide
answers, typed, and its refusals, as typed errors.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import xenopus
from xenopus import api, client, host
from xenopus.control import Reply


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = str(tmp_path_factory.mktemp("api") / "run")
    client.start_daemon(base)
    yield base
    with xenopus.connect(base, autostart=False) as x:
        x.stop_daemon()


def test_package_exports_the_api_lazily() -> None:
    # `import xenopus` must not load the API (the xl command imports the package).
    code = "import sys, xenopus; print('xenopus.api' in sys.modules, 'dataclasses' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
    assert xenopus.connect is api.connect
    assert xenopus.NoSuchDomain is client.NoSuchDomain
    assert issubclass(xenopus.NoSuchDomain, xenopus.XenopusError)
    with pytest.raises(AttributeError):
        xenopus.nothing  # noqa: B018


def test_no_daemon_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(xenopus.DaemonUnavailable, match="no xenopus daemon is running"):
        xenopus.connect(str(tmp_path), autostart=False)


def test_host_info_is_typed(run_dir: str) -> None:
    with xenopus.connect(run_dir) as x:
        info = x.info()
    assert isinstance(info, xenopus.HostInfo)
    assert info.nr_cpus == len(host.host_cpus())
    assert info.max_cpu_id == max(host.host_cpus())
    assert (info.xen_major, info.xen_minor) == (4, 11)
    assert info.xen_version.startswith("4.11")
    assert "hvm" in info.virt_caps and info.xend_config_format == 4
    assert 0 < info.free_memory <= info.total_memory


def test_lists_and_refusals(run_dir: str, tmp_path: Path) -> None:
    with xenopus.connect(run_dir) as x:
        assert x.list() == []
        assert isinstance(x.dmesg(), list)
        with pytest.raises(xenopus.NoSuchDomain, match="domain 'web' does not exist"):
            x.domain("web")
        with pytest.raises(xenopus.NoSuchDomain):
            x.destroy("web")
        with pytest.raises(xenopus.NoSuchDomain):
            x.rename(7, "db")
        cfg = tmp_path / "bad.cfg"
        cfg.write_text('name = "bad"\nkernel = "/nonexistent"\nmemory = "lots"\n')
        with pytest.raises(xenopus.ConfigInvalid, match="bad.cfg:3"):
            x.create(cfg)


def test_keyword_overrides_are_xl_cfg_values() -> None:
    assert api.override("memory", 256) == "memory=256"
    assert api.override("cmdline", 'a "b"') == 'cmdline="a \\"b\\""'
    assert api.override("vif", ["bridge=br0", "mac=00:16:3e:00:00:01"]) == \
        'vif=["bridge=br0", "mac=00:16:3e:00:00:01"]'
    assert api.override("virtio_rng", True) == "virtio_rng=1"


def test_error_codes_map_to_types() -> None:
    assert type(client.error_for(Reply(False, {"code": "domain-exists"}, "x"))) is \
        client.DomainExists
    assert type(client.error_for(Reply(False, {}, "x"))) is client.XenopusError
    assert str(client.error_for(Reply(False, {"code": "state"}, "paused"))) == "paused"
