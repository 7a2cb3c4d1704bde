"""Save/restore, live migration and clone benchmark: a 256 MiB guest saved to a file and
restored from it, live-migrated while it dirties memory at a fixed rate, and (xenopus)
cloned, under xenopus and under QEMU, in the same run.

    python benchmarks/snapshot.py [--runs N] [--memory MIB] [--rate PAGES/S] [--clones N]
                                  [--parts save,migrate,clone,start] [--before TREE]

The guest is guests/counter (it prints and counts; it touches a few pages of its RAM, so
both sides skip what it never wrote: QEMU sends such pages as zero-page flags, xenopus
leaves them out). Each side saves the same guest, running and counting:

- xenopus: `xenopus save -c DOM FILE` (wall time of the command), then `xenopus restore
  -p FILE` (wall time: a new domain process built from the image's config, every part
  restored, left paused) and its destroy;
- QEMU: `migrate "exec:cat > FILE"` over QMP until query-migrate says completed (from the
  command to completion), then a new QEMU with `-incoming "exec:cat FILE"` from its start
  until query-status leaves "inmigrate" (loaded and paused, `-S`).

Sizes are the files' sizes. Runs alternate between the two after one uncounted warm-up.

Live migration: guests/dirty (one store in each of `--rate` pages a second, cycling
through 64 MiB, paced by the TSC, in ring 3) migrated between two xenopus daemons on this
host (`migrate --debug -s "env XENOPUS_RUN_DIR=..."`: the stream over a pipe; total =
the command's wall time, split as `migrate --debug` reports it; downtime = the sender's
stop-and-copy, from its pause to END written into the pipe, as QEMU's; "stopped until
running there" = from that pause until the sender reads the receiver's `running`, an
upper bound of the guest's own downtime, handshake included) and between two
QEMUs over a pipe (a FIFO: `migrate "exec:cat > FIFO"`, the target `-incoming "exec:cat
FIFO"`, max-bandwidth unlimited, downtime-limit left at its default; total-time and
downtime from query-migrate). The receiving xenopus daemon runs already, as a Xen host's
toolstack does (and as the QEMU target is started before its total-time begins); a
"cold" row has the migration start the receiver's daemon too (migrate-receive starts it
when none runs: its zygote and first spare domain process on the total's path).

Clone (xenopus only; QEMU has no such verb, so its row is a restored copy): guests/dirty
after writing 64 MiB of its RAM once, idling, cloned with `clone -d DOM NAME` (wall time,
which includes saving DOM) and then `clone -d FILE NAME...` (per clone the domain
process's restore step, RAM mapped, and the time from its process start to restored), and
each clone's memory (/proc/PID/smaps_rollup: Rss, Pss, Anonymous) beside a plainly
restored domain's (its RAM a memfd of its own) and a restored QEMU's.

Clone start (`--parts start`, not by default): `--runs` pairs of clones of the idling
guest's image, one pair at a time (`clone -d FILE A B`, then their destroy, then a wait
until the daemon's spares, 3 of them, are all ready again, so that each clone finds one
waiting and B's process does not share the CPUs with a replacement importing),
with XENOPUS_TRACE (src/xenopus/trace.py) set: from the benchmark's start of the command
to A's `domain: vcpus started` (command to running), and for each of A and B from its
process's `domain: run_domain` (a spare claimed: the domain's process starts) to that
(the VMM's time past process start), with `clone -d`'s phases and the CPU time its
process spent meanwhile (on a busy host the wall time is more). A's process starts while
the daemon checks its copy of FILE (its handover waits for that); B's finds it checked. `--before TREE` measures another
checkout's `src` (run by this interpreter) in the same run, interleaved with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "counter.elf"
DIRTY = ROOT / "guests" / "out" / "dirty.elf"
DIRTY_READY = b"dirty 2\r\n"  # two seconds of dirtying at the set rate
CLONE_MIB = 64
CLONE_CMDLINE = f"rate=20000 seconds=1 mib={CLONE_MIB} idle"  # writes all 64 MiB, idles
IDLE = b"idle 1\r\n"
QEMU = "qemu-system-x86_64"
COUNT = 10**9  # the guest counts for longer than any run
READY = b"count 10\r\n"
TIMEOUT = 120.0


def qemu_args(memory: int, qmp: Path, serial: Path, guest: Path = GUEST,
              cmdline: str = f"count={COUNT}") -> list[str]:
    # -arch-capabilities: on nested KVM without hardware support underneath, QEMU 7.2's
    # `-cpu host` aborts writing IA32_ARCH_CAPABILITIES (MSR 0x10a); as in blk.py.
    return ["-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", str(memory),
            "-nodefaults", "-no-reboot", "-display", "none", "-device", "i8042",
            "-serial", f"file:{serial}", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-kernel", str(guest), "-append", cmdline]


def memory_of(pid: int) -> dict[str, int]:
    """Rss, Pss and Anonymous of a process, in KiB (/proc/PID/smaps_rollup)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss", "Anonymous"):
            out[key] = int(value.split()[0])
    return out


def domain_pid(name: str) -> int:
    """The pid of the xenopus domain process of `name` (its process title)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            except OSError:
                continue
            if re.fullmatch(rb"xenopus: domain \d+ \(" + re.escape(name.encode()) + rb"\)",
                            cmd):
                return int(entry.name)
    sys.exit(f"snapshot: no process for domain {name}")


class Qmp:
    """A QMP client on QEMU's Unix socket (docs/interop/qmp-spec.rst)."""

    def __init__(self, path: Path):
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # QEMU has not made its socket yet
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: object) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait_for(path: Path, marker: bytes) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and marker in path.read_bytes()):
        if time.monotonic() > deadline:
            sys.exit(f"snapshot: {marker!r} never appeared in {path}")
        time.sleep(0.01)  # polling a file QEMU writes; nothing to wait on


def qemu_run(tmp: Path, memory: int, image: Path) -> tuple[float, float, int]:
    """(save seconds, restore seconds, image octets) for one QEMU round."""
    qmp, serial = tmp / "qmp.sock", tmp / "serial.out"
    serial.unlink(missing_ok=True)
    source = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial)])
    try:
        client = Qmp(qmp)
        wait_for(serial, READY)
        started = time.monotonic()
        client.execute("migrate", uri=f"exec:cat > {image}")
        while (client.execute("query-migrate") or {}).get("status") != "completed":
            time.sleep(0.001)
        saved = time.monotonic() - started
        client.close()
    finally:
        source.kill()
        source.wait()
    qmp.unlink(missing_ok=True)
    started = time.monotonic()
    target = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial), "-S",
                               "-incoming", f"exec:cat {image}"])
    try:
        client = Qmp(qmp)
        # "inmigrate" while the stream loads; then "paused" (-S: no autostart).
        while (client.execute("query-status") or {}).get("status") == "inmigrate":
            time.sleep(0.001)
        restored = time.monotonic() - started
        client.close()
    finally:
        target.kill()
        target.wait()
    qmp.unlink(missing_ok=True)
    return saved, restored, image.stat().st_size


def qemu_restored_memory(tmp: Path, memory: int) -> dict[str, int]:
    """The memory of a QEMU restored (and running) from an image of the idling guest
    the clones are made of: its process's Rss/Pss."""
    qmp, serial, image = tmp / "qmp-mem.sock", tmp / "serial-mem.out", tmp / "idle-q.img"
    source = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial, DIRTY, CLONE_CMDLINE)])
    try:
        client = Qmp(qmp)
        wait_for(serial, IDLE)
        client.execute("migrate", uri=f"exec:cat > {image}")
        while (client.execute("query-migrate") or {}).get("status") != "completed":
            time.sleep(0.005)
        client.close()
    finally:
        source.kill()
        source.wait()
    qmp.unlink(missing_ok=True)
    serial.unlink(missing_ok=True)
    target = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial, DIRTY, CLONE_CMDLINE),
                               "-incoming", f"exec:cat {image}"])
    try:
        client = Qmp(qmp)
        while (client.execute("query-status") or {}).get("status") == "inmigrate":
            time.sleep(0.001)
        wait_for(serial, b"idle ")  # running again
        used = memory_of(target.pid)
        client.close()
    finally:
        target.kill()
        target.wait()
    qmp.unlink(missing_ok=True)
    return used


def qemu_migrate(tmp: Path, memory: int, rate: int) -> tuple[float, float]:
    """(total seconds, downtime seconds) of one QEMU live migration of the dirtying guest
    to a second QEMU over a pipe (a FIFO), as query-migrate reports them (both QEMUs
    already running: total-time is the stream's)."""
    qmp_s, qmp_t, serial = tmp / "qmp-s.sock", tmp / "qmp-t.sock", tmp / "serial-dirty.out"
    fifo = tmp / "migrate.fifo"
    for path in (qmp_s, qmp_t, serial, fifo):
        path.unlink(missing_ok=True)
    os.mkfifo(fifo)
    cmdline = f"rate={rate}"
    source = subprocess.Popen([QEMU, *qemu_args(memory, qmp_s, serial, DIRTY, cmdline)])
    target = subprocess.Popen([QEMU, *qemu_args(memory, qmp_t, tmp / "serial-t.out", DIRTY,
                                                cmdline), "-incoming", f"exec:cat {fifo}"])
    try:
        client = Qmp(qmp_s)
        Qmp(qmp_t).close()  # the target is up and reading
        wait_for(serial, DIRTY_READY)
        client.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        client.execute("migrate", uri=f"exec:cat > {fifo}")
        while True:
            info = client.execute("query-migrate") or {}
            if info.get("status") == "completed":
                break
            if info.get("status") == "failed":
                sys.exit(f"snapshot: QEMU migration failed: {info}")
            time.sleep(0.005)
        client.close()
    finally:
        for q in (source, target):
            q.kill()
            q.wait()
    return info["total-time"] / 1e3, info["downtime"] / 1e3


class Xenopus:
    def __init__(self, tmp: Path, memory: int, tree: Path | None = None,
                 trace: Path | None = None):
        self.cmd = xenopus_command()
        self.env = {**os.environ, "XENOPUS_RUN_DIR": str(tmp / "run")}
        if tree is not None:  # another checkout's code, run by this interpreter
            self.env["PYTHONPATH"] = str(tree / "src")
            self.cmd = [sys.executable, "-m", "xenopus"]
        self.trace = trace
        if trace is not None:
            self.env["XENOPUS_TRACE"] = str(trace)
        self.config = tmp / "bench.cfg"
        self.config.write_text(f'name = "bench"\nkernel = "{GUEST}"\nmemory = {memory}\n'
                               f'xen_platform = 0\ncmdline = "count={COUNT}"\n')

    def run(self, *args: str) -> float:
        started = time.monotonic()
        r = subprocess.run([*self.cmd, *args], env=self.env, capture_output=True,
                           timeout=TIMEOUT)
        if r.returncode != 0:
            sys.exit(f"snapshot: xenopus {' '.join(args)}: {r.stderr.decode()}")
        return time.monotonic() - started

    def round(self, image: Path) -> tuple[float, float, int]:
        self.run("create", "-q", str(self.config))
        console = subprocess.Popen([*self.cmd, "console", "bench"], env=self.env,
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert console.stdout is not None
        seen = b""
        while READY not in seen:
            chunk = console.stdout.read1(4096)
            if not chunk:
                sys.exit("snapshot: the xenopus guest's console ended")
            seen += chunk
        saved = self.run("save", "-c", "bench", str(image))
        self.run("destroy", "bench")
        console.wait(TIMEOUT)
        restored = self.run("restore", "-p", str(image))
        self.run("destroy", "bench")
        return saved, restored, image.stat().st_size

    def wait_console(self, name: str, marker: bytes, env: dict | None = None
                     ) -> subprocess.Popen:
        console = subprocess.Popen([*self.cmd, "console", name], env=env or self.env,
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert console.stdout is not None
        seen = b""
        while marker not in seen:
            chunk = console.stdout.read1(4096)
            if not chunk:
                sys.exit(f"snapshot: the console of {name} ended")
            seen += chunk
        return console

    def run_out(self, *args: str, env: dict | None = None) -> tuple[float, str]:
        started = time.monotonic()
        r = subprocess.run([*self.cmd, *args], env=env or self.env, capture_output=True,
                           timeout=TIMEOUT, text=True)
        if r.returncode != 0:
            sys.exit(f"snapshot: xenopus {' '.join(args)}: {r.stderr}")
        return time.monotonic() - started, r.stderr

    def migrate(self, tmp: Path, memory: int, rate: int, *, cold: bool = False
                ) -> tuple[float, ...]:
        """Seconds of one live migration of the dirtying guest to a second daemon on this
        host, over a pipe: the command's wall time (the domain built there; with `cold`,
        the receiver's daemon started by it), the stop-and-copy, the sender's stream
        from its first record to END, and as `migrate --debug` splits the wall time: the
        receiver's start (its banner), the stream with the receiver's build and restore,
        the handshake until it runs there, the source's destroy; and the time from the
        source's pause until the sender hears the guest runs there (an upper bound of
        what the guest sees: QEMU's target runs as soon as the stream has come, ours
        once the sender says go)."""
        receiver = {**self.env, "XENOPUS_RUN_DIR": str(tmp / "run-receiver")}
        if cold:
            subprocess.run([*self.cmd, "daemon", "--stop"], env=receiver, check=False,
                           capture_output=True, timeout=60)
        else:
            self.run_out("list", env=receiver)  # running (started now if it was not)
        cfg = tmp / "dirty.cfg"
        cfg.write_text(f'name = "dirty"\nkernel = "{DIRTY}"\nmemory = {memory}\n'
                       f'xen_platform = 0\ncmdline = "rate={rate}"\n')
        self.run("create", "-q", str(cfg))
        console = self.wait_console("dirty", DIRTY_READY)
        host = f"PATH={Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        total, report = self.run_out("migrate", "--debug", "-s",
                                     f"env XENOPUS_RUN_DIR={receiver['XENOPUS_RUN_DIR']}",
                                     "dirty", host)
        console.wait(TIMEOUT)
        m = re.search(r"in ([\d.]+) s; stopped for ([\d.]+) ms .*; receiver ready in (\d+) ms,"
                      r" the stream and its restore (\d+) ms, running there (\d+) ms later"
                      r" \(the guest stopped ([\d.]+) ms until then\), source destroyed in"
                      r" (\d+) ms", report)
        if m is None:
            sys.exit(f"snapshot: no downtime in {report!r}")
        # it runs on over there, counting seconds where it left off
        after = self.wait_console("dirty", b"dirty ", env=receiver)
        after.kill()
        self.run_out("destroy", "dirty", env=receiver)
        return (total, float(m[2]) / 1e3, float(m[1]),
                *(float(m[i]) / 1e3 for i in (3, 4, 5, 7)), float(m[6]) / 1e3)

    def stop_receiver(self, tmp: Path) -> None:
        subprocess.run([*self.cmd, "daemon", "--stop"],
                       env={**self.env, "XENOPUS_RUN_DIR": str(tmp / "run-receiver")},
                       check=False, capture_output=True, timeout=60)

    def clones(self, tmp: Path, memory: int, count: int) -> dict[str, object]:
        """Clone a guest that wrote CLONE_MIB of its RAM and idles: once from the domain,
        then `count` from its image; timings and each clone's memory, beside a plainly
        restored copy's."""
        cfg = tmp / "idle.cfg"
        cfg.write_text(f'name = "idle"\nkernel = "{DIRTY}"\nmemory = {memory}\n'
                       f'xen_platform = 0\ncmdline = "{CLONE_CMDLINE}"\n')
        self.run("create", "-q", str(cfg))
        console = self.wait_console("idle", IDLE)
        first, report = self.run_out("clone", "-d", "idle", "clone0")
        image = tmp / "clone.img"
        self.run("save", "-c", "idle", str(image))
        names = [f"clone{i}" for i in range(1, count + 1)]
        many, report2 = self.run_out("clone", "-d", str(image), *names)
        per = [(float(a), float(b)) for a, b in re.findall(
            r"mapped in ([\d.]+) ms, restored ([\d.]+) ms", report + report2)]
        # Each clone's domain process start-up, phase by phase (clone -d).
        phases: dict[str, list[float]] = {}
        for group in re.findall(r"after its process started \(([^)]*)\)", report2):
            for name, ms in re.findall(r"(\w+) ([\d.]+) ms", group):
                phases.setdefault(name, []).append(float(ms) / 1e3)
        for name in names:
            self.wait_console(name, b"idle ").kill()  # running
        clone_memory = [memory_of(domain_pid(n)) for n in names]
        self.run("destroy", "idle")
        console.wait(TIMEOUT)
        self.run("restore", str(image))
        self.wait_console("idle", b"idle ").kill()
        plain = memory_of(domain_pid("idle"))
        for name in ["idle", "clone0", *names]:
            self.run("destroy", name)
        return {"first": first, "many": many, "per": per, "phases": phases,
                "clone_memory": clone_memory, "plain_memory": plain,
                "image": image.stat().st_size}

    def stop(self) -> None:
        subprocess.run([*self.cmd, "daemon", "--stop"], env=self.env, check=False,
                       capture_output=True, timeout=60)

    def _traced(self, since: float) -> list[tuple[float, str]]:
        assert self.trace is not None
        out = []
        for line in self.trace.read_text().splitlines():
            when, _, stage = line.split(" ", 2)
            if float(when) >= since:
                out.append((float(when), stage))
        return sorted(out)

    def spares_ready(self) -> None:
        """Wait until every spare the zygote forked has said it is ready (its trace)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            stages = [s for _, s in self._traced(0.0)]
            if stages.count("spare: ready") >= stages.count("zygote: spare forked") > 0:
                return
            if time.monotonic() > deadline:
                sys.exit("snapshot: the spares never became ready")
            time.sleep(0.02)  # polling the trace file the spares write

    def clone_start(self, image: Path, names: list[str]) -> list[dict[str, float]]:
        """One `clone -d FILE NAME...` (then destroyed): per clone, seconds from the
        command to its vCPUs started, from its process's start to that, and its phases
        (the first clone's process starts while the daemon checks its copy of FILE; the
        others' find it checked)."""
        self.spares_ready()
        started = time.monotonic()
        _, report = self.run_out("clone", "-d", str(image), *names)
        stages = self._traced(started)
        begun = [t for t, s in stages if s == "domain: run_domain"]
        running = [t for t, s in stages if s == "domain: vcpus started"]
        phases = [{**{n: float(ms) / 1e3 for n, ms in re.findall(r"(\w+) ([\d.]+) ms", group)},
                   **({"cpu": float(cpu) / 1e3} if cpu else {})}
                  for group, cpu in re.findall(r"after its process started \(([^)]*)\)"
                                               r"(?:, ([\d.]+) ms of CPU)?", report)]
        for name in names:
            self.run("destroy", name)
        if not len(begun) == len(running) == len(phases) == len(names):
            sys.exit(f"snapshot: {len(names)} clones, but {len(begun)} domain starts, "
                     f"{len(running)} vcpus started and {len(phases)} reports in the trace")
        return [{"to_running": r - started, "process": r - b, **p}
                for b, r, p in zip(begun, running, phases, strict=True)]


def row(label: str, values: list[float], scale: float, unit: str) -> str:
    med = statistics.median(values) * scale
    return (f"{label:<30}{med:10.1f} {unit}  [{min(values) * scale:.1f} - "
            f"{max(values) * scale:.1f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", type=int, default=256, help="guest RAM in MiB")
    p.add_argument("--rate", type=int, default=3000,
                   help="pages a second the migrated guest dirties (a multiple of 1000)")
    p.add_argument("--clones", type=int, default=4)
    p.add_argument("--parts", default="save,migrate,clone",
                   help="which of save, migrate, clone, start to run (comma-separated)")
    p.add_argument("--before", type=Path,
                   help="another checkout to measure clone starts of in the same run")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if shutil.which(QEMU) is None:
        sys.exit(f"snapshot: {QEMU} is not installed (scripts/install-deps)")
    build_guest(GUEST)
    build_guest(DIRTY)
    results: dict[str, list[tuple[float, float, int]]] = {"xenopus": [], "qemu": []}
    migrations: dict[str, list[tuple[float, ...]]] = {"xenopus": [], "xenopus cold": [],
                                                      "qemu": []}
    with tempfile.TemporaryDirectory(prefix="xenopus-snapshot-") as d:
        tmp = Path(d)
        xen = Xenopus(tmp, args.memory)
        try:
            if "save" in parts:
                xen.round(tmp / "warm.img")
                qemu_run(tmp, args.memory, tmp / "warm-qemu.img")
                for _ in range(args.runs):
                    results["xenopus"].append(xen.round(tmp / "x.img"))
                    results["qemu"].append(qemu_run(tmp, args.memory, tmp / "q.img"))
            if "migrate" in parts:
                for _ in range(args.runs):
                    migrations["xenopus"].append(xen.migrate(tmp, args.memory, args.rate))
                    migrations["xenopus cold"].append(
                        xen.migrate(tmp, args.memory, args.rate, cold=True))
                    migrations["qemu"].append(qemu_migrate(tmp, args.memory, args.rate))
                xen.stop_receiver(tmp)
            if "clone" in parts:
                clones = xen.clones(tmp, args.memory, args.clones)
                qemu_memory = qemu_restored_memory(tmp, args.memory)
            if "start" in parts:
                starts = clone_starts(tmp, args)
        finally:
            xen.stop()
    if "save" in parts:
        print(f"guest: {GUEST.name}, {args.memory} MiB, {args.runs} runs "
              "(median [min - max])")
        for name, runs in results.items():
            print(row(f"{name} save", [r[0] for r in runs], 1e3, "ms"))
            print(row(f"{name} restore", [r[1] for r in runs], 1e3, "ms"))
            print(row(f"{name} image size", [float(r[2]) for r in runs], 1 / 2**20, "MiB"))
    if "migrate" in parts:
        print(f"live migration: {DIRTY.name} dirtying {args.rate} pages/s "
              f"({args.rate * 4096 / 2**20:.0f} MiB/s) of 64 MiB, over a pipe, "
              f"{args.runs} runs")
        for name, runs in migrations.items():
            label = name.replace(" cold", "")
            suffix = " (cold)" if name.endswith("cold") else ""
            print(row(f"{label} migrate total{suffix}", [r[0] for r in runs], 1e3, "ms"))
            if name.startswith("xenopus"):
                print(row("  of which the stream", [r[2] for r in runs], 1e3, "ms"))
                for i, what in enumerate(("  receiver started (banner)", "  stream + restore",
                                          "  then running there", "  source destroyed"), 3):
                    print(row(what, [r[i] for r in runs], 1e3, "ms"))
                print(row("  the CLI's own start and exit", [r[0] - sum(r[3:7]) for r in runs],
                          1e3, "ms"))
            print(row(f"{label} downtime{suffix}", [r[1] for r in runs], 1e3, "ms"))
            if name.startswith("xenopus"):
                print(row("  stopped until running there", [r[7] for r in runs], 1e3, "ms"))
    if "clone" in parts:
        print_clones(clones, qemu_memory, args)
    if "start" in parts:
        print_starts(starts, args)


def clone_starts(tmp: Path, args: argparse.Namespace) -> dict[str, list[list[dict]]]:
    """`--runs` single clones of an idling guest's image, by this tree and (interleaved)
    by `--before`'s, each with a daemon of its own."""
    if args.before is not None:  # its bytecode and dataclass table, as `make compile`
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(args.before / "src")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "xenopus.toolstack.spare", "--write-methods"],
                       check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(args.before / "src")})
    for d in ("start-after", "start-before"):
        (tmp / d).mkdir()
    sides = {"after": Xenopus(tmp / "start-after", args.memory, trace=tmp / "after.trace")}
    if args.before is not None:
        sides["before"] = Xenopus(tmp / "start-before", args.memory, args.before,
                                  trace=tmp / "before.trace")
    for side in sides.values():
        # A spare still ready as B is made: B's does not share the CPUs with a
        # replacement spare importing at full priority (zygote.py, "BACKGROUND_NICE").
        side.env["XENOPUS_SPARES"] = str(START_SPARES)
    x = sides["after"]
    cfg = tmp / "start.cfg"
    cfg.write_text(f'name = "idle"\nkernel = "{DIRTY}"\nmemory = {args.memory}\n'
                   f'xen_platform = 0\ncmdline = "{CLONE_CMDLINE}"\n')
    x.run("create", "-q", str(cfg))
    console = x.wait_console("idle", IDLE)
    image = tmp / "start.img"
    x.run("save", "idle", str(image))
    console.wait(TIMEOUT)
    out: dict[str, list[list[dict]]] = {name: [] for name in sides}
    try:
        for side in sides.values():
            side.run_out("clone", str(image), "warm")  # daemon, zygote, spares started
            side.run("destroy", "warm")
        for i in range(args.runs):
            for name, side in sides.items():
                out[name].append(side.clone_start(image, [f"start{i}a", f"start{i}b"]))
    finally:
        for side in sides.values():
            side.stop()
    return out


def print_starts(starts: dict[str, list[list[dict]]], args: argparse.Namespace) -> None:
    print(f"clone start: {DIRTY.name} ({CLONE_MIB} MiB written), {args.memory} MiB, "
          f"`clone -d FILE A B`, one pair at a time, {args.runs} runs (median [min - max])")
    for name, runs in starts.items():
        print("xenopus" if name == "after" else f"before ({args.before})")
        first, second = [r[0] for r in runs], [r[1] for r in runs]
        print(row("  command -> A running", [r["to_running"] for r in first], 1e3, "ms"))
        for label, clones in (("A", first), ("B", second)):
            print(row(f"  {label}: process start -> running", [r["process"] for r in clones],
                      1e3, "ms"))
            for phase in PHASES:
                print(row(f"    {phase}", [r.get(phase, 0.0) for r in clones], 1e3, "ms"))
            if all("cpu" in r for r in clones):  # `clone -d` says it (not every tree's)
                print(row("    its CPU time meanwhile", [r["cpu"] for r in clones], 1e3, "ms"))


PHASES = ("setup", "build", "jail", "handover", "restore")
START_SPARES = 3  # the daemon's spares in `--parts start` (the default is 2)


def print_clones(clones: dict, qemu_memory: dict[str, int], args: argparse.Namespace) -> None:
    per = clones["per"]
    print(f"clone: {DIRTY.name} ({CLONE_CMDLINE}: {CLONE_MIB} MiB written, then idle), "
          f"{args.memory} MiB, image {clones['image'] / 2**20:.1f} MiB, {args.clones} clones")
    print(f"{'xenopus clone DOM (wall)':<30}{clones['first'] * 1e3:10.1f} ms  "
          "(saves DOM, then one clone)")
    print(f"{'xenopus clone FILE (wall)':<30}{clones['many'] * 1e3:10.1f} ms  "
          f"({args.clones} clones, the image copied once)")
    print(row("  restore, RAM mapped", [a / 1e3 for a, _ in per], 1e3, "ms"))
    print(row("  process start->restored", [b / 1e3 for _, b in per], 1e3, "ms"))
    for name, values in clones["phases"].items():
        print(row(f"    {name}", values, 1e3, "ms"))
    for label, mem in [*((f"  clone {i + 1} memory", m)
                         for i, m in enumerate(clones["clone_memory"])),
                       ("xenopus restored memory", clones["plain_memory"]),
                       ("qemu restored memory", qemu_memory)]:
        print(f"{label:<30}Rss {mem['Rss'] / 1024:7.1f} MiB  Pss {mem['Pss'] / 1024:7.1f} MiB"
              f"  Anonymous {mem['Anonymous'] / 1024:7.1f} MiB")


if __name__ == "__main__":
    main()
