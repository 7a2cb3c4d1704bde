"""PV guests through Xen's own PV shim (`type = "pv"`, `pvshim = 1`).

The shim (Xen 4.17 from Debian's source, `make shim`) boots as a PVH guest and issues
`vmcall`/`vmmcall` itself, so it needs KVM's in-kernel Xen path: it runs where KVM has
KVM_CAP_XEN_HVM (the nested host's 6.12 kernel). Behind it runs guests/pv/pvhello, a
64-bit PV kernel of the test kit: it maps shared_info and its rings with
update_va_mapping, writes on the PV console ring, reads its name from XenStore over the
store event channel (counting the events the shim forwards) and powers off with
SCHEDOP_shutdown. Then Debian's 6.1 kernel as the PV guest (its bzImage, as libxl takes a
PV `kernel`): to userspace, shut down by `xenopus shutdown`, booted by PV GRUB from a disk
image, and on Xen PV disk and network (blkfront and netfront through the shim to our
backends).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.linux.linuxguest import LINUX, Boot, Xenopus, console_dir, read_lines
from tests.linux.test_virtio import root_disk
from tests.linux.test_xen import XEN_CONSOLE, XENDEV_ARGS, run_xendev, xendev_devices
from xenopus.kvm import Kvm
from xenopus.xen.hypercall import kernel_flags, kernel_path_available

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "build" / "shim" / "xen-shim"
PVHELLO = ROOT / "guests" / "out" / "pv" / "pvhello.elf"
SHIM_BOOT_TIMEOUT = 400.0  # the shim's own boot is most of it: ~100 s in the nested host
PV_LINUX = LINUX / "vmlinuz"  # Debian 6.1 cloud: CONFIG_XEN_PV, an LZ4 bzImage the shim unpacks
INITRAMFS = LINUX / "initramfs.cpio"
PVGRUB = ROOT / "build" / "grub-xen" / "grub-x86_64-xen.bin"  # scripts/fetch-grub-xen
LINUX_TIMEOUT = 900.0  # the shim's boot, then Linux's: minutes on a loaded nested host
WAITING = "xenopus-xenctl: waiting for control/shutdown"
# How a PV Linux ends `poweroff -f`: it registers no power-off handler, so reboot(2) turns
# POWER_OFF into HALT (kernel/reboot.c, kernel_can_power_off) and prints this; its
# machine_halt (arch/x86/xen/enlighten_pv.c xen_machine_halt) is SCHEDOP_shutdown with
# SHUTDOWN_poweroff, which the shim passes on: the domain powers off all the same.
PV_HALT = "reboot: System halted"


def needs_shim() -> None:
    for needed, how in ((SHIM, "make shim"), (PVHELLO, "make guests")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: `{how}` builds it (make test-linux does)")


def pv_config(xenopus: Xenopus, name: str, kernel: Path, extra: str = "xenopus.pv=1",
              more: str = "", memory: int = 128) -> Path:
    """An xl.cfg of a `type = "pv"` domain behind the shim; `more` adds lines."""
    cfg = xenopus.tmp / f"{name}.cfg"
    cfg.write_text(
        f'name = "{name}"\ntype = "pv"\npvshim = 1\npvshim_path = "{SHIM}"\n'
        f'memory = {memory}\nkernel = "{kernel}"\nextra = "{extra}"\n'
        'on_crash = "destroy"\non_reboot = "destroy"\non_poweroff = "destroy"\n' + more
    )
    return cfg


def needs_kvm_xen() -> None:
    with Kvm() as kvm:
        if not kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM lacks KVM_CAP_XEN_HVM: test_shim_is_refused_here covers it")


class ShimBoot(NamedTuple):
    boot: Boot
    domains: list[str]  # the guests left once the boot ended (`xenopus list` less Domain-0)


@pytest.fixture(scope="module")
def pvhello(_daemon: Xenopus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimBoot]:
    """pvhello booted once behind the shim; the tests below read what it showed."""
    needs_shim()
    needs_kvm_xen()
    xenopus = _daemon.for_test(tmp_path_factory.mktemp("pvshim"))
    xenopus.destroy_all()
    try:
        boot = xenopus.boot("pvhello", pv_config(xenopus, "pvhello", PVHELLO),
                            timeout=SHIM_BOOT_TIMEOUT)
        # The domains left once the guest has gone: for the power-off check below.
        listed = xenopus.names_once_gone("pvhello")
        print(f"pvhello behind the shim: {boot.seconds:.2f} s from create to power-off")
        yield ShimBoot(boot, listed)
    finally:
        xenopus.destroy_all()


def test_pv_kernel_runs_behind_the_shim(pvhello: ShimBoot) -> None:
    boot = pvhello.boot
    m = boot.result
    assert m is not None, f"no RESULT line{boot.context()}"
    assert (m.group(1), m.group(2)) == ("PASS", "pvhello"), f"{m.group(0)}{boot.context()}"
    # Its XenStore name is the domain's, the shim reports its Xen and the PV kernel got the
    # guest's command line as its module's cmdline.
    assert "name=pvhello " in m.group(3) and "cmdline=xenopus.pv=1" in m.group(3), m.group(0)
    assert "xen=4." in m.group(3), m.group(0)
    assert boot.returncode == 0, boot.context()  # SCHEDOP_shutdown ended the domain
    assert pvhello.domains == [], pvhello.domains  # the daemon's list shows it gone


def test_store_events_reach_the_pv_guest(pvhello: ShimBoot) -> None:
    m = pvhello.boot.result
    assert m is not None, f"no RESULT line{pvhello.boot.context()}"
    events = re.search(r"events=(\d+)", m.group(3))
    assert events is not None and int(events.group(1)) > 0, m.group(0)


def test_shim_is_refused_here_without_the_in_kernel_path(xenopus: Xenopus) -> None:
    needs_shim()
    with Kvm() as kvm:
        if kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM has KVM_CAP_XEN_HVM: test_pv_kernel_runs_behind_the_shim")
    created = xenopus.run("create", str(pv_config(xenopus, "pvrefused", PVHELLO)))
    assert created.returncode != 0
    assert "KVM_CAP_XEN_HVM" in created.stderr and "vmcall" in created.stderr, created.stderr



# --- Debian's Linux as the PV guest ---------------------------------------------------------
def needs_pv_linux() -> None:
    needs_shim()
    for needed in (PV_LINUX, INITRAMFS):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: scripts/fetch-linux fetches it (make test-linux)")
    needs_kvm_xen()


def linux_pv_config(xenopus: Xenopus, name: str, check: str, more: str = "",
                    args: str = "") -> Path:
    """Linux as a PV kernel behind the shim: the initramfs as its ramdisk (module 1), its
    command line (module 0's cmdline) with the PV console and `check`."""
    return pv_config(xenopus, name, PV_LINUX, extra=f"{XEN_CONSOLE} xenopus.check={check} {args}",
                     memory=512, more=f'ramdisk = "{INITRAMFS}"\n' + more)


def assert_pv_linux_passed(boot: Boot, check: str, xenopus: Xenopus) -> None:
    """As Boot.assert_passed, with a PV kernel's end: halted, the domain powered off."""
    m = boot.result
    assert m is not None, f"no RESULT line{boot.context()}"
    assert (m.group(1), m.group(2)) == ("PASS", check), f"{m.group(0)}{boot.context()}"
    assert any(PV_HALT in ln for ln in boot.lines), boot.context()
    assert boot.returncode == 0, boot.context()
    assert_powered_off(xenopus, boot.name)


def assert_powered_off(xenopus: Xenopus, name: str) -> None:
    """The daemon saw the domain shut down for power-off (SHUTDOWN_poweroff)."""
    dmesg = xenopus.dmesg()
    assert f"'{name}' shut down; on_poweroff=destroy" in dmesg, dmesg[-3000:]


def test_linux_pv_guest_boots_to_userspace(xenopus: Xenopus) -> None:
    """The PV kernel finds Xen (the shim), runs on the Xen clock with xenbus, reaches its
    initramfs and powers off (SCHEDOP_shutdown through the shim, which ends the domain)."""
    needs_pv_linux()
    boot = xenopus.boot("pvlinux", linux_pv_config(xenopus, "pvlinux", "xen"),
                        timeout=LINUX_TIMEOUT)
    assert_pv_linux_passed(boot, "xen", xenopus)
    assert "hypervisor=xen clocksource=xen xenbus=yes" in boot.detail, boot.context()
    # The shim builds only PV domains: reaching userspace behind it is running as PV.
    listed = xenopus.names_once_gone("pvlinux")
    assert listed == [], listed  # it has gone


def test_xenopus_shutdown_of_a_linux_pv_guest(xenopus: Xenopus) -> None:
    """`xenopus shutdown` writes control/shutdown; the PV kernel (drivers/xen/manage.c),
    whose XenStore traffic the shim forwards, runs its poweroff and the domain ends."""
    needs_pv_linux()
    name = "pvshutdown"
    proc = subprocess.Popen(xenopus.command("create", "-c", str(linux_pv_config(
        xenopus, name, "xenctl"))), env=xenopus.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    log = console_dir() / f"{name}.log"
    log.unlink(missing_ok=True)
    try:
        up = read_lines(proc, lines, time.monotonic() + LINUX_TIMEOUT, log, until=WAITING)
        assert up, "\n".join(lines[-60:]) + xenopus.dmesg()[-4000:]
        asked = xenopus.run("shutdown", "-w", name, timeout=300)
        assert asked.returncode == 0, asked.stderr
        ended = read_lines(proc, lines, time.monotonic() + 300, log)
        tail = "\n".join(lines[-60:])
        assert ended and proc.wait(timeout=60) == 0, tail
        assert any("xenopus-xenctl: poweroff requested" in ln for ln in lines), tail
        assert any(PV_HALT in ln for ln in lines), tail
        assert_powered_off(xenopus, name)
    finally:
        xenopus.destroy(name)
        proc.kill()
        proc.communicate()


GRUB_CFG = """set timeout=0
menuentry "debian 6.1 pv" {{
    linux /boot/vmlinux {cmdline}
    initrd /boot/initramfs.cpio
}}
"""


def grub_disk(tmp_path: Path, cmdline: str) -> Path:
    """An ext2 image as PV GRUB's embedded config finds it: /boot/grub/grub.cfg naming the
    kernel (the ELF vmlinux: GRUB cannot unpack the bzImage's LZ4) and initramfs beside it."""
    if shutil.which("mkfs.ext2") is None:
        pytest.skip("needs mkfs.ext2 (e2fsprogs)")
    tree = tmp_path / "grubroot"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG.format(cmdline=cmdline))
    shutil.copy(LINUX / "vmlinux", tree / "boot" / "vmlinux")
    shutil.copy(INITRAMFS, tree / "boot" / "initramfs.cpio")
    image = tmp_path / "grub.img"
    subprocess.run(["mkfs.ext2", "-q", "-F", "-d", str(tree), str(image), "96M"], check=True)
    return image


def test_pv_grub_boots_the_kernel_on_its_disk(xenopus: Xenopus, tmp_path: Path) -> None:
    """Debian's PV GRUB as the PV kernel: it reads grub.cfg from the xvda image over
    blkfront through the shim and boots the Linux the image holds, with grub.cfg's
    command line (so the check it names runs)."""
    needs_pv_linux()
    if not PVGRUB.exists():
        pytest.fail(f"{PVGRUB} is missing: scripts/fetch-grub-xen fetches it (make test, make test-linux)")
    # The check is named only there: the domain's own command line is empty.
    image = grub_disk(tmp_path, f"{XEN_CONSOLE} xenopus.check=xen")
    cfg = pv_config(xenopus, "pvgrub", PVGRUB, extra="", memory=512,
                    more=f'disk = ["format=raw, vdev=xvda, access=rw, target={image}"]\n')
    boot = xenopus.boot("pvgrub", cfg, timeout=LINUX_TIMEOUT)
    assert_pv_linux_passed(boot, "xen", xenopus)
    text = "\n".join(boot.lines)
    # The embedded config's echo (grub-xen-host), on the PV console: it found the disk.
    assert re.search(r"Reading \(xen/[^)]+\)/boot/grub/grub\.cfg", text), boot.context()


def test_linux_pv_guest_disk_and_network(netns: Xenopus, tmp_path: Path) -> None:
    """The xendev check (test_xen.test_xen_pv_devices) on the PV kernel: root on xvda and
    eth0, their frontends granting pages to our backends through the shim."""
    needs_pv_linux()
    image = root_disk(tmp_path)
    name = "pvxendev"
    cfg = linux_pv_config(netns, name, "xendev", args=XENDEV_ARGS, more=xendev_devices(image))
    detail = run_xendev(netns, name, cfg, image, timeout=LINUX_TIMEOUT, ended_with=PV_HALT)
    # A PV domU's kernel keeps the VT console beside hvc0 (/sys/class/tty/console/active).
    assert "typed=go console=tty0 hvc0 " in detail, detail
