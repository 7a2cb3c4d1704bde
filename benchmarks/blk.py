"""virtio-blk benchmark: the same polling guest on the same raw image under xenopus and QEMU.

    python benchmarks/blk.py [--runs N] [--quick] [--cache writeback|none]

The guest is guests/out/vblk.elf in benchmark mode (`bench=seq|rand rw=read|write bs= qd=
ops=`): it drives queue 0 of the virtio-blk function from ring 3 by polling the used ring,
with interrupts off (VRING_AVAIL_F_NO_INTERRUPT), so the guest's own cost is native and the
figures measure the device backends. It times the transfer itself (TSC) and prints
`bench: ... MiB/s=M IOPS=I errors=E`; boot and shutdown are outside the measurement.

Workloads: sequential 1 MiB at queue depth 4 and random 4 KiB at queue depth 32, read and
write. One image (256 MiB of random bytes, so no read hits a hole) in a temporary directory
serves every run of both. Each repetition runs every workload once under each, the order of
the two alternating; the table shows medians with their spread and the ratio xenopus/QEMU.

Caching is the same on both sides:
- writeback (default): the host page cache; xenopus's default, QEMU `cache=writeback`.
- none: O_DIRECT; xenopus's `direct-io-safe` disk flag, QEMU `cache=none`.

- xenopus: `xenopus create -c -F` of a temporary xl.cfg (memory 256, one vCPU, the disk as
  `disk = ['<image>,raw,vda,rw']`), with its own XENOPUS_RUN_DIR; the daemon is stopped at
  the end.
- QEMU: microvm with a PCIe host bridge, `virtio-blk-pci` (modern only) on the same image.

A run counts only if the guest passed: every op completed with status OK. A run that did
not is retried (up to --attempts times) and counted in the `fail` column; `n` is the number
of runs that passed and make up the median. (Failed xenopus runs with more completions than
requests were a device bug — used.idx published with struct.pack_into, which zeroes the
field before writing it byte by byte — fixed in devices/virtio/queue.py; no CPU pinning is
needed on either side.)
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
import threading
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "vblk.elf"
QEMU = "qemu-system-x86_64"
MiB = 1 << 20
IMAGE_SIZE = 256 * MiB
MEMORY_MIB = 256
RUN_TIMEOUT = 300.0
# On nested KVM without hardware support underneath, QEMU 7.2's `-cpu host` aborts writing
# IA32_ARCH_CAPABILITIES (MSR 0x10a); leaving that feature out is the usual workaround.
QEMU_MSR_FAILURE = b"failed to set MSR 0x10a"
BENCH_LINE = re.compile(
    rb"bench: (\w+) (\w+) bs=(\d+) qd=(\d+) ops=(\d+) bytes=(\d+) us=(\d+) "
    rb"MiB/s=([\d.]+) IOPS=(\d+) errors=(\d+)"
)


@dataclass(frozen=True)
class Workload:
    label: str
    mode: str  # seq | rand
    rw: str  # read | write
    bs: int
    qd: int
    ops: int

    def cmdline(self) -> str:
        return f"bench={self.mode} rw={self.rw} bs={self.bs} qd={self.qd} ops={self.ops}"


def workloads(quick: bool) -> list[Workload]:
    # Full runs time at least ~0.3 s of transfer per workload here (4 GiB of 1 MiB, 100k of
    # 4 KiB), so boot-time noise and the TSC calibration's error stay small against it.
    seq_ops, rand_ops = (256, 10000) if quick else (4096, 100000)
    return [
        Workload("seq read 1 MiB qd4", "seq", "read", MiB, 4, seq_ops),
        Workload("seq write 1 MiB qd4", "seq", "write", MiB, 4, seq_ops),
        Workload("rand read 4 KiB qd32", "rand", "read", 4096, 32, rand_ops),
        Workload("rand write 4 KiB qd32", "rand", "write", 4096, 32, rand_ops),
    ]


@dataclass
class Result:
    mib_s: float
    iops: int


@dataclass
class Cell:
    results: list[Result] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class RunFailed(Exception):
    pass


def run(cmd: list[str], env: dict[str, str]) -> tuple[bytes, bytes, int]:
    """Run `cmd` to its exit with stdin from /dev/null: (stdout, stderr, exit status)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env)
        watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)  # a hung run fails, not hangs
        watchdog.start()
        try:
            out, _ = proc.communicate()
        finally:
            watchdog.cancel()
        err.seek(0)
        return out, err.read(), proc.returncode


def parse(name: str, w: Workload, out: bytes, err: bytes, code: int) -> Result:
    m = BENCH_LINE.search(out)
    passed = b"RESULT: PASS vblk bench" in out
    if code != 0 or m is None or not passed:
        tail = (out[-1500:] + b"\n--- stderr ---\n" + err[-1500:]).decode(errors="replace")
        raise RunFailed(f"{name} {w.label}: exit status {code}, "
                        f"{'no bench line' if m is None else 'guest FAIL'}:\n{tail}")
    ops, errors = int(m.group(5)), int(m.group(10))
    if ops != w.ops or errors:
        raise RunFailed(f"{name} {w.label}: {m.group(0).decode()}")
    return Result(float(m.group(8)), int(m.group(9)))


class Xenopus:
    def __init__(self, tmp: Path, image: Path, direct: bool):
        self.run_dir = tmp / "run"
        self.env = dict(os.environ, XENOPUS_RUN_DIR=str(self.run_dir))
        self.cmd = xenopus_command()
        self.cfg = tmp / "blk.cfg"
        flags = "direct-io-safe, " if direct else ""
        self.disk = f"format=raw, vdev=vda, access=rw, {flags}target={image}"

    def config_text(self, w: Workload) -> str:
        return "\n".join([
            'name = "blk-bench"',
            f'kernel = "{GUEST}"',
            f"memory = {MEMORY_MIB}",
            'on_reboot = "destroy"',
            f"disk = [ '{self.disk}' ]",
            f'cmdline = "{w.cmdline()}"',
        ]) + "\n"

    def run(self, w: Workload) -> Result:
        self.cfg.write_text(self.config_text(w))
        return parse("xenopus", w, *run([*self.cmd, "create", "-c", "-F", str(self.cfg)], self.env))

    def stop(self) -> None:
        subprocess.run([*self.cmd, "daemon", "--stop"], env=self.env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


class Qemu:
    def __init__(self, image: Path, direct: bool):
        self.cpu = "host"
        self.drive = (f"file={image},format=raw,if=none,id=d0,"
                      f"cache={'none' if direct else 'writeback'}")

    def argv(self, w: Workload) -> list[str]:
        return [
            QEMU, "-M", "microvm,pcie=on,rtc=on,acpi=on", "-accel", "kvm", "-cpu", self.cpu,
            "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", str(GUEST), "-append", w.cmdline(),
            "-drive", self.drive, "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
        ]

    def detect_cpu(self, w: Workload) -> None:
        _, err, code = run(self.argv(w), dict(os.environ))
        if code != 0 and QEMU_MSR_FAILURE in err:
            self.cpu = "host,-arch-capabilities"
            print(f"blk: this KVM refuses MSR 0x10a; running QEMU with -cpu {self.cpu}")

    def run(self, w: Workload) -> Result:
        return parse("qemu", w, *run(self.argv(w), dict(os.environ)))


def make_image(path: Path) -> None:
    """IMAGE_SIZE bytes of random data (every block allocated, nothing cached as zero)."""
    with open(path, "wb") as f:
        for _ in range(IMAGE_SIZE // MiB):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())


def measure(engine, w: Workload, cell: Cell, attempts: int) -> None:
    for _ in range(attempts):
        try:
            cell.results.append(engine.run(w))
            return
        except RunFailed as e:
            cell.failures.append(str(e))


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return f"{'-':>9} {'':>19}"
    med = statistics.median(values)
    return f"{med:9{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]".ljust(29)


def report(ws: list[Workload], xen: dict[Workload, Cell], qemu: dict[Workload, Cell],
           runs: int, cache: str) -> None:
    print(f"\nvirtio-blk, {GUEST.relative_to(ROOT)} polling from ring 3, {IMAGE_SIZE // MiB} MiB "
          f"raw image, cache={cache}; {runs} runs each, interleaved; median [min-max]\n")
    head = f"{'workload':<24}{'':<9}{'MiB/s':>9} {'':<19}{'IOPS':>9} {'':<19}{'n':>3}{'fail':>5}"
    print(head)
    print("-" * len(head))
    for w in ws:
        for name, cell in (("xenopus", xen[w]), ("qemu", qemu[w])):
            label = w.label if name == "xenopus" else ""
            mib = spread([r.mib_s for r in cell.results], ".0f")
            iops = spread([float(r.iops) for r in cell.results], ".0f")
            print(f"{label:<24}{name:<9}{mib}{iops}{len(cell.results):>3}{len(cell.failures):>5}")
    print("\nratio xenopus / qemu (medians; > 1: xenopus faster)")
    for w in ws:
        x, q = xen[w].results, qemu[w].results
        if x and q:
            ratio = statistics.median(r.iops for r in x) / statistics.median(r.iops for r in q)
            print(f"  {w.label:<24}{ratio:6.2f}")
        else:
            print(f"  {w.label:<24}{'-':>6}  (no passing run on one side)")
    failures = [f for cell in (*xen.values(), *qemu.values()) for f in cell.failures]
    if failures:
        print(f"\n{len(failures)} failed run(s) (retried, not counted); the first:\n{failures[0]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, help="measured runs of each workload (default 5; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="shorter workloads and 3 runs")
    p.add_argument("--cache", choices=("writeback", "none"), default="writeback",
                   help="host page cache (writeback, default) or O_DIRECT (none) on both sides")
    p.add_argument("--attempts", type=int, default=3, help="tries per run before giving up")
    args = p.parse_args()
    runs = args.runs if args.runs is not None else (3 if args.quick else 5)
    if runs < 1 or args.attempts < 1:
        p.error("--runs and --attempts must be at least 1")
    if shutil.which(QEMU) is None:
        subprocess.run([str(ROOT / "scripts" / "install-deps")], check=True)
    build_guest(GUEST)
    ws = workloads(args.quick)
    direct = args.cache == "none"
    tmp = Path(tempfile.mkdtemp(prefix="xenopus-blk-"))
    image = tmp / "disk.img"
    xen_engine = Xenopus(tmp, image, direct)
    try:
        make_image(image)
        qemu_engine = Qemu(image, direct)
        qemu_engine.detect_cpu(Workload("probe", "seq", "read", MiB, 1, 1))
        xen: dict[Workload, Cell] = {w: Cell() for w in ws}
        qemu: dict[Workload, Cell] = {w: Cell() for w in ws}
        # Warm-up, not counted: starts xenopus's daemon and zygote, and faults the image in.
        measure(xen_engine, ws[0], Cell(), args.attempts)
        measure(qemu_engine, ws[0], Cell(), args.attempts)
        print(f"image {image}; {runs} runs of {len(ws)} workloads each", flush=True)
        for i in range(runs):
            for j, w in enumerate(ws):
                # Alternate which goes first, so neither always runs on a cache the other warmed.
                order = [(xen_engine, xen), (qemu_engine, qemu)]
                if (i + j) % 2:
                    order.reverse()
                for engine, cells in order:
                    measure(engine, w, cells[w], args.attempts)
                print(".", end="", flush=True)
        print()
    finally:
        xen_engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the 256 MiB image goes even on failure
    report(ws, xen, qemu, runs, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
