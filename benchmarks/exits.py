"""Port-I/O exit benchmark: one guest `outb` round trip through xenopus's run loop vs C.

    python benchmarks/exits.py [--iterations N] [--repeats R]

The guest (guests/out/exits.elf) reads `iterations=N` from its command line, does N
`outb` to port 0x80 from ring 3 and resets through the i8042. Each side runs it with
iterations=0 and iterations=N; (T_N - T_0) / N is the cost of one exit with the start-up
and shutdown cancelled out. Medians over R repeats, the two sides interleaved.

- xenopus: in this process, through the layers' public API (GuestMemory, load_kernel,
  Bus, Machine) with COM1, the i8042 and a port-0x80 sink, timed from machine.start to
  the stop callback.
- C: benchmarks/exits_ref.c, a minimal KVM VMM built here with gcc. It runs the very
  same boot state: xenopus's loader lays the guest out in a GuestMemory, and we hand the
  C program that RAM plus the entry registers as an image file (a header page, then the
  RAM), so the C side needs no ELF or boot-protocol code. It times from its first
  KVM_RUN to the reset.
"""

from __future__ import annotations

import argparse
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, build_guest
from xenopus.boot import load_kernel
from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.i8042 import I8042
from xenopus.devices.serial import Serial16550
from xenopus.memory import GuestMemory, MiB
from xenopus.vm import Machine, StopReason
from xenopus.vm.cpu import CpuState

GUEST = ROOT / "guests" / "out" / "exits.elf"
C_SOURCE = Path(__file__).with_name("exits_ref.c")
MEMORY = 32 * MiB
RUN_TIMEOUT = 300.0

# The image header exits_ref.c reads (struct image_header): little-endian u64s.
HEADER_SIZE = 4096
HEADER_MAGIC = int.from_bytes(b"XNPSEXIT", "little")
# struct kvm_regs order (linux/kvm.h, arch/x86/include/uapi/asm/kvm.h).
KVM_REGS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
SEGMENT_FIELDS = ["selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g"]


class PostCounter:
    """The port-0x80 sink (a NullDevice that counts), so each run proves its N exits."""

    def __init__(self) -> None:
        self.writes = 0

    def read(self, base: int, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self.writes += 1


def cmdline(iterations: int) -> str:
    return f"iterations={iterations}"


# -- xenopus ---------------------------------------------------------------------------------
def run_xenopus(iterations: int) -> tuple[float, int, str]:
    """One run in this process: seconds from machine.start to the stop callback, the
    port-0x80 writes seen and the guest's serial output."""
    memory = GuestMemory.create(MEMORY)
    try:
        boot = load_kernel(memory, GUEST, cmdline=cmdline(iterations))
        pio, mmio = Bus("pio"), Bus("mmio")
        machine = Machine(memory, 1, pio=pio, mmio=mmio)
        output = bytearray()
        post = PostCounter()
        serial = Serial16550(irq=lambda level: machine.set_irq(platform.COM1_IRQ, level), output=output.extend)
        i8042 = I8042(
            reset=lambda: machine.request_stop(StopReason("reboot", "reset through the i8042")),
            irq_kbd=lambda level: machine.set_irq(platform.I8042_KBD_IRQ, level),
        )
        pio.register(platform.COM1_PORT, platform.COM1_PORT_SIZE, serial, "serial0")
        pio.register(platform.I8042_DATA_PORT, 1, i8042, "i8042-data")
        pio.register(platform.I8042_CMD_PORT, 1, i8042, "i8042-command")
        pio.register(platform.POST_PORT, 1, post, "post")
        timed = run_until_stop(machine, boot.cpu)
        machine.stop()
        machine.close()
    finally:
        memory.close()
    if timed is None:
        sys.exit(f"exits: the xenopus run with {cmdline(iterations)} did not stop in {RUN_TIMEOUT:.0f} s")
    seconds, reason = timed
    if reason.kind != "reboot":
        sys.exit(f"exits: the xenopus run ended in {reason.kind}: {reason.detail}\n{output.decode(errors='replace')}")
    text = output.decode(errors="replace")
    if "RESULT: PASS" not in text:
        sys.exit(f"exits: the guest did not pass under xenopus:\n{text}")
    return seconds, post.writes, text


def run_until_stop(machine: Machine, cpu: CpuState) -> tuple[float, StopReason] | None:
    """Start `machine` and wait for the guest to stop: (seconds from start, why), or None
    after RUN_TIMEOUT."""
    done = threading.Event()
    stop: list[tuple[float, StopReason]] = []

    def on_stop(reason: StopReason) -> None:
        stop.append((time.perf_counter(), reason))
        done.set()

    start = time.perf_counter()
    machine.start(cpu, on_stop)
    if not done.wait(RUN_TIMEOUT):
        return None
    end, reason = stop[0]
    return end - start, reason


# -- C reference -----------------------------------------------------------------------------
def pack_state(cpu: CpuState, ram_size: int) -> bytes:
    regs = dict(cpu.gprs, rsp=cpu.rsp, rip=cpu.rip, rflags=cpu.rflags)
    values = [HEADER_MAGIC, ram_size, *(regs.get(r, 0) for r in KVM_REGS)]
    values += [cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer,
               cpu.gdt_base, cpu.gdt_limit, cpu.idt_base, cpu.idt_limit]
    for seg in (cpu.code, cpu.data, cpu.tss):
        values += [int(getattr(seg, f)) for f in SEGMENT_FIELDS]
    header = struct.pack(f"<{len(values)}Q", *values)
    return header.ljust(HEADER_SIZE, b"\0")


def write_image(path: Path, iterations: int) -> None:
    """The guest as xenopus's loader lays it out, for exits_ref.c to map."""
    with GuestMemory.create(MEMORY) as memory:
        boot = load_kernel(memory, GUEST, cmdline=cmdline(iterations))
        (gpa, size), *_ = memory.ram_ranges()
        if gpa != 0:
            sys.exit(f"exits: guest RAM starts at {gpa:#x}, not 0")
        with open(path, "wb") as f:
            f.write(pack_state(boot.cpu, size))
            f.write(memory.view(0, size))


C_RESULT = re.compile(rb"post=(\d+) io=(\d+) ns=(\d+)")


def run_c(binary: Path, image: Path) -> tuple[float, int, str]:
    out = subprocess.run([str(binary), str(image)], capture_output=True, timeout=RUN_TIMEOUT)
    m = C_RESULT.search(out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"exits: {binary.name} {image.name} failed ({out.returncode}): "
                 f"{out.stderr.decode(errors='replace')}")
    text = out.stdout[:m.start()].decode(errors="replace")
    if "RESULT: PASS" not in text:
        sys.exit(f"exits: the guest did not pass under {binary.name}:\n{text}")
    return int(m.group(3)) / 1e9, int(m.group(1)), text


# -- driver ----------------------------------------------------------------------------------
def per_exit(t0: list[float], tn: list[float], n: int) -> list[float]:
    return [(b - a) / n for a, b in zip(t0, tn, strict=True)]


def prepare(tmp: Path, counts: tuple[int, ...]) -> tuple[Path, dict[int, Path]]:
    """Build this benchmark's guest and the C reference into `tmp`, and write one image per
    iteration count: (the C binary, {count: image})."""
    build_guest(GUEST)
    binary = tmp / "exits_ref"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(C_SOURCE)], check=True)
    images = {k: tmp / f"exits-{k}.img" for k in counts}
    for k, path in images.items():
        write_image(path, k)
    return binary, images


def run_sides(binary: Path, image: Path, iterations: int) -> dict[str, tuple[float, str]]:
    """One run of each side at `iterations`, each checked for its port-0x80 writes:
    {"xenopus" | "c": (seconds, guest console)}."""
    runs: dict[str, tuple[float, str]] = {}
    for side, run in (("xenopus", lambda: run_xenopus(iterations)), ("c", lambda: run_c(binary, image))):
        seconds, posts, text = run()
        if posts < iterations:
            sys.exit(f"exits: {side} saw {posts} port-0x80 writes, expected {iterations}")
        runs[side] = (seconds, text)
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--iterations", type=int, default=100_000, help="outb per run (default 100000)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each kind (default 5, at least 5)")
    args = p.parse_args()
    if args.repeats < 5:
        p.error("--repeats must be at least 5")
    if args.iterations < 1:
        p.error("--iterations must be positive")
    n = args.iterations
    times: dict[tuple[str, int], list[float]] = {}
    console = ""
    with tempfile.TemporaryDirectory(prefix="xenopus-exits-") as tmp:
        binary, images = prepare(Path(tmp), (0, n))
        print(f"exits: {args.repeats} repeats of iterations=0 and iterations={n}, each side",
              flush=True)
        for _ in range(args.repeats):
            for k in (0, n):
                for side, (seconds, text) in run_sides(binary, images[k], k).items():
                    times.setdefault((side, k), []).append(seconds)
                    console = text if side == "xenopus" else console
            print(".", end="", flush=True)
        print()
    print("guest console (xenopus run):", *console.strip().splitlines(), sep="\n  ")
    report(times, n)
    return 0


def report(times: dict[tuple[str, int], list[float]], n: int) -> None:
    med = {key: statistics.median(v) for key, v in times.items()}
    cost = {side: statistics.median(per_exit(times[(side, 0)], times[(side, n)], n))
            for side in ("xenopus", "c")}
    print(f"\nport-I/O exit round trip, guests/out/exits.elf, iterations={n}, "
          f"{len(times[('c', 0)])} repeats (medians)\n")
    print(f"{'':<22}{'T_0 ms':>10}{'T_N ms':>12}{'per exit µs':>14}")
    for side, label in (("xenopus", "xenopus (Python)"), ("c", "C reference")):
        print(f"{label:<22}{med[(side, 0)] * 1e3:10.1f}{med[(side, n)] * 1e3:12.1f}"
              f"{cost[side] * 1e6:14.2f}")
    print(f"\nratio xenopus / C per exit: {cost['xenopus'] / cost['c']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
