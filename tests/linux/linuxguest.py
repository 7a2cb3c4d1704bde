"""Boot a Linux guest through the CLI and collect what its initramfs reports.

The guests run Debian's kernels (scripts/fetch-linux) with linux/initramfs.cpio, whose
/init runs the check named by `xenopus.check=` (tests/linux/guest/checks/NAME.sh), prints
`RESULT: PASS|FAIL NAME detail` and powers the guest off (`poweroff -f`): every boot ends
with that line and a clean power-off, or the test fails with the console's last lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenopus.api import Xenopus as Api
from xenopus.client import DaemonUnavailable, NoSuchDomain

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "linux"
GUEST_SOURCES = ROOT / "tests" / "linux" / "guest"
# release -> its directory: 6.1 is Debian's cloud kernel, 6.12 its generic one. Each has
# vmlinux (PVH), vmlinuz (bzImage) and initramfs.cpio (with that kernel's modules).
RELEASES = {"6.1": LINUX, "6.12": LINUX / "6.12"}
IMAGES = {"pvh": "vmlinux", "bzimage": "vmlinuz"}
RESULT = re.compile(r"RESULT: (PASS|FAIL) (\S+) ?(.*)$")
POWER_DOWN = "reboot: Power down"  # kernel/reboot.c, kernel_power_off()
# Seconds for one boot to power-off: ~1 minute on an idle nested test host (TCG runs it), up
# to 5 on a loaded 2-core one.
BOOT_TIMEOUT = 600.0
# The guests' console: only errors from the kernel (every character on the 16550 is a
# port-I/O exit or two; on the nested test host a full boot log costs minutes), and a
# panic reboots (on_reboot = "destroy" ends the test at once, not at its timeout).
# LINUX_TEST_CONSOLE replaces it (e.g. "console=ttyS0 panic=-1" for the whole log).
CONSOLE = os.environ.get("LINUX_TEST_CONSOLE", "console=ttyS0 quiet panic=-1")


def xenopus_command() -> list[str]:
    script = Path(sys.executable).with_name("xenopus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "xenopus"]


@dataclass(frozen=True)
class Kernel:
    """A guest kernel image and the initramfs built for its release."""

    image: Path
    initramfs: Path


def kernel_file(release: str, image: str) -> Kernel:
    kernel = Kernel(RELEASES[release] / IMAGES[image], RELEASES[release] / "initramfs.cpio")
    for needed in (kernel.image, kernel.initramfs):
        if not needed.exists():
            pytest.skip(f"{needed} is missing: run scripts/fetch-linux")
    return kernel


def with_check(kernel: Kernel, check: str, dest: Path) -> Kernel:
    """`kernel` with its initramfs followed by a second archive holding this checkout's
    checks/CHECK (the kernel unpacks concatenated cpio archives, later files replacing
    earlier ones: Documentation/driver-api/early-userspace/buffer-format.rst), so a new
    check runs before scripts/fetch-linux has rebuilt the initramfs with it."""
    script = (GUEST_SOURCES / "checks" / f"{check}.sh").read_bytes()
    archive = bytearray()
    for ino, (name, mode, data) in enumerate(
            [(f"checks/{check}", 0o100755, script), ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        archive += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        archive += b"\0" * (-len(archive) % 4) + data + b"\0" * (-len(data) % 4)
    base = kernel.initramfs.read_bytes()
    dest.write_bytes(base + b"\0" * (-len(base) % 4) + bytes(archive))
    return Kernel(kernel.image, dest)


def cpio_files(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files named in `wanted` from newc cpio archives (the initramfs format:
    Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte header of
    "070701" and 13 hex fields, the name, the data, each padded to 4 bytes. Archives may
    follow one another (NUL padding between them, `with_check`): as the kernel does, a
    later file replaces an earlier one of the same name."""
    data = archive.read_bytes()
    found: dict[str, bytes] = {}
    at = 0
    while True:
        while data[at:at + 4] == b"\0\0\0\0":
            at += 4
        if data[at:at + 6] != b"070701":
            return found
        size, namesize = int(data[at + 54:at + 62], 16), int(data[at + 94:at + 102], 16)
        name = data[at + 110:at + 110 + namesize - 1].decode(errors="replace")
        start = (at + 110 + namesize + 3) & ~3
        if name in wanted:
            found[name] = data[start:start + size]
        at = (start + size + 3) & ~3


def stale_checks(kernel: Kernel, check: str) -> list[str]:
    """Which of the guest's /init, checks/`check` and the checks it runs differ in the
    initramfs from tests/linux/guest (scripts/fetch-linux builds them in; a check changed
    since the initramfs was built would make the guest run the old one)."""
    sources = {"init": GUEST_SOURCES / "init"}
    source = GUEST_SOURCES / "checks" / f"{check}.sh"
    if source.exists():
        sources[f"checks/{check}"] = source
        for other in re.findall(r"/checks/(\w+)", source.read_text()):
            sources[f"checks/{other}"] = GUEST_SOURCES / "checks" / f"{other}.sh"
    packed = cpio_files(kernel.initramfs, set(sources))
    return sorted(name for name, path in sources.items()
                  if path.exists() and packed.get(name) != path.read_bytes())


@dataclass
class Boot:
    """What one guest boot showed: its console lines and how the CLI ended."""

    name: str
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    stderr: str = ""

    @property
    def result(self) -> re.Match[str] | None:
        return next((m for ln in self.lines if (m := RESULT.search(ln))), None)

    @property
    def detail(self) -> str:
        return self.result.group(3) if self.result else ""

    @property
    def powered_off(self) -> bool:
        return any(POWER_DOWN in ln for ln in self.lines) and self.returncode == 0

    def context(self, n: int = 60) -> str:
        tail = "\n".join(self.lines[-n:])
        return (f"\n--- {self.name}: console (last {n} lines) after {self.seconds:.0f} s, "
                f"CLI exit {self.returncode} ---\n{tail}\n--- CLI stderr ---\n{self.stderr}")

    def assert_passed(self, check: str) -> None:
        m = self.result
        assert m is not None, f"no RESULT line{self.context()}"
        assert (m.group(1), m.group(2)) == ("PASS", check), f"{m.group(0)}{self.context()}"
        assert self.powered_off, f"the guest did not power off cleanly{self.context()}"


class LiveConsole:
    """`xenopus create -c cfg` of a guest the test drives while it runs: its console lines
    as they come (`until` a marker), then `finish` once the guest is to power off."""

    def __init__(self, x: Xenopus, name: str, cfg: Path, boot_timeout: float):
        self.x, self.name, self.boot_timeout = x, name, boot_timeout
        self.lines: list[str] = []
        self.log = console_dir() / f"{name}.log"
        self.log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(x.command("create", "-c", str(cfg)), env=x.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def tail(self) -> str:
        return "\n".join(self.lines[-60:])

    def until(self, marker: str, timeout: float | None = None) -> None:
        """Read until a line (of all read so far) contains `marker`; fail with the
        console's tail and the host log's if the boot timeout passes first."""
        seen = read_lines(self.proc, self.lines,
                          time.monotonic() + (timeout or self.boot_timeout), self.log,
                          until=marker)
        assert seen, self.tail() + self.x.dmesg()[-4000:]

    def line(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The first line read that matches `pattern`."""
        found = next((m for ln in self.lines if (m := pattern.search(ln))), None)
        assert found is not None, f"no line matches {pattern.pattern}\n{self.tail()}"
        return found

    def saw(self, text: str) -> None:
        """Some line read so far contains `text`."""
        assert any(text in ln for ln in self.lines), f"no line has {text!r}\n{self.tail()}"

    def finish(self, check: str | None = None, timeout: float = 120) -> None:
        """Read to the console's end: the CLI exits 0, the guest powered off and, with
        `check`, printed `RESULT: PASS check`."""
        ended = read_lines(self.proc, self.lines, time.monotonic() + timeout, self.log)
        assert ended and self.proc.wait(timeout=60) == 0, self.tail()
        if check is not None:
            assert any(f"RESULT: PASS {check}" in ln for ln in self.lines), self.tail()
            print(f"{self.name}: " + next(ln for ln in self.lines if "RESULT:" in ln))

    def __enter__(self) -> LiveConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.x.destroy(self.name)
        self.proc.kill()
        self.proc.wait()


class Xenopus:
    """A xenopus daemon in run directory `run_dir` (default `tmp`/run: a private one),
    started by the first command; `tmp` holds the test's own files (its configs)."""

    def __init__(self, tmp: Path, prefix: tuple[str, ...] = (), run_dir: Path | None = None):
        self.tmp = tmp
        self.run_dir = run_dir or tmp / "run"
        self.env = dict(os.environ, XENOPUS_RUN_DIR=str(self.run_dir))
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NS): the daemon in a namespace

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, *xenopus_command(), *args]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def config(self, name: str, kernel: Kernel, check: str, *, vcpus: int = 1, memory: int = 256,
               xen_platform: int = 0, cmdline: str = CONSOLE, extra: str = "") -> Path:
        stale = stale_checks(kernel, check)
        if stale:
            pytest.fail(f"{kernel.initramfs} carries an older {', '.join(stale)} than "
                        "tests/linux/guest: rebuild it with scripts/fetch-linux "
                        "(`make test-linux` does)")
        cfg = self.tmp / f"{name}.cfg"
        cfg.write_text(
            f'name = "{name}"\ntype = "pvh"\nmemory = {memory}\nvcpus = {vcpus}\n'
            f'kernel = "{kernel.image}"\nramdisk = "{kernel.initramfs}"\n'
            f'cmdline = "{cmdline} xenopus.check={check}"\nxen_platform = {xen_platform}\n'
            'on_crash = "destroy"\non_reboot = "destroy"\non_poweroff = "destroy"\n' + extra
        )
        return cfg

    def boot(self, name: str, cfg: Path, timeout: float = BOOT_TIMEOUT,
             paused: Callable[[], None] | None = None) -> Boot:
        """`xenopus create -c cfg` until the console ends (the guest powered off) or the
        timeout, when the domain is destroyed. With `paused`, the domain is created paused,
        `paused()` runs (its devices exist: set up the host side) and then it runs."""
        boot = Boot(name)
        start = time.monotonic()
        if paused is None:
            argv = self.command("create", "-c", str(cfg))
        else:
            created = self.run("create", "-q", "-p", str(cfg))
            assert created.returncode == 0, created.stderr
            paused()
            argv = self.command("console", name)
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if paused is not None:
            with self.api() as api:
                api.unpause(name)
        ended = False
        try:
            log = console_dir() / f"{name}.log"
            log.unlink(missing_ok=True)
            ended = read_lines(proc, boot.lines, start + timeout, log)
        finally:
            if not ended:  # what the vCPUs and the host log say, for the report, then end it
                boot.stderr += self.run("vcpu-list", name).stdout
                boot.stderr += "\n".join(self.dmesg().splitlines()[-40:])
                self.destroy(name)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        boot.returncode = proc.returncode
        boot.stderr = err.decode(errors="replace") + boot.stderr
        boot.seconds = time.monotonic() - start
        print(f"{name}: {boot.seconds:.1f} s, {boot.result.group(0) if boot.result else 'no result'}")
        return boot

    def console(self, name: str, cfg: Path, boot_timeout: float = BOOT_TIMEOUT) -> LiveConsole:
        """`create -c cfg` as a LiveConsole (a `with` block destroys the domain at its end)."""
        return LiveConsole(self, name, cfg, boot_timeout)

    def log(self) -> str:
        """The daemon's log."""
        path = self.run_dir / "xenopus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def for_test(self, tmp: Path) -> Xenopus:
        """The same daemon for another test, whose files go to `tmp`."""
        return Xenopus(tmp, self.prefix, self.run_dir)

    def api(self) -> Api:
        """The running daemon through the Python API (xenopus.api), in this process (never
        started from here: a CLI command starts it, inside `prefix`). The tests' own steps
        that are not what they prove (unpause once the host side is set up, a domid,
        clean-up) go this way: each CLI process costs seconds of Python start-up on the
        nested test host."""
        return Api(str(self.run_dir), autostart=False)

    def dmesg(self) -> str:
        """The daemon's host log (`xenopus dmesg`), through the API."""
        with self.api() as api:
            return "\n".join(api.dmesg())

    def names(self) -> list[str]:
        """The guests the daemon has (`xenopus list` less Domain-0), through the API."""
        with self.api() as api:
            return [dom.name for dom in api.list()]

    def names_once_gone(self, name: str) -> list[str]:
        """`names()` once the daemon has done with `name`, which ended by itself (its
        console closes as its process exits, a moment before the daemon reaps it)."""
        with self.api() as api:
            with contextlib.suppress(NoSuchDomain):
                api.wait(name)
            return [dom.name for dom in api.list()]

    def destroy(self, name: str) -> None:
        """Destroy `name` if it is still there (a test's clean-up), through the API."""
        with self.api() as api, contextlib.suppress(NoSuchDomain):
            api.destroy(name)

    def destroy_all(self) -> list[str]:
        """Destroy every domain the daemon still has (a test's leftovers, before the next
        test shares the daemon); their names."""
        try:
            api = self.api()
        except DaemonUnavailable:
            return []
        with api:
            left = api.list()
            for dom in left:
                with contextlib.suppress(NoSuchDomain):  # it went meanwhile
                    api.destroy(dom.domid)
        return [dom.name for dom in left]

    def start(self) -> None:
        """Start the daemon now (a first command does), so that no test's boot timeout
        includes its start-up (tens of seconds on the nested test host)."""
        listed = self.run("list")
        assert listed.returncode == 0, f"the xenopus daemon did not start: {listed.stderr}"

    def stop(self) -> None:
        self.run("daemon", "--stop")
        self.keep_domain_logs()

    def keep_domain_logs(self) -> None:
        """Each domain's own log (which hypercall path, when KVM's in-kernel events went
        off and why, a XENOPUS_PROFILE sampler's stacks) beside the consoles."""
        logs = sorted((self.run_dir / "log").glob("*.log"))
        if logs:
            kept = console_dir() / "domains"
            kept.mkdir(exist_ok=True)
            for path in logs:
                shutil.copyfile(path, kept / path.name)


def console_dir() -> Path:
    """Where each boot's whole console is kept: $LINUX_TEST_CONSOLES (make test-linux sets
    it inside its results) or linux/consoles."""
    path = Path(os.environ.get("LINUX_TEST_CONSOLES", LINUX / "consoles"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_lines(proc: subprocess.Popen, lines: list[str], deadline: float, log: Path,
               until: str | None = None) -> bool:
    """Console lines into `lines` and the file `log` (as they come, to follow a slow boot
    with `tail -f`) until the stream ends (True, or False if `until` was never seen), a
    line contains `until` (True) or the deadline (False)."""
    fd = proc.stdout.fileno()
    partial = b""
    with selectors.DefaultSelector() as sel, log.open("ab", buffering=0) as out:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return False
            chunk = os.read(fd, 65536)
            if not chunk:
                return until is None
            out.write(chunk)
            *done, partial = (partial + chunk).split(b"\n")
            lines += [ln.decode(errors="replace").rstrip("\r") for ln in done]
            if until is not None and any(until in ln for ln in lines):
                return True
