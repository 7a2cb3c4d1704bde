"""A vif's tap lives exactly as long as its domain (xl: the vif backend and its interface
are removed when the domain is destroyed, libxl__devices_destroy): gone from the host as
soon as the verb that ended the domain returns, or the domain leaves `xenopus list`, in
every path — destroy, the guest's power-off, the domain process's death, a failed create,
a failed restore — and kept, one of it, across an on_reboot = "restart"."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_devices import NS, netns  # noqa: F401 - the fixture
from tests.vm.test_jail import ask

pytestmark = pytest.mark.kvm

# xennet waiting for a vif that never comes: a guest that idles until it is ended.
IDLE = ("index=0 wait_attach=1 src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 payload=x"
        " expect_reply=y timeout_ms=600000")


def links() -> set[str]:
    """The interfaces of the test's network namespace (rtnetlink, through ip)."""
    out = subprocess.run(["ip", "-j", "-n", NS, "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return {entry["ifname"] for entry in json.loads(out)}


def idle_domain(x: Xenopus, name: str, tap: str, **keys: object) -> None:
    cfg = x.config(name, "xennet.elf", xen_platform=1, memory=64, cmdline=IDLE,
                   vif=[f"model=xen, vifname={tap}"], **keys)
    created = x.run("create", "-q", str(cfg))
    assert created.returncode == 0, created.stderr
    assert tap in links()


def wait_gone(x: Xenopus, name: str, timeout: float = 60) -> None:
    """Until `name` has left `xenopus list` (a stop the guest itself made)."""
    deadline = time.monotonic() + timeout
    while name in x.domains():
        assert time.monotonic() < deadline, f"{name} is still listed"
        time.sleep(0.05)  # polling the listing, not synchronising on a guess


def domain_pid(x: Xenopus, name: str) -> int:
    table = json.loads((x.run_dir / "domains.json").read_text())
    return next(d["pid"] for d in table["domains"] if d["name"] == name)


def test_destroy_removes_the_tap(netns: Xenopus) -> None:  # noqa: F811 - the fixture
    idle_domain(netns, "tapdestroy", "xnlife0")
    assert netns.run("destroy", "tapdestroy").returncode == 0
    assert "xnlife0" not in links()


def test_the_guests_power_off_removes_the_tap(netns: Xenopus) -> None:  # noqa: F811
    cfg = netns.config("tappoweroff", "hello.elf", vif=["model=virtio, vifname=xnlife1"])
    assert netns.run("create", "-q", str(cfg)).returncode == 0
    wait_gone(netns, "tappoweroff")
    assert "xnlife1" not in links()


def test_a_dead_domain_process_leaves_no_tap(netns: Xenopus) -> None:  # noqa: F811
    idle_domain(netns, "tapkilled", "xnlife2")
    os.kill(domain_pid(netns, "tapkilled"), 9)
    wait_gone(netns, "tapkilled")
    assert "xnlife2" not in links()


def test_a_failed_create_leaves_no_tap(netns: Xenopus) -> None:  # noqa: F811
    # The second vif's tap cannot have the name the first one took: the create fails
    # after the first was made.
    cfg = netns.config("tapfailed", "xennet.elf", xen_platform=1, memory=64, cmdline=IDLE,
                       vif=["model=xen, vifname=xnlife3", "model=xen, vifname=xnlife3"])
    created = netns.run("create", "-q", str(cfg))
    assert created.returncode != 0 and "xnlife3" in created.stderr, created.stderr
    assert "xnlife3" not in links()


def test_a_failed_restore_leaves_no_tap(netns: Xenopus, tmp_path: Path) -> None:  # noqa: F811
    idle_domain(netns, "taprestore", "xnlife4")
    image = tmp_path / "tap.save"
    saved = netns.run("save", "taprestore", str(image))
    assert saved.returncode == 0, saved.stderr
    assert "xnlife4" not in links()  # the saved domain was destroyed
    data = image.read_bytes()
    image.write_bytes(data[: len(data) - 4096])  # its last records cut off
    restored = netns.run("restore", str(image))
    assert restored.returncode != 0
    assert "taprestore" not in netns.domains()
    assert "xnlife4" not in links()


def test_a_restarted_domain_keeps_its_one_tap_and_destroy_removes_it(netns: Xenopus) -> None:  # noqa: F811
    """A restart keeps the domain's domid here (one process, a new incarnation of its
    guest), so the vif keeps its name: the same tap, no second one."""
    idle_domain(netns, "taprestart", "xnlife5", on_reboot="restart")
    before = links()
    assert netns.run("trigger", "taprestart", "reset").returncode == 0
    deadline = time.monotonic() + 60
    while next(d for d in ask(netns, "list").data["domains"]
               if d["name"] == "taprestart")["reason"] != "reboot":
        assert time.monotonic() < deadline
        time.sleep(0.1)  # polling what a user sees; the reset is asynchronous to the reply
    assert links() == before
    assert netns.run("destroy", "taprestart").returncode == 0
    assert "xnlife5" not in links()


def test_network_detach_removes_a_configured_vifs_tap(netns: Xenopus) -> None:  # noqa: F811
    """A vif of the config (its tap kept open for the domain's restarts) detached: the
    tap goes with it, not with the domain."""
    cfg = netns.config("tapdetach", "xennet.elf", xen_platform=1, memory=64,
                       cmdline=IDLE.replace("index=0", "index=1"),  # never takes vif 0
                       vif=["model=xen, vifname=xnlife6, mac=00:16:3e:0a:0b:16"])
    assert netns.run("create", "-q", str(cfg)).returncode == 0
    assert "xnlife6" in links()
    detached = netns.run("network-detach", "tapdetach", "0")
    assert detached.returncode == 0, detached.stderr
    assert "xnlife6" not in links()
    assert "tapdetach" in netns.domains()
    assert netns.run("destroy", "tapdetach").returncode == 0


def test_a_refused_network_attach_leaves_no_tap(netns: Xenopus) -> None:  # noqa: F811
    """The daemon makes the tap and hands it over before the domain answers: a domain
    that refuses the attach (shut down, held by on_poweroff = "preserve") closes it."""
    cfg = netns.config("tapshut", "xenhello.elf", xen_platform=1, on_poweroff="preserve")
    assert netns.run("create", "-q", str(cfg)).returncode == 0
    deadline = time.monotonic() + 60
    while netns.domains()["tapshut"][4][3] != "s":  # xl's state letters: shut down
        assert time.monotonic() < deadline
        time.sleep(0.05)
    refused = netns.run("network-attach", "tapshut", "vifname=xnlife7")
    assert refused.returncode != 0 and "domain is shutdown" in refused.stderr, refused.stderr
    assert "xnlife7" not in links()
    assert netns.run("destroy", "tapshut").returncode == 0
