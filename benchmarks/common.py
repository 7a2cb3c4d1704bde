"""What the benchmark scripts share (each runs as `python benchmarks/NAME.py`, so this
module is importable as `common`)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LINUX = ROOT / "linux"  # scripts/fetch-linux's kernels and initramfs, scripts/fetch-qemu10's QEMU
QEMU10 = LINUX / "qemu10" / "qemu-system-x86_64"
# Xen 4.11, the version xenopus reports (CPUID 0x40000001, XENVER_version); QEMU takes it as
# 0xMMMMmmmm.
XEN_VERSION = "0x4000b"


def build_guest(guest: Path) -> None:
    """Build just this benchmark's guest (guests/Makefile target out/<name>.elf)."""
    target = guest.relative_to(ROOT / "guests")
    if subprocess.run(["make", "-s", "-C", str(ROOT / "guests"), str(target)]).returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).stem}: building guests/{target} failed")


def xenopus_command() -> list[str]:
    """The `xenopus` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("xenopus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "xenopus"]


def timed_run(argv: list[str], marker: re.Pattern[bytes], timeout: float,
              env: dict[str, str] | None = None,
              started: Callable[[], None] | None = None) -> tuple[float | None, float, bytes]:
    """Run `argv` to its exit, its output read as it comes: (seconds from the start to the
    first `marker` match, or None; seconds to the exit; everything it printed). Killed,
    and the benchmark ended with its output's tail, if it runs past `timeout` s.
    `started()`, if given, runs once the command has started (e.g. to unpause the domain
    whose console it attached)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    if started is not None:
        started()
    seen = b""
    marked = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not sel.select(max(0.0, start + timeout - time.monotonic())):
                proc.kill()
                sys.exit(f"{Path(sys.argv[0]).stem}: {argv[0]} ran past {timeout:.0f} s:\n"
                         f"{seen[-3000:].decode(errors='replace')}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if marked is None and marker.search(seen):
                marked = time.monotonic() - start
    proc.wait()
    return marked, time.monotonic() - start, seen


def linux_guest_config(path: Path, name: str, kernel: Path, initramfs: Path, cmdline: str, *,
                       memory: int = 256, vcpus: int = 1, xen_platform: int = 0,
                       extra: str = "") -> Path:
    """An xl-style config at `path` for a PVH Linux guest that ends with its power-off
    (on_poweroff, on_reboot and on_crash all "destroy"); `extra` adds lines (disk, vif)."""
    path.write_text(
        f'name = "{name}"\ntype = "pvh"\nmemory = {memory}\nvcpus = {vcpus}\n'
        f'kernel = "{kernel}"\nramdisk = "{initramfs}"\ncmdline = "{cmdline}"\n'
        f'xen_platform = {xen_platform}\non_poweroff = "destroy"\non_reboot = "destroy"\n'
        'on_crash = "destroy"\n' + extra
    )
    return path


def qemu10_xen_argv(kernel: Path, initramfs: Path, cmdline: str, *, memory: int = 256,
                    devices: tuple[str, ...] = ()) -> list[str]:
    """QEMU 10's Xen emulation (scripts/fetch-qemu10) booting a Xen-aware Linux (PVH entry
    through -kernel) with the PV console on stdout (`console=hvc0`), `devices` added (e.g.
    `-drive file=IMG,if=xen,format=raw`, `-nic tap,model=xen-net-device,...`)."""
    return [str(QEMU10), "-accel", f"kvm,xen-version={XEN_VERSION},kernel-irqchip=split",
            "-M", "pc", "-cpu", "host", "-m", str(memory), "-nodefaults", "-no-reboot",
            "-display", "none", "-chardev", "stdio,id=pv", "-device", "xen-console,chardev=pv",
            *devices, "-kernel", str(kernel), "-initrd", str(initramfs), "-append", cmdline]


def fetch_linux() -> ModuleType:
    """scripts/fetch-linux as a module (its cpio writer)."""
    loader = importlib.machinery.SourceFileLoader("fetch_linux", str(ROOT / "scripts" / "fetch-linux"))
    spec = importlib.util.spec_from_loader("fetch_linux", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def initramfs_with(base: Path, dest: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """`base` with a second cpio archive appended that adds `files` (path -> (data, mode);
    their directories must exist in `base`): the kernel unpacks concatenated archives in
    order, later files replacing earlier ones (Documentation/driver-api/early-userspace/
    buffer-format.rst)."""
    archive = fetch_linux().Cpio()
    for name, (data, mode) in files.items():
        archive.file(name, data, mode)
    dest.write_bytes(base.read_bytes() + archive.finish())
    return dest
