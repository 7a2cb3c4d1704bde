"""HYPERVISOR_vcpu_op (vcpu.h; Xen's common/domain.c): vcpu_info, runstate and time areas,
the per-vCPU timers, and bringing vCPUs up and down (initialise, up, down, is_up)."""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from typing import TYPE_CHECKING, Any

from xenopus.arch.x86 import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, RFLAGS_RESERVED
from xenopus.vm.cpu import CpuState, Segment
from xenopus.xen import abi
from xenopus.xen.compat import convert
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

MIN_PERIOD_NS = 1_000_000  # VCPUOP_set_periodic_timer: Xen refuses periods under 1 ms
_VI_SIZE = ctypes.sizeof(abi.vcpu_info)
_TIME_SIZE = ctypes.sizeof(abi.vcpu_time_info)


def register(table: HypercallTable, domain: XenDomain) -> None:
    ops = VcpuOps(domain)
    domain.keep_state("vcpu_op", ops)
    table.register(abi.HYPERVISOR_vcpu_op, ops.vcpu_op)


class VcpuOps:
    """vcpu_op of one domain; the runstate areas registered are its own state."""

    def __init__(self, domain: XenDomain):
        self.domain = domain
        self.memory = domain.memory
        self.runstate: dict[int, int] = {}  # vCPU -> GPA of its vcpu_runstate_info
        self.contexts: dict[int, CpuState] = {}  # VCPUOP_initialise: where a vCPU starts
        self.brought_up: set[int] = set()  # started by VCPUOP_up (not INIT/SIPI)
        self.down_vcpus: set[int] = set()  # taken down by VCPUOP_down
        self._lock = threading.Lock()

    def vcpu_op(self, call: Call) -> int:
        cmd, target, arg = call.args[0], call.args[1], call.args[2]
        a = call.access
        d = self.domain
        if target >= d.nr_vcpus:
            return -abi.XEN_ENOENT
        if cmd == abi.VCPUOP_register_vcpu_info:
            info = a.read(arg, abi.vcpu_register_vcpu_info)
            if info.offset > abi.PAGE_SIZE - _VI_SIZE:
                return -abi.XEN_EINVAL
            return d.register_vcpu_info(target, info.mfn * abi.PAGE_SIZE + info.offset,
                                        call.vcpu)
        if cmd == abi.VCPUOP_register_runstate_memory_area:
            area = a.read(arg, abi.vcpu_register_runstate_memory_area)
            if area.addr == 0:
                with self._lock:
                    self.runstate.pop(target, None)
                return 0
            gpa = a.gpa(area.addr, write=True)
            # The area's layout follows the latched shared_info format (Xen's
            # update_runstate_area: has_32bit_shinfo).
            info: ctypes.Structure = self._runstate()
            if d.compat_shinfo:
                info = convert(info, abi.compat_vcpu_runstate_info)
            if not self.memory.contains(gpa, ctypes.sizeof(info)):
                return -abi.XEN_EFAULT
            with self._lock:
                self.runstate[target] = gpa
            self.memory.write(gpa, bytes(info))
            return 0
        if cmd == abi.VCPUOP_get_runstate_info:
            a.write(arg, self._runstate())
            return 0
        if cmd == abi.VCPUOP_set_periodic_timer:
            period = a.read(arg, abi.vcpu_set_periodic_timer).period_ns
            if period < MIN_PERIOD_NS:
                return -abi.XEN_EINVAL
            d.timers.set_periodic(target, period)
            return 0
        if cmd == abi.VCPUOP_stop_periodic_timer:
            d.timers.set_periodic(target, 0)
            return 0
        if cmd in (abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_stop_singleshot_timer):
            if target != call.vcpu:
                return -abi.XEN_EINVAL  # Xen: only a vCPU's own one-shot timer
            if cmd == abi.VCPUOP_stop_singleshot_timer:
                d.timers.set_oneshot(target, None)
                return 0
            t = a.read(arg, abi.vcpu_set_singleshot_timer)
            if t.flags & abi.VCPU_SSHOTTMR_future and t.timeout_abs_ns < d.system_time():
                return -abi.XEN_ETIME
            d.timers.set_oneshot(target, d.host_deadline(t.timeout_abs_ns))
            return 0
        if cmd == abi.VCPUOP_register_vcpu_time_memory_area:
            return self._time_area(call, target)
        if cmd == abi.VCPUOP_is_up:
            return int(self.is_up(target, call.vcpu))
        if cmd == abi.VCPUOP_initialise:
            return self.initialise(target, a.read(arg, abi.vcpu_hvm_context), call.vcpu)
        if cmd == abi.VCPUOP_up:
            return self.up(target, call.vcpu)
        if cmd == abi.VCPUOP_down:
            return self.down(target, call.vcpu)
        # send_nmi and get_physid are PV/hardware-domain ops; the phys areas are not offered.
        return -abi.XEN_ENOSYS

    # --- bringing vCPUs up and down (common/domain.c; a vCPU starts down, as in Xen) ------
    def _running(self, target: int, caller: int) -> bool:
        """`target` was started: the boot vCPU, the caller, by INIT/SIPI, or VCPUOP_up."""
        return (target in (0, caller) or target in self.brought_up
                or self.domain.started(target))

    def is_up(self, target: int, caller: int) -> bool:
        with self._lock:
            return target not in self.down_vcpus and self._running(target, caller)

    def initialise(self, target: int, ctx: abi.vcpu_hvm_context, caller: int) -> int:
        """Once per vCPU (-EEXIST after, as for one already running); the vCPU stays down
        until VCPUOP_up."""
        with self._lock:
            if target in self.contexts or self._running(target, caller):
                return -abi.XEN_EEXIST
            state = hvm_context_state(ctx)
            if state is None:
                return -abi.XEN_EINVAL
            self.contexts[target] = state
        return 0

    def up(self, target: int, caller: int) -> int:
        with self._lock:
            if target in self.down_vcpus:
                self.down_vcpus.discard(target)
                state = None
            elif self._running(target, caller):
                return 0  # already up
            elif target in self.contexts:
                self.brought_up.add(target)
                state = self.contexts[target]
            else:
                return -abi.XEN_EINVAL  # never initialised
        self.domain.machine.vcpu_up(target, state)
        return 0

    def down(self, target: int, caller: int) -> int:
        """Not the domain's last vCPU that is up (Xen: -EINVAL)."""
        with self._lock:
            others = [v for v in range(self.domain.nr_vcpus)
                      if v != target and v not in self.down_vcpus and self._running(v, caller)]
            if not others:
                return -abi.XEN_EINVAL
            self.down_vcpus.add(target)
        self.domain.machine.vcpu_down(target)
        return 0

    # --- save/restore (docs/snapshot-stream.md, the xen part's "families") ---------------
    def save_state(self) -> dict[str, Any]:
        """Which vCPUs VCPUOP_up started and VCPUOP_down parked, the contexts of those
        initialised and not yet up, and the runstate areas' placement (their contents are
        guest RAM)."""
        with self._lock:
            return {"runstate": sorted(self.runstate.items()),
                    "brought_up": sorted(self.brought_up), "down": sorted(self.down_vcpus),
                    "contexts": [[v, _context_dict(c)] for v, c in sorted(self.contexts.items())]}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Before the vCPUs run: a vCPU that was down stays parked until VCPUOP_up."""
        vcpus = range(self.domain.nr_vcpus)
        down = [int(v) for v in state["down"]]
        runstate = {int(v): int(gpa) for v, gpa in state["runstate"]}
        if not set(down) | set(runstate) | set(state["brought_up"]) <= set(vcpus):
            raise ValueError(f"vcpu_op state names vCPUs this domain (of {len(vcpus)}) lacks")
        with self._lock:
            self.runstate = runstate
            self.brought_up = {int(v) for v in state["brought_up"]}
            self.down_vcpus = set(down)
            self.contexts = {int(v): _context_state(c) for v, c in state["contexts"]}
        for v in down:
            self.domain.machine.vcpu_down(v)

    def _time_area(self, call: Call, target: int) -> int:
        """A second vcpu_time_info for `target` at a guest-virtual address (0: none).
        Xen translates the address at every update through the current page tables; here
        it is translated once, now (Linux gives a kernel page, mapped for good), and must
        not cross a page."""
        gva = call.access.read(call.args[2], abi.vcpu_register_time_memory_area).addr
        if gva == 0:
            self.domain.set_time_area(target, None)
            return 0
        if gva % abi.PAGE_SIZE + _TIME_SIZE > abi.PAGE_SIZE:
            return -abi.XEN_EINVAL
        gpa = call.access.gpa(gva, write=True)
        if not self.memory.contains(gpa, _TIME_SIZE):
            return -abi.XEN_EFAULT
        self.domain.set_time_area(target, gpa)
        return 0

    def _runstate(self) -> abi.vcpu_runstate_info:
        """Always running: a vCPU here is a host thread, never descheduled by us."""
        now = self.domain.system_time()
        info = abi.vcpu_runstate_info(state=abi.RUNSTATE_running, state_entry_time=now)
        info.time[abi.RUNSTATE_running] = now
        return info


def _context_dict(state: CpuState) -> dict[str, Any]:
    """A VCPUOP_initialise context as plain data, for the stream."""
    return dataclasses.asdict(state)


def _context_state(data: dict[str, Any]) -> CpuState:
    segments = {k: Segment(**data[k]) for k in ("code", "data", "tss")}
    return CpuState(**{**data, **segments})


# hvm/hvm_vcpu.h and Xen's arch/x86/hvm/domain.c arch_set_info_hvm_guest: the segments a
# 64-bit context gets (access rights in VMX's layout), the flags a context may set.
_AR_CODE64, _AR_DATA, _AR_TSS64 = 0xA9B, 0xC93, 0x8B
_FLAT_LIMIT = 0xFFFFFFFF
_TSS_LIMIT = 0x67
_RFLAGS_ALL = 0x3F7FD5  # X86_EFLAGS_ALL: the architecturally defined flags
_GPRS64 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi")
_GPRS32 = ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")


def _segment(ar: int, base: int = 0, limit: int = _FLAT_LIMIT) -> Segment:
    """A segment from VMX-style access rights (type, S, DPL, P, AVL, L, D/B, G)."""
    return Segment(base=base, limit=limit, type=ar & 0xF, s=bool(ar >> 4 & 1), dpl=ar >> 5 & 3,
                   present=bool(ar >> 7 & 1), l=bool(ar >> 9 & 1), db=bool(ar >> 10 & 1),
                   g=bool(ar >> 11 & 1))


def hvm_context_state(ctx: abi.vcpu_hvm_context) -> CpuState | None:
    """The `CpuState` a vcpu_hvm_context describes, None where Xen refuses it (-EINVAL):
    a 64-bit one without paging, PAE or LME or with a non-canonical rip; a 32-bit one
    with pad bits set, eip beyond CS's limit or SS's DPL unlike CS's. GDTR and IDTR start
    at 0: the vCPU loads its own before it reloads a segment or takes an interrupt."""
    if ctx.mode == abi.VCPU_HVM_MODE_64B:
        r = ctx.cpu_regs.x86_64
        canonical = r.rip < 1 << 47 or r.rip >= (1 << 64) - (1 << 47)
        if not (canonical and r.cr0 & CR0_PG and r.cr0 & CR0_PE and r.cr4 & CR4_PAE
                and r.efer & EFER_LME):
            return None
        return CpuState(
            rip=r.rip, rsp=r.rsp, rflags=r.rflags & _RFLAGS_ALL | RFLAGS_RESERVED,
            gprs={n: getattr(r, n) for n in _GPRS64}, cr0=r.cr0, cr3=r.cr3, cr4=r.cr4,
            efer=r.efer | EFER_LMA, code=_segment(_AR_CODE64), data=_segment(_AR_DATA),
            tss=_segment(_AR_TSS64, limit=_TSS_LIMIT))
    if ctx.mode != abi.VCPU_HVM_MODE_32B:
        return None
    r32 = ctx.cpu_regs.x86_32
    if r32.pad1 or any(r32.pad2):
        return None
    cs = _segment(r32.cs_ar | 1, r32.cs_base, r32.cs_limit)  # accessed, as Xen sets it
    ds = _segment(r32.ds_ar | 1, r32.ds_base, r32.ds_limit)
    ss = _segment(r32.ss_ar | 1, r32.ss_base, r32.ss_limit)
    cs_limit = cs.limit << 12 | 0xFFF if cs.g else cs.limit
    if (r32.eip > cs_limit or ss.dpl != cs.dpl or (ds.present and ds.dpl > cs.dpl)
            or r32.efer & EFER_LMA and not r32.efer & EFER_LME
            or (r32.cr0 & CR0_PG and not r32.cr0 & CR0_PE)):
        return None
    # One data segment for ds, es, ss (CpuState's model): the context's ds.
    return CpuState(
        rip=r32.eip, rsp=r32.esp, rflags=r32.eflags & _RFLAGS_ALL | RFLAGS_RESERVED,
        gprs={n.replace("e", "r", 1): getattr(r32, n) for n in _GPRS32},
        cr0=r32.cr0, cr3=r32.cr3, cr4=r32.cr4, efer=r32.efer, code=cs, data=ds,
        tss=_segment(r32.tr_ar | 2, r32.tr_base, r32.tr_limit))
