"""xl's resource and device verbs through the `xl` name, with our Xen guests on the other
side: `mem-set`/`mem-max` and a balloon driver (xenballoon), `vcpu-set` and vCPU hotplug
(xenvcpuset), `block-attach`/`block-detach` and a blkfront that waits for the disk
(xenblk wait_attach=1), `network-attach`/`network-detach` and a netfront that waits for
its vif (xennet wait_attach=1; in a network namespace, through the `xenopus` name, the same
program), `sched-credit`/`sched-credit2`. The messages are xl's and libxl's
(xl_mem.c, libxl_mem.c, xl_vcpu.c, libxl_domain.c, xl_sched.c, libxl_sched.c)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUESTS
from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_result, read_until
from tests.vm.test_devices import NS, RESPONDER, netns, pattern  # noqa: F401 - fixture
from tests.vm.test_xl import XL, Xl
from xenopus.xen.xenstore import wire

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory, guests: Path) -> Iterator[Xl]:
    if not XL.exists():
        pytest.skip(f"{XL} is not installed (make test installs the xl entry point)")
    tmp = tmp_path_factory.mktemp("xlres")
    x = Xl(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)


def write_config(xl: Xl, name: str, kernel: str, **keys: object) -> None:
    """/etc/xen/NAME.cfg (our private one), created by name as a Xen user does."""
    lines = [f'name = "{name}"', f'kernel = "{GUESTS / "out" / kernel}"', "xen_platform = 1",
             'on_reboot = "destroy"']
    lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()]
    (xl.etc / f"{name}.cfg").write_text("\n".join(lines) + "\n")


def xenstore_read(xl: Xl, path: str) -> str:
    env = {**os.environ, "XENSTORED_PATH": str(xl.run_dir / "xenstored.sock")}
    done = subprocess.run(["xenstore-read", path], env=env, capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, (path, done.stderr)
    return done.stdout.strip()


def test_mem_set_and_mem_max_move_the_balloon(xl: Xl) -> None:
    write_config(xl, "balloon", "xenballoon.elf", memory=64, maxmem=80)
    assert xl.run("create", "balloon").returncode == 0
    con = xl.popen("console", "balloon")
    try:
        assert con.stdout is not None
        read_until(con.stdout, b"balloon: target 65536 KiB, current 65536 KiB")
        domid = xl.run("domid", "balloon", check=True).stdout.strip()

        assert xl.run("mem-set", "balloon", "48m").returncode == 0  # xl's suffixes
        read_until(con.stdout, b"balloon: target 49152 KiB, current 49152 KiB\r\n")
        assert xl.domains()["balloon"][2] == "48"
        if shutil.which("xenstore-read"):
            assert xenstore_read(xl, f"/local/domain/{domid}/memory/target") == "49152"
            vm = xenstore_read(xl, f"/local/domain/{domid}/vm")
            assert xenstore_read(xl, f"{vm}/memory") == "48"

        # Up past the RAM it was built with (populated above RAM), within static-max.
        assert xl.run("mem-set", "balloon", "72").returncode == 0  # no suffix: MiB
        read_until(con.stdout, b"balloon: target 73728 KiB, current 73728 KiB\r\n")
        assert xl.domains()["balloon"][2] == "72"

        over = xl.run("mem-set", "balloon", "96m")
        assert over.returncode != 0
        assert "memory_dynamic_max must be less than or equal to memory_static_max" in over.stderr
        assert f"cannot set domid {domid} dynamic max memory to : 96m" in over.stderr
        below = xl.run("mem-max", "balloon", "64m")
        assert below.returncode != 0
        assert "memory_static_max must be greater than or or equal to memory_dynamic_max" in below.stderr
        bad = xl.run("mem-set", "balloon", "12xy")
        assert bad.returncode != 0 and "invalid memory size: 12xy" in bad.stderr

        assert xl.run("mem-max", "balloon", "100m").returncode == 0
        top = xl.run("top", "-b", "-i", "1", check=True).stdout.splitlines()
        row = next(r.split() for r in top[1:] if r.split()[0] == "balloon")
        assert row[6] == str(100 * 1024)  # xentop's MAXMEM(k) follows static-max
        if shutil.which("xenstore-read"):
            assert xenstore_read(xl, f"/local/domain/{domid}/memory/static-max") == str(100 * 1024)
        assert xl.run("mem-set", "balloon", "96m").returncode == 0  # allowed now
        read_until(con.stdout, b"balloon: target 98304 KiB, current 98304 KiB\r\n")
        assert xl.domains()["balloon"][2] == "96"
    finally:
        xl.run("destroy", "balloon")
        con.wait(60)


def test_mem_set_of_a_guest_without_xen_through_virtio_balloon(xl: Xl) -> None:
    write_config(xl, "vballoon", "vballoon.elf", memory=64, xen_platform=0, virtio_balloon=1)
    assert xl.run("create", "vballoon").returncode == 0
    con = xl.popen("console", "vballoon")
    try:
        assert con.stdout is not None
        read_until(con.stdout, b"vballoon: num_pages 0, actual 0")
        assert xl.run("mem-set", "vballoon", "48m").returncode == 0
        read_until(con.stdout, b"vballoon: num_pages 4096, actual 4096\r\n")  # 16 MiB
        assert xl.domains()["vballoon"][2] == "48"
        assert xl.run("mem-set", "vballoon", "60m").returncode == 0
        read_until(con.stdout, b"vballoon: num_pages 1024, actual 1024\r\n")
        assert xl.domains()["vballoon"][2] == "60"
        over = xl.run("mem-set", "vballoon", "80m")  # past static-max (= memory here)
        assert over.returncode != 0 and "memory_dynamic_max must be less than" in over.stderr
    finally:
        xl.run("destroy", "vballoon")
        con.wait(60)

    write_config(xl, "noballoon", "hello.elf", memory=32, xen_platform=0, on_poweroff="preserve")
    assert xl.run("create", "-p", "noballoon").returncode == 0
    try:
        refused = xl.run("mem-set", "noballoon", "16m")
        assert refused.returncode != 0 and "virtio_balloon = 1" in refused.stderr
    finally:
        xl.run("destroy", "noballoon")


def vcpu_rows(xl: Xl, dom: str) -> list[list[str]]:
    out = xl.run("vcpu-list", dom, check=True).stdout.splitlines()
    return [line.split() for line in out[1:]]


def test_vcpu_set_brings_vcpus_up_and_down(xl: Xl) -> None:
    write_config(xl, "hotcpu", "xenvcpuset.elf", memory=32, vcpus=1, maxvcpus=3)
    assert xl.run("create", "hotcpu").returncode == 0
    con = xl.popen("console", "hotcpu")
    try:
        assert con.stdout is not None
        read_until(con.stdout, b"vcpuset: online 1 of 3")
        rows = vcpu_rows(xl, "hotcpu")
        assert [r[2] for r in rows] == ["0", "1", "2"]  # maxvcpus vCPUs exist
        assert [r[3] for r in rows[1:]] == ["-", "-"] and all(r[4] == "--p" for r in rows[1:])

        # -i: this host may have fewer than 3 CPUs (xl refuses to overcommit without it)
        assert xl.run("vcpu-set", "-i", "hotcpu", "3").returncode == 0
        read_until(con.stdout, b"vcpuset: online 3 of 3")
        rows = vcpu_rows(xl, "hotcpu")
        assert all(r[3].isdigit() and r[4] in ("r--", "-b-") for r in rows), rows
        assert xl.domains()["hotcpu"][3] == "3"

        assert xl.run("vcpu-set", "hotcpu", "2").returncode == 0
        read_until(con.stdout, b"vcpuset: online 2 of 3")
        rows = vcpu_rows(xl, "hotcpu")
        assert rows[1][3].isdigit() and rows[2][3:5] == ["-", "--p"], rows
        assert xl.domains()["hotcpu"][3] == "2"
        # list -l: libxl_retrieve_domain_configuration's avail_vcpus, those set now
        long = json.loads(xl.run("list", "-l", "hotcpu").stdout)
        assert long[0]["config"]["b_info"]["avail_vcpus"] == [0, 1]

        zero = xl.run("vcpu-set", "hotcpu", "0")
        assert zero.returncode != 0 and "Requested 0 VCPUs!" in zero.stderr
        many = xl.run("vcpu-set", "-i", "hotcpu", "4")
        assert many.returncode != 0 and "Requested 4 VCPUs, however maxcpus is 3!" in many.stderr
        assert "libxl_set_vcpuonline failed domid=" in many.stderr
        huge = xl.run("vcpu-set", "hotcpu", "4096")
        assert huge.returncode != 0 and "You are overcommmitting!" in huge.stderr
        junk = xl.run("vcpu-set", "hotcpu", "x")
        assert junk.returncode != 0 and "Error: Invalid argument." in junk.stderr
    finally:
        xl.run("destroy", "hotcpu")
        con.wait(60)


def test_vcpu_set_without_xen_is_acpi_cpu_hotplug(xl: Xl) -> None:
    """A guest without Xen (xen_platform = 0): `xl vcpu-set` inserts vCPUs and asks for
    ejects through ACPI CPU hotplug (devices/cpu_hotplug.py). The cpuhp guest reads the
    MADT and the status bytes as an OS's AML would, starts inserted vCPUs by INIT/SIPI and
    ejects removed ones; vcpu-list shows a vCPU absent at boot or ejected as parked."""
    write_config(xl, "acpicpu", "cpuhp.elf", memory=32, vcpus=1, maxvcpus=3, xen_platform=0)
    assert xl.run("create", "acpicpu").returncode == 0
    con = xl.popen("console", "acpicpu")

    def running() -> list[bool]:
        return [r[3] != "-" for r in vcpu_rows(xl, "acpicpu")]

    try:
        assert con.stdout is not None
        out = read_until(con.stdout, b"cpuhp: online 1 status 010000")
        assert b"cpuhp: ready madt enabled=1 capable=2" in out, out
        assert running() == [True, False, False]  # maxvcpus exist; 1 and 2 parked

        assert xl.run("vcpu-set", "-i", "acpicpu", "3").returncode == 0
        out = read_until(con.stdout, b"cpuhp: online 3 status 010101")
        assert b"cpuhp: cpu 1 up" in out and b"cpuhp: cpu 2 up" in out, out
        assert running() == [True, True, True]
        assert xl.domains()["acpicpu"][3] == "3"

        assert xl.run("vcpu-set", "acpicpu", "1").returncode == 0
        out = read_until(con.stdout, b"cpuhp: online 1 status 010000")
        assert b"cpuhp: ejected 1" in out and b"cpuhp: ejected 2" in out, out
        assert running() == [True, False, False]  # ejected: parked

        assert xl.run("vcpu-set", "-i", "acpicpu", "2").returncode == 0  # an ejected one back
        out = read_until(con.stdout, b"cpuhp: online 2 status 010100")
        assert b"cpuhp: cpu 1 up" in out, out
        assert running() == [True, True, False]
        many = xl.run("vcpu-set", "-i", "acpicpu", "4")
        assert many.returncode != 0 and "Requested 4 VCPUs, however maxcpus is 3!" in many.stderr
    finally:
        xl.run("destroy", "acpicpu")
        con.wait(60)


def test_block_attach_then_the_guest_sees_the_disk_then_detach(xl: Xl) -> None:
    image = xl.tmp / "hot.img"
    image.write_bytes(b"")
    os.truncate(image, 4 << 20)
    write_config(xl, "hotdisk", "xenblk.elf", memory=64, on_poweroff="preserve",
                 cmdline="vdev=51728 sector=64 count=4 wait_attach=1 wait_detach=1 timeout_ms=60000")
    assert xl.run("create", "hotdisk").returncode == 0
    con = xl.popen("console", "hotdisk")
    try:
        assert con.stdout is not None
        read_until(con.stdout, b"xenblk: waiting for device/vbd/51728")
        domid = xl.run("domid", "hotdisk", check=True).stdout.strip()
        assert xl.run("block-list", "hotdisk", check=True).stdout.splitlines()[1:] == []
        virtio = xl.run("block-attach", "hotdisk", f"{image},raw,vdb,rw")
        assert virtio.returncode != 0 and "virtio" in virtio.stderr
        attach = xl.run("block-attach", "hotdisk", f"{image},raw,xvdb,rw")
        assert attach.returncode == 0, attach.stderr
        read_until(con.stdout, b"xenblk: read back, pattern ok")
        listing = xl.run("block-list", "hotdisk", check=True).stdout.splitlines()
        row = listing[1].split()
        assert row[0] == "51728" and row[3] == "4" and row[6] == f"/local/domain/0/backend/vbd/{domid}/51728"
        again = xl.run("block-attach", "hotdisk", f"{image},raw,xvdb,rw")
        assert again.returncode != 0 and "already attached" in again.stderr

        missing = xl.run("block-detach", "hotdisk", "xvdc")
        assert missing.returncode != 0 and "Error: Device xvdc not connected." in missing.stderr
        assert xl.run("block-detach", "hotdisk", "xvdb").returncode == 0
        out = read_result(con.stdout)
        assert b"xenblk: closed on the backend's request" in out, out
        assert b"RESULT: PASS xenblk" in out, out
        assert xl.run("block-list", "hotdisk", check=True).stdout.splitlines()[1:] == []
        data = image.read_bytes()
        start = 64 * 512
        assert data[start : start + 4 * 512] == bytes(pattern(o) for o in range(start, start + 4 * 512))
    finally:
        xl.run("destroy", "hotdisk")
        con.wait(60)


V1_CPU = Path("/sys/fs/cgroup/cpu")  # a cgroup v1 host's cpu hierarchy
V2_BASE = Path(os.environ.get("XENOPUS_CGROUP", "/sys/fs/cgroup/xenopus"))


def cpu_cgroup(xl: Xl, domid: int) -> dict[str, str]:
    """The domain's CPU cgroup files: v2 (the jail's domain cgroup) or v1 (the daemon's);
    with neither, the daemon must have said the values are only recorded."""
    v2 = V2_BASE / f"domain-{domid}"
    if (v2 / "cpu.weight").exists():
        return {n: (v2 / n).read_text().strip() for n in ("cpu.weight", "cpu.max")}
    pid = json.loads(xl.run("list", "-l", str(domid), check=True).stdout)[0]["xenopus"]["pid"]
    v1 = V1_CPU / "xenopus" / f"pid-{pid}"
    if (V1_CPU / "cpu.shares").exists():
        return {n: (v1 / n).read_text().strip() for n in ("cpu.shares", "cpu.cfs_quota_us")}
    assert "recorded only" in xl.log()
    return {}


def cgroup_values(weight: int, cap: int, vcpus: int) -> dict[str, str]:
    """What a credit weight and cap become: the same proportion of the controller's
    default weight (v2 100, v1 1024 for credit's 256), CFS quota per 100 ms period."""
    if (V2_BASE / "cpu.weight").exists() or any(V2_BASE.glob("domain-*/cpu.weight")):
        quota = cap * 1000 if cap else vcpus * 100_000
        return {"cpu.weight": str(weight * 100 // 256), "cpu.max": f"{quota} 100000"}
    if (V1_CPU / "cpu.shares").exists():
        return {"cpu.shares": str(weight * 4), "cpu.cfs_quota_us": str(cap * 1000 if cap else -1)}
    return {}


def test_sched_credit_weight_and_cap(xl: Xl) -> None:
    write_config(xl, "weighed", "xenballoon.elf", memory=32, vcpus=2, cpu_weight=512, cap=150)
    assert xl.run("create", "weighed").returncode == 0
    try:
        domid = int(xl.run("domid", "weighed", check=True).stdout)
        # xl_sched.c sched_credit_domain_output: "%-33s %4s %6s %4s" and "%-33s %4d %6d %4d"
        one = xl.run("sched-credit", "-d", "weighed", check=True).stdout.splitlines()
        assert one == ["%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap"),  # noqa: UP031
                       "%-33s %4d %6d %4d" % ("weighed", domid, 512, 150)]  # noqa: UP031
        assert cpu_cgroup(xl, domid) == cgroup_values(512, 150, vcpus=2)  # from the config
        assert xl.run("sched-credit2", "-d", "weighed", "-w", "128", "-c", "0").returncode == 0
        assert cpu_cgroup(xl, domid) == cgroup_values(128, 0, vcpus=2)
        every = xl.run("sched-credit2", check=True).stdout.splitlines()
        assert every[0].startswith("Cpupool Pool-0: ")
        assert every[2].split() == ["Domain-0", "0", "256", "0"]
        assert ["weighed", str(domid), "128", "0"] in [r.split() for r in every[3:]]
        wrong = xl.run("sched-credit", "-d", "weighed", "-c", "201")
        assert wrong.returncode != 0
        assert "Cpu cap out of range, valid range is from 0 to 200 for specified number of vcpus" in wrong.stderr
        weightless = xl.run("sched-credit", "-w", "5")
        assert weightless.returncode != 0 and "Must specify a domain." in weightless.stderr
    finally:
        xl.run("destroy", "weighed")


def test_network_attach_then_the_guest_talks_then_detach(netns: Xenopus) -> None:  # noqa: F811 - the fixture
    # The bridge has the host's address before the vif exists: the guest ARPs as soon as
    # its device appears, and the tap joins the bridge before the backend is announced.
    for cmd in (["link", "add", "xnhbr0", "type", "bridge"],
                ["addr", "add", "10.0.2.2/24", "dev", "xnhbr0"], ["link", "set", "xnhbr0", "up"]):
        subprocess.run(["ip", "-n", NS, *cmd], check=True)
    cfg = netns.config("hotnet", "xennet.elf", xen_platform=1, memory=64, on_poweroff="preserve",
                       cmdline="index=0 wait_attach=1 wait_detach=1 src_ip=10.0.2.15 "
                               "dst_ip=10.0.2.2 dst_port=5555 payload=ping-from-guest "
                               "expect_reply=pong-from-host timeout_ms=60000")
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", RESPONDER],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "bound"
        assert netns.run("create", "-q", str(cfg)).returncode == 0
        con = netns.popen("console", "hotnet")
        assert con.stdout is not None
        read_until(con.stdout, b"xennet: waiting for device/vif/0")
        domid = netns.domains()["hotnet"][1]
        attach = netns.run("network-attach", "hotnet", "vifname=xnhot0", "mac=00:16:3e:0a:0b:0d",
                           "bridge=xnhbr0")
        assert attach.returncode == 0, attach.stderr
        read_until(con.stdout, b"xennet: waiting for the backend to close")
        assert responder.communicate(timeout=60)[0].startswith("got ping-from-guest 10.0.2.15")
        nics = netns.run("network-list", "hotnet", check=True).stdout.splitlines()
        assert nics[1].split() == ["0", "0", "00:16:3e:0a:0b:0d", "0", "4", nics[1].split()[5],
                                   nics[1].split()[6], f"/local/domain/0/backend/vif/{domid}/0"]
        assert netns.run("network-detach", "hotnet", "00:16:3e:0a:0b:0e").returncode != 0
        assert netns.run("network-detach", "hotnet", "00:16:3e:0a:0b:0d").returncode == 0
        out = read_result(con.stdout)
        assert b"xennet: closed on the backend's request" in out and b"RESULT: PASS xennet" in out, out
        assert netns.run("network-list", "hotnet", check=True).stdout.splitlines()[1:] == []
        gone = subprocess.run(["ip", "-n", NS, "link", "show", "xnhot0"], capture_output=True)
        assert gone.returncode != 0  # the tap went with the backend
        netns.run("destroy", "hotnet")
        con.wait(60)
    finally:
        responder.kill()


def quota_rows(text: str) -> dict[str, int]:
    lines = text.splitlines()
    # xl_xsquota.c: the header, 32 dashes, then "%-20s %8u" per quota
    assert lines[0] == "Quota name           Quota value" and lines[1] == "-" * 32, text
    assert all(len(line) == 29 for line in lines[2:]), text
    return {line[:20].rstrip(): int(line[21:]) for line in lines[2:]}


def test_xenstore_quota_get_and_set(xl: Xl) -> None:
    write_config(xl, "quotaed", "xenstore.elf", memory=32)
    assert xl.run("create", "-p", "quotaed").returncode == 0
    try:
        glob = quota_rows(xl.run("xenstore-quota-get", "-g", check=True).stdout)
        assert list(glob)[:5] == ["nodes", "watches", "outstanding", "memory", "transactions"]
        # A domain starts from the global values; its own change stays its own.
        assert quota_rows(xl.run("xenstore-quota-get", "quotaed", check=True).stdout) == glob
        assert xl.run("xenstore-quota-set", "quotaed", "watches=3", "nodes=0x20").returncode == 0
        mine = quota_rows(xl.run("xenstore-quota-get", "quotaed", check=True).stdout)
        assert (mine["watches"], mine["nodes"]) == (3, 32)
        assert quota_rows(xl.run("xenstore-quota-get", "-g", check=True).stdout) == glob
        assert xl.run("xenstore-quota-set", "-g", "transactions=12").returncode == 0
        assert quota_rows(xl.run("xenstore-quota-get", "-g", check=True).stdout)["transactions"] == 12
        # xl's own refusals (xl_xsquota.c, xl_parse.c parse_xsquota_item)
        r = xl.run("xenstore-quota-get")
        assert r.returncode != 0 and 'Domain or "-g" must be specified.' in r.stderr
        r = xl.run("xenstore-quota-set", "quotaed", "watches")
        assert r.returncode != 0 and 'Quota specification "watches" lacks "=".' in r.stderr
        r = xl.run("xenstore-quota-set", "quotaed", "watches=3k")
        assert r.returncode != 0 and 'uses illegal value "3k"' in r.stderr
        r = xl.run("xenstore-quota-set", "-g", "bogus=1")
        assert r.returncode != 0 and "Quota could not be set." in r.stderr
    finally:
        xl.run("destroy", "quotaed")
    # Gone with its domain: XenStore forgot it.
    r = xl.run("xenstore-quota-get", "quotaed")
    assert r.returncode != 0


def test_xenstore_quota_and_feature_mask_from_the_config(xl: Xl) -> None:
    """xl.cfg's xenstore_quota (the domain's own quotas from its creation) and
    xenstore_feature_mask (the ring features its XenStore offers it)."""
    write_config(xl, "cfgquota", "xenstore.elf", memory=32, xenstore_quota=["watches=5"],
                 xenstore_feature_mask=0)
    assert xl.run("create", "-p", "cfgquota").returncode == 0
    con = None
    try:
        glob = quota_rows(xl.run("xenstore-quota-get", "-g", check=True).stdout)
        mine = quota_rows(xl.run("xenstore-quota-get", "cfgquota", check=True).stdout)
        assert mine == {**glob, "watches": 5}
        domid = xl.run("domid", "cfgquota", check=True).stdout.strip()
        # GET_FEATURE <domid> as dom0 on the daemon's socket (xenstore.txt): none offered
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(xl.run_dir / "xenstored.sock"))
            sock.sendall(wire.pack(wire.XS_GET_FEATURE, 1, 0, wire.strings(domid)))
            reply = b""
            while len(reply) < wire.HEADER_SIZE or \
                    len(reply) < wire.HEADER_SIZE + wire.unpack_header(reply).len:
                chunk = sock.recv(4096)
                assert chunk, reply
                reply += chunk
        hdr = wire.unpack_header(reply)
        assert hdr.type == wire.XS_GET_FEATURE, reply
        assert reply[wire.HEADER_SIZE:].rstrip(b"\0") == b"0"
        # ... and the ring page says the same: the guest finds no reconnection offered
        # (its check of it fails, which is the point here).
        con = xl.popen("console", "cfgquota")
        assert con.stdout is not None
        assert xl.run("unpause", "cfgquota").returncode == 0
        out = read_result(con.stdout)
        assert b"FAIL server features 0x0 offer ring reconnection" in out, out
    finally:
        xl.run("destroy", "cfgquota")
        if con is not None:
            con.wait(60)


def test_python_api_images_and_resources(xl: Xl, tmp_path: Path) -> None:
    """The Python API beyond the lifecycle: mem_set/mem_max and vcpu_set on a Xen guest
    (what libxl writes: memory/target, cpu/N/availability), its XenStore quotas, then
    save, restore and dump_core of a running guest."""
    import xenopus

    write_config(xl, "apihot", "xenvcpuset.elf", memory=32, maxmem=48, vcpus=1, maxvcpus=2)
    write_config(xl, "apicount", "counter.elf", memory=32, cmdline="count=100000000")
    with xenopus.connect(str(xl.run_dir)) as x:
        hot = x.create(xl.etc / "apihot.cfg", paused=True)
        try:
            x.mem_max(hot.domid, 40 * 1024)
            x.mem_set(hot.domid, 24 * 1024)
            assert xenstore_read(xl, f"/local/domain/{hot.domid}/memory/target") == "24576"
            x.vcpu_set(hot.domid, 2)
            assert xenstore_read(xl, f"/local/domain/{hot.domid}/cpu/1/availability") == "online"
            assert x.xenstore_quota(hot.domid) == x.xenstore_quota()
            with pytest.raises(xenopus.NoSuchDomain):
                x.mem_set("nosuch", 1024)
        finally:
            x.destroy(hot.domid)

        count = x.create(xl.etc / "apicount.cfg")
        image, core = tmp_path / "apicount.img", tmp_path / "apicount.core"
        x.dump_core(count.domid, core)
        assert core.read_bytes()[:4] == b"\x7fELF"
        x.save(count.domid, image)
        assert image.stat().st_size > 0 and "apicount" not in [d.name for d in x.list()]
        back = x.restore(image, paused=True)
        try:
            assert (back.name, back.state) == ("apicount", "paused")
        finally:
            x.destroy(back.domid)
