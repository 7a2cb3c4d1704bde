"""What each process of a Linux test costs before any guest runs, beside QEMU's start-up.

    python benchmarks/process_costs.py [--runs N]

Meant for the nested test host (`scripts/nested-host -- .venv/bin/python
benchmarks/process_costs.py`), where every process, Python included, runs under TCG, so
that the Linux suite's time per boot beyond the guest's own can be put where it goes;
it runs anywhere with /dev/kvm. Seconds, median of N runs (default 3), each row from
starting the command to its exit:

  python -c pass            the interpreter alone (site included)
  import pytest             the test runner's own start (once per session)
  xenopus CLI               `xenopus list` against a running daemon: every CLI command
  daemon start              `xenopus list` on a fresh run directory: CLI, daemon, zygote
  first spare ready         from that command's start until the zygote's first spare has
                            imported every layer (XENOPUS_TRACE); before it a create waits
  daemon stop               `xenopus daemon --stop` of an idle daemon
  minimal guest, warm       `xenopus create -c -F` of guests/minimal.cfg on a running
                            daemon with a spare ready
  minimal guest, fresh      the same on a fresh run directory (the daemon starts first):
                            what a test with a daemon of its own paid per boot
  QEMU microvm              the same guest under `qemu-system-x86_64 -M microvm -accel kvm`
                            (the QEMU process's start-up and exit around the same guest)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "minimal.elf"
CONFIG = ROOT / "guests" / "minimal.cfg"
PASS_LINE = b"RESULT: PASS minimal"
# As benchmarks/startup.py runs it: microvm with an i8042 for the guest's reset line;
# without IA32_ARCH_CAPABILITIES, which QEMU 7.2 fails to set on a KVM without hardware
# virtualisation underneath (startup.py's QEMU_MSR_FAILURE).
QEMU_ARGV = ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu",
             "host,-arch-capabilities", "-m", "32",
             "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
             "-device", "i8042", "-kernel", str(GUEST)]
TIMEOUT = 600.0


def timed(argv: list[str], env: dict[str, str], expect: bytes | None = None) -> float:
    start = time.monotonic()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIMEOUT)
    seconds = time.monotonic() - start
    if done.returncode != 0 or (expect is not None and expect not in done.stdout):
        sys.exit(f"process_costs: {' '.join(argv)} failed ({done.returncode}):\n"
                 f"{(done.stdout + done.stderr)[-2000:].decode(errors='replace')}")
    return seconds


def spare_ready_after(trace: Path, since: float, limit: float = TIMEOUT) -> float:
    """Seconds from `since` (CLOCK_MONOTONIC) until the trace shows a spare ready."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for line in trace.read_text().splitlines():
            t, _, stage = line.split(" ", 2)
            if stage == "spare: ready" and float(t) >= since:
                return float(t) - since
        time.sleep(0.2)  # polling a file another process appends to; bounded by limit
    sys.exit("process_costs: no spare became ready")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    build_guest(GUEST)
    qemu = shutil.which(QEMU_ARGV[0])
    cli = xenopus_command()
    rows: dict[str, list[float]] = {}

    def measure(row: str, seconds: float) -> None:
        rows.setdefault(row, []).append(seconds)
        print(f"  {row}: {rows[row][-1]:.2f} s", flush=True)

    base = Path(tempfile.mkdtemp(prefix="xenopus-costs-"))
    env = dict(os.environ)
    try:
        for i in range(args.runs):
            measure("python -c pass", timed([sys.executable, "-c", "pass"], env))
            if i == 0:
                measure("import pytest", timed([sys.executable, "-c", "import pytest"], env))
            trace = base / f"trace-{i}"
            fresh = dict(env, XENOPUS_RUN_DIR=str(base / f"run-{i}"), XENOPUS_TRACE=str(trace))
            since = time.monotonic()
            measure("daemon start", timed([*cli, "list"], fresh))
            measure("first spare ready", spare_ready_after(trace, since))
            measure("xenopus CLI", timed([*cli, "list"], fresh))
            measure("minimal guest, warm",
                    timed([*cli, "create", "-c", "-F", str(CONFIG)], fresh, PASS_LINE))
            measure("daemon stop", timed([*cli, "daemon", "--stop"], fresh))
            cold = dict(env, XENOPUS_RUN_DIR=str(base / f"cold-{i}"))
            measure("minimal guest, fresh",
                    timed([*cli, "create", "-c", "-F", str(CONFIG)], cold, PASS_LINE))
            timed([*cli, "daemon", "--stop"], cold)
            if qemu is not None:
                measure("QEMU microvm", timed(QEMU_ARGV, env, PASS_LINE))
    finally:
        for run in base.glob("*-*"):
            if run.is_dir():
                subprocess.run([*cli, "daemon", "--stop"], capture_output=True,
                               env=dict(env, XENOPUS_RUN_DIR=str(run)), check=False)
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nseconds, median of {args.runs} (load {os.getloadavg()[0]:.1f})")
    print("| process | seconds |\n|---|---|")
    for row, values in rows.items():
        print(f"| {row} | {statistics.median(values):.2f} |")
    if qemu is None:
        print("| QEMU microvm | (qemu-system-x86_64 not installed) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
