"""Xen hypercall round trips beside the peer: xenbench under xenopus and under QEMU 10's Xen
emulation, in the same run (issue 13).

    python benchmarks/xen_peer.py [--iterations N] [--repeats R]

Run it where KVM has KVM_CAP_XEN_HVM, e.g. the nested host:
    scripts/nested-host -- .venv/bin/python benchmarks/xen_peer.py
QEMU 10 comes from scripts/fetch-qemu10 (linux/qemu10/qemu-system-x86_64).

guests/out/xenbench.elf (`mode=version|evtchn|null iterations=N`, benchmarks/hypercall.py
describes the modes) runs with iterations=0 and iterations=N on each side; (T_N - T_0) / N
is one round trip with start-up and shutdown cancelled out. Medians over R repeats.
- xenopus: in this process through the domain builder (hypercall.run_xenbench), timed from
  machine.start to the stop callback, on each path the host offers: the trap path
  (xen_hypercall_path = "trap": every call and event through our Python run loop) and,
  where KVM has KVM_CAP_XEN_HVM, the in-kernel path (vmcall stubs; with EVTCHN_SEND KVM
  also answers XENVER_version and loopback sends itself: xen/kernel_events.py);
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
from xenopus.kvm import Kvm
from xenopus.xen.hypercall import kernel_flags, kernel_path_available

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
    kvm = Kvm()
    sides = ["trap", "kernel"] if kernel_path_available(kernel_flags(kvm)) else ["trap"]
    kvm.close()
    times: dict[tuple[str, str, int], list[float]] = {}
    failed: dict[str, list[str]] = {}  # mode -> QEMU's failures
    for _ in range(args.repeats):
        for k in (0, n):
            for mode in MODES:
                for side in sides:
                    seconds, path, _ = run_xenbench(mode, k, "auto" if side == "kernel" else side)
                    if path != side:
                        sys.exit(f"xen_peer: asked for the {side} path, the domain got {path}")
                    times.setdefault((side, mode, k), []).append(seconds)
                peer = run_qemu(mode, k)
                if isinstance(peer, str):
                    failed.setdefault(mode, []).append(f"iterations={k}: {peer}")
                else:
                    times.setdefault(("qemu", mode, k), []).append(peer)
        print(".", end="", flush=True)
    print()

    def per_call(side: str, mode: str) -> float | None:
        """Median of (T_N - T_0) / N over the repeats where both runs passed."""
        t0, tn = times.get((side, mode, 0), []), times.get((side, mode, n), [])
        pairs = min(len(t0), len(tn))
        return statistics.median(exits.per_exit(t0[:pairs], tn[:pairs], n)) if pairs else None

    print(f"\nxenbench round trips, iterations={n}, {args.repeats} repeats "
          f"(medians; per call = (T_N - T_0) / N)\n")
    head = "".join(f"{f'xenopus {side} µs':>20}" for side in sides)
    ratios = "".join(f"{f'{side}/QEMU':>13}" for side in sides)
    print(f"{'mode':<10}{head}{'QEMU 10 µs':>14}{ratios}")
    for mode in MODES:
        peer = per_call("qemu", mode)
        ours = [per_call(side, mode) for side in sides]
        cells = "".join(f"{o * 1e6:20.2f}" if o is not None else f"{'n/a':>20}" for o in ours)
        shown = f"{peer * 1e6:14.2f}" if peer is not None else f"{'failed':>14}"
        ratio = "".join(f"{o / peer:13.2f}" if o and peer and peer > 0 else f"{'n/a':>13}"
                        for o in ours)
        print(f"{mode:<10}{cells}{shown}{ratio}")
    for mode, why in failed.items():
        print(f"QEMU 10 {mode}: {len(why)} of {2 * args.repeats} runs failed: {why[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
