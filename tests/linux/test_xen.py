"""Xen-aware Linux (xen_platform = 1) boots to userspace on Linux's own Xen support.

A kernel with the XEN_ELFNOTE_HYPERCALL_PAGE note calls through the hypercall page, which
takes either path. Since the XSA-466 fix (upstream, and in Debian's 6.1.0-57 and 6.12
fetched here) Linux has no hypercall page: xen_hypercall_amd/intel issue `vmmcall`/
`vmcall` themselves, which only the in-kernel path (KVM_CAP_XEN_HVM) catches, so such a
kernel cannot run on the trap path and that case is skipped, naming the missing note.
Where KVM offers the in-kernel path, `xen_hypercall_path = "trap"` keeps the guest off
it, so one host tests both where the kernel allows. The guest must find Xen
(/sys/hypervisor/type), run on the Xen clock, bring xenbus up and see time advance
(tests/linux/guest/checks/xen.sh).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.linux.conftest import NS
from tests.linux.linuxguest import (
    POWER_DOWN,
    RESULT,
    Kernel,
    Xenopus,
    console_dir,
    kernel_file,
    read_lines,
)
from tests.linux.test_virtio import (
    GUEST_IP,
    HOST_IP,
    HOST_TEXT,
    read_back,
    root_disk,
    sender_script,
)
from xenopus.boot.elf import ElfFile
from xenopus.boot.pvh import xen_notes
from xenopus.xen.abi import XEN_ELFNOTE_HYPERCALL_PAGE

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
XEN_BOOT_TIMEOUT = 900.0  # minutes on a loaded nested host (each Xen tick a Python hypercall)
# The PV console (a Xen PVH guest has no legacy serial port); early messages go through
# console_io to the host log (`xenopus dmesg`, shown when a boot times out). Warnings too:
# where a Xen-aware boot stops, and why, is the evidence this test gives.
# XEN_TEST_CONSOLE replaces it (e.g. without loglevel=5 for the whole log).
XEN_CONSOLE = os.environ.get("XEN_TEST_CONSOLE",
                             "console=hvc0 earlyprintk=xen loglevel=5 panic=-1")


def hypercall_path(xenopus: Xenopus, name: str) -> str:
    """The path the daemon reported at `create` ("(XEN) dN: domain 'NAME' created (...,
    Xen interface PATH, ...)")."""
    for line in xenopus.dmesg().splitlines():
        if f"domain '{name}' created" in line and "Xen interface " in line:
            return line.split("Xen interface ", 1)[1].split(",", 1)[0]
    return "unknown"


def has_hypercall_page(kernel: Kernel) -> bool:
    """Whether the PVH image asks for a hypercall page (xen/include/public/elfnote.h)."""
    with kernel.image.open("rb") as f:
        return XEN_ELFNOTE_HYPERCALL_PAGE in xen_notes(ElfFile(f))


@pytest.mark.parametrize(("release", "path"), [("6.1", "auto"), ("6.12", "auto"),
                                               ("6.1", "trap")])
def test_xen_aware_linux_boots_to_userspace(xenopus: Xenopus, release: str, path: str) -> None:
    name = f"xen-{release}-{path}".replace(".", "_")
    kernel = kernel_file(release, "pvh")
    if path == "trap" and not has_hypercall_page(kernel):
        pytest.skip(f"{kernel.image} has no XEN_ELFNOTE_HYPERCALL_PAGE note (XSA-466: "
                    "xen_hypercall_amd/intel issue vmmcall/vmcall directly), so only the "
                    "in-kernel path can serve its hypercalls, not the trap path")
    cfg = xenopus.config(name, kernel, "xen", xen_platform=1,
                         cmdline=XEN_CONSOLE, extra=f'xen_hypercall_path = "{path}"\n')
    boot = xenopus.boot(name, cfg, timeout=XEN_BOOT_TIMEOUT)
    taken = hypercall_path(xenopus, name)
    boot.assert_passed("xen")
    if path == "trap":
        assert taken == "trap", f"asked for the trap path, got {taken}"
    print(f"{name}: hypercall path {taken}; {boot.detail}")  # vdso=pvclock or why not


# --- GRUB's Xen PVH image booting Debian from its disk ----------------------------------------
GRUB_PVH = Path(__file__).resolve().parents[2] / "build" / "grub-xen" / "grub-i386-xen_pvh.bin"


def test_grub_xen_pvh_boots_debian_to_userspace(xenopus: Xenopus, tmp_path: Path) -> None:
    """Debian's grub-i386-xen_pvh.bin as the kernel, as a Xen user boots a distribution:
    it reads grub.cfg from the ext4 partition of xvda (its 32-bit blkfront) and loads
    Debian's 6.1 bzImage and initramfs through the Linux boot protocol. On pvh_platform =
    "xen" the FADT says no CMOS RTC and no VGA, so that Linux takes itself for a PVH guest
    (xen_hvm_guest_late_init), as under Xen, and runs the xen check on hvc0."""
    from tests.vm.test_grub_xen import make_disk  # its disk-image builder, shared

    kernel = kernel_file("6.1", "bzimage")
    if not GRUB_PVH.exists():
        pytest.fail(f"{GRUB_PVH} is missing: scripts/fetch-grub-xen fetches it (make test)")
    if shutil.which("mke2fs") is None:
        pytest.skip("needs mke2fs (e2fsprogs)")
    cfg_text = ("set timeout=0\nmenuentry 'debian 6.1' {\n"
                f"  linux /boot/vmlinuz {XEN_CONSOLE} xenopus.check=xen\n"
                "  initrd /boot/initrd.img\n}\n")
    size_mb = 8 + (kernel.image.stat().st_size + kernel.initramfs.stat().st_size) // (1 << 20) * 2
    disk = make_disk(tmp_path, cfg_text, {"boot/vmlinuz": kernel.image.read_bytes(),
                                          "boot/initrd.img": kernel.initramfs.read_bytes()},
                     size_mb=size_mb)
    name = "grubpvh"
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(
        f'name = "{name}"\ntype = "pvh"\nmemory = 512\nkernel = "{GRUB_PVH}"\n'
        'xen_platform = 1\npvh_platform = "xen"\n'
        f'disk = ["format=raw, vdev=xvda, access=r, target={disk}"]\n'
        'on_crash = "destroy"\non_reboot = "destroy"\non_poweroff = "destroy"\n')
    boot = xenopus.boot(name, cfg, timeout=XEN_BOOT_TIMEOUT)
    text = "\n".join(boot.lines)
    # GRUB's embedded config on the PV console: it found grub.cfg on the partition
    assert re.search(r"Reading \(xen/xvda,msdos1\)/boot/grub/grub\.cfg", text), boot.context()
    boot.assert_passed("xen")


# --- Linux's Xen PV drivers against our backends ---------------------------------------------
XEN_TAP = "xlx0"
XEN_STREAM_MIB = 100
READY = "xenopus-xendev: ready"
VBD = 51712  # xvda: 202 << 8 (docs/misc/vbd-interface.txt)


def domid_of(xenopus: Xenopus, name: str) -> int:
    with xenopus.api() as api:
        return api.domain(name).domid


def xenstore_ls(xenopus: Xenopus, path: str) -> dict[str, str]:
    """`xenstore-ls -f PATH` (Debian's xenstore-utils on the daemon's socket) as a dict."""
    if shutil.which("xenstore-ls") is None:
        pytest.skip("needs xenstore-ls (xenstore-utils)")
    env = dict(os.environ, XENSTORED_PATH=str(xenopus.run_dir / "xenstored.sock"))
    out = subprocess.run([*xenopus.prefix, "xenstore-ls", "-f", path], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    nodes = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" = ")
        nodes[key.strip()] = value.strip().strip('"')
    return nodes


def test_xen_pv_devices(netns: Xenopus, tmp_path: Path) -> None:
    """xen-blkfront's /dev/xvda as the root filesystem, xen-netfront's eth0 and the hvc0
    console on our blkback, netback and PV console; the host sees the frontends Connected
    in XenStore (xenstore-ls) and types on hvc0; then the disk and network checks of the
    virtio tests, verified from the host."""
    image = root_disk(tmp_path)
    name = "xendev"
    cfg = netns.config(name, kernel_file("6.1", "pvh"), "xendev", memory=512, xen_platform=1,
                       cmdline=f"{XEN_CONSOLE} {XENDEV_ARGS}", extra=xendev_devices(image))
    detail = run_xendev(netns, name, cfg, image)
    # A PVH kernel's only console is the one on its command line.
    assert "typed=go console=hvc0 " in detail, detail


XENDEV_ARGS = f"xenopus.root=/dev/xvda xenopus.ip={GUEST_IP}/24 xenopus.peer={HOST_IP}"


def xendev_devices(image: Path) -> str:
    """The xl.cfg lines of the xendev check's disk and vif."""
    return (f'disk = ["format=raw, vdev=xvda, access=rw, target={image}"]\n'
            f'vif = ["model=xen, vifname={XEN_TAP}"]\n')


def run_xendev(netns: Xenopus, name: str, cfg: Path, image: Path,
               timeout: float = XEN_BOOT_TIMEOUT, ended_with: str = POWER_DOWN) -> str:
    """Create `cfg` (the xendev check, root on `image`, xendev_devices) paused, set up
    the host's side, run it through its checks and return its RESULT detail. The
    console's last kernel line is `ended_with` (a PV kernel halts: test_pvshim.PV_HALT)."""
    created = netns.run("create", "-q", "-p", str(cfg))
    assert created.returncode == 0, created.stderr
    domid = domid_of(netns, name)
    subprocess.run(["ip", "-n", NS, "addr", "add", f"{HOST_IP}/24", "dev", XEN_TAP], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", XEN_TAP, "up"], check=True)
    sender = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c",
                               sender_script(XEN_STREAM_MIB, wait=2 * XEN_BOOT_TIMEOUT)], stdout=subprocess.PIPE, text=True)
    console = subprocess.Popen(netns.command("console", name), env=netns.env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    lines: list[str] = []
    log = console_dir() / f"{name}.log"
    log.unlink(missing_ok=True)
    try:
        with netns.api() as api:
            api.unpause(name)
        came_up = read_lines(console, lines, time.monotonic() + timeout, log, until=READY)
        assert came_up, "\n".join(lines[-60:]) + netns.dmesg()[-4000:]
        # The frontends and backends as xenstore-ls shows them: XenbusStateConnected (4).
        nodes = xenstore_ls(netns, "/local/domain")
        base = f"/local/domain/{domid}/device"
        back = "/local/domain/0/backend"
        states = {p: nodes.get(p) for p in (
            f"{base}/vbd/{VBD}/state", f"{base}/vif/0/state",
            f"{back}/vbd/{domid}/{VBD}/state", f"{back}/vif/{domid}/0/state")}
        assert set(states.values()) == {"4"}, states
        console.stdin.write(b"go\n")
        console.stdin.flush()
        ended = read_lines(console, lines, time.monotonic() + 900, log)
        sent_sum, _ = sender.communicate(timeout=60)
    finally:
        for proc in (console, sender):
            proc.kill()
        netns.destroy(name)
    tail = "\n".join(lines[-60:])
    domain_log = netns.run_dir / "log" / f"{name}.log"
    assert ended, (tail + "\n--- the domain's log ---\n"
                   + (domain_log.read_text(errors="replace")[-8000:] if domain_log.exists()
                      else "(none)") + "\n--- the daemon's log ---\n" + netns.log()[-4000:])
    result = next((m for ln in lines if (m := RESULT.search(ln))), None)
    assert result is not None and result.group(1, 2) == ("PASS", "xendev"), tail
    detail = result.group(3)
    assert "typed=go console=" in detail, tail  # console input reached the guest
    assert "ping: 3 of 3 echoes answered" in tail, tail
    assert f"received={XEN_STREAM_MIB << 20} sha256={sent_sum.strip()}" in detail, tail
    m = re.search(r"host\.txt=(\S+) guest\.bin\.sha256=([0-9a-f]{64})", detail)
    assert m and m.group(1) == HOST_TEXT, tail
    assert any(ended_with in ln for ln in lines), tail
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"the guest left the filesystem unclean:\n{fsck.stdout}"
    data = read_back(image, "/guest.bin")
    assert len(data) == 4 << 20 and hashlib.sha256(data).hexdigest() == m.group(2)
    return detail


# --- the toolstack's shutdown requests (control/shutdown) -----------------------------------
WAITING = "xenopus-xenctl: waiting for control/shutdown"


def test_xen_control_reboot_then_shutdown(xenopus: Xenopus) -> None:
    """`xenopus reboot` then `xenopus shutdown` (xl's verbs) write the request to
    /local/domain/N/control/shutdown, as libxl does for a guest that advertises
    control/feature-reboot/-poweroff; Linux (drivers/xen/manage.c) acknowledges it, runs its
    reboot or poweroff command and leaves by SCHEDOP_shutdown, so the domain restarts
    (on_reboot = "restart") and boots again, and that second boot powers off
    (on_poweroff = "destroy"). The guest's advertised features are read back with Xen's
    xenstore-ls. One guest serves both requests: the poweroff goes to the rebooted domain,
    which also shows the restart left it a working control node."""
    name = "xenctl"
    cfg = xenopus.config(name, kernel_file("6.1", "pvh"), "xenctl", xen_platform=1,
                         cmdline=XEN_CONSOLE)
    cfg.write_text(cfg.read_text().replace('on_reboot = "destroy"', 'on_reboot = "restart"'))
    with xenopus.console(name, cfg, XEN_BOOT_TIMEOUT) as guest:

        def ask(request_: str) -> None:
            """Wait for the check to wait, see its feature node, then send `request_`."""
            guest.until(WAITING)
            # Linux's manage.c wrote the features it answers to (setup_shutdown_watcher).
            path = f"/local/domain/{domid_of(xenopus, name)}/control"
            control = xenstore_ls(xenopus, path)
            assert control.get(f"{path}/feature-{request_}") == "1", control
            asked = xenopus.run(request_ if request_ == "reboot" else "shutdown", name)
            assert asked.returncode == 0, asked.stderr
            assert "PV control interface not available" not in asked.stderr, asked.stderr

        ask("reboot")
        first = len(guest.lines)
        guest.until("reboot: Restarting system")
        assert any("xenopus-xenctl: reboot requested" in ln
                   for ln in guest.lines[first:]), guest.tail()
        # The same console goes on into the restarted domain's boot (`until` looks for
        # its marker in all the lines read: the first boot's are set aside).
        del guest.lines[:]
        ask("poweroff")
        dmesg = xenopus.dmesg()
        assert f"domain '{name}' rebooted; on_reboot=restart" in dmesg, dmesg[-4000:]
        guest.finish(timeout=300)
        guest.saw("xenopus-xenctl: poweroff requested")
        guest.saw(POWER_DOWN)
        assert f"domain '{name}' shut down; on_poweroff=destroy" in xenopus.dmesg()
