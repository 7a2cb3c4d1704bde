"""xl's lifecycle verbs against a guest that speaks the PV control protocol (guests/xenctl.c,
Linux's drivers/xen/manage.c in small): shutdown and reboot through control/shutdown with
xl's messages (xl_vmcontrol.c), -a, -w and -ww, -F's fallback to the ACPI button, sysrq,
trigger and button-press (xl_misc.c), on_watchdog and rename-restart."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_until

pytestmark = pytest.mark.kvm


def start(x: Xenopus, name: str, cmdline: str = "", **keys: object) -> tuple[int, subprocess.Popen]:
    """A xenctl guest created and waiting on its control nodes; its domid and console."""
    cfg = x.config(name, "xenctl.elf", xen_platform=1, memory=64, cmdline=cmdline, **keys)
    r = x.run("create", "-q", str(cfg))
    assert r.returncode == 0, r.stderr
    con = x.popen("console", name)
    assert con.stdout is not None
    read_until(con.stdout, b"xenctl: ready")
    return int(x.domains()[name][1]), con


def test_shutdown_all_through_control_shutdown_and_wait(xenopus: Xenopus) -> None:
    a, con_a = start(xenopus, "ctl-a", on_poweroff="destroy")
    b, con_b = start(xenopus, "ctl-b", on_poweroff="preserve")
    r = xenopus.run("shutdown", "-a", "-w")
    assert r.returncode == 0, r.stderr
    # xl_vmcontrol.c shutdown_domain and wait_for_domain_deaths, in that order
    lines = r.stderr.splitlines()
    assert lines[:3] == [f"Shutting down domain {a}", f"Shutting down domain {b}",
                         "Waiting for 2 domains"], r.stderr
    # -w: each one's shutdown (reason code 0, poweroff) or, if already gone, its death
    assert lines[3] in (f"Domain {a} has been shut down, reason code 0",
                        f"Domain {a} has been destroyed"), r.stderr
    assert lines[4] == f"Domain {b} has been shut down, reason code 0", r.stderr
    for con in (con_a, con_b):
        out = read_until(con.stdout, b"RESULT: PASS xenctl poweroff")
        assert b"xenctl: shutdown request poweroff" in out
    assert xenopus.domains()["ctl-b"][4] == "---s--"  # preserved: shut down, poweroff
    assert "poweroff: Xen shutdown, reason 0" in (xenopus.run_dir / "log" / "ctl-b.log").read_text()
    assert xenopus.run("destroy", "ctl-b").returncode == 0
    for con in (con_a, con_b):
        con.communicate(timeout=60)
    assert "ctl-a" not in xenopus.domains()


def test_reboot_sysrq_and_nmi(xenopus: Xenopus) -> None:
    domid, con = start(xenopus, "ctl-r", on_reboot="preserve")
    assert xenopus.run("sysrq", "ctl-r", "s").returncode == 0
    read_until(con.stdout, b"xenctl: sysrq s")
    bad = xenopus.run("sysrq", "ctl-r", "sb")
    assert bad.returncode == 1 and "Invalid sysrq." in bad.stderr
    assert xenopus.run("trigger", "ctl-r", "nmi").returncode == 0
    read_until(con.stdout, b"xenctl: nmi")
    r = xenopus.run("reboot", "-w", "ctl-r")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"Rebooting domain {domid}", "Waiting for 1 domains",
                                     f"Domain {domid} has been shut down, reason code 1"]
    read_until(con.stdout, b"RESULT: PASS xenctl reboot")
    assert xenopus.domains()["ctl-r"][4] == "---sr-"
    again = xenopus.run("shutdown", "ctl-r")
    assert again.returncode == 1 and "is shutdown" in again.stderr
    assert xenopus.run("destroy", "ctl-r").returncode == 0
    con.communicate(timeout=60)


def test_reboot_with_restart_waits_for_the_incarnation(xenopus: Xenopus) -> None:
    domid, con = start(xenopus, "ctl-rr", on_reboot="restart")
    r = xenopus.run("reboot", "-ww", "ctl-rr")
    assert r.returncode == 0, r.stderr
    # -ww: the rebooted incarnation is destroyed (Xen builds a new domain in its place)
    assert r.stderr.splitlines()[-1] == f"Domain {domid} has been destroyed", r.stderr
    out = read_until(con.stdout, b"xenctl: ready")  # booted again, same console
    assert b"RESULT: PASS xenctl reboot" in out
    assert xenopus.run("shutdown", "-ww", "ctl-rr").returncode == 0
    con.communicate(timeout=60)


def test_no_pv_interface_is_refused_as_xl_does(xenopus: Xenopus) -> None:
    domid, con = start(xenopus, "ctl-nf", cmdline="features=0")
    for verb, what, button in (("shutdown", "shutdown", "ACPI power"),
                               ("reboot", "reboot", "ACPI reset")):
        r = xenopus.run(verb, "ctl-nf")
        assert r.returncode == 1
        assert r.stderr.splitlines() == [
            f"{'Rebooting' if verb == 'reboot' else 'Shutting down'} domain {domid}",
            f"PV control interface not available: external graceful {what} not possible.",
            f'Use "-F" to fallback to {button} event.',
            f"{verb} failed (rc=-10)"], r.stderr
    none = xenopus.run("shutdown")
    assert none.returncode == 1 and "You must specify -a or a domain id." in none.stderr
    # -F on reboot: the reset trigger (on_reboot = "destroy" in these configs)
    r = xenopus.run("reboot", "-F", "-ww", "ctl-nf")
    assert r.returncode == 0, r.stderr
    assert ("PV control interface not available: sending ACPI reset button event."
            in r.stderr.splitlines()), r.stderr
    assert r.stderr.splitlines()[-1] == f"Domain {domid} has been destroyed"
    con.communicate(timeout=60)


def test_trigger_and_button_press_refusals(xenopus: Xenopus) -> None:
    _, con = start(xenopus, "ctl-t")
    r = xenopus.run("trigger", "ctl-t", "bogus")
    assert r.returncode == 1 and 'Invalid trigger "bogus"' in r.stderr
    r = xenopus.run("trigger", "ctl-t", "sleep")
    assert r.returncode == 1 and "no ACPI sleep button" in r.stderr
    r = xenopus.run("trigger", "ctl-t", "nmi", "7")
    assert r.returncode == 1 and "no vCPU 7" in r.stderr
    r = xenopus.run("button-press", "ctl-t", "sleep")
    assert r.returncode == 1
    assert r.stderr.startswith('WARNING: "button-press" is deprecated. Please use "trigger"\n')
    r = xenopus.run("button-press", "ctl-t", "lid")
    assert r.returncode == 1 and "lid is an invalid button identifier" in r.stderr
    assert xenopus.run("destroy", "ctl-t").returncode == 0
    con.communicate(timeout=60)


def assert_rip_reset(log: str) -> bool:
    """The crash report's registers are the reset state: CS base 0xFFFF0000, RIP 0xFFF0."""
    return bool(re.search(r"rip=0*fff0 ", log) and re.search(r"cs=f000 base=0*ffff0000 ", log))


def test_trigger_init_resets_the_vcpu(xenopus: Xenopus) -> None:
    """INIT to vCPU 0 puts it back at the reset vector (SDM 3A §9.1.1: CS.base
    0xFFFF0000, IP 0xFFF0) where this guest has no firmware: the run ends there."""
    _, con = start(xenopus, "ctl-i", on_crash="preserve")
    assert xenopus.run("trigger", "ctl-i", "init").returncode == 0
    deadline = time.monotonic() + 60
    while xenopus.domains()["ctl-i"][4] != "---sc-":
        assert time.monotonic() < deadline, xenopus.domains()
        time.sleep(0.1)  # polling the state a user would see; not synchronising with the guest
    log = (xenopus.run_dir / "log" / "ctl-i.log").read_text()
    assert assert_rip_reset(log), log[-3000:]
    assert xenopus.run("destroy", "ctl-i").returncode == 0
    con.communicate(timeout=60)

