"""The Xen guest interface under xenopus (trap path), driven by the kit's Xen guests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import boot, read_until
from tests.vm.test_devices import NS, RESPONDER, netns, pattern  # noqa: F401 - fixture
from xenopus import ipc

pytestmark = pytest.mark.kvm


def xen_boot(x: Xenopus, name: str, kernel: str, **keys):
    return boot(x, name, kernel, xen_platform=1, memory=64, **keys)


def test_discovery_hypercalls_and_timer_event(xenopus: Xenopus) -> None:
    r = xen_boot(xenopus, "xh", "xenhello.elf")
    assert r.returncode == 0, r.stderr
    assert "RESULT: PASS xenhello" in r.stdout, r.stdout
    assert 'CPUID 0x40000000 "XenVMMXenVMM"' in r.stdout
    assert "xen version 4.11" in r.stdout
    assert "timer: VIRQ_TIMER port" in r.stdout
    # console_io output lands in the host log, prefixed as Xen prefixes it.
    dmesg = xenopus.run("dmesg", check=True).stdout
    assert re.search(r"^\(d\d+\) hello through console_io$", dmesg, re.M), dmesg
    log = (xenopus.run_dir / "log" / "xh.log").read_text()
    assert "Xen guest interface: trap" in log
    assert "poweroff: Xen shutdown, reason 0" in log


@pytest.mark.parametrize("guest", ["xenevtchn", "xengrant", "xengntv2", "xenstore"])
def test_event_channels_grants_and_xenstore(xenopus: Xenopus, guest: str) -> None:
    r = xen_boot(xenopus, f"{guest}-t", f"{guest}.elf")
    assert f"RESULT: PASS {guest}" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout
    if guest == "xenstore":
        # xenstore-ring.txt's reconnection: the in-flight request's reply never arrived
        assert "xenstore: reconnected" in r.stdout, r.stdout
        assert "while waiting" not in r.stdout, r.stdout


@pytest.mark.parametrize("upcall", ["vector", "param"])
def test_fifo_event_channels(xenopus: Xenopus, upcall: str) -> None:
    """The FIFO ABI end to end: a guest consuming the queues as Linux does."""
    r = xen_boot(xenopus, f"fifo-{upcall}", "xenfifo.elf", cmdline=f"upcall={upcall}")
    assert "RESULT: PASS xenfifo" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout
    order = re.search(r"priorities 15, 7, 0 raised; delivered: (\d+) (\d+) (\d+)", r.stdout)
    assert order is not None, r.stdout
    low, mid, high = (int(p) for p in order.groups()[::-1])
    assert low < mid < high  # bound in that order: delivered highest priority (last) first


def test_xenstore_transaction_conflict(xenopus: Xenopus) -> None:
    r = xen_boot(xenopus, "xs-tx", "xenstore.elf")
    assert "second commit got EAGAIN, retry ok" in r.stdout, r.stdout


def test_host_tools_see_what_the_guest_wrote(xenopus: Xenopus) -> None:
    """Debian's xenstore-watch, on our socket, sees the node the guest writes through its
    ring (docs/misc/xenstore.txt: a watch fires once when set, then on each change)."""
    cfg = xenopus.config("xs-seen", "xenstore.elf", xen_platform=1, memory=64)
    created = xenopus.run("create", "-p", str(cfg))
    assert created.returncode == 0, created.stderr
    domid = xenopus.domains()["xs-seen"][1]
    node = f"/local/domain/{domid}/data/guest-wrote"
    env = {**os.environ, "XENSTORED_PATH": str(xenopus.run_dir / "xenstored.sock")}
    def read(path: str) -> str:
        return subprocess.run(["xenstore-read", path], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    # The toolstack's nodes, as libxl writes them: name, and the PV console's ring frame
    # (HVM_PARAM_CONSOLE_PFN, page 0xDF000) for xenconsoled.
    assert read(f"/local/domain/{domid}/name") == "xs-seen"
    assert read(f"/local/domain/{domid}/console/ring-ref") == str(0xDF000 >> 12)
    watch = subprocess.Popen([shutil.which("xenstore-watch") or "xenstore-watch", "-n", "2", node],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().strip() == node  # the registration event
        assert xenopus.run("unpause", "xs-seen").returncode == 0
        assert watch.stdout.readline().strip() == node  # the guest's write, via its ring
        assert watch.wait(timeout=60) == 0
    finally:
        watch.kill()
    # Wait for the domain to go (the daemon's `wait`), then read its log: port 0xE9 saw
    # every line the guest printed.
    chan = ipc.Channel.connect(str(xenopus.run_dir / "xenopus.sock"))
    try:
        assert chan.request({"op": "wait", "dom": "xs-seen"})["ok"]
    finally:
        chan.close()
    log = (xenopus.run_dir / "log" / "xs-seen.log").read_text()
    assert "RESULT: PASS xenstore" in log, log


def _vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)[1])


def test_a_guest_that_stops_reading_its_xenstore_ring_is_bounded_not_cut_off(
        xenopus: Xenopus) -> None:
    """xsflood sets 20 watches with 800-byte tokens and stops reading its ring; the host
    then writes 600 nodes under the watched path (12 000 events, ~10 MB). As xenstored
    does, the daemon drops the events past the domain's memory quota (256 KiB here, set
    with xl xenstore-quota-set so that the guest's emulated ring 0 reads the rest back
    quickly) and keeps the connection: the guest, reading again, finds its ring unbroken,
    fewer events than fired, and its requests answered; the domain process held no
    backlog of its own."""
    cfg = xenopus.config("xsflood", "xsflood.elf", xen_platform=1, memory=64,
                         cmdline="watches=20 tokens=800")
    assert xenopus.run("create", "-p", str(cfg)).returncode == 0
    domid = xenopus.domains()["xsflood"][1]
    quota = xenopus.run("xenstore-quota-set", "xsflood", "memory=262144")
    assert quota.returncode == 0, quota.stderr
    pid = next(d["pid"] for d in ipc.Channel.connect(str(xenopus.run_dir / "xenopus.sock"))
               .request({"op": "list"})["domains"] if d["name"] == "xsflood")
    con = xenopus.popen("console", "-t", "serial", "xsflood", stdin=subprocess.PIPE)
    try:
        assert con.stdout is not None and con.stdin is not None
        assert xenopus.run("unpause", "xsflood").returncode == 0
        read_until(con.stdout, b"xsflood: ready")
        rss = _vm_rss_kib(pid)
        env = {**os.environ, "XENSTORED_PATH": str(xenopus.run_dir / "xenstored.sock")}
        pairs = [a for i in range(600) for a in (f"/local/domain/{domid}/data/flood/n{i:04}", "")]
        subprocess.run(["xenstore-write", *pairs], env=env, check=True, timeout=120)
        assert f"domain {domid} is not reading its watch events" in xenopus.log()
        assert _vm_rss_kib(pid) - rss < 4096  # KiB: the proxy keeps a few KiB, not the flood
        con.stdin.write(b"g")
        con.stdin.flush()
        out = read_until(con.stdout, b"RESULT: ", timeout=120).decode(errors="replace")
        out += con.stdout.read1(4096).decode(errors="replace")
    finally:
        con.kill()
        xenopus.run("destroy", "xsflood")
    events = int(re.search(r"xsflood: (\d+) events after the flood", out)[1])
    assert 0 < events < 12000, out
    assert "RESULT: PASS xsflood" in out, out


def test_pv_console_ring(xenopus: Xenopus) -> None:
    cfg = xenopus.config("xcons", "xenconsole.elf", xen_platform=1, memory=64,
                         cmdline="echo timeout_ms=30000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "-t", "pv", "xcons", stdin=subprocess.PIPE)
    assert con.stdin is not None and con.stdout is not None
    seen = read_until(con.stdout, b"READY")
    assert b"hello from the xenopus xenconsole guest" in seen
    con.stdin.write(b"typed-into-pv\r")
    con.stdin.flush()
    out, _ = con.communicate(timeout=60)
    assert b"ECHO: typed-into-pv" in out


def test_blkfront_writes_land_in_the_image(xenopus: Xenopus) -> None:
    disk = xenopus.tmp / "xvda.img"
    disk.write_bytes(b"")
    os.truncate(disk, 16 << 20)
    r = xen_boot(xenopus, "xblk", "xenblk.elf", disk=[f"{disk},raw,xvda,rw"],
                 cmdline="vdev=51712 sector=100 count=4")
    assert "RESULT: PASS xenblk" in r.stdout, r.stdout
    data = disk.read_bytes()
    start = 100 * 512
    assert data[start : start + 4 * 512] == bytes(pattern(o) for o in range(start, start + 4 * 512))


def test_hostile_hypercalls_get_xens_error_codes(xenopus: Xenopus) -> None:
    # Another domain runs throughout: the hostile one must not disturb it.
    bystander = xenopus.config("bystander", "powerbtn.elf")
    assert xenopus.run("create", "-q", str(bystander)).returncode == 0
    try:
        for case in ("all", "xs_corrupt"):
            r = xen_boot(xenopus, f"hostile-{case}", "xenhostile.elf", cmdline=f"case={case}")
            assert f"RESULT: PASS xenhostile {case}" in r.stdout, r.stdout
            for got, want in re.findall(r"got (-?\d+) expected (-?\d+) ok", r.stdout):
                assert got == want
        assert xenopus.domains()["bystander"][4] == "r-----"
        assert xenopus.run("shutdown", "-F", "-ww", "bystander").returncode == 0
    finally:
        xenopus.run("destroy", "bystander")


def test_netfront_udp_through_a_tap(netns: Xenopus) -> None:  # noqa: F811 - the fixture
    cfg = netns.config("xnet", "xennet.elf", xen_platform=1, memory=64,
                       vif=["model=xen, vifname=xnptap1"],
                       cmdline="src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 "
                               "payload=ping-from-guest expect_reply=pong-from-host timeout_ms=30000")
    assert netns.run("create", "-q", "-p", str(cfg)).returncode == 0
    subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", "xnptap1"], check=True)
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", RESPONDER],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "bound"
        assert netns.run("unpause", "xnet").returncode == 0
        out = netns.run("console", "xnet", timeout=120).stdout
        assert "RESULT: PASS xennet" in out, out
        assert responder.communicate(timeout=60)[0].startswith("got ping-from-guest 10.0.2.15")
    finally:
        responder.kill()


def test_block_and_network_list_show_xen_pv_devices(netns: Xenopus) -> None:  # noqa: F811 - the fixture
    xvda, vdb = netns.tmp / "xvda.img", netns.tmp / "vdb.img"
    for image in (xvda, vdb):
        image.write_bytes(b"")
        os.truncate(image, 1 << 20)
    cfg = netns.config("xlist", "xenblk.elf", xen_platform=1, memory=64,
                       disk=[f"{xvda},raw,xvda,rw", f"{vdb},raw,vdb,r"],
                       vif=["model=xen, vifname=xnptap2, mac=00:16:3e:0a:0b:0c"])
    # Paused: the backends are up (InitWait) and the frontends are as the toolstack left
    # them (Initialising, no event channel or ring yet), so every column is known.
    assert netns.run("create", "-q", "-p", str(cfg)).returncode == 0
    try:
        domid = int(netns.domains()["xlist"][1])
        blocks = netns.run("block-list", "xlist", check=True).stdout.splitlines()
        # xl_block.c's header and row: Vdev BE handle state evt-ch ring-ref BE-path.
        assert blocks[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
        assert blocks[1].split() == ["51712", "0", str(domid), "1", "-1", "-1",
                                     f"/local/domain/0/backend/vbd/{domid}/51712"], blocks
        # The virtio disk follows in its own table, as before.
        assert blocks[2] == "" and blocks[3].split()[:3] == ["Vdev", "Idx", "PCI"]
        assert re.match(rf"^vdb\s+1\s+00:[0-9a-f]{{2}}\.0\s+r\s+{re.escape(str(vdb))}$", blocks[4]), blocks
        nics = netns.run("network-list", "xlist", check=True).stdout.splitlines()
        assert nics[0].split() == ["Idx", "BE", "Mac", "Addr.", "handle", "state", "evt-ch",
                                   "tx-/rx-ring-ref", "BE-path"]
        assert nics[1].split() == ["0", "0", "00:16:3e:0a:0b:0c", "0", "1", "-1", "-1/-1",
                                   f"/local/domain/0/backend/vif/{domid}/0"], nics
        assert len(nics) == 2  # no virtio NIC: no second table
    finally:
        netns.run("destroy", "xlist")


def test_physmap_ballooning_time_area_and_watchdog(xenopus: Xenopus) -> None:
    r = xen_boot(xenopus, "xmem", "xenmem.elf", maxmem=72)
    assert "RESULT: PASS xenmem" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout
    # maxmem 72 MiB over 64 MiB of RAM: 2048 frames, four 2 MiB extents above RAM.
    assert "memory: populated 4 of 5 2 MiB extents above RAM" in r.stdout, r.stdout


def test_list_shows_the_ballooned_size(xenopus: Xenopus) -> None:
    cfg = xenopus.config("xballoon", "xenmem.elf", xen_platform=1, memory=64,
                         cmdline="balloon_mb=16 hold_ms=60000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "xballoon")
    try:
        assert con.stdout is not None
        read_until(con.stdout, b"memory: holding")
        assert xenopus.domains()["xballoon"][2] == "48"
    finally:
        xenopus.run("destroy", "xballoon")
        con.wait(60)


def test_vcpu_up_and_down_through_xen(xenopus: Xenopus) -> None:
    r = xen_boot(xenopus, "xvcpu", "xenvcpu.elf", vcpus=2)
    assert "RESULT: PASS xenvcpu" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout


@pytest.mark.parametrize(("kernel", "platform"), [
    ("xenpvh.elf", "pc"), ("xenpvh.elf", "xen"),
    # its first PT_LOAD at 0xFF000: loads under both platforms (the placement rule)
    ("xenpvh-ff000.elf", "xen"), ("xenpvh-ff000.elf", "pc"),
])
def test_pvh_platform_pc_or_xen(xenopus: Xenopus, kernel: str, platform: str) -> None:
    # pvh_platform = "xen": no UART, so the guest's lines reach the domain log through
    # port 0xE9 alone (Xen's HVM debug port); the guest checks ports, map and FADT.
    name = f"pvh-{platform}-{kernel.split('.')[0]}"
    r = xen_boot(xenopus, name, kernel, pvh_platform=platform, cmdline=f"expect={platform}")
    assert r.returncode == 0, r.stderr
    log = (xenopus.run_dir / "log" / f"{name}.log").read_text()
    assert f"RESULT: PASS xenpvh {platform}" in log, log
    assert ("RESULT:" in r.stdout) == (platform == "pc")  # the serial console, if any
    if kernel == "xenpvh-ff000.elf":
        assert 'xenpvh: low page at 0xff000: "xenpvh low page"' in log, log
