"""PV-through-shim boot benchmark: one PV kernel behind Xen's PV shim, under xenopus and
under QEMU 10's Xen emulation.

    python benchmarks/pvshim_boot.py [--runs N]

Needs KVM's in-kernel Xen support (KVM_CAP_XEN_HVM: run it inside the nested test host,
`scripts/nested-host -- .venv/bin/python benchmarks/pvshim_boot.py`), the shim
(`make shim`), the test guests (`make guests`) and QEMU 10 (`scripts/fetch-qemu10`; Debian
12's QEMU 7.2 has no Xen emulation). The same shim (build/shim/xen-shim, command line
"pv-shim console=xen,pv") and PV kernel (guests/out/pv/pvhello.elf), 128 MiB, 1 vCPU:
  xenopus  `xenopus create -c -F` of `type = "pv"`, `pvshim = 1`;
  QEMU     `qemu-system-x86_64 -accel kvm,xen-version=0x40011,kernel-irqchip=split -M pc
           -kernel xen-shim -initrd pvhello.elf -append ... -device xen-console`
           (QEMU passes the initrd as the PVH module the shim boots).
Two times per run, from starting the command: "result" when pvhello's RESULT line
arrives on the PV console, "exit" when the command has exited after its
SCHEDOP_shutdown. Runs alternate; the first xenopus run also starts the daemon and is
not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, timed_run, xenopus_command

SHIM = ROOT / "build" / "shim" / "xen-shim"
PVHELLO = ROOT / "guests" / "out" / "pv" / "pvhello.elf"
QEMU10 = ROOT / "linux" / "qemu10" / "root"
SHIM_CMDLINE = "pv-shim console=xen,pv"
RESULT = re.compile(rb"RESULT: (PASS|FAIL) pvhello[^\r\n]*")
MEMORY_MIB = 128
RUN_TIMEOUT = 900.0


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(seconds to the RESULT line, seconds to the command's exit, the RESULT line)."""
    result_at, done, seen = timed_run(argv, RESULT, RUN_TIMEOUT, env)
    m = RESULT.search(seen)
    if result_at is None or m is None:
        sys.exit(f"pvshim_boot: no RESULT line under {argv[0]}:\n"
                 f"{seen[-3000:].decode(errors='replace')}")
    return result_at, done, m.group(0).decode(errors="replace")


def xenopus_argv(tmp: Path) -> list[str]:
    cfg = tmp / "bench-pvshim.cfg"
    cfg.write_text(
        f'name = "bench-pvshim"\ntype = "pv"\npvshim = 1\npvshim_path = "{SHIM}"\n'
        f'pvshim_cmdline = "{SHIM_CMDLINE}"\nmemory = {MEMORY_MIB}\nvcpus = 1\n'
        f'kernel = "{PVHELLO}"\non_poweroff = "destroy"\non_reboot = "destroy"\n'
        'on_crash = "destroy"\n'
    )
    return [*xenopus_command(), "create", "-c", "-F", str(cfg)]


def qemu_argv() -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, QEMU_MODULE_DIR=str(QEMU10 / "usr/lib/x86_64-linux-gnu/qemu"))
    argv = [str(QEMU10 / "usr/bin/qemu-system-x86_64"),
            "-L", str(QEMU10 / "usr/share/qemu"), "-L", str(QEMU10 / "usr/share/seabios"),
            "-accel", "kvm,xen-version=0x40011,kernel-irqchip=split", "-M", "pc",
            "-cpu", "host", "-m", str(MEMORY_MIB), "-smp", "1", "-nodefaults", "-no-reboot",
            "-display", "none", "-chardev", "stdio,id=pvcon",
            "-device", "xen-console,chardev=pvcon",
            "-kernel", str(SHIM), "-initrd", str(PVHELLO), "-append", SHIM_CMDLINE]
    return argv, env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=1, help="counted runs of each (default 1)")
    args = p.parse_args()
    for needed, how in ((SHIM, "make shim"), (PVHELLO, "make guests"),
                        (QEMU10 / "usr/bin/qemu-system-x86_64", "scripts/fetch-qemu10")):
        if not needed.exists():
            sys.exit(f"pvshim_boot: {needed} is missing: run {how}")
    qemu, qemu_env = qemu_argv()
    # A daemon already running (XENOPUS_RUN_DIR set, e.g. started ahead where its start-up
    # is slow) is used as it is and no warm-up run is needed.
    running = os.environ.get("XENOPUS_RUN_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XENOPUS_RUN_DIR=running or str(Path(tmp) / "run"))
        xen_cmd = xenopus_argv(Path(tmp))
        xen, peer = [], []
        try:
            if not running:
                first = timed(xen_cmd, env)
                print(f"xenopus first run (starts the daemon): {first[0]:.1f} s to the"
                      f" result, {first[1]:.1f} s to exit: {first[2]}", flush=True)
            for _ in range(args.runs):
                xen.append(timed(xen_cmd, env))
                peer.append(timed(qemu, qemu_env))
                print(f"xenopus {xen[-1][0]:.1f} s ({xen[-1][2]}); "
                      f"QEMU 10 {peer[-1][0]:.1f} s ({peer[-1][2]})", flush=True)
        finally:
            if not running:
                subprocess.run([*xenopus_command(), "daemon", "--stop"], env=env, check=False)
    xr, xe = (statistics.median(r[i] for r in xen) for i in (0, 1))
    qr, qe = (statistics.median(r[i] for r in peer) for i in (0, 1))
    print(f"\npvhello behind Xen's PV shim, {MEMORY_MIB} MiB, 1 vCPU, median of {args.runs}:"
          " seconds from the command's start")
    print("| | xenopus result / exit | QEMU 10 (Xen emulation) result / exit | ratio (result) |")
    print("|---|---|---|---|")
    print(f"| shim + pvhello | {xr:.1f} / {xe:.1f} | {qr:.1f} / {qe:.1f} | {xr / qr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
