"""Save/restore benchmark: a 256 MiB guest saved to a file and restored from it, under
xenopus and under QEMU, in the same run.

    python benchmarks/snapshot.py [--runs N] [--memory MIB]

The guest is guests/counter (it prints and counts; it touches a few pages of its RAM, so
both sides skip what it never wrote: QEMU sends such pages as zero-page flags, xenopus
leaves them out). Each side saves the same guest, running and counting:

- xenopus: `xenopus save -c DOM FILE` (wall time of the command), then `xenopus restore
  -p FILE` (wall time: a new domain process built from the image's config, every part
  restored, left paused) and its destroy;
- QEMU: `migrate "exec:cat > FILE"` over QMP until query-migrate says completed (from the
  command to completion), then a new QEMU with `-incoming "exec:cat FILE"` from its start
  until query-status leaves "inmigrate" (loaded and paused, `-S`).

Sizes are the files' sizes. Runs alternate between the two after one uncounted warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, build_guest, xenopus_command

GUEST = ROOT / "guests" / "out" / "counter.elf"
QEMU = "qemu-system-x86_64"
COUNT = 10**9  # the guest counts for longer than any run
READY = b"count 10\r\n"
TIMEOUT = 120.0


def qemu_args(memory: int, qmp: Path, serial: Path) -> list[str]:
    return ["-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", str(memory),
            "-nodefaults", "-no-reboot", "-display", "none", "-device", "i8042",
            "-serial", f"file:{serial}", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-kernel", str(GUEST), "-append", f"count={COUNT}"]


class Qmp:
    """A QMP client on QEMU's Unix socket (docs/interop/qmp-spec.rst)."""

    def __init__(self, path: Path):
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # QEMU has not made its socket yet
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: object) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait_for(path: Path, marker: bytes) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and marker in path.read_bytes()):
        if time.monotonic() > deadline:
            sys.exit(f"snapshot: {marker!r} never appeared in {path}")
        time.sleep(0.01)  # polling a file QEMU writes; nothing to wait on


def qemu_run(tmp: Path, memory: int, image: Path) -> tuple[float, float, int]:
    """(save seconds, restore seconds, image octets) for one QEMU round."""
    qmp, serial = tmp / "qmp.sock", tmp / "serial.out"
    serial.unlink(missing_ok=True)
    source = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial)])
    try:
        client = Qmp(qmp)
        wait_for(serial, READY)
        started = time.monotonic()
        client.execute("migrate", uri=f"exec:cat > {image}")
        while (client.execute("query-migrate") or {}).get("status") != "completed":
            time.sleep(0.001)
        saved = time.monotonic() - started
        client.close()
    finally:
        source.kill()
        source.wait()
    qmp.unlink(missing_ok=True)
    started = time.monotonic()
    target = subprocess.Popen([QEMU, *qemu_args(memory, qmp, serial), "-S",
                               "-incoming", f"exec:cat {image}"])
    try:
        client = Qmp(qmp)
        # "inmigrate" while the stream loads; then "paused" (-S: no autostart).
        while (client.execute("query-status") or {}).get("status") == "inmigrate":
            time.sleep(0.001)
        restored = time.monotonic() - started
        client.close()
    finally:
        target.kill()
        target.wait()
    qmp.unlink(missing_ok=True)
    return saved, restored, image.stat().st_size


class Xenopus:
    def __init__(self, tmp: Path, memory: int):
        self.cmd = xenopus_command()
        self.env = {**os.environ, "XENOPUS_RUN_DIR": str(tmp / "run")}
        self.config = tmp / "bench.cfg"
        self.config.write_text(f'name = "bench"\nkernel = "{GUEST}"\nmemory = {memory}\n'
                               f'xen_platform = 0\ncmdline = "count={COUNT}"\n')

    def run(self, *args: str) -> float:
        started = time.monotonic()
        r = subprocess.run([*self.cmd, *args], env=self.env, capture_output=True,
                           timeout=TIMEOUT)
        if r.returncode != 0:
            sys.exit(f"snapshot: xenopus {' '.join(args)}: {r.stderr.decode()}")
        return time.monotonic() - started

    def round(self, image: Path) -> tuple[float, float, int]:
        self.run("create", "-q", str(self.config))
        console = subprocess.Popen([*self.cmd, "console", "bench"], env=self.env,
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert console.stdout is not None
        seen = b""
        while READY not in seen:
            chunk = console.stdout.read1(4096)
            if not chunk:
                sys.exit("snapshot: the xenopus guest's console ended")
            seen += chunk
        saved = self.run("save", "-c", "bench", str(image))
        self.run("destroy", "bench")
        console.wait(TIMEOUT)
        restored = self.run("restore", "-p", str(image))
        self.run("destroy", "bench")
        return saved, restored, image.stat().st_size

    def stop(self) -> None:
        subprocess.run([*self.cmd, "daemon", "--stop"], env=self.env, check=False,
                       capture_output=True, timeout=60)


def row(label: str, values: list[float], scale: float, unit: str) -> str:
    med = statistics.median(values) * scale
    return (f"{label:<26}{med:10.1f} {unit}  [{min(values) * scale:.1f} - "
            f"{max(values) * scale:.1f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", type=int, default=256, help="guest RAM in MiB")
    args = p.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(f"snapshot: {QEMU} is not installed (scripts/install-deps)")
    build_guest(GUEST)
    results: dict[str, list[tuple[float, float, int]]] = {"xenopus": [], "qemu": []}
    with tempfile.TemporaryDirectory(prefix="xenopus-snapshot-") as d:
        tmp = Path(d)
        xen = Xenopus(tmp, args.memory)
        try:
            xen.round(tmp / "warm.img")
            qemu_run(tmp, args.memory, tmp / "warm-qemu.img")
            for _ in range(args.runs):
                results["xenopus"].append(xen.round(tmp / "x.img"))
                results["qemu"].append(qemu_run(tmp, args.memory, tmp / "q.img"))
        finally:
            xen.stop()
    print(f"guest: {GUEST.name}, {args.memory} MiB, {args.runs} runs (median [min - max])")
    for name, runs in results.items():
        print(row(f"{name} save", [r[0] for r in runs], 1e3, "ms"))
        print(row(f"{name} restore", [r[1] for r in runs], 1e3, "ms"))
        print(row(f"{name} image size", [float(r[2]) for r in runs], 1 / 2**20, "MiB"))


if __name__ == "__main__":
    main()
