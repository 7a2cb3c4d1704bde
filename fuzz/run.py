"""Coverage-guided fuzzing of fuzz/targets.py with atheris (libFuzzer for Python).

    .venv/bin/python -m fuzz.run                 # every target, FUZZ_SECONDS (60) each
    .venv/bin/python -m fuzz.run xenstore -s 300 # one target, 300 s

Each target runs in a child process (libFuzzer exits when done or on the first crash),
starting from the committed corpus (fuzz/corpus/<target>, read only) and a work corpus
in fuzz/work/<target> (git-ignored) where new inputs and crash-*/timeout-* reproducers
go. A crash is any exception but the target's documented refusal; a hang is an input
that runs longer than --timeout seconds. The table at the end says executions, coverage
and the outcome per target; the exit status is 1 if any target crashed or hung.
Reproduce one: `.venv/bin/python -m fuzz.run TARGET --repro fuzz/work/TARGET/crash-...`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
WORK = HERE / "work"
NAMES = ("xenstore", "virtqueue", "xlcfg", "configdict", "kernel")


def child(target: str, seconds: int, timeout: int, max_len: int) -> None:
    """In the child: instrument xenopus, then hand the target to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["xenopus"]):
        from fuzz import targets
    import logging

    logging.disable(logging.CRITICAL)  # refusals log warnings; only exceptions matter
    work = WORK / target
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(work), str(CORPUS / target), f"-max_total_time={seconds}",
            f"-timeout={timeout}", f"-max_len={max_len}", "-rss_limit_mb=2048",
            f"-artifact_prefix={work}/", "-print_final_stats=1"]
    atheris.Setup(argv, targets.TARGETS[target])
    atheris.Fuzz()


def repro(target: str, path: Path) -> None:
    from fuzz import targets

    targets.TARGETS[target](path.read_bytes())
    print(f"{path}: no crash")


MAX_LEN = {"xenstore": 8192, "virtqueue": 0x20020, "xlcfg": 4096, "configdict": 8192,
           "kernel": 16384}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(NAMES)} (all)")
    ap.add_argument("-s", "--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repro", type=Path, help="run one input through the target")
    args = ap.parse_args()
    names = args.targets or list(NAMES)
    if unknown := [n for n in names if n not in NAMES]:
        ap.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(NAMES)}")
    if args.repro:
        repro(names[0], args.repro)
        return 0
    if args.child:
        child(names[0], args.seconds, args.timeout, MAX_LEN[names[0]])
        return 0
    rows, failed = [], False
    for name in names:
        cmd = [sys.executable, "-m", "fuzz.run", name, "--child", "-s", str(args.seconds),
               "--timeout", str(args.timeout)]
        print(f"fuzz: {name} for {args.seconds} s", flush=True)
        p = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True)
        log = p.stdout + p.stderr
        (WORK / name).mkdir(parents=True, exist_ok=True)
        (WORK / name / "last.log").write_text(log)
        runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
        cov = re.findall(r"\bcov: (\d+)", log)
        secs = re.search(r"Done \d+ runs in (\d+) second", log)
        crash = re.search(r"(ERROR: libFuzzer: \w+|=== Uncaught Python exception: ===)", log)
        outcome = "ok" if p.returncode == 0 and not crash else (
            f"CRASH (exit {p.returncode}): see {WORK / name / 'last.log'}")
        failed |= outcome != "ok"
        rows.append((name, runs.group(1) if runs else "?", secs.group(1) if secs else "?",
                     cov[-1] if cov else "?", outcome))
        if outcome != "ok":
            print("\n".join(log.splitlines()[-40:]), file=sys.stderr)
    print(f"\n{'target':<10} {'executions':>11} {'seconds':>8} {'coverage':>9}  outcome")
    for name, runs, secs, cov, outcome in rows:
        print(f"{name:<10} {runs:>11} {secs:>8} {cov:>9}  {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
