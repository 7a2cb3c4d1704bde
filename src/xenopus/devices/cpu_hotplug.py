"""ACPI CPU hotplug: the register block behind the DSDT's processor devices.

ACPI 6.5 §6.3 (device insertion and removal): a processor device's `_STA` says whether it
is present, a Notify 0x01 (Device Check) on it makes the OS enumerate one that appeared,
a Notify 0x03 (Eject Request) asks the OS to offline one and evaluate its `_EJ0`
(§6.3.3). The DSDT (xenopus.acpi.tables) reads and writes the registers below from those
methods; the GED (§5.6.9, `xenopus.devices.acpi_power`) signals a change, and its `_EVT`
runs the scan method `\\_SB.CPUS.CSCN`, which notifies each vCPU with an event pending.

One status byte per vCPU, byte N for vCPU N (APIC ID N, processor UID N), in an MMIO
block at `platform.CPU_HOTPLUG_BASE` (up to 256 vCPUs; xAPIC allows 255). No selector
register, unlike QEMU's I/O-port interface (docs/specs/acpi_cpu_hotplug.rst), so the
AML needs no mutex: every access is one byte of one vCPU.

    read   bit 0  ENABLED  the vCPU is present (its `_STA` is 0xF, else 0)
           bit 1  INSERT   an insertion the OS has not been notified of
           bit 2  REMOVE   a removal request the OS has not been notified of
    write  bit 1  INSERT   acknowledge (clear) the insertion event
           bit 2  REMOVE   acknowledge (clear) the removal request
           bit 3  EJECT    `_EJ0`: the OS has offlined the vCPU; it leaves (parked)

Writes are commands, never read back: writing 0 does nothing. A vCPU is brought back
(ENABLED and INSERT, then the event) by `set_online`, and unparked at once so that the
OS's INIT/SIPI finds it running (Intel SDM vol. 3 §9.4: the OS starts it itself).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from xenopus.devices.bus import ones
from xenopus.stream import StateError, check_state

log = logging.getLogger("xenopus.devices.cpu_hotplug")

MAX_VCPUS = 256  # one status byte each
ENABLED = 1 << 0
INSERT = 1 << 1
REMOVE = 1 << 2
EJECT = 1 << 3
BOOT_VCPU = 0  # never removed: Linux cannot offline its boot CPU, nor QEMU eject it


class CpuHotplugDevice:
    """A `BusDevice` with one status byte per vCPU (the layout above).

    `notify()` raises the GED event; `on_insert(i)` runs vCPU i again (unparks it),
    `on_eject(i)` parks it once the OS ejected it. Thread-safe: vCPU threads access the
    registers while the domain's control thread calls `set_online`."""

    def __init__(
        self,
        vcpus: int,
        online: int,
        *,
        notify: Callable[[], None],
        on_insert: Callable[[int], None],
        on_eject: Callable[[int], None],
    ) -> None:
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"CPU hotplug: {vcpus} vCPUs; one status byte each covers 1-256")
        if not 1 <= online <= vcpus:
            raise ValueError(f"CPU hotplug: {online} vCPUs online of {vcpus}")
        self.vcpus = vcpus
        self._notify = notify
        self._on_insert = on_insert
        self._on_eject = on_eject
        self._lock = threading.Lock()
        self._status = [ENABLED if i < online else 0 for i in range(vcpus)]
        self._wanted = online  # what the toolstack last asked for (xl vcpu-set)
        self._warned: set[str] = set()

    # -- the toolstack's side ------------------------------------------------------------
    def set_online(self, count: int) -> tuple[list[int], list[int]]:
        """vCPUs 0..count-1 present, the rest asked to leave; returns the vCPUs
        inserted and those whose removal was requested (the event is raised if any)."""
        if not 1 <= count <= self.vcpus:
            raise ValueError(f"{count} vCPUs online asked for; this domain has 1-{self.vcpus}")
        inserted, removing = [], []
        with self._lock:
            self._wanted = count
            for i in range(self.vcpus):
                s = self._status[i]
                if i < count:
                    if not s & ENABLED:
                        self._status[i] = ENABLED | INSERT
                        inserted.append(i)
                    elif s & REMOVE:  # asked back before the OS heard of its removal
                        self._status[i] = s & ~REMOVE
                elif s & ENABLED and i != BOOT_VCPU:
                    if not s & REMOVE:
                        removing.append(i)
                    self._status[i] = (s | REMOVE) & ~INSERT
        for i in inserted:  # running before the OS's INIT/SIPI comes
            self._on_insert(i)
        if inserted or removing:
            self._notify()
        return inserted, removing

    def enabled(self) -> list[int]:
        """The vCPUs present now (ejected ones are not)."""
        with self._lock:
            return [i for i, s in enumerate(self._status) if s & ENABLED]

    def offline(self) -> list[int]:
        with self._lock:
            return [i for i, s in enumerate(self._status) if not s & ENABLED]

    # -- the guest's side (BusDevice) ----------------------------------------------------
    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            data = bytes(self._status[i] if i < self.vcpus else 0
                         for i in range(offset, offset + size))
        return int.from_bytes(data, "little") & ones(size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        for n in range(size):  # each byte a command to its own vCPU
            self._command(offset + n, (value >> 8 * n) & 0xFF)

    def _command(self, index: int, value: int) -> None:
        if not value:
            return
        if index >= self.vcpus:
            self._warn("range", f"command {value:#x} for vCPU {index}, which does not exist")
            return
        ejected = reinsert = False
        with self._lock:
            s = self._status[index] & ~(value & (INSERT | REMOVE))
            if value & EJECT:
                if index == BOOT_VCPU:
                    self._warn("boot", "_EJ0 of the boot vCPU ignored")
                elif s & ENABLED:
                    s &= ~(ENABLED | INSERT | REMOVE)
                    ejected = True
                    # Asked back (xl vcpu-set) after the OS took the removal request:
                    # insert it again once it has left.
                    if index < self._wanted:
                        s |= ENABLED | INSERT
                        reinsert = True
            self._status[index] = s
        if ejected:
            log.info("vCPU %d ejected by the guest (_EJ0)", index)
            self._on_eject(index)
        if reinsert:
            self._on_insert(index)
            self._notify()

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:  # once per kind: a looping guest must not flood the log
            self._warned.add(key)
            log.warning("cpu hotplug device: %s", message)

    # -- save and restore ----------------------------------------------------------------
    STATE_VERSION = 1

    def save_state(self) -> dict:
        with self._lock:
            return {"version": self.STATE_VERSION, "status": list(self._status),
                    "wanted": self._wanted}

    def restore_state(self, state: object) -> None:
        """The status bytes and the count asked for; the caller parks the vCPUs that are
        not enabled once the machine runs (`offline()`)."""
        s = check_state(state, "cpu-hotplug", self.STATE_VERSION)
        status, wanted = s.get("status"), s.get("wanted")
        if (not isinstance(status, list) or len(status) != self.vcpus
                or not all(isinstance(b, int) and 0 <= b < 8 for b in status)
                or not status[BOOT_VCPU] & ENABLED):
            raise StateError(f"cpu-hotplug: bad status {status!r} for {self.vcpus} vCPUs")
        if not isinstance(wanted, int) or not 1 <= wanted <= self.vcpus:
            raise StateError(f"cpu-hotplug: bad online count {wanted!r}")
        with self._lock:
            self._status = list(status)
            self._wanted = wanted
