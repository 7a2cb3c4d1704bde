"""Linux boot benchmark: Debian's kernel to userspace under xenopus and under QEMU.

    python benchmarks/linux_boot.py [--runs N] [--release 6.1|6.12] [--xen]

Needs a KVM that runs Linux (hardware virtualisation: run it inside the nested test
host with `scripts/nested-host -- .venv/bin/python benchmarks/linux_boot.py`) and the
files of scripts/fetch-linux. The same kernel, initramfs and command line under both.
Plain (Xen off; `console=ttyS0 quiet xenopus.check=boot`; PVH vmlinux and bzImage):
  xenopus  `xenopus create -c -F` of a 256 MiB, 1-vCPU domain, xen_platform = 0;
  QEMU     `qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256`.
With --xen, Xen-aware (`console=hvc0 quiet xenopus.check=boot`, PVH vmlinux; issue 13):
  xenopus  xen_platform = 1, once on the trap path (xen_hypercall_path = "trap"; only for
           a kernel with a hypercall page, which XSA-466 took from Debian's 6.1 and 6.12)
           and once on the path the host offers ("auto": the in-kernel one where KVM has
           KVM_CAP_XEN_HVM);
  QEMU 10  its Xen emulation (scripts/fetch-qemu10), `-accel kvm,xen-version=...,
           kernel-irqchip=split -M pc -cpu host -m 256` with xen-console on hvc0.
Two times per run, from starting the command: "userspace" when the guest's /init prints
its first line, "off" when the command has exited after the guest's power-off. Runs
alternate; the first xenopus run also starts the daemon and is not counted.
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

from common import LINUX, QEMU10, linux_guest_config, qemu10_xen_argv, timed_run, xenopus_command
from xenopus.boot.elf import ElfFile
from xenopus.boot.pvh import xen_notes
from xenopus.xen.abi import XEN_ELFNOTE_HYPERCALL_PAGE

RELEASES = {"6.1": LINUX, "6.12": LINUX / "6.12"}
IMAGES = {"pvh": "vmlinux", "bzimage": "vmlinuz"}
CMDLINE = "console=ttyS0 quiet xenopus.check=boot"
XEN_CMDLINE = "console=hvc0 quiet xenopus.check=boot"
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


def xenopus_argv(tmp: Path, kernel: Path, initramfs: Path, row: str) -> list[str]:
    """`xenopus create` of the guest for `row`: an image name (plain) or "xen-PATH"."""
    name = f"bench-{row}"
    if row.startswith("xen-"):
        cfg = linux_guest_config(tmp / f"{name}.cfg", name, kernel, initramfs, XEN_CMDLINE,
                                 memory=MEMORY_MIB, xen_platform=1,
                                 extra=f'xen_hypercall_path = "{row[4:]}"\n')
    else:
        cfg = linux_guest_config(tmp / f"{name}.cfg", name, kernel, initramfs, CMDLINE,
                                 memory=MEMORY_MIB)
    return [*xenopus_command(), "create", "-c", "-F", str(cfg)]


def qemu_argv(kernel: Path, initramfs: Path) -> list[str]:
    return [QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", str(MEMORY_MIB),
            "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initramfs), "-append", CMDLINE]


def has_hypercall_page(image: Path) -> bool:
    """Whether the PVH image asks for a hypercall page (xen/include/public/elfnote.h)."""
    with image.open("rb") as f:
        return XEN_ELFNOTE_HYPERCALL_PAGE in xen_notes(ElfFile(f))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=1, help="counted runs of each (default 1)")
    p.add_argument("--release", choices=sorted(RELEASES), default="6.1")
    p.add_argument("--xen", action="store_true",
                   help="Xen-aware boots (hvc0) beside QEMU 10's Xen emulation")
    args = p.parse_args()
    peer = QEMU10 if args.xen else shutil.which(QEMU)
    if peer is None or not Path(peer).exists():
        sys.exit(f"linux_boot: needs {QEMU10 if args.xen else QEMU}"
                 f"{' (scripts/fetch-qemu10)' if args.xen else ''}")
    base = RELEASES[args.release]
    initramfs = base / "initramfs.cpio"
    if args.xen:  # row -> kernel; the trap path needs a hypercall page
        image = base / IMAGES["pvh"]
        kernels = {"xen-auto": image}
        if has_hypercall_page(image):
            kernels["xen-trap"] = image
        else:  # XSA-466: xen_hypercall_amd/intel issue vmmcall/vmcall themselves
            print(f"linux_boot: no trap-path row: {image} has no XEN_ELFNOTE_HYPERCALL_PAGE "
                  "note (XSA-466), so only the in-kernel path serves its hypercalls", flush=True)
    else:
        kernels = {image: base / name for image, name in IMAGES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XENOPUS_RUN_DIR=str(Path(tmp) / "run"))
        rows = []
        failed: list[str] = []
        try:
            for row, kernel in kernels.items():
                if not kernel.exists():
                    sys.exit(f"linux_boot: {kernel} is missing: run scripts/fetch-linux")
                xen_cmd = xenopus_argv(Path(tmp), kernel, initramfs, row)
                peer_cmd = (qemu10_xen_argv(kernel, initramfs, XEN_CMDLINE, memory=MEMORY_MIB)
                            if args.xen else qemu_argv(kernel, initramfs))
                if not rows:
                    first = timed(xen_cmd, env)
                    print(f"xenopus first run (starts the daemon): {first[0]:.1f} s to "
                          f"userspace, {first[1]:.1f} s to exit", flush=True)
                xen, qemu = [], []
                try:
                    for _ in range(args.runs):
                        xen.append(timed(xen_cmd, env))
                        qemu.append(timed(peer_cmd))
                        print(f"{row}: xenopus {xen[-1][0]:.1f} s, QEMU {qemu[-1][0]:.1f} s",
                              flush=True)
                except SystemExit as e:  # timed(): no boot, or past RUN_TIMEOUT
                    if not args.xen:
                        raise
                    print(f"{row}: FAILED {e}", flush=True)  # the other path's row still runs
                    failed.append(row)
                    continue
                rows.append((row, xen, qemu))
        finally:
            subprocess.run([*xenopus_command(), "daemon", "--stop"], env=env, check=False)
    print(f"\nDebian {args.release}, {MEMORY_MIB} MiB, 1 vCPU, median of {args.runs}: "
          "seconds from the command's start")
    if args.xen:
        print("| xenopus hypercall path | xenopus userspace / off | QEMU 10 Xen userspace / off "
              "| ratio (userspace) |")
    else:
        print("| image | xenopus userspace / off | QEMU microvm userspace / off | ratio (userspace) |")
    print("|---|---|---|---|")
    for image, xen, qemu in rows:
        xu, xo = (statistics.median(r[i] for r in xen) for i in (0, 1))
        qu, qo = (statistics.median(r[i] for r in qemu) for i in (0, 1))
        print(f"| {image} | {xu:.1f} / {xo:.1f} | {qu:.1f} / {qo:.1f} | {xu / qu:.2f} |")
    for row in failed:
        print(f"| {row} | failed (above) | | |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
