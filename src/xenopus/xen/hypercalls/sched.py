"""HYPERVISOR_sched_op (sched.h; Xen's common/sched/core.c) and HYPERVISOR_set_timer_op
(xen.h), which Xen serves in the scheduler too: yield, block, poll, shutdown, the
one-shot timer."""

from __future__ import annotations

import ctypes
import os
from functools import partial
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_sched_op, partial(sched_op, domain))
    table.register(abi.HYPERVISOR_set_timer_op, partial(set_timer_op, domain))


def sched_op(domain: XenDomain, call: Call) -> int:
    cmd, arg = call.args[0], call.args[1]
    a = call.access
    vcpu = call.vcpu
    if cmd == abi.SCHEDOP_yield:
        os.sched_yield()
        return 0
    if cmd == abi.SCHEDOP_block:
        domain.block(vcpu, lambda: domain.upcall_pending(vcpu))
        return 0
    if cmd == abi.SCHEDOP_poll:
        poll = a.read(arg, abi.sched_poll)
        if poll.nr_ports > abi.SCHED_POLL_MAX_PORTS:
            return -abi.XEN_EINVAL
        ports = a.read_array(poll.ports, ctypes.c_uint32, poll.nr_ports,
                             abi.SCHED_POLL_MAX_PORTS)
        if any(p >= abi.EVTCHN_2L_NR_CHANNELS for p in ports):
            return -abi.XEN_EINVAL
        deadline = domain.host_deadline(poll.timeout) if poll.timeout else None
        domain.block(vcpu, lambda: domain.any_pending(ports), deadline)
        return 0
    if cmd == abi.SCHEDOP_shutdown:
        return domain.shutdown(a.read(arg, abi.sched_shutdown).reason)
    if cmd == abi.SCHEDOP_shutdown_code:
        # Xen keeps the code for the toolstack's report of the shutdown that follows; no
        # toolstack here asks for it. The argument is still read, as Xen copies it in.
        a.read(arg, abi.sched_shutdown)
        return 0
    if cmd == abi.SCHEDOP_remote_shutdown:
        rs = a.read(arg, abi.sched_remote_shutdown)
        if rs.domain_id not in (abi.DOMID_SELF, domain.domid):
            return -abi.XEN_EPERM  # a domU may not shut other domains down
        return domain.shutdown(rs.reason)
    return -abi.XEN_ENOSYS  # watchdog, pin_override


def set_timer_op(domain: XenDomain, call: Call) -> int:
    """The calling vCPU's one-shot timer at a system time (0: cancel)."""
    timeout = call.args[0] if call.long_mode else call.args[0] | call.args[1] << 32
    deadline = domain.host_deadline(timeout) if timeout else None
    domain.timers.set_oneshot(call.vcpu, deadline)
    return 0
