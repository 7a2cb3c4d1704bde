"""HYPERVISOR_sched_op (sched.h; Xen's common/sched/core.c) and HYPERVISOR_set_timer_op
(xen.h), which Xen serves in the scheduler too: yield, block, poll, shutdown, the
watchdogs, the one-shot timer."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

log = logging.getLogger("xenopus.xen")


def register(table: HypercallTable, domain: XenDomain) -> None:
    watchdogs = Watchdogs(domain)
    domain.at_close(watchdogs.close)
    domain.keep_state("sched_op", watchdogs)
    table.register(abi.HYPERVISOR_sched_op, partial(sched_op, domain, watchdogs))
    table.register(abi.HYPERVISOR_set_timer_op, partial(set_timer_op, domain))


class Watchdogs:
    """SCHEDOP_watchdog: the domain's NR_DOMAIN_WATCHDOG_TIMERS watchdogs (sched/core.c
    domain_watchdog); one that expires shuts the domain down with SHUTDOWN_watchdog."""

    def __init__(self, domain: XenDomain):
        self.domain = domain
        self.timers: dict[int, threading.Timer] = {}  # watchdog index -> its armed timer
        self.deadlines: dict[int, int] = {}  # watchdog index -> expiry, Xen system time (ns)
        self._lock = threading.Lock()

    def watchdog(self, wid: int, timeout: int) -> int:
        """id 0 claims a free watchdog and returns its id (1-based); an id with a timeout
        re-arms it, with 0 releases it."""
        if wid > abi.NR_DOMAIN_WATCHDOG_TIMERS:
            return -abi.XEN_EINVAL
        with self._lock:
            if wid == 0:
                free = [i for i in range(abi.NR_DOMAIN_WATCHDOG_TIMERS) if i not in self.timers]
                if not free:
                    return -abi.XEN_ENOSPC
                self._arm(free[0], timeout)
                return free[0] + 1
            index = wid - 1
            if index not in self.timers:
                return -abi.XEN_EINVAL
            self.timers.pop(index).cancel()
            self.deadlines.pop(index, None)
            if timeout:
                self._arm(index, timeout)
            return 0

    def _arm(self, index: int, timeout: int) -> None:
        self._arm_at(index, self.domain.system_time() + timeout * 1_000_000_000)

    def _arm_at(self, index: int, deadline: int) -> None:
        """Arm watchdog `index` to expire at `deadline` (Xen system time, ns)."""
        self.deadlines[index] = deadline
        left = max(deadline - self.domain.system_time(), 0) / 1e9
        timer = threading.Timer(left, self._fired, (index,))
        timer.daemon = True
        timer.name = f"d{self.domain.domid}-watchdog{index}"
        self.timers[index] = timer
        timer.start()

    def _fired(self, index: int) -> None:
        with self._lock:
            if self.timers.get(index) is not threading.current_thread():
                return  # re-armed or released meanwhile
        log.warning("d%d: watchdog timer %d fired", self.domain.domid, index)
        self.domain.shutdown(abi.SHUTDOWN_watchdog)

    def save_state(self) -> dict[str, Any]:
        """The armed watchdogs' expiries in Xen system time, which goes on from where it
        was on the restoring side (kvmclock): each has as long left there as it had here."""
        with self._lock:
            return {"watchdogs": sorted(self.deadlines.items())}

    def restore_state(self, state: dict[str, Any]) -> None:
        armed = [(int(i), int(t)) for i, t in state["watchdogs"]]
        if any(not 0 <= i < abi.NR_DOMAIN_WATCHDOG_TIMERS for i, _ in armed):
            raise ValueError(f"watchdog ids {armed} (at most {abi.NR_DOMAIN_WATCHDOG_TIMERS})")
        with self._lock:
            for index, deadline in armed:
                self._arm_at(index, deadline)

    def close(self) -> None:
        with self._lock:
            for timer in self.timers.values():
                timer.cancel()
            self.timers.clear()
            self.deadlines.clear()


def sched_op(domain: XenDomain, watchdogs: Watchdogs, call: Call) -> int:
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
        if not all(domain.evtchn.in_range(p) for p in ports):
            return -abi.XEN_EINVAL
        deadline = domain.host_deadline(poll.timeout) if poll.timeout else None
        domain.block(vcpu, lambda: domain.any_pending(ports), deadline)
        return 0
    if cmd == abi.SCHEDOP_shutdown:
        return domain.shutdown(a.read(arg, abi.sched_shutdown).reason, vcpu)
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
    if cmd == abi.SCHEDOP_watchdog:
        wd = a.read(arg, abi.sched_watchdog)
        return watchdogs.watchdog(wd.id, wd.timeout)
    return -abi.XEN_ENOSYS  # pin_override: a hardware domain's


def set_timer_op(domain: XenDomain, call: Call) -> int:
    """The calling vCPU's one-shot timer at a system time (0: cancel)."""
    timeout = call.args[0] if call.long_mode else call.args[0] | call.args[1] << 32
    deadline = domain.host_deadline(timeout) if timeout else None
    domain.timers.set_oneshot(call.vcpu, deadline)
    return 0
