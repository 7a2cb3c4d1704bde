"""One domain's Xen state: `XenDomain`.

Built once the Machine exists, by one constructor: it makes the domain's event channels,
grant table and timers and registers every hypercall family of `xenopus.xen.hypercalls`
with the entry paths' `HypercallTable`. It alone decides where shared_info and each
vcpu_info live (XENMEM_add_to_physmap, VCPUOP_register_vcpu_info) and tells the event
channels; it owns the HVM params, upcall delivery, blocking, shutdown and time.

Semantics follow Xen's public headers and, where they are silent, what Xen 4.11 does for
an HVM/PVH domU, because that is what guests rely on.

Time: a Xen guest reads system time from vcpu_info.time. KVM's kvmclock structure has the
same layout (pvclock_vcpu_time_info), so once a vcpu_info's place is known we point the
vCPU's host-side MSR_KVM_SYSTEM_TIME_NEW at its `time` field and KVM keeps it current; Xen
system time is therefore the VM's kvmclock, read here as CLOCK_BOOTTIME minus the epoch
KVM_GET_CLOCK gives at construction.

Where KVM delivers events in-kernel (`kernel`, xen/kernel_events.py), every placement
and upcall setting made here is also handed to KVM, and the one-shot timers of vCPUs
whose VIRQ_TIMER KVM knows run in KVM.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from xenopus.arch.x86 import MSI_ADDRESS_BASE, MSI_ADDRESS_DEST_SHIFT
from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemoryError
from xenopus.vm.events import StopReason
from xenopus.vm.irq import MsiRoute
from xenopus.vm.protocols import MachineView, VcpuView
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.grant import GrantTable
from xenopus.xen.guestmem import XenError
from xenopus.xen.hypercall import HypercallTable, in_long_mode
from xenopus.xen.hypercalls import FAMILIES
from xenopus.xen.hypercalls.console import HypervisorConsole
from xenopus.xen.kernel_events import KernelEvents
from xenopus.xen.p2m import PhysMap
from xenopus.xen.timers import VcpuTimers

log = logging.getLogger("xenopus.xen")

BLOCK_SLICE = 0.01  # s: how often a blocked vCPU re-checks its flags and the stop kick
BLOCK_MAX = 1.0  # s: a block returns by then at the latest (Xen allows spurious wakeups)
SHUTDOWN_KIND = {
    abi.SHUTDOWN_poweroff: "poweroff",
    abi.SHUTDOWN_reboot: "reboot",
    abi.SHUTDOWN_soft_reset: "reboot",
    abi.SHUTDOWN_crash: "crash",
    abi.SHUTDOWN_watchdog: "watchdog",  # xl.cfg on_watchdog
}
# Xen's defaults: common/grant_table.c opt_max_grant_frames; libxl's event_channels
# (libxl_create.c: 1023), the domain's max_evtchn_port.
DEFAULT_MAX_GRANT_FRAMES = 64
DEFAULT_MAX_EVTCHN_PORT = 1023
# Of save_state's dict (docs/snapshot-stream.md); 2 adds p2m, time_areas; 3 adds the
# hypercall families' own state (vcpu_op: vCPUs up and down, runstate areas; sched_op: the
# watchdogs).
STATE_VERSION = 3
READ_STATE_VERSIONS = (1, 2, 3)  # 1: no frames beyond RAM, no secondary time areas
_VI_SIZE = ctypes.sizeof(abi.vcpu_info)
_VI_TIME = abi.vcpu_info.time.offset
_VI_PENDING = abi.vcpu_info.evtchn_upcall_pending.offset
_TIME_SIZE = ctypes.sizeof(abi.vcpu_time_info)
_TIME_BODY = abi.vcpu_time_info.pad0.offset  # what follows the version word
_TIME_RETRIES = 4  # reads of a vcpu_time_info KVM is rewriting meanwhile


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class FamilyState(Protocol):
    """What a hypercall family keeps of its own that a save carries (`keep_state`)."""

    def save_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: dict[str, Any]) -> None: ...


class XenDomain:
    """The Xen state and hypercalls of domain `domid` on `machine`.

    `table` is the one the Machine's entry paths dispatch to (`TrapPath`, `KernelPath`);
    every hypercall family registers with it here. `console_out(line)` receives
    CONSOLEIO_write lines, already prefixed ``(dN) ``. `e820` is the memory map the guest
    was given, as (addr, size, type); `handle` its 16-byte xen_domain_handle_t; `max_pages`
    the toolstack's maxmem in pages (at least its RAM)."""

    def __init__(
        self,
        domid: int,
        machine: MachineView,
        table: HypercallTable,
        *,
        console_out: Callable[[str], None],
        e820: Iterable[tuple[int, int, int]] = (),
        handle: bytes = bytes(16),
        max_pages: int = 0,
        max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES,
        max_evtchn_port: int = DEFAULT_MAX_EVTCHN_PORT,
        kernel: KernelEvents | None = None,
        evtchn_fifo: bool = True,
    ):
        self.domid = domid
        self.machine = machine
        self.memory = machine.memory
        self.nr_vcpus = len(machine.vcpus)
        self.table = table
        self.e820 = list(e820)
        self.handle = bytes(handle)[:16].ljust(16, b"\0")
        self.p2m = PhysMap(machine, max_pages)
        self.params: dict[int, int] = {}
        self.shared_info: int | None = None  # GPA
        self.compat_shinfo = False  # shared_info/vcpu_info in the 32-bit layout (latched)
        self.callback_vector: int | None = None  # HVM_PARAM_CALLBACK_IRQ, type vector
        self.callback_gsi: int | None = None
        self.upcall_vectors: dict[int, int] = {}  # HVMOP_set_evtchn_upcall_vector
        self.console = HypervisorConsole(domid, console_out)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._placed: set[int] = set()  # vCPUs whose vcpu_info the guest registered
        self._clock_pending: dict[int, int] = {}  # vCPU -> kvmclock MSR value to set
        self.time_areas: dict[int, int] = {}  # vCPU -> GPA of its secondary vcpu_time_info
        self._time_lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        # A hypercall family's own state (`keep_state`), saved by name with the domain's.
        self._family_state: dict[str, FamilyState] = {}
        self._msi: dict[int, MsiRoute] = {}  # vCPU -> the route of its upcall vector
        self._epoch = _boottime_ns() - machine.clock_ns()  # boottime at system time 0
        self.evtchn = EventChannels(domid, self.memory, self.nr_vcpus, self.deliver,
                                    holds_memory=self.p2m.holds_memory,
                                    max_port=max_evtchn_port)
        self.evtchn.fifo_allowed = evtchn_fifo
        self.kernel = kernel
        if kernel is not None:
            self.evtchn.kernel = kernel
            self.evtchn.on_fifo = lambda: kernel.stop("the guest switched to FIFO events")
            kernel.take_oneshot = self._take_oneshot
            kernel.give_oneshot = self._give_oneshot
        self.grants = GrantTable(domid, self.memory, max_frames=max_grant_frames)
        self.grants.host_map = self.p2m.map_grant  # GNTTABOP_map_grant_ref's GFNs
        self.grants.host_unmap = self.p2m.unmap_grant
        self.timers = VcpuTimers(self._timer_fired)
        # Told (on the vCPU's thread) that vCPU n suspended the domain; None: refused.
        self.on_suspend: Callable[[int], None] | None = None
        for family in FAMILIES:
            family.register(table, self)
        table.on_entry = self._on_entry

    def at_close(self, closer: Callable[[], None]) -> None:
        """Have `close` call `closer` (a family's own threads or timers)."""
        self._closers.append(closer)

    def keep_state(self, name: str, holder: FamilyState) -> None:
        """Save and restore `holder` (a family's state: vcpu_op's, sched_op's) with the
        domain's, under `name`."""
        self._family_state[name] = holder

    def close(self) -> None:
        for closer in self._closers:
            closer()
        if self.kernel is not None:
            self.kernel.close()
        self.grants.unmap_all()  # the granters' entries lose our in-use flags
        self.timers.close()
        for route in self._msi.values():
            route.release()
        self._msi.clear()

    def check_self(self, domid: int) -> None:
        """Raise -EPERM unless `domid` names this domain (a domU acts on itself only)."""
        if domid not in (abi.DOMID_SELF, self.domid):
            raise XenError(abi.XEN_EPERM, f"domain {domid} is not ours")

    # --- time ------------------------------------------------------------------------------
    def system_time(self) -> int:
        """Xen system time (ns): what the guest's vcpu_time_info extrapolates to."""
        return _boottime_ns() - self._epoch

    def host_deadline(self, system_ns: int) -> float:
        """A guest system time as a host CLOCK_BOOTTIME instant in seconds."""
        return (system_ns + self._epoch) / 1e9

    def _write_wallclock(self, si: int) -> None:
        """shared_info's wc_* (xen.h): the wall time at system time 0, under a version
        the guest retries on while it is odd; where the latched layout has them."""
        wall = time.time_ns() - self.system_time()
        sec, nsec = divmod(wall, 1_000_000_000)
        if self.compat_shinfo:  # i386: wc_sec_hi is arch.wc_sec_hi
            layout = abi.compat_shared_info
            sec_hi = layout.arch.offset + abi.compat_arch_shared_info.wc_sec_hi.offset
        else:
            layout, sec_hi = abi.shared_info, abi.shared_info.wc_sec_hi.offset
        base = si + layout.wc_version.offset
        version = self.memory.read_u32(base)
        self.memory.write_u32(base, (version + 1) | 1)  # odd: update in progress
        self.memory.write_u32(si + layout.wc_sec.offset, sec & 0xFFFFFFFF)
        self.memory.write_u32(si + layout.wc_nsec.offset, nsec)
        self.memory.write_u32(si + sec_hi, sec >> 32)
        self.memory.write_u32(base, (version + 2) & ~1 & 0xFFFFFFFF)

    def latch_shinfo_size(self, long_mode: bool) -> None:
        """arch/x86/hvm/hvm.c hvm_latch_shinfo_size: at the guest's HVM_PARAM_CALLBACK_IRQ
        and hypercall-page set-up, the calling vCPU's mode fixes the shared_info/vcpu_info
        layout (32-bit unless in 64-bit mode). As in Xen only the wallclock is rewritten;
        nothing else in the page is converted."""
        with self._lock:
            self.compat_shinfo = not long_mode
            si = self.shared_info
            self.evtchn.set_compat(self.compat_shinfo)
            if self.kernel is not None:
                self.kernel.set_long_mode(long_mode)
            if si is not None:
                self._write_wallclock(si)

    def hypercall_page_written(self, vcpu: int) -> None:
        """`TrapPath.on_page`: latch by the mode of the vCPU that asked for the page."""
        self.latch_shinfo_size(in_long_mode(self.machine.vcpus[vcpu].exit_sregs()))

    def _clock_at(self, vcpu: int, vcpu_info_gpa: int, caller: int) -> None:
        """Have KVM keep vcpu_info.time of `vcpu` current (kvmclock MSR, set from the vCPU's
        own thread: now if it is the caller, else as its next hypercall arrives)."""
        with self._lock:
            self._clock_pending[vcpu] = (vcpu_info_gpa + _VI_TIME) | 1
        if vcpu == caller:
            self._apply_clock(self.machine.vcpus[caller])

    def _apply_clock(self, vcpu: VcpuView) -> None:
        with self._lock:
            value = self._clock_pending.pop(vcpu.index, None)
        if value is None:
            return
        try:
            vcpu.set_msrs({u.MSR_KVM_SYSTEM_TIME_NEW: value})
        except Exception as e:  # no kvmclock on this host: time stays at zero
            log.warning("d%d vCPU %d: cannot place vcpu_info time: %s", self.domid,
                        vcpu.index, e)

    def _on_entry(self, vcpu: VcpuView) -> None:
        if self._clock_pending:
            self._apply_clock(vcpu)
        if vcpu.index in self.time_areas:
            self.refresh_time_area(vcpu.index)

    # --- shared_info / vcpu_info placement -------------------------------------------------
    def map_shared_info(self, gpa: int, caller: int = -1) -> None:
        """shared_info now lives in guest RAM at `gpa`: carry over the old page (Xen moves
        the frame) or start a zeroed one, set the wallclock, tell the event channels, and
        point the clocks of vCPUs whose vcpu_info is still a slot of it there."""
        with self._lock:
            old = self.shared_info
            if old is None:
                self.memory.fill(gpa, abi.PAGE_SIZE)
            elif old != gpa:
                self.memory.write(gpa, self.memory.read(old, abi.PAGE_SIZE))
            self.shared_info = gpa
            self._write_wallclock(gpa)
            in_slots = [v for v in range(min(self.nr_vcpus, abi.XEN_LEGACY_MAX_VCPUS))
                        if v not in self._placed]
        if self.kernel is not None:
            # Before the early events are raised (through KVM) below; a vCPU's vcpu_info
            # is its slot until it registers one (QEMU tells KVM so too).
            self.kernel.set_shared_info(gpa)
            for v in in_slots:
                self.kernel.set_vcpu_info(v, gpa + v * _VI_SIZE)
        self.evtchn.set_shared_info(gpa)
        for v in in_slots:
            self._clock_at(v, gpa + v * _VI_SIZE, caller)

    def register_vcpu_info(self, vcpu: int, gpa: int, caller: int) -> int:
        """VCPUOP_register_vcpu_info of `vcpu` at `gpa` by vCPU `caller`: 0 or -errno."""
        if self.kernel is not None:
            self.kernel.set_vcpu_info(vcpu, gpa)  # first: register_vcpu_info raises it
        rc = self.evtchn.register_vcpu_info(vcpu, gpa)
        if rc == 0:
            with self._lock:
                self._placed.add(vcpu)
            self._clock_at(vcpu, gpa, caller)
        return rc

    def xen_gpfns(self) -> set[int]:
        """The frames Xen's own structures live in: shared_info, the grant frames (and a v2
        table's status frames), the special pages (not the guest's to balloon out or unmap)."""
        pfns = {self.params[p] for p in (abi.HVM_PARAM_STORE_PFN, abi.HVM_PARAM_CONSOLE_PFN)
                if p in self.params}
        pfns.update(self.grants.frames.values())
        pfns.update(self.grants.status_frames.values())
        if self.shared_info is not None:
            pfns.add(self.shared_info // abi.PAGE_SIZE)
        return pfns

    # --- the secondary vcpu_time_info (VCPUOP_register_vcpu_time_memory_area) --------------
    def set_time_area(self, vcpu: int, gpa: int | None) -> None:
        """vcpu.h: a second copy of `vcpu`'s vcpu_time_info at `gpa` (None: none), kept
        like the first; Linux maps it into its vDSO."""
        with self._time_lock:
            if gpa is None:
                self.time_areas.pop(vcpu, None)
            else:
                self.time_areas[vcpu] = gpa
        if self.kernel is not None:
            self.kernel.set_time_info(vcpu, gpa)
        self.refresh_time_area(vcpu)

    def refresh_time_area(self, vcpu: int) -> None:
        """Copy `vcpu`'s vcpu_info.time (which KVM keeps, see the module doc) into its
        secondary area under that area's own version, as Xen's time.c does: odd while
        the copy is in progress. The flags are KVM's: XEN_PVCLOCK_TSC_STABLE_BIT (the same
        bit as PVCLOCK_TSC_STABLE_BIT) only where KVM's master clock makes it true."""
        if self.kernel is not None and self.kernel.active:
            return  # KVM keeps it (KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO)
        with self._time_lock:
            dst = self.time_areas.get(vcpu)
            src = self.evtchn.vcpu_info_gpa(vcpu)
            if dst is None:
                return
            body = bytes(_TIME_SIZE - _TIME_BODY)  # no vcpu_info yet: flags 0, not stable
            if src is not None:
                src += _VI_TIME
                for _ in range(_TIME_RETRIES):
                    before = self.memory.read_u32(src)
                    body = self.memory.read(src + _TIME_BODY, _TIME_SIZE - _TIME_BODY)
                    if before % 2 == 0 and self.memory.read_u32(src) == before:
                        break
                else:
                    return  # KVM is rewriting it: the next refresh copies it
            try:
                version = self.memory.read_u32(dst)
                self.memory.write_u32(dst, (version + 1) | 1)
                self.memory.write(dst + _TIME_BODY, body)
                self.memory.write_u32(dst, ((version | 1) + 1) & 0xFFFFFFFF)
            except GuestMemoryError:  # the guest gave the page away: Xen's copy would fail
                log.info("d%d vCPU %d: time area gone from guest memory", self.domid, vcpu)
                del self.time_areas[vcpu]

    # --- save/restore ----------------------------------------------------------------------
    def save_state(self) -> dict[str, object]:
        """The domain's Xen state beside guest RAM (which holds shared_info, vcpu_info, the
        grant entries, the rings): placements, HVM params, upcall vectors, the event
        channel table, the grant table's frames, and the armed timers as guest system
        times (which continue with kvmclock on the restoring side)."""
        oneshot, periodic = self.timers.pending()
        oneshot_ns = {v: self._system_ns(t) for v, t in oneshot.items()}
        if self.kernel is not None:
            oneshot_ns.update(self.kernel.oneshots())  # the timers KVM runs
        with self._lock:
            return {
                "version": STATE_VERSION,
                "p2m": self.p2m.save_state(),
                "time_areas": sorted(self.time_areas.items()),
                "shared_info": self.shared_info,
                "compat_shinfo": self.compat_shinfo,
                "params": sorted(self.params.items()),
                "upcall_vectors": sorted(self.upcall_vectors.items()),
                "placed": sorted(self._placed),
                "clock_pending": sorted(self._clock_pending.items()),
                "evtchn": self.evtchn.save_state(),
                "grants": self.grants.save_state(),
                "oneshot": [[v, ns] for v, ns in sorted(oneshot_ns.items())],
                "periodic": [[v, self._system_ns(t), period]
                             for v, (t, period) in sorted(periodic.items())],
                "families": {name: holder.save_state()
                             for name, holder in sorted(self._family_state.items())},
            }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Into this domain, built from the same config and not started, after the VM
        clock was restored (Xen system time is kvmclock: the epoch is taken again)."""
        if state.get("version") not in READ_STATE_VERSIONS:
            raise ValueError(f"Xen state version {state.get('version')!r}")
        self._epoch = _boottime_ns() - self.machine.clock_ns()
        if state["version"] >= 2:  # first: shared_info or grant frames may live above RAM
            self.p2m.restore_state(state["p2m"])
            with self._time_lock:
                self.time_areas = {int(v): int(gpa) for v, gpa in state["time_areas"]}
        with self._lock:  # before the params: a callback via beside them keeps KVM's path
            self.upcall_vectors = {v: vec for v, vec in state["upcall_vectors"]}
        for index, value in state["params"]:
            self.set_param(index, value)
        si = state["shared_info"]
        if si is not None and not self.memory.contains(si, abi.PAGE_SIZE):
            raise ValueError(f"shared_info at {si:#x} is not RAM")
        self.evtchn.restore_state(state["evtchn"])
        self.grants.restore_state(state["grants"])
        with self._lock:
            self.shared_info = si
            self.compat_shinfo = bool(state.get("compat_shinfo", False))
            self.upcall_vectors = {v: vec for v, vec in state["upcall_vectors"]}
            self._placed = set(state["placed"])
            self._clock_pending = {v: msr for v, msr in state["clock_pending"]}
            if si is not None:
                self._write_wallclock(si)  # the wall clock moved on while it was saved
        if self.kernel is not None:
            self._kernel_restore()
        for v, system_ns in state["oneshot"]:
            if self.kernel is not None and self.kernel.has_timer(v):
                self.kernel.set_oneshot(v, system_ns)
            else:
                self.timers.set_oneshot(v, self.host_deadline(system_ns))
        for v, system_ns, period in state["periodic"]:
            self.timers.set_periodic_from(v, self.host_deadline(system_ns), period)
        for name, family in state.get("families", {}).items():  # version 3
            holder = self._family_state.get(name)
            if holder is None:
                raise ValueError(f"Xen state of a hypercall family this domain lacks: {name}")
            holder.restore_state(family)

    def _system_ns(self, host_deadline: float) -> int:
        return round(host_deadline * 1e9) - self._epoch

    def _kernel_restore(self) -> None:
        """Hand KVM the restored placements, upcalls and ports (the guest set them up
        before the save; KVM of this incarnation knows nothing of them)."""
        kernel = self.kernel
        assert kernel is not None
        kernel.set_long_mode(not self.compat_shinfo)
        if self.shared_info is not None:
            kernel.set_shared_info(self.shared_info)
        for v in range(self.nr_vcpus):
            gpa = self.evtchn.vcpu_info_gpa(v)
            if gpa is not None:
                kernel.set_vcpu_info(v, gpa)
            if v in self.upcall_vectors:
                kernel.set_upcall_vector(v, self.upcall_vectors[v])
        for v, gpa in self.time_areas.items():
            kernel.set_time_info(v, gpa)
        self.evtchn.sync_kernel_all()

    def _take_oneshot(self, vcpu: int) -> int | None:
        """KVM takes `vcpu`'s one-shot timer over: ours, cancelled, as system time."""
        oneshot, _ = self.timers.pending()
        deadline = oneshot.get(vcpu)
        self.timers.set_oneshot(vcpu, None)
        return None if deadline is None else self._system_ns(deadline)

    def _give_oneshot(self, vcpu: int, system_ns: int) -> None:
        self.timers.set_oneshot(vcpu, self.host_deadline(system_ns))

    # --- HVM params (host side; hvm.py checks a guest's own requests) ---------------------
    def set_param(self, index: int, value: int) -> None:
        """The toolstack's HVMOP_set_param (no guest permission check)."""
        if not 0 <= index < abi.HVM_NR_PARAMS:
            raise ValueError(f"HVM param {index}")
        with self._lock:
            self.params[index] = value
            if index == abi.HVM_PARAM_CALLBACK_IRQ:
                kind = value >> abi.HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT
                self.callback_vector = self.callback_gsi = None
                if kind == abi.HVM_PARAM_CALLBACK_TYPE_VECTOR:
                    self.callback_vector = value & 0xFF
                elif kind == abi.HVM_PARAM_CALLBACK_TYPE_GSI and value:
                    self.callback_gsi = value & ((1 << 56) - 1)
                if self.kernel is not None:
                    if self.callback_vector is not None or not value:
                        self.kernel.set_callback_vector(self.callback_vector or 0)
                    elif 0 in self.upcall_vectors:
                        # Xen's hvm_assert_evtchn_irq: a vCPU's own upcall vector wins
                        # over the via, which is raised for vCPU 0 only. Linux sets GSI 1
                        # once vCPU 0 has its vector ("trick toolstack to think we are
                        # enlightened", enlighten_hvm.c xen_set_upcall_vector): KVM keeps
                        # delivering through the vCPUs' vectors, as QEMU's does.
                        self.kernel.set_callback_vector(0)
                    else:  # KVM raises vectors only: an interrupt line is ours to drive
                        self.kernel.stop(f"HVM_PARAM_CALLBACK_IRQ {value:#x} is not a vector")

    def set_upcall_vector(self, vcpu: int, vector: int) -> None:
        """HVMOP_set_evtchn_upcall_vector: `vcpu`'s own upcall vector."""
        with self._lock:
            self.upcall_vectors[vcpu] = vector
        if self.kernel is not None:
            self.kernel.set_upcall_vector(vcpu, vector)

    # --- event delivery --------------------------------------------------------------------
    def deliver(self, vcpu: int) -> None:
        """Inject `vcpu`'s upcall (EventChannels' `deliver`): its own vector
        (HVMOP_set_evtchn_upcall_vector), else the domain's callback vector, else a pulse on
        the callback GSI; wakes the vCPU if it blocks in SCHEDOP_block/poll."""
        vector = self.upcall_vectors.get(vcpu, self.callback_vector)
        if vector is not None:
            self._upcall_route(vcpu, vector).trigger()
        elif self.callback_gsi is not None:
            self.machine.set_irq(self.callback_gsi, 1)
            self.machine.set_irq(self.callback_gsi, 0)
        self.wake()

    def _upcall_route(self, vcpu: int, vector: int) -> MsiRoute:
        with self._lock:
            route = self._msi.get(vcpu)
            if route is None:
                route = self._msi[vcpu] = self.machine.allocate_msi()
            # An upcall vector is sent as an MSI to the vCPU's APIC ID (its index here).
            address = MSI_ADDRESS_BASE | (vcpu & 0xFF) << MSI_ADDRESS_DEST_SHIFT
            route.update(address, vector & 0xFF)
        return route

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _timer_fired(self, vcpu: int) -> None:
        if vcpu in self.time_areas:  # Xen refreshes time as it schedules the vCPU in
            self.refresh_time_area(vcpu)
        self.evtchn.raise_virq(vcpu, abi.VIRQ_TIMER)
        self.wake()

    # --- vCPUs: blocking, state, shutdown --------------------------------------------------
    def upcall_pending(self, vcpu: int) -> bool:
        gpa = self.evtchn.vcpu_info_gpa(vcpu)
        return gpa is not None and bool(self.memory.read_u8(gpa + _VI_PENDING))

    def any_pending(self, ports: list[int]) -> bool:
        """SCHEDOP_poll's wake condition, in the domain's event ABI (2-level or FIFO)."""
        return any(self.evtchn.is_pending(p) for p in ports)

    def block(self, vcpu: int, ready: Callable[[], bool], deadline: float | None = None
              ) -> None:
        """Sleep the calling vCPU until `ready()`, a timer, `deadline` (host boottime s),
        a kick from the machine (pause/stop) or BLOCK_MAX; Xen guests loop on spurious
        wakeups, so returning early is always safe."""
        fired = self.timers.fired_count(vcpu)
        limit = time.clock_gettime(time.CLOCK_BOOTTIME) + BLOCK_MAX
        if deadline is not None:
            limit = min(limit, deadline)
        me = self.machine.vcpus[vcpu]
        with self._wake:
            while (not ready() and self.timers.fired_count(vcpu) == fired
                   and not me.kick_pending):
                left = limit - time.clock_gettime(time.CLOCK_BOOTTIME)
                if left <= 0:
                    return
                self._wake.wait(min(left, BLOCK_SLICE))

    def started(self, vcpu: int) -> bool:
        vcpus = self.machine.vcpus
        return vcpu < len(vcpus) and vcpus[vcpu].started

    def shutdown(self, reason: int, vcpu: int | None = None) -> int:
        """SCHEDOP_shutdown / remote_shutdown of this domain (by `vcpu`, if its own):
        0 or -errno."""
        kind = SHUTDOWN_KIND.get(reason)
        if reason == abi.SHUTDOWN_suspend:
            if vcpu is None or self.on_suspend is None:
                return -abi.XEN_ENOSYS  # no toolstack to resume it: the suspend fails cleanly
            return self.suspend(vcpu)
        if kind is None:
            return -abi.XEN_EINVAL
        log.info("d%d: SCHEDOP_shutdown reason %d (%s)", self.domid, reason, kind)
        self.machine.request_stop(StopReason(kind, f"Xen shutdown, reason {reason}"))
        return 0

    def suspend(self, vcpu: int) -> int:
        """SHUTDOWN_suspend: the domain stays shut down (reason suspend), the call held,
        until the toolstack resumes it (xl resume: xc_domain_resume's fast path, a
        cancelled suspend). public/sched.h: the call then returns 1 ("suspend was
        cancelled or the domain was merely checkpointed")."""
        log.info("d%d: SCHEDOP_shutdown reason %d (suspend) on vCPU %d", self.domid,
                 abi.SHUTDOWN_suspend, vcpu)
        assert self.on_suspend is not None
        self.on_suspend(vcpu)
        return 1 if self.machine.hold_here(vcpu) else 0


__all__ = ["XenDomain"]
