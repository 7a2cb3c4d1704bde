"""Linux I/O benchmark: disk and network throughput measured inside Debian's kernel, under
xenopus and under QEMU, on the same guest in the same run (issues 8 and 13).

    python benchmarks/linux_io.py [--quick] [--only virtio|xen] [--runs N] [--mib N]
                                  [--secs S] [--net-mib N] [--no-net]

Needs a KVM that runs Linux (run it inside the nested test host:
`scripts/nested-host -- .venv/bin/python benchmarks/linux_io.py --quick`), root (taps in a
private network namespace), gcc with a static libc (libc6-dev), scripts/fetch-linux's
6.1 kernel and, for the Xen rows, QEMU 10 from scripts/fetch-qemu10.

The guest is Debian's 6.1 PVH vmlinux with linux/initramfs.cpio plus /bin/diskio
(benchmarks/diskio.c, built static here) and /checks/io (tests/linux/guest/checks/io.sh).
Inside it, on a 256 MiB, 1-vCPU guest with a raw disk image in a temporary directory and
a tap whose host end is 10.0.2.2:
  seq write   MIB MiB written to the whole disk in 1 MiB writes, then fsync;
  seq read    the same back with O_DIRECT (checked against what was written);
  rand read   4 KiB O_DIRECT reads at random offsets, queue depth 1, for SECS s;
  TCP         NET_MIB MiB sent by the host (Python, in the namespace) to busybox `nc -l`
              in the guest, timed by the guest from its first byte to the stream's end.
Two transports, each with its peer:
  virtio  xenopus xen_platform = 0 (virtio-blk and virtio-net over PCI), `console=ttyS0`;
          QEMU    `qemu-system-x86_64 -M microvm,pcie=on -accel kvm -cpu host` with
                  virtio-blk-pci and virtio-net-pci on a tap (the same transport);
  xen     xenopus xen_platform = 1, xen-blkfront and xen-netfront on our blkback and
                  netback, `console=hvc0`;
          QEMU 10 its Xen emulation (`-accel kvm,xen-version=...`, `-drive if=xen`,
                  `-nic tap,model=xen-net-device`).
Each figure is the median over --runs boots; ratios are xenopus / QEMU (above 1 is
faster here: these are rates). A boot that fails (no complete `RESULT: PASS io`, a wrong
byte count, a timeout) is shown as failed with its console's tail, the other rows still
run, and the exit status is 1.
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
from collections.abc import Callable
from pathlib import Path

from common import (
    LINUX,
    QEMU10,
    ROOT,
    initramfs_with,
    linux_guest_config,
    qemu10_xen_argv,
    timed_run,
    xenopus_command,
)

SOURCE = ROOT / "benchmarks" / "diskio.c"
CHECK = ROOT / "tests" / "linux" / "guest" / "checks" / "io.sh"
KERNEL = LINUX / "vmlinux"
INITRAMFS = LINUX / "initramfs.cpio"
QEMU = "qemu-system-x86_64"
MEMORY_MIB = 256
GUEST_IP, HOST_IP, PORT = "10.0.2.15", "10.0.2.2", 5555
TAP = "xio0"
NS = f"xenopus-io-{os.getpid()}"
RUN_TIMEOUT = 1200.0
CONSOLES = {"virtio": "console=ttyS0 quiet panic=-1", "xen": "console=hvc0 quiet panic=-1"}
DISKS = {"virtio": "/dev/vda", "xen": "/dev/xvda"}
MEASURE = re.compile(rb"xenopus-io: (\S+) (\d+) (B|ops) ([0-9.]+) s")
PASS = re.compile(rb"RESULT: PASS io ")
# (name in diskio's lines, row label, unit)
MEASURES = [("seq-write", "seq write", "MB/s"), ("seq-read", "seq read", "MB/s"),
            ("rand-read", "4 KiB rand read", "IOPS"), ("tcp-recv", "TCP host->guest", "MB/s")]
# The host's sender: it connects again while the guest boots (the guest listens only after
# its disk measurements, when the host cannot see), then sends and closes.
SENDER = f"""
import socket, sys, time
size = int(sys.argv[1]) << 20
deadline = time.monotonic() + {RUN_TIMEOUT}
while True:
    try:
        s = socket.create_connection(("{GUEST_IP}", {PORT}), timeout=10)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(None)
s.sendall(bytes(size))
s.close()
print(size, flush=True)
"""


class RunFailed(Exception):
    """One boot gave no complete measurement; the message says why."""


def say(msg: str) -> None:
    print(f"linux_io: {msg}", flush=True)


def diskio_binary(tmp: Path) -> Path:
    """benchmarks/diskio.c built static: build/diskio where the checkout is writable (kept
    while newer than its source), else in `tmp` (the nested host's checkout is read-only)."""
    cached = ROOT / "build" / "diskio"
    if cached.exists() and cached.stat().st_mtime >= SOURCE.stat().st_mtime:
        return cached
    out = cached if os.access(ROOT, os.W_OK) else tmp / "diskio"
    out.parent.mkdir(exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    done = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(partial), str(SOURCE)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"linux_io: building {SOURCE.name} (gcc -static; needs libc6-dev) failed:\n"
                 f"{done.stderr}")
    os.replace(partial, out)
    return out


def ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


def host_end(create: bool) -> None:
    """The tap's host end: 10.0.2.2/24, up (`create`: make the tap, for QEMU to open)."""
    if create:
        subprocess.run(["ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap"], check=True)
    subprocess.run(["ip", "-n", NS, "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", TAP, "up"], check=True)


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace):
        self.tmp = tmp
        self.args = args
        self.env = dict(os.environ, XENOPUS_RUN_DIR=str(tmp / "run"))
        self.initramfs = initramfs_with(INITRAMFS, tmp / "initramfs.cpio", {
            "bin/diskio": (diskio_binary(tmp).read_bytes(), 0o755),
            "checks/io": (CHECK.read_bytes(), 0o755)})
        self.runs = 0

    def cmdline(self, transport: str) -> str:
        net = "" if self.args.no_net else f" xenopus.ip={GUEST_IP}/24"
        return (f"{CONSOLES[transport]} xenopus.check=io xenopus.disk={DISKS[transport]} "
                f"xenopus.mib={self.args.mib} xenopus.secs={self.args.secs}{net}")

    def disk(self) -> Path:
        """A fresh sparse raw image, a little larger than what the guest writes."""
        image = self.tmp / "disk.img"
        image.unlink(missing_ok=True)
        with image.open("wb") as f:
            f.truncate((self.args.mib + 1) << 20)
        return image

    def measure(self, who: str, argv: list[str], before: Callable[[], None] | None = None,
                started: Callable[[], None] | None = None) -> dict[str, float]:
        """One boot: `before()` (set up the host side), the sender, then `argv` to its exit
        (`started()` once it runs). Its rates by measurement name."""
        self.runs += 1
        sender = None
        try:
            if before is not None:
                before()
            if not self.args.no_net:
                sender = subprocess.Popen(ns(sys.executable, "-c", SENDER, str(self.args.net_mib)),
                                          stdout=subprocess.PIPE, text=True)
            _, seconds, seen = timed_run(ns(*argv), PASS, RUN_TIMEOUT, self.env, started)
        finally:
            if sender is not None:
                sender.kill()
                sender.wait()
            subprocess.run(["ip", "-n", NS, "link", "del", TAP], capture_output=True)
        (self.tmp / f"console-{self.runs}.log").write_bytes(seen)
        if self.args.consoles is not None:
            self.args.consoles.mkdir(parents=True, exist_ok=True)
            (self.args.consoles / f"{self.runs}-{who.replace(' ', '-')}.log").write_bytes(seen)
        found = {m.group(1).decode(): m for m in MEASURE.finditer(seen)}
        if not PASS.search(seen) or not all(name in found for name, _, _ in self.wanted()):
            raise RunFailed(f"{who}: no complete `RESULT: PASS io` run:\n"
                            f"{seen[-3000:].decode(errors='replace')}")
        rates = {}
        for name, m in found.items():
            amount, unit, secs = int(m.group(2)), m.group(3), float(m.group(4))
            if name == "tcp-recv" and amount != self.args.net_mib << 20:
                raise RunFailed(f"{who}: the guest received {amount} bytes of "
                                f"{self.args.net_mib << 20}")
            rates[name] = amount / secs / (1e6 if unit == b"B" else 1)
        shown = ", ".join(f"{label} {rates[name]:.1f} {unit}" for name, label, unit in self.wanted())
        say(f"{who}: {shown} ({seconds:.0f} s boot to exit)")
        return rates

    def wanted(self) -> list[tuple[str, str, str]]:
        return [m for m in MEASURES if not (self.args.no_net and m[0] == "tcp-recv")]

    def xenopus(self, transport: str) -> dict[str, float]:
        name = f"io-{transport}"
        xen = transport == "xen"
        vdev = "xvda" if xen else "vda"
        extra = f'disk = ["format=raw, vdev={vdev}, access=rw, target={self.disk()}"]\n'
        if not self.args.no_net:
            extra += f'vif = ["{"model=xen, " if xen else ""}vifname={TAP}"]\n'
        cfg = linux_guest_config(self.tmp / f"{name}.cfg", name, KERNEL, self.initramfs,
                                 self.cmdline(transport), memory=MEMORY_MIB,
                                 xen_platform=int(xen), extra=extra)
        xenopus = [*xenopus_command()]

        def create_paused() -> None:  # the tap exists once the domain does
            done = subprocess.run(ns(*xenopus, "create", "-q", "-p", str(cfg)), env=self.env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RunFailed(f"xenopus {transport}: create failed: {done.stderr}")
            if not self.args.no_net:
                host_end(create=False)

        def unpause() -> None:
            subprocess.run(ns(*xenopus, "unpause", name), env=self.env, check=True)

        return self.measure(f"xenopus {transport}", [*xenopus, "console", name],
                            before=create_paused, started=unpause)

    def qemu(self, transport: str) -> dict[str, float]:
        image = self.disk()
        net = not self.args.no_net
        if transport == "xen":
            devices = ["-drive", f"file={image},if=xen,format=raw"]
            if net:
                devices += ["-nic", f"tap,model=xen-net-device,ifname={TAP},script=no,downscript=no"]
            argv = qemu10_xen_argv(KERNEL, self.initramfs, self.cmdline(transport),
                                   memory=MEMORY_MIB, devices=tuple(devices))
        else:
            argv = [QEMU, "-M", "microvm,pcie=on", "-accel", "kvm", "-cpu", "host",
                    "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot", "-display", "none",
                    "-serial", "stdio",
                    "-drive", f"file={image},if=none,id=d0,format=raw",
                    "-device", "virtio-blk-pci,drive=d0",
                    *(["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                       "-device", "virtio-net-pci,netdev=n0"] if net else []),
                    "-kernel", str(KERNEL), "-initrd", str(self.initramfs),
                    "-append", self.cmdline(transport)]
        peer = "QEMU 10" if transport == "xen" else "QEMU"
        return self.measure(f"{peer} {transport}", argv,
                            before=(lambda: host_end(create=True)) if net else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (4 MiB disk, 2 s random, 1 MiB TCP), one run")
    p.add_argument("--only", choices=sorted(DISKS), help="one transport only")
    p.add_argument("--runs", type=int, default=1, help="boots of each (default 1)")
    p.add_argument("--mib", type=int, default=16, help="MiB written and read (default 16)")
    p.add_argument("--secs", type=float, default=5.0, help="seconds of random reads (default 5)")
    p.add_argument("--net-mib", type=int, default=4, help="MiB over TCP (default 4)")
    p.add_argument("--no-net", action="store_true", help="disk only (no tap, no TCP stream)")
    p.add_argument("--consoles", type=Path, metavar="DIR",
                   help="keep each boot's console there (RUN-SIDE-TRANSPORT.log)")
    args = p.parse_args()
    if args.quick:
        args.mib, args.secs, args.net_mib, args.runs = 4, 2.0, 1, 1
    if min(args.runs, args.mib, args.net_mib) < 1 or args.secs <= 0:
        p.error("--runs, --mib, --net-mib and --secs must be positive")
    transports = [args.only] if args.only else ["virtio", "xen"]
    for needed, why in ((KERNEL, "scripts/fetch-linux"), (INITRAMFS, "scripts/fetch-linux")):
        if not needed.exists():
            sys.exit(f"linux_io: {needed} is missing: run {why}")
    if "virtio" in transports and shutil.which(QEMU) is None:
        sys.exit(f"linux_io: needs {QEMU}")
    if "xen" in transports and not QEMU10.exists():
        sys.exit(f"linux_io: {QEMU10} is missing: run scripts/fetch-qemu10")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["ip", "netns", "add", NS], check=True)
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        bench = Bench(Path(tmp), args)
        try:
            for _ in range(args.runs):
                for transport in transports:
                    for side, run in (("xenopus", bench.xenopus), ("qemu", bench.qemu)):
                        try:
                            results.setdefault((transport, side), []).append(run(transport))
                        # timed_run ends a command that outlives RUN_TIMEOUT with SystemExit
                        except (RunFailed, SystemExit) as e:
                            failed.append(str(e))
                            say(f"FAILED {e}")
        finally:
            subprocess.run(ns(*xenopus_command(), "daemon", "--stop"), env=bench.env,
                           capture_output=True)
            subprocess.run(["ip", "netns", "del", NS], check=False)
    print(f"\nDebian 6.1 PVH, {MEMORY_MIB} MiB, 1 vCPU; {args.mib} MiB sequential, "
          f"{args.secs:g} s of 4 KiB random reads (QD1), {args.net_mib} MiB TCP; "
          f"median of {args.runs}")
    print("| transport | measure | xenopus | QEMU | ratio |")
    print("|---|---|---|---|---|")
    def median(transport: str, side: str, name: str) -> float | None:
        runs = results.get((transport, side), [])
        return statistics.median(r[name] for r in runs) if runs else None

    for transport in transports:
        peer = "QEMU 10 Xen" if transport == "xen" else "QEMU microvm"
        for name, label, unit in bench.wanted():
            ours, theirs = median(transport, "xenopus", name), median(transport, "qemu", name)
            ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
            shown = [f"{v:.2f}" if v is not None else "failed" for v in (ours, theirs)]
            print(f"| {transport} ({peer}) | {label} {unit} | {shown[0]} | {shown[1]} | {ratio} |")
    for why in failed:
        print(f"\nfailed: {why.splitlines()[0]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
