"""One domain's Xen platform: its hypercall table and the simple hypercalls.

State kept here: the shared_info location, HVM params, upcall vectors, per-vCPU timers,
runstate areas, ballooned pages. Event channels and grant tables are separate objects
(`xenopus.xen.evtchn`, `xenopus.xen.grant`) that this table forwards to.

Semantics follow Xen's public headers (version.h, memory.h, hvm/hvm_op.h, hvm/params.h,
vcpu.h, sched.h, xen.h) and, where they are silent, what Xen 4.11 does for an HVM/PVH
domU (common/kernel.c, common/memory.c, arch/x86/hvm/hvm.c, common/domain.c,
common/schedule.c), because that is what guests rely on.

Time: a Xen guest reads system time from vcpu_info.time. KVM's kvmclock structure has the
same layout (pvclock_vcpu_time_info), so once a vcpu_info's place is known we point the
vCPU's host-side MSR_KVM_SYSTEM_TIME_NEW at its `time` field and KVM keeps it current.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from xenopus.kvm import uapi as u
from xenopus.vm.events import StopReason
from xenopus.xen import abi
from xenopus.xen.guestmem import XenError
from xenopus.xen.hypercall import (
    HYPERCALL_PORT,
    XEN_VERSION,
    Call,
    HypercallTable,
    TrapPath,
    make_cpuid_fixup,
)

log = logging.getLogger("xenopus.xen")

EXTRAVERSION = b".0-xenopus"
CHANGESET = b"xenopus"
CAPABILITIES = b"xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
FEATURES = (
    1 << abi.XENFEAT_writable_page_tables
    | 1 << abi.XENFEAT_auto_translated_physmap
    | 1 << abi.XENFEAT_supervisor_mode_kernel
    | 1 << abi.XENFEAT_hvm_callback_vector
    | 1 << abi.XENFEAT_hvm_safe_pvclock
    | 1 << abi.XENFEAT_linux_rsdp_unrestricted
)
# hvm.c hvm_allow_{set,get}_param: what a guest may do to its own params.
GUEST_SETTABLE = frozenset({
    abi.HVM_PARAM_CALLBACK_IRQ, abi.HVM_PARAM_VM86_TSS, abi.HVM_PARAM_VM86_TSS_SIZED,
    abi.HVM_PARAM_ACPI_IOPORTS_LOCATION, abi.HVM_PARAM_VM_GENERATION_ID_ADDR,
    abi.HVM_PARAM_STORE_EVTCHN, abi.HVM_PARAM_CONSOLE_EVTCHN, abi.HVM_PARAM_X87_FIP_WIDTH,
})
GUEST_READABLE = GUEST_SETTABLE | {
    abi.HVM_PARAM_STORE_PFN, abi.HVM_PARAM_CONSOLE_PFN, abi.HVM_PARAM_ALTP2M,
}
MAX_EXTENT_ORDER = 9  # Xen's default domU_max_order
MAX_EXTENTS = 1 << 20  # per call: bounds the work one hypercall can ask for
CONSOLE_WRITE_MAX = 64 * 1024  # bytes per CONSOLEIO_write
CONSOLE_LINE_MAX = 1024
MIN_PERIOD_NS = 1_000_000  # VCPUOP_set_periodic_timer: Xen refuses periods under 1 ms
BLOCK_SLICE = 0.01  # s: how often a blocked vCPU re-checks its flags and the stop kick
BLOCK_MAX = 1.0  # s: a block returns by then at the latest (Xen allows spurious wakeups)
UPCALL_VECTOR_MIN = 0x10  # HVMOP_set_evtchn_upcall_vector: vectors below are exceptions
SHUTDOWN_KIND = {
    abi.SHUTDOWN_poweroff: "poweroff",
    abi.SHUTDOWN_reboot: "reboot",
    abi.SHUTDOWN_soft_reset: "reboot",
    abi.SHUTDOWN_crash: "crash",
    abi.SHUTDOWN_watchdog: "crash",
}
_VI_SIZE = ctypes.sizeof(abi.vcpu_info)
_VI_TIME = abi.vcpu_info.time.offset
_VI_PENDING = abi.vcpu_info.evtchn_upcall_pending.offset


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class XenPlatform:
    """The Xen state and hypercalls of domain `domid`.

    Wiring: build the Machine with `**machine_hooks()`, `install(pio_bus)` before the
    guest runs, `attach(machine)` once the Machine exists. `machine` may be None here and
    given to `attach` later. `e820` is the memory map the guest was given ((addr, size,
    type) tuples or E820Entry). `console_out(line)` receives CONSOLEIO_write lines, already
    prefixed ``(dN) ``."""

    def __init__(
        self,
        domid: int,
        machine: Any,
        memory: Any,
        *,
        nr_vcpus: int | None = None,
        evtchn: Any = None,
        grants: Any = None,
        console_out: Callable[[str], None] | None = None,
        e820: Iterable[Any] = (),
        handle: bytes = bytes(16),
    ):
        self.domid = domid
        self.memory = memory
        self.machine: Any = None
        self.nr_vcpus = nr_vcpus or (len(machine.vcpus) if machine is not None else 1)
        self.evtchn = evtchn
        self.grants = grants
        self.console_out = console_out or (lambda line: log.info("%s", line))
        self.e820 = [
            (e.addr, e.size, e.type) if hasattr(e, "addr") else tuple(e) for e in e820
        ]
        self.handle = bytes(handle)[:16].ljust(16, b"\0")
        self.max_pages = memory.ram_size // abi.PAGE_SIZE
        self.ballooned: set[int] = set()  # GPFNs given back by decrease_reservation
        self.params: dict[int, int] = {}
        self.shared_info: int | None = None  # GPA
        self.callback_vector: int | None = None  # HVM_PARAM_CALLBACK_IRQ, type vector
        self.callback_gsi: int | None = None
        self.upcall_vectors: dict[int, int] = {}
        self.runstate: dict[int, int] = {}  # vCPU -> GPA of its vcpu_runstate_info
        self.shutdown_code: int | None = None
        self.path = "trap"
        self._console_buf = bytearray()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._clock_pending: dict[int, int] = {}  # vCPU -> kvmclock MSR value to set
        self._msi: dict[int, Any] = {}  # vCPU -> MsiRoute for its upcall vector
        self._epoch = _boottime_ns()  # host boot time at guest system time 0 (approx.)
        self.timers = VcpuTimers(self._timer_fired)
        self.table = HypercallTable()
        self.trap = TrapPath(self.table, memory)
        self.trap.before = self._before_call
        self._register()
        if machine is not None:
            self.attach(machine)

    # --- wiring ----------------------------------------------------------------------------
    def machine_hooks(self) -> dict[str, Any]:
        """Keyword arguments for `Machine(...)`: the Xen CPUID leaves and the MSR handler."""
        return {
            "cpuid_fixup": make_cpuid_fixup(self.domid),
            "msr_handler": self.trap,
            "msr_filter": self.trap.msr_filter(),
        }

    def install(self, pio_bus: Any) -> None:
        """Claim the hypercall port on the port-I/O bus."""
        pio_bus.register(HYPERCALL_PORT, 1, self.trap, "xen-hypercall")

    def attach(self, machine: Any) -> None:
        self.machine = machine
        self.nr_vcpus = len(machine.vcpus)
        self.trap.attach(machine)
        self._epoch = _kvmclock_epoch(machine) or self._epoch

    def close(self) -> None:
        self.timers.close()
        for route in self._msi.values():
            route.release()
        self._msi.clear()

    # --- time ------------------------------------------------------------------------------
    def system_time(self) -> int:
        """Xen system time (ns): what the guest's vcpu_time_info extrapolates to."""
        return _boottime_ns() - self._epoch

    def _write_wallclock(self, si: int) -> None:
        wall = time.time_ns() - self.system_time()
        sec, nsec = divmod(wall, 1_000_000_000)
        version = self.memory.read_u32(si + abi.shared_info.wc_version.offset)
        base = si + abi.shared_info.wc_version.offset
        self.memory.write_u32(base, (version + 1) | 1)  # odd: update in progress
        self.memory.write_u32(si + abi.shared_info.wc_sec.offset, sec & 0xFFFFFFFF)
        self.memory.write_u32(si + abi.shared_info.wc_nsec.offset, nsec)
        self.memory.write_u32(si + abi.shared_info.wc_sec_hi.offset, sec >> 32)
        self.memory.write_u32(base, (version + 2) & ~1 & 0xFFFFFFFF)

    def _clock_at(self, vcpu: int, vcpu_info_gpa: int, current: int) -> None:
        """Have KVM keep vcpu_info.time of `vcpu` current (kvmclock MSR, set from the vCPU's
        own thread: on the call now if it is the caller, else at its next hypercall)."""
        value = (vcpu_info_gpa + _VI_TIME) | 1
        with self._lock:
            self._clock_pending[vcpu] = value
        if vcpu == current:
            self._apply_clock(vcpu)

    def _apply_clock(self, vcpu: int) -> None:
        with self._lock:
            value = self._clock_pending.pop(vcpu, None)
        machine = self.machine
        if value is None or machine is None:
            return
        try:
            machine.vcpus[vcpu].fd.set_msrs({u.MSR_KVM_SYSTEM_TIME_NEW: value})
        except Exception as e:  # no kvmclock on this host: time stays at zero
            log.warning("d%d vCPU %d: cannot place vcpu_info time: %s", self.domid, vcpu, e)

    def _before_call(self, vcpu: int) -> None:
        if self._clock_pending:
            self._apply_clock(vcpu)

    # --- event delivery --------------------------------------------------------------------
    def deliver(self, vcpu: int) -> None:
        """Inject `vcpu`'s upcall (EventChannels' `deliver`): its own vector
        (HVMOP_set_evtchn_upcall_vector), else the domain's callback vector, else a pulse on
        the callback GSI; wakes the vCPU if it blocks in SCHEDOP_block/poll."""
        vector = self.upcall_vectors.get(vcpu, self.callback_vector)
        machine = self.machine
        if machine is not None:
            if vector is not None:
                self._upcall_route(vcpu, vector).trigger()
            elif self.callback_gsi is not None:
                machine.set_irq(self.callback_gsi, 1)
                machine.set_irq(self.callback_gsi, 0)
        self.wake()

    def _upcall_route(self, vcpu: int, vector: int) -> Any:
        # Fixed delivery, edge, physical destination = APIC ID (= vCPU index here).
        with self._lock:
            route = self._msi.get(vcpu)
            if route is None:
                route = self._msi[vcpu] = self.machine.irq.allocate_msi()
            route.update(0xFEE00000 | (vcpu & 0xFF) << 12, vector & 0xFF)
        return route

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _timer_fired(self, vcpu: int) -> None:
        if self.evtchn is not None:
            self.evtchn.raise_virq(vcpu, abi.VIRQ_TIMER)
        self.wake()

    # --- HVM params (host side) ------------------------------------------------------------
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

    # --- the table -------------------------------------------------------------------------
    def _register(self) -> None:
        for nr, fn in (
            (abi.HYPERVISOR_xen_version, self.xen_version),
            (abi.HYPERVISOR_memory_op, self.memory_op),
            (abi.HYPERVISOR_hvm_op, self.hvm_op),
            (abi.HYPERVISOR_vcpu_op, self.vcpu_op),
            (abi.HYPERVISOR_sched_op, self.sched_op),
            (abi.HYPERVISOR_set_timer_op, self.set_timer_op),
            (abi.HYPERVISOR_console_io, self.console_io),
            (abi.HYPERVISOR_physdev_op, self.physdev_op),
            (abi.HYPERVISOR_multicall, self.multicall),
            (abi.HYPERVISOR_event_channel_op, self.event_channel_op),
            (abi.HYPERVISOR_grant_table_op, self.grant_table_op),
        ):
            self.table.register(nr, fn)

    def _self(self, domid: int) -> None:
        if domid not in (abi.DOMID_SELF, self.domid):
            raise XenError(abi.XEN_EPERM, f"domain {domid} is not ours")

    # --- xen_version (version.h, common/kernel.c) ------------------------------------------
    def xen_version(self, call: Call) -> int:
        cmd, arg = call.args[0], call.args[1]
        a = call.access
        if cmd == abi.XENVER_version:
            major, minor = XEN_VERSION
            return major << 16 | minor
        strings = {
            abi.XENVER_extraversion: (EXTRAVERSION, abi.xen_extraversion_t),
            abi.XENVER_capabilities: (CAPABILITIES, abi.xen_capabilities_info_t),
            abi.XENVER_changeset: (CHANGESET, abi.xen_changeset_info_t),
        }
        if cmd in strings:
            text, ctype = strings[cmd]
            a.write(arg, text.ljust(ctypes.sizeof(ctype), b"\0"))
            return 0
        if cmd == abi.XENVER_compile_info:
            info = abi.xen_compile_info(b"python", b"xenopus", b"", b"")
            a.write(arg, info)
            return 0
        if cmd == abi.XENVER_platform_parameters:
            a.write(arg, abi.xen_platform_parameters(virt_start=0))  # 0 for HVM vCPUs
            return 0
        if cmd == abi.XENVER_get_features:
            fi = a.read(arg, abi.xen_feature_info)
            if fi.submap_idx >= abi.XENFEAT_NR_SUBMAPS:
                return -abi.XEN_EINVAL
            fi.submap = FEATURES
            a.write(arg, fi)
            return 0
        if cmd == abi.XENVER_pagesize:
            return abi.PAGE_SIZE
        if cmd == abi.XENVER_guest_handle:
            a.write(arg, self.handle)
            return 0
        if cmd in (abi.XENVER_commandline, abi.XENVER_build_id):
            return -abi.XEN_EPERM  # XSM: privileged domains only
        return -abi.XEN_ENOSYS

    # --- memory_op (memory.h, common/memory.c, arch/x86/mm.c) ------------------------------
    def memory_op(self, call: Call) -> int:
        cmd, arg = call.args[0], call.args[1]
        op, start = cmd & abi.MEMOP_CMD_MASK, cmd >> abi.MEMOP_EXTENT_SHIFT
        a = call.access
        if op == abi.XENMEM_add_to_physmap:
            xatp = a.read(arg, abi.xen_add_to_physmap)
            self._self(xatp.domid)
            return self.add_to_physmap(xatp.space, xatp.idx, xatp.gpfn, call.vcpu)
        if op == abi.XENMEM_memory_map:
            mm = a.read(arg, abi.xen_memory_map)
            if not self.e820:
                return -abi.XEN_ENOSYS
            n = min(mm.nr_entries, len(self.e820))
            entries = (abi.e820entry * n)(*[abi.e820entry(*e) for e in self.e820[:n]])
            a.write(mm.buffer, entries)
            mm.nr_entries = n
            a.write(arg, mm)
            return 0
        if op in (abi.XENMEM_current_reservation, abi.XENMEM_maximum_reservation):
            self._self(int.from_bytes(a.read(arg, 2), "little"))
            if op == abi.XENMEM_maximum_reservation:
                return self.max_pages
            return self.max_pages - len(self.ballooned)
        if op == abi.XENMEM_maximum_ram_page:
            return max(end for _, end in self._ram()) // abi.PAGE_SIZE
        if op in (abi.XENMEM_decrease_reservation, abi.XENMEM_populate_physmap):
            r = a.read(arg, abi.xen_memory_reservation)
            self._self(r.domid)
            if r.extent_order > MAX_EXTENT_ORDER or r.nr_extents > MAX_EXTENTS:
                return start  # Xen: nothing done beyond the continuation point
            return self._reservation(op, a, r, start)
        return -abi.XEN_ENOSYS

    def _ram(self) -> list[tuple[int, int]]:
        return [(gpa, gpa + size) for gpa, size in self.memory.ram_ranges()]

    def add_to_physmap(self, space: int, idx: int, gpfn: int, vcpu: int = -1) -> int:
        gpa = gpfn * abi.PAGE_SIZE
        if space == abi.XENMAPSPACE_shared_info:
            if idx != 0:
                return -abi.XEN_EINVAL
            if not self.memory.contains(gpa, abi.PAGE_SIZE):
                return -abi.XEN_EINVAL
            self.map_shared_info(gpa, vcpu)
            return 0
        if space == abi.XENMAPSPACE_grant_table:
            if self.grants is None:
                return -abi.XEN_ENOSYS
            return self.grants.map_frame(idx, gpfn)
        return -abi.XEN_ENOSYS  # gmfn / gmfn_range / foreign / dev_mmio: not offered

    def map_shared_info(self, gpa: int, vcpu: int = -1) -> None:
        """shared_info now lives in guest RAM at `gpa`: carry over the old page (Xen moves
        the frame) or start a zeroed one, set the wallclock, tell the event channels."""
        with self._lock:
            old = self.shared_info
            if old is None:
                self.memory.fill(gpa, abi.PAGE_SIZE)
            elif old != gpa:
                self.memory.write(gpa, self.memory.read(old, abi.PAGE_SIZE))
            self.shared_info = gpa
            self._write_wallclock(gpa)
        if self.evtchn is not None:
            self.evtchn.set_shared_info(gpa)
        registered = getattr(self.evtchn, "_vcpu_info", None) or []
        for v in range(min(self.nr_vcpus, abi.XEN_LEGACY_MAX_VCPUS)):
            if v < len(registered) and registered[v] is not None:
                continue  # a registered vcpu_info keeps its place
            self._clock_at(v, gpa + v * _VI_SIZE, vcpu)

    def _reservation(self, op: int, a: Any, r: abi.xen_memory_reservation, start: int) -> int:
        pages = 1 << r.extent_order
        done = start
        for i in range(start, r.nr_extents):
            try:
                gpfn = int.from_bytes(a.read(r.extent_start + 8 * i, 8), "little")
            except XenError:
                break  # as Xen: the extents done so far are the result
            if gpfn % pages or not self._balloon(gpfn, pages, give=op == abi.XENMEM_decrease_reservation):
                break
            done = i + 1
        return done

    def _balloon(self, gpfn: int, pages: int, *, give: bool) -> bool:
        """Give `pages` frames at `gpfn` back (their memory is released to the host) or
        take them again (zeroed). False if the range is not plain guest RAM."""
        gpa, size = gpfn * abi.PAGE_SIZE, pages * abi.PAGE_SIZE
        region = next((r for r in self.memory.regions if r.gpa <= gpa and gpa + size <= r.end),
                      None)
        if region is None:
            return False
        special = {self.shared_info, *self._special_gpas()}
        if any(gpa <= s < gpa + size for s in special if s is not None):
            return False  # not the pages Xen's own structures live in
        with self._lock:
            frames = range(gpfn, gpfn + pages)
            if give:
                region.map.madvise(mmap.MADV_REMOVE, gpa - region.gpa, size)
                self.ballooned.update(frames)
            else:
                self.ballooned.difference_update(frames)
        return True

    def _special_gpas(self) -> list[int]:
        return [self.params[p] * abi.PAGE_SIZE for p in (abi.HVM_PARAM_STORE_PFN,
                abi.HVM_PARAM_CONSOLE_PFN) if p in self.params]

    # --- hvm_op (hvm/hvm_op.h, arch/x86/hvm/hvm.c) -----------------------------------------
    def hvm_op(self, call: Call) -> int:
        op, arg = call.args[0], call.args[1]
        a = call.access
        if op in (abi.HVMOP_set_param, abi.HVMOP_get_param):
            p = a.read(arg, abi.xen_hvm_param)
            self._self(p.domid)
            if p.index >= abi.HVM_NR_PARAMS:
                return -abi.XEN_EINVAL
            if op == abi.HVMOP_set_param:
                if p.index not in GUEST_SETTABLE:
                    return -abi.XEN_EPERM
                if p.index == abi.HVM_PARAM_CALLBACK_IRQ:
                    kind = p.value >> abi.HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT
                    if kind == abi.HVM_PARAM_CALLBACK_TYPE_VECTOR and (
                        p.value & 0xFF) < UPCALL_VECTOR_MIN:
                        return -abi.XEN_EINVAL
                self.set_param(p.index, p.value)
                return 0
            if p.index not in GUEST_READABLE:
                return -abi.XEN_EPERM
            p.value = self.params.get(p.index, 0)
            a.write(arg, p)
            return 0
        if op == abi.HVMOP_set_evtchn_upcall_vector:
            uv = a.read(arg, abi.xen_hvm_evtchn_upcall_vector)
            if uv.vcpu >= self.nr_vcpus:
                return -abi.XEN_ENOENT
            if uv.vector < UPCALL_VECTOR_MIN:
                return -abi.XEN_EINVAL
            self.upcall_vectors[uv.vcpu] = uv.vector
            return 0
        if op == abi.HVMOP_get_time:
            a.write(arg, abi.xen_hvm_get_time(self.system_time()))
            return 0
        if op == abi.HVMOP_flush_tlbs:
            return 0 if arg == 0 else -abi.XEN_EINVAL  # KVM keeps the guest's TLBs right
        return -abi.XEN_ENOSYS  # pagetable_dying (a shadow-paging hint), altp2m, ...

    # --- vcpu_op (vcpu.h, common/domain.c) -------------------------------------------------
    def vcpu_op(self, call: Call) -> int:
        cmd, target, arg = call.args[0], call.args[1], call.args[2]
        a = call.access
        if target >= self.nr_vcpus:
            return -abi.XEN_ENOENT
        if cmd == abi.VCPUOP_register_vcpu_info:
            info = a.read(arg, abi.vcpu_register_vcpu_info)
            if info.offset > abi.PAGE_SIZE - _VI_SIZE:
                return -abi.XEN_EINVAL
            gpa = info.mfn * abi.PAGE_SIZE + info.offset
            if self.evtchn is None:
                return -abi.XEN_ENOSYS
            rc = self.evtchn.register_vcpu_info(target, gpa)
            if rc == 0:
                self._clock_at(target, gpa, call.vcpu)
            return int(rc)
        if cmd == abi.VCPUOP_register_runstate_memory_area:
            area = a.read(arg, abi.vcpu_register_runstate_memory_area)
            if area.addr == 0:
                self.runstate.pop(target, None)
                return 0
            gpa = a.gpa(area.addr, write=True)
            if not self.memory.contains(gpa, ctypes.sizeof(abi.vcpu_runstate_info)):
                return -abi.XEN_EFAULT
            self.runstate[target] = gpa
            self.memory.write(gpa, bytes(self._runstate(target)))
            return 0
        if cmd == abi.VCPUOP_get_runstate_info:
            a.write(arg, self._runstate(target))
            return 0
        if cmd == abi.VCPUOP_set_periodic_timer:
            period = a.read(arg, abi.vcpu_set_periodic_timer).period_ns
            if period < MIN_PERIOD_NS:
                return -abi.XEN_EINVAL
            self.timers.set_periodic(target, period)
            return 0
        if cmd == abi.VCPUOP_stop_periodic_timer:
            self.timers.set_periodic(target, 0)
            return 0
        if cmd in (abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_stop_singleshot_timer):
            if target != call.vcpu:
                return -abi.XEN_EINVAL  # Xen: only a vCPU's own one-shot timer
            if cmd == abi.VCPUOP_stop_singleshot_timer:
                self.timers.set_oneshot(target, None)
                return 0
            t = a.read(arg, abi.vcpu_set_singleshot_timer)
            now = self.system_time()
            if t.flags & abi.VCPU_SSHOTTMR_future and t.timeout_abs_ns < now:
                return -abi.XEN_ETIME
            self.timers.set_oneshot(target, self._host_deadline(t.timeout_abs_ns))
            return 0
        if cmd == abi.VCPUOP_is_up:
            return 1 if target == 0 or target == call.vcpu or self._started(target) else 0
        # initialise/up/down: PVH and HVM guests start APs with INIT/SIPI through the LAPIC
        # (Linux does), so these are not offered; nor send_nmi, get_physid, time areas.
        return -abi.XEN_ENOSYS

    def _started(self, vcpu: int) -> bool:
        vcpus = getattr(self.machine, "vcpus", None) or []
        if vcpu >= len(vcpus):
            return False
        state = vcpus[vcpu].mp_state
        return state is not None and state not in (u.KVM_MP_STATE_UNINITIALIZED,
                                                   u.KVM_MP_STATE_INIT_RECEIVED)

    def _runstate(self, vcpu: int) -> abi.vcpu_runstate_info:
        now = self.system_time()
        info = abi.vcpu_runstate_info(state=abi.RUNSTATE_running, state_entry_time=now)
        info.time[abi.RUNSTATE_running] = now
        return info

    def _host_deadline(self, system_ns: int) -> float:
        """A guest system time as a host CLOCK_BOOTTIME instant in seconds."""
        return (system_ns + self._epoch) / 1e9

    # --- set_timer_op (xen.h) --------------------------------------------------------------
    def set_timer_op(self, call: Call) -> int:
        timeout = call.args[0] if call.long_mode else call.args[0] | call.args[1] << 32
        self.timers.set_oneshot(call.vcpu, self._host_deadline(timeout) if timeout else None)
        return 0

    # --- sched_op (sched.h, common/schedule.c) ---------------------------------------------
    def sched_op(self, call: Call) -> int:
        cmd, arg = call.args[0], call.args[1]
        a = call.access
        if cmd == abi.SCHEDOP_yield:
            os.sched_yield()
            return 0
        if cmd == abi.SCHEDOP_block:
            self._block(call.vcpu, lambda: self._upcall_pending(call.vcpu))
            return 0
        if cmd == abi.SCHEDOP_poll:
            poll = a.read(arg, abi.sched_poll)
            if poll.nr_ports > abi.SCHED_POLL_MAX_PORTS:
                return -abi.XEN_EINVAL
            ports = a.read_array(poll.ports, ctypes.c_uint32, poll.nr_ports,
                                 abi.SCHED_POLL_MAX_PORTS)
            if any(p >= abi.EVTCHN_2L_NR_CHANNELS for p in ports):
                return -abi.XEN_EINVAL
            deadline = self._host_deadline(poll.timeout) if poll.timeout else None
            self._block(call.vcpu, lambda: self._any_pending(ports), deadline)
            return 0
        if cmd == abi.SCHEDOP_shutdown:
            return self.shutdown(a.read(arg, abi.sched_shutdown).reason)
        if cmd == abi.SCHEDOP_shutdown_code:
            self.shutdown_code = a.read(arg, abi.sched_shutdown).reason
            return 0
        if cmd == abi.SCHEDOP_remote_shutdown:
            rs = a.read(arg, abi.sched_remote_shutdown)
            if rs.domain_id not in (abi.DOMID_SELF, self.domid):
                return -abi.XEN_EPERM  # a domU may not shut other domains down
            return self.shutdown(rs.reason)
        return -abi.XEN_ENOSYS  # watchdog, pin_override

    def shutdown(self, reason: int) -> int:
        kind = SHUTDOWN_KIND.get(reason)
        if reason == abi.SHUTDOWN_suspend:
            return -abi.XEN_ENOSYS  # no save/restore: the guest's suspend fails cleanly
        if kind is None:
            return -abi.XEN_EINVAL
        log.info("d%d: SCHEDOP_shutdown reason %d (%s)", self.domid, reason, kind)
        if self.machine is not None:
            self.machine.request_stop(StopReason(kind, f"Xen shutdown, reason {reason}"))
        return 0

    def _upcall_pending(self, vcpu: int) -> bool:
        gpa = self.evtchn.vcpu_info_gpa(vcpu) if self.evtchn is not None else None
        return gpa is not None and bool(self.memory.read_u8(gpa + _VI_PENDING))

    def _any_pending(self, ports: list[int]) -> bool:
        si = self.shared_info
        if si is None:
            return False
        base = si + abi.shared_info.evtchn_pending.offset
        return any(self.memory.read_u8(base + p // 8) >> (p % 8) & 1 for p in ports)

    def _block(self, vcpu: int, ready: Callable[[], bool], deadline: float | None = None
               ) -> None:
        """Sleep the calling vCPU until `ready()`, a timer, `deadline` (host boottime s),
        a kick from the machine (pause/stop) or BLOCK_MAX; Xen guests loop on spurious
        wakeups, so returning early is always safe."""
        fired = self.timers.fired_count(vcpu)
        limit = time.clock_gettime(time.CLOCK_BOOTTIME) + BLOCK_MAX
        if deadline is not None:
            limit = min(limit, deadline)
        with self._wake:
            while not ready() and self.timers.fired_count(vcpu) == fired and not self._kicked(
                    vcpu):
                left = limit - time.clock_gettime(time.CLOCK_BOOTTIME)
                if left <= 0:
                    return
                self._wake.wait(min(left, BLOCK_SLICE))

    def _kicked(self, vcpu: int) -> bool:
        vcpus = getattr(self.machine, "vcpus", None) or []
        if vcpu >= len(vcpus):
            return False
        return bool(vcpus[vcpu].fd.mmap[u.RUN_IMMEDIATE_EXIT])

    # --- console_io (xen.h) ----------------------------------------------------------------
    def console_io(self, call: Call) -> int:
        cmd, count, buf = call.args[0], call.args[1] & 0xFFFFFFFF, call.args[2]
        if cmd == abi.CONSOLEIO_read:
            return 0
        if cmd != abi.CONSOLEIO_write:
            return -abi.XEN_ENOSYS
        if count > CONSOLE_WRITE_MAX:
            return -abi.XEN_E2BIG
        self.console_write(call.access.read(buf, count))
        return 0

    def console_write(self, data: bytes) -> None:
        with self._lock:
            for byte in data:
                if byte == 0x0A or len(self._console_buf) >= CONSOLE_LINE_MAX:
                    self._emit()
                if byte != 0x0A and (0x20 <= byte < 0x7F or byte == 0x09):
                    self._console_buf.append(byte)

    def _emit(self) -> None:
        line = self._console_buf.decode("ascii")
        self._console_buf.clear()
        self.console_out(f"(d{self.domid}) {line}")

    # --- physdev_op, event_channel_op, grant_table_op --------------------------------------
    def physdev_op(self, call: Call) -> int:
        # Without XENFEAT_hvm_pirqs Linux routes no interrupt through pirqs; the ops it
        # tries anyway (pirq_eoi_gmfn, get_free_pirq, ...) are optional to it.
        return -abi.XEN_ENOSYS

    def event_channel_op(self, call: Call) -> int:
        if self.evtchn is None:
            return -abi.XEN_ENOSYS
        return int(self.evtchn.op(call.args[0], call.access, call.args[1]))

    def grant_table_op(self, call: Call) -> int:
        if self.grants is None:
            return -abi.XEN_ENOSYS
        return int(self.grants.op(call.args[0], call.access, call.args[1],
                                  call.args[2] & 0xFFFFFFFF))

    # --- multicall (xen.h) -----------------------------------------------------------------
    def multicall(self, call: Call) -> int:
        base, count = call.args[0], call.args[1] & 0xFFFFFFFF
        if count > abi.MULTICALL_MAX_ENTRIES:
            return -abi.XEN_E2BIG
        entry_t = abi.multicall_entry if call.long_mode else abi.multicall_entry_32
        size = ctypes.sizeof(entry_t)
        mask = (1 << 64) - 1 if call.long_mode else 0xFFFFFFFF
        for i in range(count):
            gva = base + i * size
            entry = call.access.read(gva, entry_t)
            sub = Call(call.vcpu, tuple(entry.args), call.access, call.long_mode, call.cpl)
            if entry.op == abi.HYPERVISOR_multicall:
                result = -abi.XEN_ENOSYS  # not nestable
            else:
                result = self.table.dispatch(entry.op & 0xFFFFFFFF, sub)
            entry.result = result & mask
            call.access.write_field(gva, entry, "result")
        return 0


class VcpuTimers:
    """Per-vCPU one-shot and periodic timers on one host thread; `fire(vcpu)` runs there."""

    def __init__(self, fire: Callable[[int], None]):
        self._fire = fire
        self._cond = threading.Condition()
        self._oneshot: dict[int, float] = {}
        self._periodic: dict[int, tuple[float, int]] = {}  # vCPU -> (next, period ns)
        self._fired: dict[int, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def _now(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def _ensure(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xen-timers", daemon=True)
            self._thread.start()

    def set_oneshot(self, vcpu: int, deadline: float | None) -> None:
        with self._cond:
            if deadline is None:
                self._oneshot.pop(vcpu, None)
            else:
                self._oneshot[vcpu] = deadline
                self._ensure()
            self._cond.notify_all()

    def set_periodic(self, vcpu: int, period_ns: int) -> None:
        with self._cond:
            if period_ns <= 0:
                self._periodic.pop(vcpu, None)
            else:
                self._periodic[vcpu] = (self._now() + period_ns / 1e9, period_ns)
                self._ensure()
            self._cond.notify_all()

    def fired_count(self, vcpu: int) -> int:
        with self._cond:
            return self._fired.get(vcpu, 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _due(self) -> tuple[list[int], float | None]:
        now = self._now()
        due = [v for v, t in self._oneshot.items() if t <= now]
        for v in due:
            del self._oneshot[v]
        for v, (t, period) in list(self._periodic.items()):
            if t <= now:
                due.append(v)
                # Skip missed periods rather than firing a burst after a stall.
                missed = int((now - t) * 1e9 // period) + 1
                self._periodic[v] = (t + missed * period / 1e9, period)
        pending = [*self._oneshot.values(), *(t for t, _ in self._periodic.values())]
        return due, (min(pending) - now if pending else None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                due, wait = self._due()
                for v in due:
                    self._fired[v] = self._fired.get(v, 0) + 1
                if not due:
                    self._cond.wait(wait)
                    continue
            for v in due:
                try:
                    self._fire(v)
                except Exception:
                    log.exception("timer of vCPU %d", v)


def _kvmclock_epoch(machine: Any) -> int | None:
    """CLOCK_BOOTTIME at kvmclock 0 of `machine`'s VM, if KVM_GET_CLOCK is at hand."""
    get_clock = getattr(getattr(machine, "vm", None), "get_clock", None)
    if get_clock is None:
        return None
    try:
        return _boottime_ns() - int(get_clock())
    except Exception:
        return None


__all__ = ["VcpuTimers", "XenPlatform"]
