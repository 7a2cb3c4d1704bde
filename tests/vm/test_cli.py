"""Boot each test guest through the CLI, as a user would: `xenopus create -c/-F`, `list`, ..."""

from __future__ import annotations

import re
import select
import subprocess
import time
from datetime import UTC, datetime

import pytest

from tests.vm.conftest import Xenopus

pytestmark = pytest.mark.kvm

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def boot(x: Xenopus, name: str, kernel: str, *, input: str | None = None, timeout: float = 120, **keys):
    """`create -c` with stdin not a terminal: the console streams until the domain dies."""
    cfg = x.config(name, kernel, **keys)
    return x.run("create", "-c", "-F", str(cfg), input=input, timeout=timeout)


def test_hello_prints_what_it_was_given(xenopus: Xenopus) -> None:
    r = boot(xenopus, "hello-t", "hello.elf", memory=48, cmdline="console=ttyS0 greeting=hi")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "xenopus test guest: hello" in out
    assert "console=ttyS0 greeting=hi" in out
    assert re.search(r"\[0x0+-0x0*9fc00\) RAM", out), out
    assert re.search(r"\[0x0*100000-0x0*3000000\) RAM", out), out  # 48 MiB
    assert "AuthenticAMD" in out or "GenuineIntel" in out
    assert "RESULT: PASS hello" in out
    # The domain is gone once create -F returned.
    assert "hello-t" not in xenopus.domains()


def test_list_format_and_lifecycle(xenopus: Xenopus) -> None:
    cfg = xenopus.config("spin", "exits.elf", cmdline="iterations=100000000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    out = xenopus.run("list", check=True).stdout.splitlines()
    assert out[0] == LIST_HEADER
    assert re.fullmatch(r"Domain-0 {32} {5}0 {1,5}\d+ {1,5}\d+ {5}r----- {1,8}\d+\.\d", out[1]), out[1]
    row = next(line for line in out if line.startswith("spin "))
    assert re.fullmatch(r"spin {36} +\d+ {4}32 {5}1 {5}r----- +\d+\.\d", row), row
    domid = row.split()[1]

    assert xenopus.run("pause", "spin").returncode == 0
    assert xenopus.domains()["spin"][4] == "--p---"
    assert xenopus.run("unpause", domid).returncode == 0
    assert xenopus.domains()["spin"][4] == "r-----"

    again = xenopus.run("create", str(cfg))
    assert again.returncode != 0 and "already exists" in again.stderr

    assert xenopus.run("destroy", "spin").returncode == 0
    assert "spin" not in xenopus.domains()
    missing = xenopus.run("destroy", "spin")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def read_until(stream, marker: bytes, timeout: float = 60, limit: float | None = None) -> bytes:
    """Read a console stream until `marker` shows up, failing when the guest has printed
    nothing for `timeout` s (it stalled), or after `limit` s in all (default 5 × timeout:
    a guest that prints for ever without the marker). A guest that keeps making progress
    on a loaded host is slow, not stuck. Each read waits in select() for the time left, so
    a silent stream that never closes cannot hang the suite (a blocking read would).
    read1() drains what is buffered, so select() sees the rest."""
    seen = b""
    start = time.monotonic()
    end = start + (5 * timeout if limit is None else limit)
    quiet_until = start + timeout
    while marker not in seen:
        now = time.monotonic()
        left = min(quiet_until, end) - now
        assert now < end, f"no {marker!r} within {end - start:.0f} s: {seen!r}"
        assert left > 0, f"no {marker!r}, and no output for {timeout} s: {seen!r}"
        if not select.select([stream], [], [], left)[0]:
            continue
        chunk = stream.read1()
        assert chunk, f"console closed before {marker!r}: {seen!r}"
        seen += chunk
        quiet_until = time.monotonic() + timeout
    return seen


def read_result(stream, timeout: float = 120) -> bytes:
    """A console's output up to the end of the guest's RESULT line. The domain may be kept
    after it, so the stream need not end: wait for that line's newline, never for more."""
    seen = read_until(stream, b"RESULT", timeout)
    while b"\n" not in seen[seen.rindex(b"RESULT"):]:
        seen += read_until(stream, b"\n", timeout)
    return seen


def test_console_history_and_two_attaches(xenopus: Xenopus) -> None:
    cfg = xenopus.config("waiter", "serial.elf", cmdline="echo", on_reboot="destroy")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    first = xenopus.popen("console", "waiter", stdin=subprocess.PIPE)
    assert first.stdin is not None and first.stdout is not None
    early = read_until(first.stdout, b"READY")
    # A late attach sees the output since boot; both see what follows.
    second = xenopus.popen("console", "waiter")
    assert second.stdout is not None
    assert b"READY" in read_until(second.stdout, b"READY")
    first.stdin.write(b"ping-from-host\r")
    first.stdin.flush()
    out1, _ = first.communicate(timeout=120)
    out2, _ = second.communicate(timeout=120)
    for out in ((early + out1).decode(), out2.decode()):
        assert "ECHO: ping-from-host" in out
        assert "RESULT: PASS serial" in out


def test_list_shows_the_vcpus_the_guest_has_up(xenopus: Xenopus) -> None:
    """xl list's VCPUs column is libxl_dominfo.vcpu_online (xl_info.c list_domains),
    Xen's count of vCPUs not down, not the config's `vcpus`: vCPU0 of a domain created
    paused (the domain builder's), and no more for a guest that starts no other vCPU —
    also once vcpu-set has made more available to it (the guest would have to start them)."""
    cfg = xenopus.config("counted", "serial.elf", cmdline="echo", vcpus=2, maxvcpus=3)
    assert xenopus.run("create", "-q", "-p", str(cfg)).returncode == 0
    con = xenopus.popen("console", "counted")
    try:
        assert xenopus.domains()["counted"][3] == "1"
        assert xenopus.run("unpause", "counted").returncode == 0
        assert con.stdout is not None
        read_until(con.stdout, b"READY")
        assert xenopus.domains()["counted"][3] == "1"
        assert xenopus.run("vcpu-set", "-i", "counted", "3").returncode == 0
        assert xenopus.domains()["counted"][3] == "1"
    finally:
        xenopus.run("destroy", "counted")
        con.wait(60)


def test_serial_registers(xenopus: Xenopus) -> None:
    r = boot(xenopus, "serial-t", "serial.elf")
    assert "RESULT: PASS serial" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout


def test_rtc_reads_host_time(xenopus: Xenopus) -> None:
    before = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    r = boot(xenopus, "rtc-t", "rtc.elf")
    after = datetime.now(UTC).replace(tzinfo=None)
    assert "RESULT: PASS rtc" in r.stdout, r.stdout
    for mode in ("bcd", "bin"):
        m = re.search(rf"rtc {mode}: (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d)", r.stdout)
        assert m, r.stdout
        seen = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        assert before.timestamp() - 2 <= seen.timestamp() <= after.timestamp() + 2


@pytest.mark.parametrize("case", ["ud", "gp3"])
def test_expected_exceptions(xenopus: Xenopus, case: str) -> None:
    r = boot(xenopus, f"trap-{case}", "trap.elf", cmdline=f"case={case}")
    assert f"RESULT: PASS trap {case}" in r.stdout, r.stdout


def test_unexpected_exception_is_reported(xenopus: Xenopus) -> None:
    r = boot(xenopus, "trap-unexpected", "trap.elf", cmdline="case=unexpected")
    m = re.search(r"EXCEPTION: #UD \(vector 6\) error 0x0 at RIP (0x[0-9a-f]+) CPL 0", r.stdout)
    assert m, r.stdout
    assert "RESULT: FAIL trap exception" in r.stdout


def test_crash_stops_domain_with_report(xenopus: Xenopus) -> None:
    r = boot(xenopus, "crash-t", "crash.elf", on_crash="destroy")
    assert "about to crash" in r.stdout
    assert r.returncode == 1
    assert "crashed" in r.stderr
    log = (xenopus.run_dir / "log" / "crash-t.log").read_text()
    assert re.search(r"rip=0*d0000000", log), log
    assert "rax" in log.lower()
    assert "crash-t" not in xenopus.domains()


def test_crash_preserve_keeps_the_corpse(xenopus: Xenopus) -> None:
    cfg = xenopus.config("corpse", "crash.elf", on_crash="preserve")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    deadline = time.monotonic() + 60
    while xenopus.domains().get("corpse", [""] * 5)[4] != "---sc-":
        assert time.monotonic() < deadline, xenopus.domains()
        time.sleep(0.1)  # polling the state a user would see; not synchronising with the guest
    assert xenopus.run("destroy", "corpse").returncode == 0
    assert "corpse" not in xenopus.domains()


def test_reboot_restarts_the_guest(xenopus: Xenopus) -> None:
    cfg = xenopus.config("bouncer", "serial.elf", cmdline="echo", on_reboot="restart")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "bouncer", stdin=subprocess.PIPE)
    assert con.stdout is not None
    # The first boot reaches READY (and waits for input) before the reset is asked for...
    assert read_until(con.stdout, b"READY").count(b"READY") == 1
    assert xenopus.run("reboot", "-F", "bouncer").returncode == 0
    # ...after it the guest boots again: a second READY on the same console.
    assert b"xenopus test guest: serial" in read_until(con.stdout, b"READY")
    assert xenopus.run("destroy", "bouncer").returncode == 0
    con.communicate(timeout=60)


@pytest.mark.parametrize("kernel,proto", [("bootinfo.elf", "pvh"), ("bootinfo.bzImage", "linux")])
def test_boot_protocols_hand_over_ramdisk_and_memory(xenopus: Xenopus, kernel: str, proto: str) -> None:
    ramdisk = xenopus.tmp / "initrd.bin"
    data = bytes((i * 7 + 3) & 0xFF for i in range(3000))
    ramdisk.write_bytes(data)
    cmdline = (
        f"expect_proto={proto} expect_initrd_size={len(data)} "
        f"expect_initrd_sum={sum(data) & 0xFFFFFFFF:#x} expect_ram_mb=40"
    )
    r = boot(xenopus, f"bootinfo-{proto}", kernel, memory=40, ramdisk=str(ramdisk), cmdline=cmdline)
    assert "RESULT: PASS bootinfo" in r.stdout, r.stdout


def test_bad_config_names_file_and_line(xenopus: Xenopus) -> None:
    cfg = xenopus.tmp / "broken.cfg"
    cfg.write_text('name = "broken"\nkernel = "x.elf"\nmemory = "unterminated\n')
    r = xenopus.run("create", str(cfg))
    assert r.returncode != 0
    assert "broken.cfg:3" in r.stderr


def test_bad_kernel_is_refused_with_its_name(xenopus: Xenopus) -> None:
    junk = xenopus.tmp / "junk.img"
    junk.write_bytes(b"\x00garbage" * 100)
    cfg = xenopus.tmp / "junk.cfg"
    cfg.write_text(f'name = "junk"\nkernel = "{junk}"\non_reboot = "destroy"\n')
    r = xenopus.run("create", str(cfg))
    assert r.returncode != 0
    assert str(junk) in r.stderr
    assert "junk" not in xenopus.domains()


def test_unknown_key_warns(xenopus: Xenopus) -> None:
    cfg = xenopus.config("warned", "minimal.elf", frobnicate=1)
    r = xenopus.run("create", "-F", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "frobnicate" in r.stderr


def test_shutdown_presses_the_acpi_power_button(xenopus: Xenopus) -> None:
    cfg = xenopus.config("button", "powerbtn.elf", on_poweroff="destroy")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "button")
    assert con.stdout is not None
    read_until(con.stdout, b"READY")
    r = xenopus.run("shutdown", "-F", "-ww", "button")
    assert r.returncode == 0, r.stderr
    out, _ = con.communicate(timeout=60)
    assert b"power button pressed" in out and b"RESULT: PASS powerbtn" in out
    assert "button" not in xenopus.domains()
    assert "poweroff: ACPI S5" in (xenopus.run_dir / "log" / "button.log").read_text()
