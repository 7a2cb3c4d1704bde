"""PV-through-shim boot benchmark: PV guests behind Xen's PV shim, xenopus vs QEMU 10.

The same guest under xenopus and under QEMU 10's Xen emulation, in the same run.

    python benchmarks/pvshim_boot.py [--guest pvhello|linux|all] [--runs N]

Needs KVM's in-kernel Xen support (KVM_CAP_XEN_HVM: run it inside the nested test host,
`scripts/nested-host -- .venv/bin/python benchmarks/pvshim_boot.py`), the shim
(`make shim`), the test guests (`make guests`), Debian's kernel and initramfs
(`scripts/fetch-linux`) and QEMU 10 (`scripts/fetch-qemu10`; Debian 12's QEMU 7.2 has no
Xen emulation). The same shim (build/shim/xen-shim, command line "pv-shim
console=xen,pv"), 1 vCPU, and one of these PV guests:
  pvhello  guests/out/pv/pvhello.elf, 128 MiB; done at its RESULT line;
  linux    Debian 6.1's bzImage (linux/vmlinuz, CONFIG_XEN_PV) with linux/initramfs.cpio,
           512 MiB, "console=hvc0 ... xenopus.check=boot"; done at the check's RESULT line
           (userspace, a second of uptime) and at power-off.
  xenopus  `xenopus create -c -F` of `type = "pv"`, `pvshim = 1`, the guest as `kernel`
           (and `ramdisk`);
  QEMU     `qemu-system-x86_64 -accel kvm,xen-version=0x40011,kernel-irqchip=split -M pc
           -kernel xen-shim -append ... -device xen-console`, the guest given as -initrd:
           QEMU boots the shim (a 32-bit ELF with a multiboot header) as a multiboot
           kernel, so -initrd takes modules with their command lines, "KERNEL ARGS,RAMDISK"
           (docs: QEMU's -initrd for multiboot), module 0 the PV kernel as libxl orders them.
Two times per run, from starting the command: "result" when the RESULT line arrives on the
PV console, "exit" when the command has exited after the guest's SCHEDOP_shutdown. Runs
alternate; the first xenopus run also starts the daemon and is not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, timed_run, xenopus_command

SHIM = ROOT / "build" / "shim" / "xen-shim"
QEMU10 = ROOT / "linux" / "qemu10" / "root"
SHIM_CMDLINE = "pv-shim console=xen,pv"
RUN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Guest:
    """A PV guest for the shim: its kernel, ramdisk and command line, and its result line."""

    name: str
    kernel: Path
    ramdisk: Path | None
    cmdline: str
    memory_mib: int
    result: re.Pattern[bytes]
    needs: str  # what makes its files


GUESTS = {
    "pvhello": Guest("pvhello", ROOT / "guests" / "out" / "pv" / "pvhello.elf", None, "", 128,
                     re.compile(rb"RESULT: (PASS|FAIL) pvhello[^\r\n]*"), "make guests"),
    "linux": Guest("linux", ROOT / "linux" / "vmlinuz", ROOT / "linux" / "initramfs.cpio",
                   "console=hvc0 loglevel=5 panic=-1 xenopus.check=boot", 512,
                   re.compile(rb"RESULT: (PASS|FAIL) boot[^\r\n]*"), "scripts/fetch-linux"),
}


def timed(guest: Guest, argv: list[str],
          env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(seconds to the RESULT line, seconds to the command's exit, the RESULT line)."""
    result_at, done, seen = timed_run(argv, guest.result, RUN_TIMEOUT, env)
    m = guest.result.search(seen)
    if result_at is None or m is None:
        sys.exit(f"pvshim_boot: no RESULT line from {guest.name} under {argv[0]}:\n"
                 f"{seen[-3000:].decode(errors='replace')}")
    return result_at, done, m.group(0).decode(errors="replace").strip()


def xenopus_argv(guest: Guest, tmp: Path) -> list[str]:
    cfg = tmp / f"bench-pvshim-{guest.name}.cfg"
    cfg.write_text(
        f'name = "bench-pvshim-{guest.name}"\ntype = "pv"\npvshim = 1\n'
        f'pvshim_path = "{SHIM}"\npvshim_cmdline = "{SHIM_CMDLINE}"\n'
        f'memory = {guest.memory_mib}\nvcpus = 1\nkernel = "{guest.kernel}"\n'
        + (f'ramdisk = "{guest.ramdisk}"\n' if guest.ramdisk else "")
        + (f'extra = "{guest.cmdline}"\n' if guest.cmdline else "")
        + 'on_poweroff = "destroy"\non_reboot = "destroy"\non_crash = "destroy"\n'
    )
    return [*xenopus_command(), "create", "-c", "-F", str(cfg)]


def qemu_argv(guest: Guest) -> tuple[list[str], dict[str, str]]:
    # Multiboot modules: "FILE ARGS" each, comma-separated (a comma in ARGS doubled).
    modules = [f"{guest.kernel} {guest.cmdline}".strip().replace(",", ",,")]
    if guest.ramdisk:
        modules.append(str(guest.ramdisk))
    env = dict(os.environ, QEMU_MODULE_DIR=str(QEMU10 / "usr/lib/x86_64-linux-gnu/qemu"))
    argv = [str(QEMU10 / "usr/bin/qemu-system-x86_64"),
            "-L", str(QEMU10 / "usr/share/qemu"), "-L", str(QEMU10 / "usr/share/seabios"),
            "-accel", "kvm,xen-version=0x40011,kernel-irqchip=split", "-M", "pc",
            "-cpu", "host", "-m", str(guest.memory_mib), "-smp", "1", "-nodefaults",
            "-no-reboot", "-display", "none", "-chardev", "stdio,id=pvcon",
            "-device", "xen-console,chardev=pvcon",
            "-kernel", str(SHIM), "-initrd", ",".join(modules), "-append", SHIM_CMDLINE]
    return argv, env


def bench(guest: Guest, runs: int, env: dict[str, str], tmp: Path,
          warm_up: bool) -> tuple[list[tuple[float, float, str]], list[tuple[float, float, str]]]:
    qemu, qemu_env = qemu_argv(guest)
    xen_cmd = xenopus_argv(guest, tmp)
    if warm_up:
        first = timed(guest, xen_cmd, env)
        print(f"xenopus first run (starts the daemon): {first[0]:.1f} s to the"
              f" result, {first[1]:.1f} s to exit: {first[2]}", flush=True)
    xen, peer = [], []
    for _ in range(runs):
        xen.append(timed(guest, xen_cmd, env))
        peer.append(timed(guest, qemu, qemu_env))
        print(f"{guest.name}: xenopus {xen[-1][0]:.1f} s ({xen[-1][2]}); "
              f"QEMU 10 {peer[-1][0]:.1f} s ({peer[-1][2]})", flush=True)
    return xen, peer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--guest", choices=[*GUESTS, "all"], default="all",
                   help="the PV guest behind the shim (default all)")
    p.add_argument("--runs", type=int, default=1, help="counted runs of each (default 1)")
    args = p.parse_args()
    guests = list(GUESTS.values()) if args.guest == "all" else [GUESTS[args.guest]]
    needed = [(SHIM, "make shim"), (QEMU10 / "usr/bin/qemu-system-x86_64", "scripts/fetch-qemu10")]
    for g in guests:
        needed += [(f, g.needs) for f in (g.kernel, g.ramdisk) if f is not None]
    for path, how in needed:
        if not path.exists():
            sys.exit(f"pvshim_boot: {path} is missing: run {how}")
    # A daemon already running (XENOPUS_RUN_DIR set, e.g. started ahead where its start-up
    # is slow) is used as it is and no warm-up run is needed.
    running = os.environ.get("XENOPUS_RUN_DIR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XENOPUS_RUN_DIR=running or str(Path(tmp) / "run"))
        try:
            for n, g in enumerate(guests):
                xen, peer = bench(g, args.runs, env, Path(tmp), warm_up=not running and n == 0)
                xr, xe = (statistics.median(r[i] for r in xen) for i in (0, 1))
                qr, qe = (statistics.median(r[i] for r in peer) for i in (0, 1))
                rows.append((g, xr, xe, qr, qe))
        finally:
            if not running:
                subprocess.run([*xenopus_command(), "daemon", "--stop"], env=env, check=False)
    print(f"\nPV guests behind Xen's PV shim, 1 vCPU, median of {args.runs}:"
          " seconds from the command's start")
    print("| guest | xenopus result / exit | QEMU 10 (Xen emulation) result / exit |"
          " ratio (result) |")
    print("|---|---|---|---|")
    for g, xr, xe, qr, qe in rows:
        print(f"| shim + {g.name}, {g.memory_mib} MiB | {xr:.1f} / {xe:.1f} |"
              f" {qr:.1f} / {qe:.1f} | {xr / qr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
