"""Devices attached at run time are part of the domain's config, as libxl makes them
(libxl__device_add_async → device_add_domain_config, libxl_device.c; xl's restart reloads
it with libxl_retrieve_domain_configuration, xl_vmcontrol.c reload_domain_config):
`list -l` shows them, a detach takes them out, a save image carries them and the restored
domain is built with them, and the domain's restart (on_reboot = "restart") keeps them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_result, read_until
from tests.vm.test_devices import NS, SECTOR, netns, pattern  # noqa: F401 - the fixture
from tests.vm.test_save_restore import LATE_RESPONDER, _answer_and_check_xennet

pytestmark = pytest.mark.kvm

HOT_MAC = "00:16:3e:0a:0b:2e"


def libxl_config(x: Xenopus, name: str) -> dict:
    """`list -l DOM`: libxl_domain_config's JSON."""
    listed = json.loads(x.run("list", "-l", name, check=True).stdout)
    return listed[0]["config"]


def links() -> set[str]:
    out = subprocess.run(["ip", "-j", "-n", NS, "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return {entry["ifname"] for entry in json.loads(out)}


def bridge(name: str) -> None:
    """A bridge with the host's address, up before any vif joins it."""
    for cmd in (["link", "add", name, "type", "bridge"],
                ["addr", "add", "10.0.2.2/24", "dev", name], ["link", "set", name, "up"]):
        subprocess.run(["ip", "-n", NS, *cmd], check=True)


def test_an_attached_vif_and_disk_are_in_the_image_and_the_vif_carries_on_after_restore(
    netns: Xenopus, tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    """guests/xennet waits for its vif, which network-attach adds; it sends its datagram
    and waits for the answer. Saved then (a disk attached too), the image's config has
    both; the restored domain is built with them (the vif's tap again, on its bridge)
    and the answer reaches the guest through the restored rings."""
    bridge("xnhbr6")
    disk = tmp_path / "hot6.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    cfg = netns.config("hotsave", "xennet.elf", xen_platform=1, memory=64,
                       on_poweroff="preserve",
                       cmdline="index=0 wait_attach=1 src_ip=10.0.2.15 dst_ip=10.0.2.2 "
                               "dst_port=5555 payload=ping-before-save "
                               "expect_reply=pong-after-restore timeout_ms=120000")
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", LATE_RESPONDER],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None
        assert responder.stdout.readline().strip() == "bound"
        assert netns.run("create", "-q", str(cfg)).returncode == 0
        con = netns.popen("console", "-t", "serial", "hotsave")
        assert con.stdout is not None
        read_until(con.stdout, b"xennet: waiting for device/vif/0")
        attach = netns.run("network-attach", "hotsave", "vifname=xnhot6", f"mac={HOT_MAC}",
                           "bridge=xnhbr6")
        assert attach.returncode == 0, attach.stderr
        blk = netns.run("block-attach", "hotsave", f"{disk},raw,xvdb,rw")
        assert blk.returncode == 0, blk.stderr
        assert responder.stdout.readline().startswith("got ping-before-save 10.0.2.15")
        recorded = libxl_config(netns, "hotsave")
        assert recorded["nics"] == [{"devid": 0, "mac": HOT_MAC, "bridge": "xnhbr6",
                                     "ifname": "xnhot6", "nictype": "vif"}], recorded
        assert [d["vdev"] for d in recorded["disks"]] == ["xvdb"], recorded

        image = tmp_path / "hot6.save"
        saved = netns.run("save", "hotsave", str(image))  # refused before: "vif 0 is not in..."
        assert saved.returncode == 0, saved.stderr
        con.communicate(timeout=60)
        assert "xnhot6" not in links()
        restored = netns.run("restore", str(image))
        assert restored.returncode == 0, restored.stderr
        assert "xnhot6" in links()
        master = subprocess.run(["ip", "-j", "-n", NS, "link", "show", "xnhot6"],
                                capture_output=True, text=True, check=True).stdout
        assert json.loads(master)[0].get("master") == "xnhbr6"
        listing = netns.run("block-list", "hotsave", check=True).stdout.splitlines()
        assert [row.split()[0] for row in listing[1:]] == ["51728"], listing
        nics = netns.run("network-list", "hotsave", check=True).stdout.splitlines()
        assert [row.split()[:3] for row in nics[1:]] == [["0", "0", HOT_MAC]], nics
        _answer_and_check_xennet(netns, responder, "hotsave")
    finally:
        responder.kill()


XENBLK = "wait_attach=1 wait_detach=1 vdev=51728 sector=2048 count=8 loops={loops} timeout_ms=60000"


def test_attached_devices_survive_the_domains_restart_and_detach_takes_them_out(
    netns: Xenopus, tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    """guests/xenblk waits for a disk, which block-attach adds, and goes through its
    rounds on it; a vif is attached beside it. The guest is reset mid-way (on_reboot =
    "restart"): its next incarnation has both — the guest finds the disk at once and
    does every round on it — and network-detach and block-detach then take them out of
    the config (the vif's tap off the host)."""
    disk = tmp_path / "hot7.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    loops = 40
    cfg = netns.config("hotboot", "xenblk.elf", xen_platform=1, memory=64, on_reboot="restart",
                       on_poweroff="preserve", cmdline=XENBLK.format(loops=loops))
    assert netns.run("create", "-q", str(cfg)).returncode == 0
    con = netns.popen("console", "-t", "serial", "hotboot")
    assert con.stdout is not None
    try:
        read_until(con.stdout, b"xenblk: waiting for device/vbd/51728", timeout=120)
        attach = netns.run("block-attach", "hotboot", f"{disk},raw,xvdb,rw")
        assert attach.returncode == 0, attach.stderr
        nic = netns.run("network-attach", "hotboot", "vifname=xnhot7", f"mac={HOT_MAC}")
        assert nic.returncode == 0, nic.stderr
        read_until(con.stdout, b"xenblk: loop 3\r\n", timeout=120)
        assert netns.run("trigger", "hotboot", "reset").returncode == 0
        # The next incarnation's blkfront: the disk is there from its start.
        out = read_until(con.stdout, b"xenblk: waiting for the backend to close",
                         timeout=120).decode(errors="replace")
        again = out[out.index("xenblk: waiting for device/vbd/51728"):]
        assert f"xenblk: loops: {loops} rounds written and read back" in again, out[-800:]
        data = disk.read_bytes()
        for i in range(loops):
            lo = (2048 + i * 8) * SECTOR
            assert data[lo:lo + 8 * SECTOR] == bytes(pattern(o, 0x5A + i)
                                                     for o in range(lo, lo + 8 * SECTOR))
        assert [row.split()[0] for row in netns.run(
            "block-list", "hotboot", check=True).stdout.splitlines()[1:]] == ["51728"]
        nics = netns.run("network-list", "hotboot", check=True).stdout.splitlines()
        assert [row.split()[:3] for row in nics[1:]] == [["0", "0", HOT_MAC]], nics
        assert "xnhot7" in links()
        recorded = libxl_config(netns, "hotboot")
        assert [n["devid"] for n in recorded["nics"]] == [0], recorded
        assert [d["vdev"] for d in recorded["disks"]] == ["xvdb"], recorded

        # The guest never takes the vif: removed after the wait, by force (libxl's nic).
        detached = netns.run("network-detach", "hotboot", HOT_MAC)
        assert detached.returncode == 0, detached.stderr
        assert "nics" not in libxl_config(netns, "hotboot")
        assert "xnhot7" not in links()
        assert netns.run("network-list", "hotboot", check=True).stdout.splitlines()[1:] == []
        detached = netns.run("block-detach", "hotboot", "xvdb")
        assert detached.returncode == 0, detached.stderr
        out = read_result(con.stdout).decode(errors="replace")
        assert "xenblk: closed on the backend's request" in out and "RESULT: PASS xenblk" in out, out
        assert "disks" not in libxl_config(netns, "hotboot")
    finally:
        netns.run("destroy", "hotboot")
        con.wait(60)
