"""Where `xenopus create -c -F` of the minimal guest spends its time, stage by stage.

    python benchmarks/startup_trace.py [--runs N] [--tree TREE]

Runs the command N times (after two warm-ups) against a daemon of its own with
XENOPUS_TRACE set (src/xenopus/trace.py): every xenopus process appends
`monotonic pid stage` lines to one file, CLOCK_MONOTONIC being one clock for the host.
Each run's lines, with the benchmark's own `exec` (just before starting the CLI) and
`exit` (after reaping it), are put in time order; each stage's figure is the time since
the stage before it, median over the runs. A replacement spare starting in the
background (`spare: started` → `spare: ready`) is not on the path and is reported
apart, as is `python -X importtime`'s total for the CLI's imports.

`--tree TREE`: another checkout's `src`, run by this interpreter (e.g. main's export).
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
from collections import defaultdict
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "minimal.elf"
CONFIG = ROOT / "guests" / "minimal.cfg"
BACKGROUND = ("zygote: spare forked", "spare: started", "spare: ready")


def run_once(cmd: list[str], env: dict[str, str], trace: Path) -> None:
    with open(trace, "a") as f:
        f.write(f"{time.monotonic():.6f} {os.getpid()} exec\n")
    r = subprocess.run([*cmd, "create", "-c", "-F", str(CONFIG)], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    with open(trace, "a") as f:
        f.write(f"{time.monotonic():.6f} {os.getpid()} exit\n")
    if r.returncode != 0 or b"RESULT: PASS" not in r.stdout:
        sys.exit(f"startup_trace: the run failed: {r.stderr.decode(errors='replace')[-2000:]}")


def spares_settled(trace: Path, limit: float = 15.0) -> None:
    """Wait (at most `limit` s) until every spare started so far is ready: the replacement
    of the spare a run consumed imports in the background, and the next run is measured
    on a pool as full as the first's (a measurement condition, not synchronisation)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        text = trace.read_text()
        if text.count(" spare: ready\n") >= text.count(" zygote: spare forked\n"):
            return
        time.sleep(0.05)


def parse(trace: Path) -> list[list[tuple[float, int, str]]]:
    """The trace's lines, one list per run (from `exec` to `exit`), in time order."""
    lines = []
    for text in trace.read_text().splitlines():
        t, pid, stage = text.split(" ", 2)
        lines.append((float(t), int(pid), stage))
    lines.sort()
    runs, current = [], None
    for line in lines:
        if line[2] == "exec":
            current = [line]
        elif current is not None:
            current.append(line)
            if line[2] == "exit":
                runs.append(current)
                current = None
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tree", type=Path, help="another checkout's src to run")
    args = p.parse_args()
    build_guest(GUEST)
    base = Path(tempfile.mkdtemp(prefix="xenopus-trace-"))
    trace = base / "trace"
    env = dict(os.environ, XENOPUS_RUN_DIR=str(base / "run"), XENOPUS_TRACE=str(trace))
    cmd = xenopus_command()
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree / "src")
        cmd = [sys.executable, "-m", "xenopus"]
    try:
        for _ in range(2):  # the first starts the daemon; the second is warm
            run_once(cmd, env, trace)
        trace.write_text("")
        for _ in range(args.runs):
            run_once(cmd, env, trace)
            spares_settled(trace)
    finally:
        subprocess.run([*cmd, "daemon", "--stop"], env=env, capture_output=True, timeout=30)
    runs = parse(trace)
    steps: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    spares: list[float] = []
    for run in runs:
        path = [line for line in run if line[2] not in BACKGROUND]
        for (t0, _, _), (t1, _, stage) in zip(path, path[1:], strict=False):
            if stage not in steps:
                order.append(stage)
            steps[stage].append(t1 - t0)
    started: dict[int, float] = {}  # a spare's pid (its own) -> when the zygote forked it
    forked: list[float] = []  # the zygote's marks: its pid is not the spare's
    for t, pid, stage in sorted(line for run in runs for line in run):
        if stage == "zygote: spare forked":
            forked.append(t)
        elif stage == "spare: started" and forked:
            started[pid] = forked.pop(0)
        elif stage == "spare: ready" and pid in started:
            spares.append(t - started.pop(pid))
    total = [run[-1][0] - run[0][0] for run in runs]
    # The run whose total is the median, stage by stage (its stages add up to its total),
    # beside each stage's median over every run.
    middle = sorted(runs, key=lambda run: run[-1][0] - run[0][0])[len(runs) // 2]
    mid = [line for line in middle if line[2] not in BACKGROUND]
    mine = {stage: t1 - t0 for (t0, _, _), (t1, _, stage) in zip(mid, mid[1:], strict=False)}
    print(f"create -c -F {CONFIG.relative_to(ROOT)}: {len(runs)} runs; ms since the stage "
          "before, in the median run and the median over all runs\n")
    print(f"  {'stage':<42}{'median run':>11}{'median':>9}")
    for stage in order:
        print(f"  {stage:<42}{mine.get(stage, float('nan')) * 1e3:11.1f}"
              f"{statistics.median(steps[stage]) * 1e3:9.1f}")
    print(f"  {'total (exec → exit)':<42}{(middle[-1][0] - middle[0][0]) * 1e3:11.1f}"
          f"{statistics.median(total) * 1e3:9.1f}")
    if spares:
        print(f"\nspare start-up, off the path (forked → ready): {statistics.median(spares) * 1e3:.1f} ms")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
