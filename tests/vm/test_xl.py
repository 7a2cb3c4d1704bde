"""The `xl` command, as a Xen user runs it: a config found by name in the Xen config
directory, xl.conf read, options after positionals, and the information verbs in xl's
formats (the formats themselves are checked against xl's source in
tests/unit/test_xl_formats.py); the Python API on the same domain."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import xenopus
from tests.conftest import GUESTS
from tests.vm.conftest import Xenopus
from xenopus import host

pytestmark = pytest.mark.kvm

XL = Path(sys.executable).with_name("xl")


class Xl(Xenopus):
    """Runs the installed `xl` with a private run directory and Xen config directory."""

    def __init__(self, run_dir: Path, tmp: Path):
        super().__init__(run_dir, tmp)
        self.etc = tmp / "etc-xen"
        self.etc.mkdir()
        self.env["XENOPUS_XEN_CONFIG_DIR"] = str(self.etc)
        self.env.pop("XENOPUS_XL_CONF", None)

    def cmd(self, *args: str) -> list[str]:
        return [str(XL), *args]


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory, guests: Path) -> Iterator[Xl]:
    if not XL.exists():
        pytest.skip(f"{XL} is not installed (make test installs the xl entry point)")
    tmp = tmp_path_factory.mktemp("xl")
    x = Xl(tmp / "run", tmp)
    (x.etc / "xl.conf").write_text(f'autoballoon = "on"\nlockfile = "{tmp / "xl.lock"}"\n')
    (x.etc / "waiter.cfg").write_text(
        f'name = "waiter"\nkernel = "{GUESTS / "out" / "powerbtn.elf"}"\nmemory = 32\n'
        'vcpus = 2\nmaxvcpus = 3\non_reboot = "destroy"\n')
    yield x
    x.run("daemon", "--stop", timeout=60)


def test_xl_create_by_name_then_the_information_verbs(xl: Xl) -> None:
    dry = xl.run("create", "-n", "waiter", "vcpus=1")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["b_info"]["avail_vcpus"] == [0]  # printed, not created
    assert xl.run("list", "waiter").returncode != 0
    made = xl.run("create", "waiter", "-p", "memory=48")  # options after the config, as xl
    assert made.returncode == 0, made.stderr
    assert made.stderr.startswith(f"Parsing config from {xl.etc / 'waiter.cfg'}")
    assert (xl.tmp / "xl.lock").exists()  # autoballoon=on: xl.conf's lockfile was taken
    domid = xl.run("domid", "waiter", check=True).stdout.strip()
    assert domid.isdigit()
    assert xl.run("domname", domid, check=True).stdout == "waiter\n"
    vms = xl.run("vm-list", check=True).stdout.splitlines()
    assert vms[0] == "UUID                                  ID    name" and len(vms) == 2

    listing = xl.run("list", "-v", "waiter", check=True).stdout.splitlines()
    assert listing[0].endswith("   UUID                            Reason-Code\tSecurity Label")
    fields = listing[-1].split()
    # VCPUs: vcpu_online, vCPU0 alone in a domain created paused (vcpus = 2)
    assert fields[:5] == ["waiter", domid, "48", "1", "--p---"]
    uuid = fields[6]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert fields[7:] == ["-", "-"]
    assert vms[1].split() == [uuid, domid, "waiter"]
    pools = xl.run("list", "-c", "-n", check=True).stdout.splitlines()
    assert pools[0].endswith("\tTime(s)         Cpupool NODE Affinity")
    assert all(line.endswith("          Pool-0 all") for line in pools[1:])
    # the verbs of one pool, no claims and KSM's sharing, in xl's tables
    assert xl.run("cpupool-list", check=True).stdout.splitlines()[1].split() == [
        "Pool-0", str(len(host.host_cpus())), "credit2", "y", "2"]
    claims = xl.run("claims", check=True).stdout.splitlines()
    assert claims[0].endswith("\tTime(s)  Claimed") and claims[-1].split()[-1] == "0"
    shared = xl.run("sharing", "waiter", check=True).stdout.splitlines()
    assert shared[1].split()[:3] == ["waiter", domid, "48"] and shared[1].split()[3].isdigit()

    # Xen brings vCPU0 of a domain created paused up (its CPU shown, neither running nor
    # blocked); the other vCPUs wait for the guest ("-", "--p").
    rows = [r.split() for r in xl.run("vcpu-list", "waiter", check=True).stdout.splitlines()[1:]]
    assert rows[0][:3] == ["waiter", domid, "0"] and rows[0][3].isdigit() and rows[0][4] == "---"
    assert rows[1][2:5] == ["1", "-", "--p"]

    config = json.loads(xl.run("list", "-l", "waiter", check=True).stdout)[0]
    assert config["domid"] == int(domid)
    c_info, b_info = config["config"]["c_info"], config["config"]["b_info"]
    assert (c_info["type"], c_info["name"], c_info["uuid"]) == ("pvh", "waiter", uuid)
    assert (b_info["max_vcpus"], b_info["avail_vcpus"], b_info["target_memkb"]) == (3, [0, 1], 48 * 1024)

    up = xl.run("uptime", "waiter", check=True).stdout.splitlines()
    assert up[0] == "Name                                ID Uptime"
    assert re.fullmatch(rf"waiter {{27}} {{1,4}}{domid} +\d+:\d\d:\d\d", up[1]), up
    assert xl.run("info", "nr_cpus", check=True).stdout == f"{len(host.host_cpus())}\n"
    info = xl.run("info", check=True).stdout
    assert "\nxen_version            : 4.11" in info and info.endswith("xend_config_format     : 4\n")

    top = xl.run("top", "-b", "-i", "1", check=True).stdout.splitlines()
    assert top[0].split() == ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)",
                              "MAXMEM(k)", "MAXMEM(%)", "VCPUS", "NETS", "NETTX(k)", "NETRX(k)",
                              "VBDS", "VBD_OO", "VBD_RD", "VBD_WR", "VBD_RSECT", "VBD_WSECT",
                              "SSID"]
    row = next(r.split() for r in top[1:] if r.split()[0] == "waiter")
    # VCPUS: xenstat.c's num_vcpus, max_vcpu_id + 1 (every vCPU the domain has)
    assert row[1] == "----p-" and row[4] == str(48 * 1024) and row[8] == "3"


@pytest.mark.skipif(shutil.which("xenstore-read") is None, reason="xenstore-utils not installed")
def test_xenstore_as_libxl_writes_it(xl: Xl) -> None:
    domid = xl.run("domid", "waiter", check=True).stdout.strip()
    env = {**os.environ, "XENSTORED_PATH": str(xl.run_dir / "xenstored.sock")}

    def read(path: str) -> str:
        done = subprocess.run(["xenstore-read", path], env=env, capture_output=True,
                              text=True, timeout=20)
        assert done.returncode == 0, (path, done.stderr)
        return done.stdout.strip()

    assert read("/local/domain/0/name") == "Domain-0"
    home = f"/local/domain/{domid}"
    assert [read(f"{home}/cpu/{i}/availability") for i in range(3)] == ["online", "online", "offline"]
    assert read(f"{home}/store/port").isdigit() and read(f"{home}/store/ring-ref").isdigit()
    assert read(f"{home}/console/backend") == f"/local/domain/0/backend/console/{domid}/0"
    vm = read(f"{home}/vm")
    assert re.fullmatch(r"\d+\.\d\d", read(f"{vm}/start_time"))
    assert read(f"/libxl/{domid}/type") == "pvh"
    assert read(f"{home}/memory/target") == str(48 * 1024)


def test_rename_then_the_python_api_then_destroy(xl: Xl) -> None:
    domid = int(xl.run("domid", "waiter", check=True).stdout)
    assert xl.run("rename", "waiter", "sleeper").returncode == 0
    assert xl.run("domname", str(domid), check=True).stdout == "sleeper\n"
    with xenopus.connect(str(xl.run_dir), autostart=False) as x:
        dom = x.domain("sleeper")
        assert (dom.domid, dom.state, dom.memory_mib, dom.vcpus, dom.maxvcpus) == (
            domid, "paused", 48, 2, 3)
        assert dom.online_vcpus == 1  # created paused: vCPU0 only, as Xen's builder has it
        vcpus = x.vcpus(domid)
        # maxvcpus (3) vCPUs exist, as under Xen (xl vcpu-list lists vcpu_max_id + 1)
        assert [v.online for v in vcpus] == [True, False, False]
        x.unpause("sleeper")
        assert x.domain(domid).state == "running"
        with pytest.raises(xenopus.DomainExists):
            x.rename(domid, "Domain-0")
        x.destroy(domid)
        assert x.list() == []
    dmesg = xl.run("dmesg", check=True).stdout
    assert f"(XEN) d{domid}: domain 'waiter' created" in dmesg
    assert f"(XEN) d{domid}: domain 'waiter' renamed 'sleeper'" in dmesg
    assert f"(XEN) d{domid}: domain 'sleeper' destroyed" in dmesg
