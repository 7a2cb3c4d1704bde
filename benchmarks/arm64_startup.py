"""arm64 start-up benchmark: Debian's arm64 kernel to userspace, xenopus beside QEMU.

The same kernel and initramfs under xenopus and under QEMU (`-M virt -accel kvm`) on the
same KVM/arm64 host, in the same run.

    make bench-arm64      (scripts/arm64-host -- python3 benchmarks/arm64_startup.py)
    python3 benchmarks/arm64_startup.py [--runs N] [--quiet]   (on an arm64 host with /dev/kvm)

The guest is scripts/fetch-arm64's: build/arm64/Image and guest-initramfs.cpio, whose
/init prints `XENOPUS-ARM64-USERSPACE after <uptime> s` and powers off (PSCI SYSTEM_OFF);
no devices but the console, 256 MiB, one vCPU, the same command line (with --quiet, the
kernel's `quiet`: its boot log, ~15 KB through the PL011, mostly stays off the console, so
the console path's share of the time shows). Measured per run,
from starting the command: seconds until the marker reaches our pipe, and until the
command has exited; the guest's own uptime at the marker is printed beside them.

Beside them, "vmm-only": xenopus's VMM without the toolstack (no daemon, no domain process,
no jail), one Python process building the guest and copying its console to stdout, to
show what the toolstack path costs.

Like for like: QEMU copies the guest's PL011 to its stdout (-serial stdio); xenopus runs as
`xenopus create -c -F`, whose CLI attaches to the console and copies it to stdout until
the domain is gone. Runs alternate, after one uncounted warm-up each (xenopus's also
starts its daemon). The peer is the arm64 host's own QEMU (on the emulated host: bookworm's
arm64 qemu-system-aarch64, from scripts/fetch-arm64).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "build" / "arm64" / "Image"
INITRAMFS = ROOT / "build" / "arm64" / "guest-initramfs.cpio"
MARKER = re.compile(rb"XENOPUS-ARM64-USERSPACE after ([0-9.]+) s")
CMDLINE = "console=ttyAMA0 panic=-1 rdinit=/init"
MEMORY_MIB = 256
TIMEOUT = 900.0


def qemu_command(cmdline: str) -> list[str]:
    qemu = shutil.which("qemu-system-aarch64")
    if qemu is None:
        sys.exit("arm64_startup: no qemu-system-aarch64 on this host (scripts/fetch-arm64 "
                 "unpacks bookworm's into the emulated host)")
    return [qemu, "-M", "virt,gic-version=3", "-accel", "kvm", "-cpu", "host", "-smp", "1",
            "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", str(IMAGE), "-initrd", str(INITRAMFS),
            "-append", cmdline]


def xenopus_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "xenopus", "create", "-c", "-F", str(config)]


def direct_command(cmdline: str) -> list[str]:
    """xenopus's VMM alone, without the toolstack: this script's --direct, one process that
    builds the guest (domain/builder_arm64.py) and copies its console to stdout."""
    return [sys.executable, __file__, "--direct", cmdline]


def run_direct(cmdline: str) -> int:
    import threading

    from xenopus.domain.builder_arm64 import build_arm64_guest

    stopped = threading.Event()
    reasons: list[object] = []

    def on_stop(reason: object) -> None:
        reasons.append(reason)
        stopped.set()

    def console(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    guest = build_arm64_guest(IMAGE, ramdisk=INITRAMFS, cmdline=cmdline, memory_mib=MEMORY_MIB,
                              console_out=console)
    try:
        guest.machine.start(guest.boot.cpu, on_stop)
        stopped.wait(TIMEOUT)
    finally:
        guest.close()
    return 0 if reasons and getattr(reasons[0], "kind", None) == "poweroff" else 1


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds to the marker, seconds to the exit, the guest's uptime at the marker)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    seen = b""
    marker_at: float | None = None
    uptime = 0.0
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
        if marker_at is None and (m := MARKER.search(seen)):
            marker_at = time.monotonic() - start
            uptime = float(m[1])
        if time.monotonic() - start > TIMEOUT:
            proc.kill()
            break
    proc.wait()
    end = time.monotonic() - start
    if marker_at is None or proc.returncode != 0:
        sys.exit(f"arm64_startup: {argv[0]} exited {proc.returncode} without the marker:\n"
                 f"{seen[-3000:].decode(errors='replace')}")
    return marker_at, end, uptime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3, help="counted runs of each (default 3)")
    p.add_argument("--quiet", action="store_true", help="add `quiet` to the kernel command line")
    p.add_argument("--direct", metavar="CMDLINE", help=argparse.SUPPRESS)  # direct_command's
    args = p.parse_args()
    if args.direct is not None:
        return run_direct(args.direct)
    cmdline = CMDLINE + (" quiet" if args.quiet else "")
    for need in (IMAGE, INITRAMFS):
        if not need.exists():
            sys.exit(f"arm64_startup: {need} is missing: run scripts/fetch-arm64")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("arm64_startup: needs /dev/kvm")
    tmp = Path(tempfile.mkdtemp(prefix="xenopus-arm64-bench-"))
    env = {**os.environ, "XENOPUS_RUN_DIR": str(tmp / "run")}
    config = tmp / "linux.cfg"
    config.write_text(f'name = "bench-arm64"\nkernel = "{IMAGE}"\nramdisk = "{INITRAMFS}"\n'
                      f'cmdline = "{cmdline}"\nmemory = {MEMORY_MIB}\nvcpus = 1\n')
    commands = {"xenopus": xenopus_command(config), "vmm-only": direct_command(cmdline),
                "qemu": qemu_command(cmdline)}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    try:
        for name, argv in commands.items():
            print(f"warm-up {name}: marker {timed(argv, env)[0]:.1f} s", flush=True)
        for run in range(args.runs):
            for name, argv in commands.items():
                r = timed(argv, env)
                results[name].append(r)
                print(f"run {run + 1} {name}: marker {r[0]:.2f} s, exit {r[1]:.2f} s, "
                      f"guest uptime at marker {r[2]:.2f} s", flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "xenopus", "daemon", "--stop"], env=env,
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[name])

    print(f"\nDebian arm64 6.12 to userspace and power-off, {MEMORY_MIB} MiB, 1 vCPU, "
          f"cmdline {cmdline!r}; medians of {args.runs} runs")
    print("xenopus: `xenopus create -c -F`; vmm-only: the same guest built and run in one "
          "process, without the toolstack; ratios to qemu")
    print(f"{'':24}{'xenopus':>10}{'vmm-only':>10}{'qemu':>10}{'ratio':>8}{'ratio':>8}")
    for label, i in (("to the marker (s)", 0), ("to the exit (s)", 1),
                     ("guest uptime at marker", 2)):
        x, d, q = med("xenopus", i), med("vmm-only", i), med("qemu", i)
        print(f"{label:24}{x:>10.2f}{d:>10.2f}{q:>10.2f}{x / q:>8.2f}{d / q:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
