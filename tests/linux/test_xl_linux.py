"""`xl` against Linux's own Xen drivers: `xl mem-set` shrinks a Xen-aware Linux guest's
MemTotal through its balloon driver (drivers/xen/xen-balloon.c follows memory/target), and
`xl shutdown -w` ends it through control/shutdown (drivers/xen/manage.c), returning once
the domain has shut down. The guest side is tests/linux/guest/checks/xlres.sh; every
command goes through the `xl` name, as a Xen user types it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.linux.linuxguest import (
    POWER_DOWN,
    Xenopus,
    kernel_file,
    with_check,
)
from tests.linux.test_xen import XEN_BOOT_TIMEOUT, XEN_CONSOLE

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
MEMORY_MIB = 512
TARGET_MIB = 256
READY = re.compile(r"xenopus-xlres: ready memtotal=(\d+) target_kb=(\d+)")
SHRUNK = re.compile(r"xenopus-xlres: memtotal (\d+) -> (\d+) kB \(dropped (\d+) kB\)")
WAITING = "xenopus-xlres: waiting for control/shutdown"


def xl(x: Xenopus, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The `xl` entry point (the same program as `xenopus`) on the test's daemon."""
    exe = Path(sys.executable).with_name("xl")
    if not exe.exists():
        pytest.skip(f"{exe} is missing: `make .venv/.installed` installs the xl entry point")
    return subprocess.run([str(exe), *args], env=x.env, capture_output=True, text=True,
                          timeout=timeout)


def test_xl_mem_set_and_shutdown_wait(xenopus: Xenopus) -> None:
    name = "xlres"
    cfg = xenopus.config(name, kernel_file("6.1", "pvh"), "xlres", memory=MEMORY_MIB,
                         xen_platform=1, cmdline=XEN_CONSOLE)
    with xenopus.console(name, cfg, XEN_BOOT_TIMEOUT) as guest:
        guest.until("xenopus-xlres: ready")
        ready = guest.line(READY)
        # The balloon starts at the domain's size: memory/target as libxl wrote it.
        assert int(ready.group(2)) <= MEMORY_MIB << 10, ready.group(0)

        shrink = xl(xenopus, "mem-set", name, f"{TARGET_MIB}m")
        assert shrink.returncode == 0, shrink.stderr
        guest.until(WAITING)
        shrunk = guest.line(SHRUNK)
        # Every page the balloon gave back leaves MemTotal: exactly the difference between
        # the domain's size (memory/static-max) and the new target.
        assert int(shrunk.group(3)) == (MEMORY_MIB - TARGET_MIB) << 10, guest.tail()

        started = time.monotonic()
        stop = xl(xenopus, "shutdown", "-w", name, timeout=600)
        waited = time.monotonic() - started
        assert stop.returncode == 0, stop.stderr
        assert "PV control interface not available" not in stop.stderr, stop.stderr
        # xl_vmcontrol.c's words once the domain has shut down (reason 0: poweroff).
        assert "has been shut down, reason code 0" in stop.stderr or \
            "has been destroyed" in stop.stderr, stop.stderr
        guest.finish()
        guest.saw("xenopus-xlres: poweroff requested")
        guest.saw(POWER_DOWN)
        print(f"{name}: MemTotal {shrunk.group(1)} -> {shrunk.group(2)} kB; "
              f"xl shutdown -w returned after {waited:.1f} s")


CPU_READY = re.compile(r"xenopus-xlcpu: ready online=(\S+) present=(\S+) possible=(\S+)")


@pytest.mark.parametrize("release", ["6.1", "6.12"])
def test_xl_vcpu_set_changes_nproc(xenopus: Xenopus, release: str, tmp_path: Path) -> None:
    """`xl vcpu-set` takes a Xen-aware Linux guest's second vCPU away and gives it back
    through cpu/N/availability (drivers/xen/cpu_hotplug.c), so its online CPU count goes
    2 -> 1 -> 2; the third vCPU (maxvcpus) is possible from boot (the MADT lists it
    disabled and online-capable). The guest side is tests/linux/guest/checks/xlcpu.sh."""
    name = f"xlcpu-{release}".replace(".", "_")
    kernel = with_check(kernel_file(release, "pvh"), "xlcpu", tmp_path / "initramfs.cpio")
    cfg = xenopus.config(name, kernel, "xlcpu", vcpus=2, memory=256,
                         xen_platform=1, cmdline=XEN_CONSOLE, extra="maxvcpus = 3\n")
    with xenopus.console(name, cfg, XEN_BOOT_TIMEOUT) as guest:
        guest.until("xenopus-xlcpu: ready")
        ready = guest.line(CPU_READY)
        assert ready.groups() == ("0-1", "0-1", "0-2"), ready.group(0)

        down = xl(xenopus, "vcpu-set", name, "1")
        assert down.returncode == 0, down.stderr
        guest.until("xenopus-xlcpu: down nproc=1")
        up = xl(xenopus, "vcpu-set", "-i", name, "2")  # -i: the host may have fewer CPUs
        assert up.returncode == 0, up.stderr
        guest.until("xenopus-xlcpu: up nproc=2")
        guest.finish("xlcpu")


ACPI_READY = re.compile(r"xenopus-cpuhp: ready online=(\S+) present=(\S+) possible=(\S+)")


def vcpus_online(x: Xenopus, name: str) -> list[bool]:
    """Per vCPU of `xl vcpu-list`: running (a CPU column) or not ("-": down or parked)."""
    rows = xl(x, "vcpu-list", name).stdout.splitlines()[1:]
    return [row.split()[3] != "-" for row in rows]


@pytest.mark.parametrize("release", ["6.1", "6.12"])
def test_xl_vcpu_set_acpi_hotplug_changes_nproc(xenopus: Xenopus, release: str,
                                                tmp_path: Path) -> None:
    """`xl vcpu-set` of a Linux guest without Xen (xen_platform = 0) goes through ACPI CPU
    hotplug (devices/cpu_hotplug.py, the DSDT's processor devices and CSCN): 2 of 3 vCPUs
    at boot, then a never-run vCPU inserted (nproc 3), two ejected (nproc 1; the guest's
    _EJ0 parks them: vcpu-list shows them down) and an ejected one inserted again (nproc
    2). The guest side is tests/linux/guest/checks/cpuhp.sh."""
    name = f"cpuhp-{release}".replace(".", "_")
    kernel = with_check(kernel_file(release, "pvh"), "cpuhp", tmp_path / "initramfs.cpio")
    cfg = xenopus.config(name, kernel, "cpuhp", vcpus=2, memory=256, xen_platform=0,
                         extra="maxvcpus = 3\n")
    with xenopus.console(name, cfg) as guest:
        guest.until("xenopus-cpuhp: ready")
        ready = guest.line(ACPI_READY)
        assert ready.groups() == ("0-1", "0-1", "0-2"), ready.group(0)
        assert vcpus_online(xenopus, name) == [True, True, False]  # vCPU 2 parked

        up = xl(xenopus, "vcpu-set", "-i", name, "3")  # -i: the host may have fewer CPUs
        assert up.returncode == 0, up.stderr
        guest.until("xenopus-cpuhp: up nproc=3")
        # vCPU 2's _STA (its ACPI device's status file) now says present and enabled.
        guest.saw("up nproc=3 online=0-2 present=0-2 sta2=15")
        assert vcpus_online(xenopus, name) == [True, True, True]

        down = xl(xenopus, "vcpu-set", name, "1")
        assert down.returncode == 0, down.stderr
        guest.until("xenopus-cpuhp: down nproc=1")  # after their _STA read absent: ejected
        assert vcpus_online(xenopus, name) == [True, False, False]
        listed = xl(xenopus, "list", name).stdout.splitlines()[1].split()
        assert listed[3] == "1", listed  # VCPUs: the count asked for

        again = xl(xenopus, "vcpu-set", "-i", name, "2")
        assert again.returncode == 0, again.stderr
        guest.until("xenopus-cpuhp: again nproc=2")
        # The guest powers off right after this line: its own masks say where it ended
        # (a vcpu-list now would race with the domain's end).
        guest.saw("again nproc=2 online=0-1 present=0-1")
        guest.finish("cpuhp")
