"""Xen hypercall round trips beside the peer: xenbench under xenopus and under QEMU 10's Xen
emulation, in the same run (issue 13).

    python benchmarks/xen_peer.py [--iterations N] [--repeats R]

Run it where KVM has KVM_CAP_XEN_HVM, e.g. the nested host:
    scripts/nested-host -- .venv/bin/python benchmarks/xen_peer.py
QEMU 10 comes from scripts/fetch-qemu10 (linux/qemu10/qemu-system-x86_64).

guests/out/xenbench.elf (`mode=version|evtchn|null iterations=N`, benchmarks/hypercall.py
describes the modes) runs with iterations=0 and iterations=N on each side; (T_N - T_0) / N
is one round trip with start-up and shutdown cancelled out. Medians over R repeats.
- xenopus: in this process through the domain builder (hypercall.run_xenbench), whichever
  path the host offers (in-kernel where KVM has KVM_CAP_XEN_HVM, else trap), timed from
  machine.start to the stop callback;
- QEMU 10: `-accel kvm,xen-version=...,kernel-irqchip=split -M pc`, timed from process start
  to exit (its firmware and start-up are in T_0 and cancel out; the spread does not).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import exits
from common import QEMU10, XEN_VERSION, build_guest
from hypercall import GUEST, MODES, run_xenbench

TIMEOUT = 300.0


def run_qemu(mode: str, iterations: int) -> float | str:
    """Seconds to QEMU's exit, or the guest's failure line where it did not pass (kept and
    shown in the table: a peer's failure is a finding, not noise to retry away)."""
    argv = [str(QEMU10), "-accel", f"kvm,xen-version={XEN_VERSION},kernel-irqchip=split",
            "-M", "pc", "-m", "64", "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", str(GUEST), "-append", f"mode={mode} iterations={iterations}"]
    start = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    out = done.stdout.decode(errors="replace")
    if f"RESULT: PASS xenbench {mode} {iterations}" not in out:
        print(f"\nxen_peer: QEMU 10 xenbench mode={mode} iterations={iterations} exit "
              f"{done.returncode}:\n{out[-1500:]}", flush=True)
        lines = [ln for ln in out.splitlines() if ln.startswith(("EXCEPTION", "RESULT"))]
        return " / ".join(lines) or f"exit {done.returncode}, no RESULT line"
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--iterations", type=int, default=20_000, help="round trips per run (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each kind (default 5)")
    args = p.parse_args()
    if args.repeats < 1 or args.iterations < 1:
        p.error("--repeats and --iterations must be positive")
    if not QEMU10.exists():
        sys.exit(f"xen_peer: {QEMU10} is missing: run scripts/fetch-qemu10")
    build_guest(GUEST)
    n = args.iterations
    times: dict[tuple[str, str, int], list[float]] = {}
    failed: dict[str, list[str]] = {}  # mode -> QEMU's failures
    paths: set[str] = set()
    for _ in range(args.repeats):
        for k in (0, n):
            for mode in MODES:
                seconds, path, _ = run_xenbench(mode, k)
                paths.add(path)
                times.setdefault(("xenopus", mode, k), []).append(seconds)
                peer = run_qemu(mode, k)
                if isinstance(peer, str):
                    failed.setdefault(mode, []).append(f"iterations={k}: {peer}")
                else:
                    times.setdefault(("qemu", mode, k), []).append(peer)
        print(".", end="", flush=True)
    print()
    path = ",".join(sorted(paths))

    def per_call(side: str, mode: str) -> float | None:
        """Median of (T_N - T_0) / N over the repeats where both runs passed."""
        t0, tn = times.get((side, mode, 0), []), times.get((side, mode, n), [])
        pairs = min(len(t0), len(tn))
        return statistics.median(exits.per_exit(t0[:pairs], tn[:pairs], n)) if pairs else None

    print(f"\nxenbench round trips, iterations={n}, {args.repeats} repeats "
          f"(medians; per call = (T_N - T_0) / N)\n")
    print(f"{'mode':<10}{f'xenopus ({path}) µs':>26}{'QEMU 10 µs':>14}{'ratio':>8}")
    for mode in MODES:
        ours, peer = per_call("xenopus", mode), per_call("qemu", mode)
        ratio = f"{ours / peer:8.2f}" if ours and peer and peer > 0 else f"{'n/a':>8}"
        shown = f"{peer * 1e6:14.2f}" if peer is not None else f"{'failed':>14}"
        print(f"{mode:<10}{ours * 1e6:26.2f}{shown}{ratio}")
    for mode, why in failed.items():
        print(f"QEMU 10 {mode}: {len(why)} of {2 * args.repeats} runs failed: {why[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
