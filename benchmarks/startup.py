"""Start-up benchmark: the same minimal PVH guest under xenopus and under QEMU's microvm.

    python benchmarks/startup.py [--runs N] [--before TREE] [--cold N]

Wall time is from starting the command to its exit after the guest has shut down (it
prints `RESULT: PASS minimal` and resets through the i8042; QEMU's -no-reboot and
xenopus's on_reboot="destroy" turn that into the end of the run). Runs alternate
between the two, after one uncounted warm-up each; xenopus's very first run, which also
starts the daemon (and its zygote), is reported on its own.

Like for like: QEMU copies the guest's serial output to its stdout, so xenopus runs as
`xenopus create -c -F`, whose CLI attaches to the console and copies it to stdout until
the domain is gone; both have stdin from /dev/null and stdout on a pipe we read, and
both runs must show the guest's result line. (`create -F` alone would skip the console
attach and its socket round trips, which QEMU's number includes in kind.)

Memory is the max RSS (getrusage's ru_maxrss): of the qemu process from wait4, and of
xenopus's domain process (the one holding the VM), which the daemon logs when the domain
is destroyed; the CLI's own from wait4 is shown beside it.

Two more numbers per domain: the PSS one more idle domain adds to the host (the sum of
Pss from /proc/PID/smaps_rollup over the daemon, the zygote and every domain process,
before and after creating each of IDLE_DOMAINS idle guests that wait for console input),
and creations per second in a loop of `xenopus create` + `xenopus destroy` of such a guest.

`--before TREE` measures another checkout (its `src`, run by this interpreter) in the
same run, interleaved, for a before/after comparison on a shared, noisy machine. Both
trees then run the same way, `python -m xenopus` with PYTHONPATH=TREE/src (this
checkout's too): started as the `xenopus` script instead, this checkout's figures gained
from runpy's imports and the domains' jail binding no PYTHONPATH directory, which is no
change of the code's.

`--cold N` adds N more cold starts of each (a fresh run directory: the daemon, its zygote
and first spare start, then the first domain), interleaved with TREE's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "minimal.elf"
CONFIG = ROOT / "guests" / "minimal.cfg"
PASS_LINE = b"RESULT: PASS minimal"
QEMU = "qemu-system-x86_64"
# microvm has no i8042 of its own; the guest leaves through its reset line, as on a PC
# (and as under xenopus), so it gets one. -no-reboot turns the reset into QEMU's exit.
QEMU_ARGS = [
    "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "32", "-nodefaults",
    "-no-reboot", "-display", "none", "-serial", "stdio", "-device", "i8042",
    "-kernel", str(GUEST),
]
# On nested KVM without hardware support underneath, QEMU 7.2's `-cpu host` aborts writing
# IA32_ARCH_CAPABILITIES (MSR 0x10a); leaving that feature out is the usual workaround.
QEMU_MSR_FAILURE = b"failed to set MSR 0x10a"
DESTROYED = re.compile(
    rb"domain (\d+) \((\S+)\) destroyed: .*; exit status (\S+), max RSS (\d+) KiB, CPU ([\d.]+) s"
)
RUN_TIMEOUT = 60.0
IDLE_GUEST = ROOT / "guests" / "out" / "serial.elf"  # `cmdline=echo`: waits for input
IDLE_DOMAINS = 4
CREATE_LOOP = 10


@dataclass
class Run:
    wall: float  # seconds
    rss_kib: int  # of the process holding the VM
    cli_rss_kib: int = 0  # xenopus only: the CLI process


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes, bytes, int, int]:
    """Run `cmd` to its exit: (wall seconds, stdout, stderr, exit status, max RSS KiB)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env)
        watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)  # a hung run fails, not hangs
        watchdog.start()
        out = proc.stdout.read()  # to EOF: the process has closed its stdout
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        proc.stdout.close()
        err.seek(0)
        return wall, out, err.read(), proc.returncode, usage.ru_maxrss


def check(name: str, out: bytes, err: bytes, code: int) -> None:
    if code != 0 or PASS_LINE not in out:
        tail = (out[-2000:] + b"\n--- stderr ---\n" + err[-2000:]).decode(errors="replace")
        sys.exit(f"startup: {name} run failed (exit status {code}, "
                 f"{'no' if PASS_LINE not in out else 'with'} {PASS_LINE.decode()!r}):\n{tail}")


class Xenopus:
    def __init__(self, run_dir: Path, tree: Path | None = None):
        self.env = dict(os.environ, XENOPUS_RUN_DIR=str(run_dir))
        self.cmd = xenopus_command()
        if tree is not None:  # another checkout's code, run by this interpreter
            self.env["PYTHONPATH"] = str(tree / "src")
            self.cmd = [sys.executable, "-m", "xenopus"]
        self.run_dir = run_dir
        self.log = run_dir / "xenopus.log"
        self.log_pos = 0

    def _destroyed_line(self) -> re.Match[bytes]:
        """The daemon's report for the domain that just ended (logged before the daemon
        answers the CLI's create -F, so it is there once the CLI has exited)."""
        with open(self.log, "rb") as f:
            f.seek(self.log_pos)
            text = f.read()
        m = DESTROYED.search(text)
        if not m:
            sys.exit(f"startup: no 'domain N (minimal) destroyed' line in {self.log}")
        self.log_pos += m.end()
        return m

    def run(self) -> Run:
        wall, out, err, code, cli_rss = timed(
            [*self.cmd, "create", "-c", "-F", str(CONFIG)], self.env
        )
        check("xenopus", out, err, code)
        m = self._destroyed_line()
        return Run(wall, int(m.group(4)), cli_rss)

    def xl(self, *args: str) -> None:
        r = subprocess.run([*self.cmd, *args], env=self.env, capture_output=True, timeout=RUN_TIMEOUT)
        if r.returncode != 0:
            sys.exit(f"startup: xenopus {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")

    def idle_config(self, name: str) -> Path:
        path = self.run_dir.parent / f"{self.run_dir.name}-{name}.cfg"
        path.write_text(f'name = "{name}"\nkernel = "{IDLE_GUEST}"\nmemory = 32\n'
                        'cmdline = "echo"\non_reboot = "destroy"\n')
        return path

    def tree(self) -> list[int]:
        """The daemon, the zygote, the spares and every domain process."""
        pids = re.findall(r"xenopus daemon (\d+) listening", self.log.read_text(errors="replace"))
        todo, found = [int(pids[-1])], []
        while todo:
            pid = todo.pop()
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
            except OSError:
                continue
            found.append(pid)
        return found

    def host_pss_kib(self) -> int:
        """Pss of the daemon, the zygote and every domain process, summed."""
        total = 0
        for pid in self.tree():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            m = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
            total += int(m.group(1)) if m else 0
        return total

    def settle(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until the whole tree has used no CPU for `quiet` seconds (the new domain
        idle, the spare that replaces the one it consumed done importing), at most `limit`
        seconds: this is a measurement, not a synchronisation."""
        def ticks() -> int:
            total = 0
            for pid in self.tree():
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])  # utime, stime
            return total

        deadline, last, since = time.monotonic() + limit, ticks(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = ticks()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def idle_pss(self) -> list[float]:
        """KiB of host PSS each further idle domain adds."""
        added = []
        self.settle()
        before = self.host_pss_kib()
        for i in range(IDLE_DOMAINS):
            self.xl("create", "-q", str(self.idle_config(f"idle{i}")))
            self.settle()
            after = self.host_pss_kib()
            added.append(after - before)
            before = after
        for i in range(IDLE_DOMAINS):
            self.xl("destroy", f"idle{i}")
        return added

    def creations_per_second(self) -> float:
        cfg = self.idle_config("loop")
        start = time.perf_counter()
        for _ in range(CREATE_LOOP):
            self.xl("create", "-q", str(cfg))
            self.xl("destroy", "loop")
        return CREATE_LOOP / (time.perf_counter() - start)

    def resident(self) -> list[tuple[str, int]]:
        """Peak resident memory (VmHWM) of the daemon and its zygote, which stay up."""
        pids = re.findall(r"xenopus daemon (\d+) listening", self.log.read_text(errors="replace"))
        if not pids:
            return []
        found = [("daemon", int(pids[-1]))]
        try:
            children = Path(f"/proc/{pids[-1]}/task/{pids[-1]}/children").read_text().split()
        except OSError:
            children = []
        found += [("zygote", int(c)) for c in children]
        sizes = []
        for name, pid in found:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"VmHWM:\s+(\d+) kB", status)
            if m:
                sizes.append((f"{name} (pid {pid})", int(m.group(1))))
        return sizes

    def stop(self) -> None:
        subprocess.run([*self.cmd, "daemon", "--stop"], env=self.env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def run_qemu() -> Run:
    wall, out, err, code, rss = timed([QEMU, *QEMU_ARGS], dict(os.environ))
    check("qemu", out, err, code)
    return Run(wall, rss)


def prepare() -> None:
    if shutil.which(QEMU) is None:
        subprocess.run([str(ROOT / "scripts" / "install-deps")], check=True)
    build_guest(GUEST)
    if not GUEST.exists():
        sys.exit(f"startup: {GUEST} was not built")
    _, _, err, code, _ = timed([QEMU, *QEMU_ARGS], dict(os.environ))
    if code != 0 and QEMU_MSR_FAILURE in err:
        i = QEMU_ARGS.index("host")
        QEMU_ARGS[i] = "host,-arch-capabilities"
        print(f"startup: this KVM refuses MSR 0x10a; running QEMU with -cpu {QEMU_ARGS[i]}")


def stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def row(label: str, values: list[float], unit_scale: float, fmt: str) -> str:
    med, lo, hi = stats([v * unit_scale for v in values])
    return f"{label:<34}{med:{fmt}}  [{lo:{fmt}} - {hi:{fmt}}]"


def report_per_domain(label: str, pss: list[float], rates: list[float]) -> None:
    print(f"  {label:<32}{statistics.median(pss) / 1024:8.1f} MiB PSS per idle domain "
          f"[{min(pss) / 1024:.1f} - {max(pss) / 1024:.1f}], "
          f"{statistics.median(rates):5.1f} creations/s [{min(rates):.1f} - {max(rates):.1f}]")


def report(xen: Series, qemu: Series, cold: Run, resident: list[tuple[str, int]],
           cmd: list[str]) -> None:
    n = len(xen.runs)
    print(f"\nstart-up of {GUEST.relative_to(ROOT)}: {n} runs each, interleaved; "
          "median [min - max]\n")
    print(f"xenopus: {' '.join(cmd)} create -c -F {CONFIG.relative_to(ROOT)}")
    print(f"qemu:    {QEMU} {' '.join(QEMU_ARGS)}\n")
    print(f"{'wall time to guest shutdown':<34}{'ms':>8}")
    print(row("  xenopus create -c -F", [r.wall for r in xen.runs], 1e3, "8.1f"))
    print(row("  qemu -M microvm", [r.wall for r in qemu.runs], 1e3, "8.1f"))
    print(f"{'  xenopus cold (starts the daemon)':<34}{cold.wall * 1e3:8.1f}")
    print(f"\n{'max RSS':<34}{'MiB':>8}")
    print(row("  xenopus domain process", [r.rss_kib for r in xen.runs], 1 / 1024, "8.1f"))
    print(row("  xenopus CLI", [r.cli_rss_kib for r in xen.runs], 1 / 1024, "8.1f"))
    print(row("  qemu", [r.rss_kib for r in qemu.runs], 1 / 1024, "8.1f"))
    for name, kib in resident:
        print(f"  {'xenopus ' + name:<32}{kib / 1024:8.1f}  (peak, stays resident)")
    wall = statistics.median(r.wall for r in xen.runs) / statistics.median(r.wall for r in qemu.runs)
    rss = (statistics.median(r.rss_kib for r in xen.runs)
           / statistics.median(r.rss_kib for r in qemu.runs))
    print("\nratio xenopus / qemu (medians)")
    print(f"  {'wall time':<32}{wall:8.2f}")
    print(f"  {'max RSS (domain process)':<32}{rss:8.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20, at least 10)")
    p.add_argument("--before", type=Path, help="another checkout to measure in the same run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the per-domain measurements")
    p.add_argument("--cold", type=int, default=0, help="more cold starts of each (fresh run dir)")
    args = p.parse_args()
    if args.runs < 10:
        p.error("--runs must be at least 10")
    prepare()
    build_guest(IDLE_GUEST)
    # Bytecode for both trees, as `make compile` writes it: where PYTHONDONTWRITEBYTECODE
    # is set, a tree without it recompiles every module in every process it starts.
    for tree in (ROOT, args.before):
        if tree is not None:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "src")],
                           check=True, stdout=subprocess.DEVNULL)
            if (tree / "src" / "xenopus" / "codecache.py").exists():  # and its table
                subprocess.run([sys.executable, "-m", "xenopus.toolstack.spare",
                                "--write-methods"], check=True,
                               stdout=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONPATH=str(tree / "src")))
    base = Path(tempfile.mkdtemp(prefix="xenopus-bench-"))
    xen = Xenopus(base / "run", ROOT if args.before else None)  # like for like (above)
    old = Xenopus(base / "before", args.before) if args.before else None
    pss: dict[str, list[float]] = {"after": [], "before": []}
    rates: dict[str, list[float]] = {"after": [], "before": []}
    colds: dict[str, list[float]] = {"after": [], "before": []}
    try:
        print(f"xenopus run dir {base}; {args.runs} runs each", flush=True)
        cold = xen.run()
        xen.run()  # warm-up, not counted
        run_qemu()
        xs, qs, bs = Series(), Series(), Series()
        if old is not None:
            old.run()
            old.run()
        for i in range(args.runs):
            # Alternate which goes first, so neither always runs on a cache the other warmed.
            order = [("x", xen.run), ("q", run_qemu)] + ([("b", old.run)] if old else [])
            if i % 2:
                order.reverse()
            for key, fn in order:
                {"x": xs, "q": qs, "b": bs}[key].runs.append(fn())
            print(".", end="", flush=True)
        print()
        for _ in range(args.rounds):
            for key, x in (("after", xen), ("before", old)):
                if x is not None:
                    pss[key] += x.idle_pss()
                    rates[key].append(x.creations_per_second())
        resident = xen.resident()
        for i in range(args.cold):
            for key, tree in (("after", None), ("before", args.before)):
                if key == "before" and tree is None:
                    continue
                fresh = Xenopus(base / f"cold-{key}-{i}", tree or (ROOT if args.before else None))
                try:
                    colds[key].append(fresh.run().wall)
                finally:
                    fresh.stop()
    finally:
        xen.stop()
        if old is not None:
            old.stop()
    report(xs, qs, cold, resident, xen.cmd)
    for key, label in (("after", "xenopus"), ("before", "before")):
        if colds[key]:
            print(row(f"  {label}: cold start", colds[key], 1e3, "8.1f") + f" ms ({len(colds[key])} runs)")
    print(f"\nper domain ({args.rounds} rounds of {IDLE_DOMAINS} idle domains and "
          f"{CREATE_LOOP} create/destroy pairs)")
    report_per_domain("xenopus", pss["after"], rates["after"])
    if old is not None:
        report_per_domain(f"before ({args.before})", pss["before"], rates["before"])
        print(row("  before: xenopus create -c -F", [r.wall for r in bs.runs], 1e3, "8.1f") + " ms")
        wall = statistics.median(r.wall for r in bs.runs) / statistics.median(r.wall for r in qs.runs)
        print(f"  {'before: wall time / qemu':<32}{wall:8.2f}")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
