"""Hypercall benchmark: a null hypercall and an event-channel round trip through the trap path,
beside the port-I/O exit of benchmarks/exits.py.

    python benchmarks/hypercall.py [--iterations N] [--repeats R]

The guest (guests/out/xenbench.elf, `mode= iterations=N`) runs N round trips at CPL 0 and
leaves through SCHEDOP_shutdown:
- version: `xen_version(XENVER_version, NULL)` (public/version.h), the null hypercall;
- evtchn: EVTCHNOP_send on one end of a loopback interdomain pair (public/event_channel.h),
  until the upcall handler (vector 62) has counted the event on the other end;
- null: the same call loop into a local stub without the exit: what the loop's own ring-0
  instructions cost. Ring 0 is emulated on nested KVM (shared/ENVIRONMENT.md) and costs the
  same under any hypervisor there, so it is shown rather than hidden or subtracted.

Each mode runs with iterations=0 and iterations=N; (T_N - T_0) / N is one round trip with
start-up, event set-up and shutdown cancelled out. Medians over R repeats.

- xenopus: in this process through the domain builder (`build_guest`, as a domain process
  builds a guest, with `xen_platform = 1`; no daemon, the guest needs no XenStore), timed
  from machine.start to the stop callback, like exits.py's xenopus side.
- the port-I/O exit: exits.py's own measurement (`prepare`, `run_sides`: its guest under
  xenopus's run loop and under the C reference VMM), run in the same repeats, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import exits
from common import ROOT, build_guest
from xenopus.domain.builder import build_guest as build_domain
from xenopus.domain.config import DomainConfig
from xenopus.domain.xenguest import StoreProxy

GUEST = ROOT / "guests" / "out" / "xenbench.elf"
MEMORY_MIB = 64
MODES = ("null", "version", "evtchn")
LABELS = {
    ("exit", "c"): "port-I/O exit, C reference",
    ("exit", "xenopus"): "port-I/O exit, xenopus",
    "null": "ring-0 call loop, no exit",
    "version": "xen_version (null hypercall)",
    "evtchn": "evtchn send + upcall",
}


def run_xenbench(mode: str, iterations: int, hypercall_path: str = "auto"
                 ) -> tuple[float, str, str]:
    """One run in this process: seconds from machine.start to the stop callback, the
    hypercall path the domain got and the guest's serial output. `hypercall_path` is the
    domain's xen_hypercall_path ("trap" keeps KVM's in-kernel Xen support unused)."""
    config = DomainConfig(name="xenbench", kernel=str(GUEST), memory=MEMORY_MIB,
                          cmdline=f"mode={mode} iterations={iterations}", xen_platform="1",
                          xen_hypercall_path=hypercall_path)
    output = bytearray()
    loop = asyncio.new_event_loop()  # the StoreProxy's; unused without a XenStore socket
    try:
        guest = build_domain(config, console_out=output.extend, debug_out=lambda data: None,
                            domid=1, hv_log=lambda line: None, store=StoreProxy(loop, None))
        timed = exits.run_until_stop(guest.machine, guest.boot.cpu)
        guest.close()
    finally:
        loop.close()
    text = output.decode(errors="replace")
    if timed is None:
        sys.exit(f"hypercall: xenbench mode={mode} iterations={iterations} did not stop "
                 f"in {exits.RUN_TIMEOUT:.0f} s\n{text}")
    seconds, reason = timed
    if reason.kind != "poweroff" or f"RESULT: PASS xenbench {mode} {iterations}" not in text:
        sys.exit(f"hypercall: xenbench mode={mode} iterations={iterations} ended in "
                 f"{reason.kind} ({reason.detail}):\n{text}")
    return seconds, guest.xen_path, text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--iterations", type=int, default=20_000,
                   help="round trips (and outb) per run (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each kind (default 5, at least 5)")
    args = p.parse_args()
    if args.repeats < 5:
        p.error("--repeats must be at least 5")
    if args.iterations < 1:
        p.error("--iterations must be positive")
    n = args.iterations
    build_guest(GUEST)
    times: dict[tuple[object, int], list[float]] = {}
    paths: set[str] = set()
    consoles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="xenopus-hypercall-") as tmp:
        binary, images = exits.prepare(Path(tmp), (0, n))
        print(f"hypercall: {args.repeats} repeats of iterations=0 and iterations={n}: "
              f"xenbench {', '.join(MODES)} and exits (xenopus, C)", flush=True)
        for _ in range(args.repeats):
            for k in (0, n):
                for side, (seconds, text) in exits.run_sides(binary, images[k], k).items():
                    times.setdefault((("exit", side), k), []).append(seconds)
                    consoles["exits"] = text if side == "xenopus" else consoles.get("exits", "")
                for mode in MODES:
                    seconds, path, text = run_xenbench(mode, k)
                    times.setdefault((mode, k), []).append(seconds)
                    paths.add(path)
                    consoles[mode] = text
            print(".", end="", flush=True)
        print()
    if paths != {"trap"}:
        sys.exit(f"hypercall: expected the trap path, the domains got {sorted(paths)}")
    for name in ("exits", "evtchn"):
        lines = [line for line in consoles[name].splitlines()
                 if line.startswith(("looped", "ring 3", "ok upcall", "events:"))]
        print(f"{name} guest (last run):", *lines, sep="\n  ")
    report(times, n, args.repeats)
    return 0


def report(times: dict[tuple[object, int], list[float]], n: int, repeats: int) -> None:
    rows = [("exit", "c"), ("exit", "xenopus"), *MODES]
    med = {key: statistics.median(v) for key, v in times.items()}
    cost = {row: statistics.median(exits.per_exit(times[(row, 0)], times[(row, n)], n))
            for row in rows}
    exit_py, exit_c = cost[("exit", "xenopus")], cost[("exit", "c")]
    print(f"\nround trips through the trap path, iterations={n}, {repeats} repeats "
          f"(medians; per call = (T_N - T_0) / N)\n")
    print(f"{'':<32}{'T_0 ms':>9}{'T_N ms':>10}{'per call µs':>13}"
          f"{'/ exit xenopus':>16}{'/ exit C':>10}")
    for row in rows:
        print(f"{LABELS[row]:<32}{med[(row, 0)] * 1e3:9.1f}{med[(row, n)] * 1e3:10.1f}"
              f"{cost[row] * 1e6:13.2f}{cost[row] / exit_py:16.2f}{cost[row] / exit_c:10.2f}")
    dispatch = cost["version"] - exit_py - cost["null"]
    print(f"\nxen_version - port-I/O exit (xenopus) - ring-0 call loop = {dispatch * 1e6:.2f} µs: "
          f"about what the trap path adds to a plain exit (reading and writing the vCPU's "
          f"registers, the CPL and mode checks, the table); approximate, as the exit loop "
          f"has ring-0 instructions of its own")
    print(f"evtchn send + upcall - xen_version = {(cost['evtchn'] - cost['version']) * 1e6:.2f} µs: "
          f"EVTCHNOP_send's argument read, the MSI injection, and the interrupt entry, upcall "
          f"handler, LAPIC EOI and iret, all in (emulated) ring 0")

if __name__ == "__main__":
    sys.exit(main())
