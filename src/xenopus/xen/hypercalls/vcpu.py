"""HYPERVISOR_vcpu_op (vcpu.h; Xen's common/domain.c): vcpu_info and runstate areas, the
per-vCPU timers, is_up."""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

MIN_PERIOD_NS = 1_000_000  # VCPUOP_set_periodic_timer: Xen refuses periods under 1 ms
_VI_SIZE = ctypes.sizeof(abi.vcpu_info)


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_vcpu_op, VcpuOps(domain).vcpu_op)


class VcpuOps:
    """vcpu_op of one domain; the runstate areas registered are its own state."""

    def __init__(self, domain: XenDomain):
        self.domain = domain
        self.memory = domain.memory
        self.runstate: dict[int, int] = {}  # vCPU -> GPA of its vcpu_runstate_info
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
            if not self.memory.contains(gpa, ctypes.sizeof(abi.vcpu_runstate_info)):
                return -abi.XEN_EFAULT
            with self._lock:
                self.runstate[target] = gpa
            self.memory.write(gpa, bytes(self._runstate()))
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
        if cmd == abi.VCPUOP_is_up:
            return 1 if target == 0 or target == call.vcpu or d.started(target) else 0
        # initialise/up/down: PVH and HVM guests start APs with INIT/SIPI through the LAPIC
        # (Linux does), so these are not offered; nor send_nmi, get_physid, time areas.
        return -abi.XEN_ENOSYS

    def _runstate(self) -> abi.vcpu_runstate_info:
        """Always running: a vCPU here is a host thread, never descheduled by us."""
        now = self.domain.system_time()
        info = abi.vcpu_runstate_info(state=abi.RUNSTATE_running, state_entry_time=now)
        info.time[abi.RUNSTATE_running] = now
        return info
