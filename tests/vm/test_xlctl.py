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
    _, con = start(xenopus, "ctl-t", cpus_soft="0")
    # xl_vcpu.c print_vcpuinfo's "Affinity (Hard / Soft)": cpus_soft as configured
    row = xenopus.run("vcpu-list", "ctl-t", check=True).stdout.splitlines()[1]
    assert row.endswith("all / 0"), row
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


def wait_state(x: Xenopus, name: str, flags: str) -> None:
    deadline = time.monotonic() + 60
    while x.domains().get(name, [""] * 5)[4] != flags:
        assert time.monotonic() < deadline, x.domains()
        time.sleep(0.1)  # polling the state a user would see; not synchronising with the guest


def test_on_watchdog_applies_to_a_watchdog_shutdown(xenopus: Xenopus) -> None:
    """SCHEDOP_watchdog expiring shuts the domain down with SHUTDOWN_watchdog (reason code
    4, flag "w"), and on_watchdog, not on_crash, decides what follows."""
    _, con = start(xenopus, "ctl-wd", cmdline="watchdog=1", on_watchdog="preserve",
                   on_crash="destroy")
    wait_state(xenopus, "ctl-wd", "---sw-")
    assert "on_watchdog=preserve" in xenopus.run("dmesg").stdout
    assert xenopus.run("destroy", "ctl-wd").returncode == 0
    con.communicate(timeout=60)


UUID = "6d9c0a3e-2f55-4c86-a0a4-4b4c55e3a0e1"


def uuids(x: Xenopus) -> dict[str, str]:
    """`xl vm-list`: name -> UUID."""
    rows = x.run("vm-list", check=True).stdout.splitlines()[1:]
    return {r.split()[2]: r.split()[0] for r in rows}


def test_rename_restart_keeps_the_old_domain_renamed(xenopus: Xenopus) -> None:
    domid, con = start(xenopus, "ctl-rn", on_poweroff="rename-restart", uuid=UUID)
    assert uuids(xenopus)["ctl-rn"] == UUID
    assert xenopus.run("shutdown", "-w", "ctl-rn").returncode == 0
    read_until(con.stdout, b"RESULT: PASS xenctl poweroff")
    deadline = time.monotonic() + 60
    while not any(n.startswith("ctl-rn-") for n in xenopus.domains()) or "ctl-rn" not in xenopus.domains():
        assert time.monotonic() < deadline, xenopus.domains()
        time.sleep(0.1)  # polling the listing a user would see
    listing = xenopus.domains()
    (kept,) = [n for n in listing if n.startswith("ctl-rn-")]
    assert re.fullmatch(r"ctl-rn-\d{8}T\d{4}Z", kept)  # xl's preserve_domain suffix
    assert int(listing[kept][1]) == domid and listing[kept][4] == "---s--"
    assert int(listing["ctl-rn"][1]) > domid  # a new domain, a new domid
    ids = uuids(xenopus)
    assert ids["ctl-rn"] == UUID and ids[kept] != UUID
    # The kept domain moved to a /vm of its own (libxl_domain_preserve): destroying it
    # leaves the successor's /vm/UUID alone.
    assert xenopus.run("destroy", kept).returncode == 0
    env = {**xenopus.env, "XENSTORED_PATH": str(xenopus.run_dir / "xenstored.sock")}
    name = subprocess.run(["xenstore-read", f"/vm/{UUID}/name"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert name.stdout.strip() == "ctl-rn", name.stderr
    assert xenopus.run("destroy", "ctl-rn").returncode == 0
    con.communicate(timeout=60)


def test_dump_core_writes_guest_ram_as_elf(xenopus: Xenopus) -> None:
    _, con = start(xenopus, "ctl-d")
    core = xenopus.tmp / "ctl-d.core"
    r = xenopus.run("dump-core", "ctl-d", str(core))
    assert r.returncode == 0, r.stderr
    progs = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True,
                           check=True).stdout
    loads = re.findall(r"^\s+LOAD\s+\S+ \S+ (0x[0-9a-f]+) (0x[0-9a-f]+)", progs, re.M)
    assert sum(int(size, 16) for _, size in loads) > 63 << 20  # the 64 MiB guest's RAM
    assert b"xenctl: ready" in core.read_bytes()  # the kernel image, loaded at 1 MiB
    assert xenopus.domains()["ctl-d"][4] in ("r-----", "-b----")  # running on afterwards
    bad = xenopus.run("dump-core", "ctl-d", str(xenopus.tmp / "no-dir" / "core"))
    assert bad.returncode == 1 and "core dump failed" in bad.stderr
    assert xenopus.run("destroy", "ctl-d").returncode == 0
    con.communicate(timeout=60)


def test_coredump_destroy_dumps_then_destroys(xenopus: Xenopus) -> None:
    dumps = xenopus.tmp / "dumps"
    xenopus.run("daemon", "--stop", timeout=60)  # the next command starts one with this env
    xenopus.env["XENOPUS_DUMP_DIR"] = str(dumps)
    try:
        _, con = start(xenopus, "ctl-cd", on_poweroff="coredump-destroy")
        r = xenopus.run("shutdown", "-ww", "ctl-cd")
        assert r.returncode == 0, r.stderr
        con.communicate(timeout=60)
        core = dumps / "ctl-cd"
        assert core.read_bytes()[:4] == b"\x7fELF" and core.stat().st_size > 63 << 20
        assert "ctl-cd" not in xenopus.domains()
    finally:
        xenopus.run("daemon", "--stop", timeout=60)
        del xenopus.env["XENOPUS_DUMP_DIR"]


def test_uuid_is_the_guest_handle_and_grant_frames_are_limited(xenopus: Xenopus) -> None:
    """XENVER_guest_handle answers the configured uuid's 16 bytes (xen_domain_handle_t,
    the UUID in its string order); GNTTABOP_query_size the configured max_grant_frames."""
    cfg = xenopus.config("xh-uuid", "xenhello.elf", xen_platform=1, memory=64, uuid=UUID)
    r = xenopus.run("create", "-c", "-F", str(cfg))
    assert f"xen guest handle: {UUID.replace('-', '')}" in r.stdout, r.stdout
    for frames, keys in (("64", {}), ("4", {"max_grant_frames": 4})):
        cfg = xenopus.config("xg-frames", "xengrant.elf", xen_platform=1, memory=64, **keys)
        r = xenopus.run("create", "-c", "-F", str(cfg))
        assert re.search(rf"ok query_size: rc 0 status 0 nr_frames \d+ max {frames}\b",
                         r.stdout), r.stdout


def test_config_update_builds_the_next_incarnation(xenopus: Xenopus) -> None:
    """xl config-update (xl_misc.c): the running incarnation keeps its config; the one a
    reboot with on_reboot = "restart" builds uses the new one (here: more memory and a
    different command line), under the same domid."""
    domid, con = start(xenopus, "ctl-cu", on_reboot="restart")
    other = xenopus.config("ctl-other", "xenctl.elf", xen_platform=1, memory=80)
    refused = xenopus.run("config-update", "ctl-cu", str(other))
    assert refused.returncode == 1 and "names domain 'ctl-other'" in refused.stderr
    new = xenopus.config("ctl-cu", "xenctl.elf", xen_platform=1, memory=64,
                         on_reboot="restart")
    r = xenopus.run("config-update", "-d", "ctl-cu", str(new), "memory=80")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith("WARNING: xl now has better capability")
    assert r.stderr.splitlines()[-1] == f"setting dom{domid} configuration"
    assert '"max_memkb": 81920' in r.stdout, r.stdout
    assert xenopus.domains()["ctl-cu"][2] == "64"  # this incarnation is unchanged
    assert xenopus.run("reboot", "ctl-cu").returncode == 0
    read_until(con.stdout, b"RESULT: PASS xenctl reboot")
    con.communicate(timeout=60)  # the old process's console ends with it
    deadline = time.monotonic() + 60
    while xenopus.domains().get("ctl-cu", ["", "", ""])[2] != "80":
        assert time.monotonic() < deadline, xenopus.domains()
        time.sleep(0.1)  # polling what a user would see, not synchronising with the guest
    assert xenopus.domains()["ctl-cu"][1] == str(domid)
    again = xenopus.popen("console", "ctl-cu")
    read_until(again.stdout, b"xenctl: ready")  # the new incarnation has booted
    assert xenopus.run("shutdown", "-w", "ctl-cu").returncode == 0
    assert b"RESULT: PASS xenctl poweroff" in again.communicate(timeout=60)[0]


def test_cd_insert_and_eject_are_hvm_only_as_in_libxl(xenopus: Xenopus) -> None:
    """libxl_cdrom_insert refuses every domain that is not HVM (libxl_disk.c); xl checks
    the domain first, then that the file exists (xl_cdrom.c)."""
    gone = xenopus.run("cd-insert", "no-such", "hdc", "/nonexistent.iso")
    assert gone.returncode == 1 and "Domain 'no-such' does not exist." in gone.stderr
    cfg = xenopus.config("ctl-cd-pvh", "xenctl.elf", xen_platform=1, memory=64)
    assert xenopus.run("create", "-q", "-p", str(cfg)).returncode == 0
    try:
        missing = xenopus.run("cd-insert", "ctl-cd-pvh", "hdc", "/nonexistent.iso")
        assert missing.returncode == 1 and "Cannot stat file: /nonexistent.iso" in missing.stderr
        for args in (("cd-insert", "ctl-cd-pvh", "hdc", str(cfg)), ("cd-eject", "ctl-cd-pvh", "hdc")):
            r = xenopus.run(*args)
            assert r.returncode == 1 and "cdrom-insert requires an HVM domain" in r.stderr
    finally:
        assert xenopus.run("destroy", "ctl-cd-pvh").returncode == 0


def test_suspend_holds_the_guest_until_resume(xenopus: Xenopus) -> None:
    """xl suspend: "suspend" through control/shutdown, the guest's SHUTDOWN_suspend keeps
    the domain shut down with reason suspend (code 2); xl resume makes its call return 1
    (public/sched.h: cancelled) and it runs on, answering the next request."""
    domid, con = start(xenopus, "ctl-su")
    assert xenopus.run("resume", "ctl-su").returncode == 1  # not suspended
    r = xenopus.run("suspend", "ctl-su")
    assert r.returncode == 0, r.stderr
    read_until(con.stdout, b"xenctl: shutdown request suspend")
    assert xenopus.domains()["ctl-su"][4] == "---ss-"
    verbose = xenopus.run("list", "-v", "ctl-su").stdout.splitlines()[-1].split()
    assert verbose[7] == "2", verbose  # after the UUID, the reason code: SHUTDOWN_suspend
    again = xenopus.run("suspend", "ctl-su")
    assert again.returncode == 1 and "is shutdown" in again.stderr
    assert xenopus.run("resume", "ctl-su").returncode == 0
    read_until(con.stdout, b"xenctl: suspend returned 1")
    assert xenopus.domains()["ctl-su"][4] in ("r-----", "-b----")
    assert xenopus.run("shutdown", "-w", "ctl-su").returncode == 0
    read_until(con.stdout, b"RESULT: PASS xenctl poweroff")
    con.communicate(timeout=60)
    assert "ctl-su" not in xenopus.domains()
