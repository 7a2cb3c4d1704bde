"""Linux boot benchmark: Debian's kernel to userspace under xenopus and under QEMU's microvm.

    python benchmarks/linux_boot.py [--runs N] [--release 6.1|6.12]

Needs a KVM that runs Linux (hardware virtualisation: run it inside the nested test
host with `scripts/nested-host -- .venv/bin/python benchmarks/linux_boot.py`) and the
files of scripts/fetch-linux. The same kernel (PVH vmlinux and bzImage), initramfs and
command line (`console=ttyS0 quiet xenopus.check=boot`, Xen off) under
  xenopus  `xenopus create -c -F` of a 256 MiB, 1-vCPU domain;
  QEMU     `qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256`.
Two times per run, from starting the command: "userspace" when the guest's /init prints
its first line, "off" when the command has exited after the guest's power-off (QEMU
microvm's ACPI power-off, xenopus's on_poweroff = "destroy"). Runs alternate; the first
xenopus run also starts the daemon and is not counted.
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
from pathlib import Path

from common import ROOT, timed_run, xenopus_command

LINUX = ROOT / "linux"
RELEASES = {"6.1": LINUX, "6.12": LINUX / "6.12"}
IMAGES = {"pvh": "vmlinux", "bzimage": "vmlinuz"}
CMDLINE = "console=ttyS0 quiet xenopus.check=boot"
USERSPACE = b"xenopus-init: userspace"
PASS = b"RESULT: PASS boot"
MEMORY_MIB = 256
RUN_TIMEOUT = 600.0
QEMU = "qemu-system-x86_64"


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds to the userspace line, seconds to the command's exit)."""
    userspace, off, seen = timed_run(argv, re.compile(re.escape(USERSPACE)), RUN_TIMEOUT, env)
    if userspace is None or PASS not in seen:
        sys.exit(f"linux_boot: no boot to userspace under {argv[0]}:\n"
                 f"{seen[-3000:].decode(errors='replace')}")
    return userspace, off


def xenopus_argv(tmp: Path, kernel: Path, initramfs: Path, image: str) -> list[str]:
    cfg = tmp / f"bench-{image}.cfg"
    cfg.write_text(
        f'name = "bench-{image}"\ntype = "pvh"\nmemory = {MEMORY_MIB}\nvcpus = 1\n'
        f'kernel = "{kernel}"\nramdisk = "{initramfs}"\ncmdline = "{CMDLINE}"\n'
        'xen_platform = 0\non_poweroff = "destroy"\non_reboot = "destroy"\n'
        'on_crash = "destroy"\n'
    )
    return [*xenopus_command(), "create", "-c", "-F", str(cfg)]


def qemu_argv(kernel: Path, initramfs: Path) -> list[str]:
    return [QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", str(MEMORY_MIB),
            "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initramfs), "-append", CMDLINE]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=1, help="counted runs of each (default 1)")
    p.add_argument("--release", choices=sorted(RELEASES), default="6.1")
    args = p.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(f"linux_boot: needs {QEMU}")
    base = RELEASES[args.release]
    initramfs = base / "initramfs.cpio"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XENOPUS_RUN_DIR=str(Path(tmp) / "run"))
        rows = []
        try:
            for image, name in IMAGES.items():
                kernel = base / name
                if not kernel.exists():
                    sys.exit(f"linux_boot: {kernel} is missing: run scripts/fetch-linux")
                xen_cmd = xenopus_argv(Path(tmp), kernel, initramfs, image)
                if not rows:
                    first = timed(xen_cmd, env)
                    print(f"xenopus first run (starts the daemon): {first[0]:.1f} s to "
                          f"userspace, {first[1]:.1f} s to exit", flush=True)
                xen, qemu = [], []
                for _ in range(args.runs):
                    xen.append(timed(xen_cmd, env))
                    qemu.append(timed(qemu_argv(kernel, initramfs)))
                    print(f"{image}: xenopus {xen[-1][0]:.1f} s, QEMU {qemu[-1][0]:.1f} s",
                          flush=True)
                rows.append((image, xen, qemu))
        finally:
            subprocess.run([*xenopus_command(), "daemon", "--stop"], env=env, check=False)
    print(f"\nDebian {args.release}, {MEMORY_MIB} MiB, 1 vCPU, median of {args.runs}: "
          "seconds from the command's start")
    print("| image | xenopus userspace / off | QEMU microvm userspace / off | ratio (userspace) |")
    print("|---|---|---|---|")
    for image, xen, qemu in rows:
        xu, xo = (statistics.median(r[i] for r in xen) for i in (0, 1))
        qu, qo = (statistics.median(r[i] for r in qemu) for i in (0, 1))
        print(f"| {image} | {xu:.1f} / {xo:.1f} | {qu:.1f} / {qo:.1f} | {xu / qu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
