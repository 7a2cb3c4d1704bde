"""KVM's in-kernel Xen event channels: the hot paths of a Xen guest without leaving KVM.

Where KVM offers KVM_CAP_XEN_HVM with INTERCEPT_HCALL, SHARED_INFO, EVTCHN_2LEVEL and
EVTCHN_SEND (Linux CONFIG_KVM_XEN, 5.19 on), it can deliver 2-level events itself and
answer the calls that carry them without an exit to userspace. This module tells KVM what
it needs for that; the Xen state stays ours (xen/domain.py, xen/evtchn.py), and every call
KVM does not finish still reaches our hypercall table as KVM_EXIT_XEN.

Spec: Documentation/virt/kvm/api.rst, 4.126 KVM_XEN_HVM_CONFIG, 4.127/4.128
KVM_XEN_HVM_SET_ATTR/GET_ATTR, 4.129/4.130 KVM_XEN_VCPU_SET_ATTR/GET_ATTR, 4.132
KVM_XEN_HVM_EVTCHN_SEND; what KVM then serves is arch/x86/kvm/xen.c's kvm_xen_hypercall:

* the layout (KVM_XEN_ATTR_TYPE_LONG_MODE), shared_info (_SHARED_INFO) and each vCPU's
  vcpu_info (KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO; the shared_info slot until the guest
  registers one, as Xen has it) and secondary time area (_VCPU_TIME_INFO): KVM sets
  pending bits, selectors and evtchn_upcall_pending itself and keeps the pvclocks;
* the upcall: the domain's callback vector (KVM_XEN_ATTR_TYPE_UPCALL_VECTOR, from
  HVM_PARAM_CALLBACK_IRQ) or a vCPU's own (KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR, from
  HVMOP_set_evtchn_upcall_vector);
* XENVER_version (KVM_XEN_ATTR_TYPE_XEN_VERSION);
* EVTCHNOP_send on IPI ports and on loopback interdomain ports (KVM_XEN_ATTR_TYPE_EVTCHN:
  the send port, and the port and vCPU it raises), and on ports whose far end is a backend
  in this process (the same attribute with an eventfd KVM signals: the backend's own
  worker waits on it where the callback offers `watch_eventfd`, one thread here reads the
  others and calls them, so the sending vCPU never leaves the kernel);
* each vCPU's one-shot timer (set_timer_op, VCPUOP_set/stop_singleshot_timer) raising its
  VIRQ_TIMER port (KVM_XEN_VCPU_ATTR_TYPE_TIMER), read back for a save;
* SCHEDOP_poll (blocking in KVM until a polled port is raised) and SCHEDOP_yield.

Events the host raises (backends, VIRQs of ours) go through KVM_XEN_HVM_EVTCHN_SEND, so
KVM alone writes the bits and wakes a vCPU that polls. KVM delivers 2-level events only:
a domain that switches to FIFO (evtchn_fifo = 1) or asks for a GSI callback, which KVM
cannot raise, gets all of it back (`stop`): ports and timers return to our path.

vCPU attributes take the vCPU mutex, which KVM_RUN holds while the vCPU runs or halts in
the kernel; they are set on the vCPU's own thread (`on_vcpu_thread`).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from xenopus.kvm import KvmError
from xenopus.kvm import uapi as u
from xenopus.xen import abi

log = logging.getLogger("xenopus.xen")

REQUIRED = (u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL | u.KVM_XEN_HVM_CONFIG_SHARED_INFO
            | u.KVM_XEN_HVM_CONFIG_EVTCHN_2LEVEL | u.KVM_XEN_HVM_CONFIG_EVTCHN_SEND)
_PRIO = u.KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL
# A route KVM serves for a send port: (EVTCHNSTAT_ipi or _interdomain, port raised, vCPU),
# or a host backend's callback, called as KVM signals the port's eventfd.
Route = tuple[int, int, int] | Callable[[], None]


def offered(flags: int) -> bool:
    """Whether KVM's KVM_CAP_XEN_HVM `flags` carry everything this module uses."""
    return flags & REQUIRED == REQUIRED


class XenVmFd(Protocol):
    """The VM fd's Xen ioctls (`xenopus.kvm.VmFd` has them)."""

    def xen_hvm_config(self, msr: int, flags: int = 0) -> None: ...
    def xen_set_attr(self, attr: u.kvm_xen_hvm_attr) -> None: ...
    def xen_evtchn_send(self, port: int, vcpu: int) -> None: ...


class XenVcpuFd(Protocol):
    """A vCPU fd's Xen ioctls (`xenopus.kvm.VcpuFd` has them)."""

    def xen_set_attr(self, attr: u.kvm_xen_vcpu_attr) -> None: ...
    def xen_get_attr(self, attr: u.kvm_xen_vcpu_attr) -> u.kvm_xen_vcpu_attr: ...


class KernelEvents:
    """One domain's in-kernel event delivery. `vcpus[i]` is vCPU i's fd;
    `on_vcpu_thread(i, call)` runs `call` where vCPU i's ioctls do not block (the
    Machine's); `msr` the hypercall MSR KVM_XEN_HVM_CONFIG names."""

    def __init__(self, vm: XenVmFd, vcpus: Sequence[XenVcpuFd],
                 on_vcpu_thread: Callable[[int, Callable[[], None]], None], *,
                 msr: int = abi.XEN_HYPERCALL_MSR):
        self.vm = vm
        self.vcpus = vcpus
        self.on_vcpu_thread = on_vcpu_thread
        self.msr = msr
        self.active = False
        self._routes: dict[int, Route] = {}  # send port -> what KVM raises for it
        self._timer_ports: dict[int, int] = {}  # vCPU -> its VIRQ_TIMER port in KVM
        self._eventfds: dict[int, int] = {}  # send port -> the eventfd KVM signals
        self._own_waits: dict[int, Callable[[], None]] = {}  # port -> its waiter's undo
        self._watcher: EventfdWatcher | None = None
        self._lock = threading.RLock()
        # Set by the domain: our pending one-shot of a vCPU as Xen system time (ns),
        # cancelled (KVM takes it over), and re-arming one (KVM gives it back on `stop`).
        self.take_oneshot: Callable[[int], int | None] = lambda vcpu: None
        self.give_oneshot: Callable[[int, int], None] = lambda vcpu, ns: None

    # --- the domain's settings ---------------------------------------------------------
    def start(self, xen_version: int, long_mode: bool = True) -> None:
        """KVM_XEN_HVM_CONFIG with EVTCHN_SEND (KVM now serves the calls above), the
        version KVM answers XENVER_version with, the shared_info layout."""
        self.vm.xen_hvm_config(self.msr, u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
                               | u.KVM_XEN_HVM_CONFIG_EVTCHN_SEND)
        self._set(u.KVM_XEN_ATTR_TYPE_XEN_VERSION, "xen_version", xen_version)
        self.active = True
        self.set_long_mode(long_mode)
        # Each vCPU's Xen vCPU ID (api.rst 4.129, KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID), which KVM
        # matches a vCPU's own timer calls against (kvm_xen_hcall_vcpu_op:
        # VCPUOP_set/stop_singleshot_timer of another ID is -EINVAL). Set as QEMU sets it
        # (target/i386/kvm/xen-emu.c, kvm_xen_init_vcpu), not left to KVM's default: on
        # the nested host's 6.12 vCPU 1's own VCPUOP_stop_singleshot_timer came back
        # -EINVAL, and Linux's xen_vcpuop_shutdown BUG()s on that as vCPU 1 starts.
        for index in range(len(self.vcpus)):
            attr = u.kvm_xen_vcpu_attr(type=u.KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID)
            attr.u.vcpu_id = index
            self.on_vcpu_thread(index, lambda i=index, a=attr: self._vcpu_set(i, a))

    def stop(self, why: str) -> None:
        """Give everything back to our path (FIFO, a GSI callback): KVM forgets the
        ports, the timers return to ours, and it no longer serves the event calls."""
        with self._lock:
            if not self.active:
                return
            self.active = False
            timers, self._timer_ports = dict(self._timer_ports), {}
            self._routes.clear()
            self._drop_eventfds()
        log.info("in-kernel Xen events off: %s", why)
        attr = u.kvm_xen_hvm_attr(type=u.KVM_XEN_ATTR_TYPE_EVTCHN)
        attr.u.evtchn.flags = u.KVM_XEN_EVTCHN_RESET
        attr.u.evtchn.deliver.port.priority = _PRIO
        self.vm.xen_set_attr(attr)
        self.vm.xen_hvm_config(self.msr, u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
        for vcpu in timers:
            self.on_vcpu_thread(vcpu, lambda v=vcpu: self._timer_back(v))

    def _timer_back(self, vcpu: int) -> None:
        expires = self._get_timer(vcpu).u.timer.expires_ns
        self._set_timer(vcpu, 0, 0)
        if expires:
            self.give_oneshot(vcpu, expires)

    def set_long_mode(self, long_mode: bool) -> None:
        """The shared_info/vcpu_info layout (the domain latches it as Xen does)."""
        if self.active:
            self._set(u.KVM_XEN_ATTR_TYPE_LONG_MODE, "long_mode", int(long_mode))

    def set_shared_info(self, gpa: int | None) -> None:
        if self.active:
            gfn = u.KVM_XEN_INVALID_GFN if gpa is None else gpa // abi.PAGE_SIZE
            attr = u.kvm_xen_hvm_attr(type=u.KVM_XEN_ATTR_TYPE_SHARED_INFO)
            attr.u.shared_info.gfn = gfn
            self.vm.xen_set_attr(attr)

    def set_callback_vector(self, vector: int) -> None:
        """HVM_PARAM_CALLBACK_IRQ of type vector (0: none): KVM injects it while
        evtchn_upcall_pending is set."""
        if self.active:
            self._set(u.KVM_XEN_ATTR_TYPE_UPCALL_VECTOR, "vector", vector & 0xFF)

    def set_vcpu_info(self, vcpu: int, gpa: int) -> None:
        self._vcpu_gpa(vcpu, u.KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO, gpa)

    def set_time_info(self, vcpu: int, gpa: int | None) -> None:
        """VCPUOP_register_vcpu_time_memory_area: KVM keeps that copy too."""
        self._vcpu_gpa(vcpu, u.KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO,
                       u.KVM_XEN_INVALID_GPA if gpa is None else gpa)

    def set_upcall_vector(self, vcpu: int, vector: int) -> None:
        """HVMOP_set_evtchn_upcall_vector: KVM sets it in the vCPU's LAPIC at each event."""
        if not self.active:
            return
        attr = u.kvm_xen_vcpu_attr(type=u.KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR)
        attr.u.vector = vector & 0xFF
        self.on_vcpu_thread(vcpu, lambda: self._vcpu_set(vcpu, attr))

    # --- ports ------------------------------------------------------------------------
    def route(self, port: int, route: Route | None) -> None:
        """KVM serves EVTCHNOP_send on `port` by raising `route` (None: it does not, the
        call reaches us). Only changes reach KVM."""
        with self._lock:
            if not self.active or self._routes.get(port) == route:
                return
            if port in self._routes:
                del self._routes[port]
                self._evtchn(port, u.KVM_XEN_EVTCHN_DEASSIGN)
                self._drop_eventfd(port)
            if callable(route):
                try:
                    self._route_eventfd(port, route)
                except (KvmError, OSError) as e:  # the send keeps reaching our path
                    log.warning("port %d: no eventfd route in KVM: %s", port, e)
                    return
            elif route is not None:
                kind, to_port, vcpu = route
                self._evtchn(port, 0, kind, to_port, vcpu)
            if route is not None:
                self._routes[port] = route

    def _route_eventfd(self, port: int, callback: Callable[[], None]) -> None:
        """api.rst 4.127 KVM_XEN_ATTR_TYPE_EVTCHN with deliver.eventfd (port 0): KVM
        signals `fd` for each send on `port`."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        attr = u.kvm_xen_hvm_attr(type=u.KVM_XEN_ATTR_TYPE_EVTCHN)
        ev = attr.u.evtchn
        ev.send_port, ev.type = port, abi.EVTCHNSTAT_interdomain
        ev.deliver.eventfd.port, ev.deliver.eventfd.fd = 0, fd
        try:
            self.vm.xen_set_attr(attr)
        except BaseException:
            os.close(fd)
            raise
        # A callback with a thread of its own to wait on (a backend's worker) takes the
        # fd there; the others share the watcher's thread.
        own = getattr(callback, "watch_eventfd", None)
        undo = own(fd) if own is not None else None
        if undo is not None:
            self._own_waits[port] = undo
        else:
            if self._watcher is None:
                self._watcher = EventfdWatcher()
            self._watcher.add(fd, callback)
        self._eventfds[port] = fd

    def _drop_eventfd(self, port: int) -> None:
        fd = self._eventfds.pop(port, None)
        if fd is None:
            return
        undo = self._own_waits.pop(port, None)
        if undo is not None:
            undo()  # it closes the fd once its thread no longer waits on it
            return
        assert self._watcher is not None
        self._watcher.remove(fd)
        os.close(fd)

    def _drop_eventfds(self) -> None:
        for port in list(self._eventfds):
            self._drop_eventfd(port)

    def close(self) -> None:
        """The domain is going: the eventfds and their thread (KVM goes with the VM)."""
        with self._lock:
            self._drop_eventfds()
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()

    def reset_routes(self) -> None:
        """EVTCHNOP_reset, a restore: KVM forgets every port."""
        with self._lock:
            if not self.active:
                return
            self._routes.clear()
            self._evtchn(0, u.KVM_XEN_EVTCHN_RESET)
            self._drop_eventfds()

    def routes(self) -> dict[int, Route]:
        with self._lock:
            return dict(self._routes)

    def send(self, port: int, vcpu: int) -> bool:
        """Raise `port` on `vcpu` through KVM (KVM_XEN_HVM_EVTCHN_SEND); False if KVM
        cannot (not active, no shared_info yet): the caller raises it itself."""
        if not self.active:
            return False
        try:
            self.vm.xen_evtchn_send(port, vcpu)
        except KvmError as e:
            log.debug("KVM_XEN_HVM_EVTCHN_SEND port %d: %s", port, e)
            return False
        return True

    # --- timers -----------------------------------------------------------------------
    def timer_port(self, vcpu: int, port: int) -> None:
        """`vcpu`'s VIRQ_TIMER is `port` (0: unbound): KVM runs its one-shot timer from
        then on, starting with the one we had armed."""
        with self._lock:
            if not self.active or self._timer_ports.get(vcpu, 0) == port:
                return
            if port:
                self._timer_ports[vcpu] = port
            else:
                self._timer_ports.pop(vcpu, None)

        def apply() -> None:
            if port:
                expires = self.take_oneshot(vcpu)
                self._set_timer(vcpu, port, expires or 0)
            else:
                self._timer_back(vcpu)

        self.on_vcpu_thread(vcpu, apply)

    def has_timer(self, vcpu: int) -> bool:
        with self._lock:
            return self.active and vcpu in self._timer_ports

    def set_oneshot(self, vcpu: int, expires_ns: int) -> None:
        """Arm `vcpu`'s one-shot in KVM at Xen system time `expires_ns` (a restore)."""
        port = self._timer_ports.get(vcpu)
        if port:
            self.on_vcpu_thread(vcpu, lambda: self._set_timer(vcpu, port, expires_ns))

    def oneshots(self) -> dict[int, int]:
        """The one-shot timers KVM has armed, by vCPU, as Xen system time (ns). Call
        with the vCPUs out of KVM_RUN (paused), as a save does."""
        with self._lock:
            vcpus = list(self._timer_ports)
        out: dict[int, int] = {}
        for vcpu in vcpus:
            expires = self._get_timer(vcpu).u.timer.expires_ns
            if expires:
                out[vcpu] = expires
        return out

    # --- ioctls -----------------------------------------------------------------------
    def _set(self, kind: int, field: str, value: int) -> None:
        attr = u.kvm_xen_hvm_attr(type=kind)
        setattr(attr.u, field, value)
        self.vm.xen_set_attr(attr)

    def _evtchn(self, port: int, flags: int, kind: int = 0, to_port: int = 0,
                vcpu: int = 0) -> None:
        attr = u.kvm_xen_hvm_attr(type=u.KVM_XEN_ATTR_TYPE_EVTCHN)
        ev = attr.u.evtchn
        ev.send_port, ev.type, ev.flags = port, kind, flags
        ev.deliver.port.port, ev.deliver.port.vcpu = to_port, vcpu
        ev.deliver.port.priority = _PRIO  # KVM delivers 2-level only
        self.vm.xen_set_attr(attr)

    def _vcpu_gpa(self, vcpu: int, kind: int, gpa: int) -> None:
        if not self.active:
            return
        attr = u.kvm_xen_vcpu_attr(type=kind)
        attr.u.gpa = gpa
        self.on_vcpu_thread(vcpu, lambda: self._vcpu_set(vcpu, attr))

    def _vcpu_set(self, vcpu: int, attr: u.kvm_xen_vcpu_attr) -> None:
        try:
            self.vcpus[vcpu].xen_set_attr(attr)
        except KvmError as e:  # a guest-given address KVM cannot map: Xen would refuse it too
            log.warning("vCPU %d: KVM_XEN_VCPU_SET_ATTR %d: %s", vcpu, attr.type, e)

    def _set_timer(self, vcpu: int, port: int, expires_ns: int) -> None:
        attr = u.kvm_xen_vcpu_attr(type=u.KVM_XEN_VCPU_ATTR_TYPE_TIMER)
        attr.u.timer.port, attr.u.timer.priority = port, _PRIO
        attr.u.timer.expires_ns = expires_ns
        self._vcpu_set(vcpu, attr)

    def _get_timer(self, vcpu: int) -> u.kvm_xen_vcpu_attr:
        return self.vcpus[vcpu].xen_get_attr(
            u.kvm_xen_vcpu_attr(type=u.KVM_XEN_VCPU_ATTR_TYPE_TIMER))


class EventfdWatcher:
    """One thread that waits on the eventfds KVM signals for guest sends to host backends
    and calls each one's callback, as our EVTCHNOP_send would have on the vCPU's thread
    (the backends' callbacks are thread-safe: they were always called from vCPU threads)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="xen-evtchn-fds", daemon=True)
        self._thread.start()

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        with self._lock:
            self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove(self, fd: int) -> None:
        """Before `fd` is closed: once this returns the thread neither reads it nor calls
        its callback for a wake-up it saw before (epoll_ctl beside a waiting epoll_wait is
        safe; what the thread does with a returned fd happens under the lock)."""
        with self._lock:
            self._selector.unregister(fd)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._selector.close()
        os.close(self._wake)

    def _run(self) -> None:
        while True:
            events = self._selector.select()
            with self._lock:
                if self._closed:
                    return
                current = self._selector.get_map()
                calls = []
                for key, _ in events:
                    if current.get(key.fd) is not key:
                        continue  # removed (or its number reused) since the wait returned
                    try:
                        os.eventfd_read(key.fd)
                    except BlockingIOError:
                        continue
                    if key.data is not None:
                        calls.append(key.data)
            for call in calls:
                try:
                    call()
                except Exception:
                    log.exception("backend callback of a Xen event channel failed")


__all__ = ["REQUIRED", "EventfdWatcher", "KernelEvents", "Route", "offered"]
