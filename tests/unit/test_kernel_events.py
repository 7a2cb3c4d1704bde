"""KVM's in-kernel Xen events (xen/kernel_events.py) with the VM and vCPU fds mocked:
this machine's KVM has no KVM_CAP_XEN_HVM, so what is checked is what we ask of KVM
(api.rst 4.126-4.132: the attribute types, the fields, the order, the thread) and that
our own delivery takes over wherever KVM cannot deliver.

Attribute numbers are linux/kvm.h's, written out here: KVM_XEN_ATTR_TYPE_LONG_MODE 0,
_SHARED_INFO 1, _UPCALL_VECTOR 2, _EVTCHN 3, _XEN_VERSION 4; KVM_XEN_VCPU_ATTR_TYPE_
VCPU_INFO 0, _VCPU_TIME_INFO 1, _VCPU_ID 6, _TIMER 7, _UPCALL_VECTOR 8; KVM_XEN_EVTCHN_DEASSIGN 1,
_RESET 4; KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL 2, _EVTCHN_SEND 0x20; EVTCHNSTAT_
interdomain 2, _ipi 5 (event_channel.h).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from xenopus.kvm import KvmError
from xenopus.kvm import uapi as u
from xenopus.memory import GuestMemory, MiB
from xenopus.xen import abi
from xenopus.xen import kernel_events as ke
from xenopus.xen.domain import XenDomain
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.hypercall import VMCALL, VMMCALL, HypercallTable, hypercall_page, vmcall_for

from .test_hypercall import FakeMachine

SI = 0x10000
PENDING = 2048
PRIO_2LEVEL = 0xFFFFFFFF
ATTR_LONG_MODE, ATTR_SHARED_INFO, ATTR_UPCALL_VECTOR, ATTR_EVTCHN, ATTR_XEN_VERSION = range(5)
VCPU_INFO, VCPU_TIME_INFO, VCPU_ID, VCPU_TIMER, VCPU_UPCALL_VECTOR = 0, 1, 6, 7, 8
DEASSIGN, RESET = 1, 4
STAT_INTERDOMAIN, STAT_IPI = 2, 5
INTERCEPT_HCALL, EVTCHN_SEND = 2, 0x20


class FakeVm:
    """The VM fd: records what is asked of it; `send_fails` makes EVTCHN_SEND fail."""

    def __init__(self) -> None:
        self.configs: list[tuple[int, int]] = []
        self.attrs: list[tuple] = []
        self.sent: list[tuple[int, int]] = []
        self.send_fails = False
        self.eventfds: list[int] = []  # every deliver.eventfd given, in order

    def xen_hvm_config(self, msr: int, flags: int = 0) -> None:
        self.configs.append((msr, flags))

    def xen_set_attr(self, attr: u.kvm_xen_hvm_attr) -> None:
        a = attr.u
        if attr.type == ATTR_EVTCHN and not a.evtchn.flags and a.evtchn.deliver.eventfd.port == 0:
            e = a.evtchn  # deliver.eventfd: port 0, then the fd KVM signals
            self.eventfds.append(e.deliver.eventfd.fd)
            self.attrs.append((ATTR_EVTCHN, e.send_port, e.flags, e.type, 0, -1))
        elif attr.type == ATTR_EVTCHN:
            e = a.evtchn
            assert e.deliver.port.priority == PRIO_2LEVEL
            self.attrs.append((ATTR_EVTCHN, e.send_port, e.flags, e.type,
                               e.deliver.port.port, e.deliver.port.vcpu))
        elif attr.type == ATTR_SHARED_INFO:
            self.attrs.append((ATTR_SHARED_INFO, a.shared_info.gfn))
        elif attr.type == ATTR_XEN_VERSION:
            self.attrs.append((ATTR_XEN_VERSION, a.xen_version))
        else:
            self.attrs.append((attr.type, a.long_mode))  # long_mode and vector share a byte

    def xen_evtchn_send(self, port: int, vcpu: int) -> None:
        if self.send_fails:
            raise KvmError("KVM_XEN_HVM_EVTCHN_SEND: Invalid argument", 22)
        self.sent.append((port, vcpu))

    def evtchn(self) -> list[tuple]:
        return [a for a in self.attrs if a[0] == ATTR_EVTCHN]


class FakeVcpuFd:
    def __init__(self, index: int, thread: list[int | None]) -> None:
        self.index = index
        self.thread = thread  # the vCPU whose thread runs now (None: another thread)
        self.attrs: list[tuple[int, int, int]] = []
        self.timer = (0, 0)  # port, expires_ns

    def xen_set_attr(self, attr: u.kvm_xen_vcpu_attr) -> None:
        assert self.thread[0] == self.index, "a vCPU ioctl off the vCPU's thread"
        if attr.type == VCPU_TIMER:
            self.timer = (attr.u.timer.port, attr.u.timer.expires_ns)
            assert attr.u.timer.priority == PRIO_2LEVEL
            self.attrs.append((VCPU_TIMER, attr.u.timer.port, attr.u.timer.expires_ns))
        elif attr.type == VCPU_UPCALL_VECTOR:
            self.attrs.append((VCPU_UPCALL_VECTOR, attr.u.vector, 0))
        elif attr.type == VCPU_ID:
            self.attrs.append((VCPU_ID, attr.u.vcpu_id, 0))
        else:
            self.attrs.append((attr.type, attr.u.gpa, 0))

    def xen_get_attr(self, attr: u.kvm_xen_vcpu_attr) -> u.kvm_xen_vcpu_attr:
        assert attr.type == VCPU_TIMER
        attr.u.timer.port, attr.u.timer.expires_ns = self.timer
        return attr


class Rig:
    """KernelEvents on fakes; vCPU calls queue until `run_vcpu(i)` (its next exit)."""

    def __init__(self, nr_vcpus: int = 2) -> None:
        self.vm = FakeVm()
        self.thread: list[int | None] = [None]
        self.fds = [FakeVcpuFd(i, self.thread) for i in range(nr_vcpus)]
        self.queued: dict[int, list[Callable[[], None]]] = {}
        self.k = ke.KernelEvents(self.vm, self.fds, self.on_vcpu_thread)

    def on_vcpu_thread(self, index: int, call: Callable[[], None]) -> None:
        self.queued.setdefault(index, []).append(call)

    def run_vcpu(self, index: int) -> None:
        self.thread[0] = index
        try:
            for call in self.queued.pop(index, []):
                call()
        finally:
            self.thread[0] = None

    def run_all(self) -> None:
        for i in list(self.queued):
            self.run_vcpu(i)


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 * MiB) as m:
        yield m


def test_offered_needs_every_flag_this_module_uses() -> None:
    assert ke.offered(0x1FF)  # what the nested host's 6.12 KVM reports
    assert not ke.offered(0)  # this machine's KVM
    assert not ke.offered(0x1FF & ~0x20)  # no EVTCHN_SEND (KVM before 5.19)
    assert not ke.offered(0x1FF & ~0x10)  # no EVTCHN_2LEVEL


def test_start_configures_kvm_for_event_sends_and_the_version() -> None:
    r = Rig()
    r.k.start(4 << 16 | 11)
    assert r.vm.configs == [(abi.XEN_HYPERCALL_MSR, INTERCEPT_HCALL | EVTCHN_SEND)]
    assert r.vm.attrs == [(ATTR_XEN_VERSION, 0x4000B), (ATTR_LONG_MODE, 1)]
    # Each vCPU's Xen ID, on its own thread: KVM answers a vCPU's own one-shot timer
    # calls only for that ID.
    r.run_all()
    assert [fd.attrs for fd in r.fds] == [[(VCPU_ID, 0, 0)], [(VCPU_ID, 1, 0)]]


def _channels(mem: GuestMemory, r: Rig) -> tuple[EventChannels, list[int]]:
    upcalls: list[int] = []
    ev = EventChannels(1, mem, 2, upcalls.append)
    ev.kernel = r.k
    r.k.start(0x4000B)
    ev.set_shared_info(SI)
    r.vm.attrs.clear()
    r.run_all()  # start's vCPU IDs (test_start_configures_kvm_...)
    for fd in r.fds:
        fd.attrs.clear()
    return ev, upcalls


def test_ipi_and_loopback_sends_are_routed_in_kvm_and_follow_the_table(mem) -> None:
    r = Rig()
    ev, _ = _channels(mem, r)
    ipi = ev.bind_ipi(1)
    assert r.vm.evtchn() == [(ATTR_EVTCHN, ipi, 0, STAT_IPI, ipi, 1)]
    a = ev.alloc_unbound(abi.DOMID_SELF, abi.DOMID_SELF)
    assert len(r.vm.evtchn()) == 1  # an unbound port: nothing KVM could serve
    b = ev.bind_interdomain(abi.DOMID_SELF, a)
    assert r.vm.evtchn()[1:] == [(ATTR_EVTCHN, b, 0, STAT_INTERDOMAIN, a, 0),
                                 (ATTR_EVTCHN, a, 0, STAT_INTERDOMAIN, b, 0)]
    r.vm.attrs.clear()
    assert ev.bind_vcpu(a, 1) == 0  # b's sends now raise a on vCPU 1
    assert r.vm.evtchn() == [(ATTR_EVTCHN, b, DEASSIGN, 0, 0, 0),
                             (ATTR_EVTCHN, b, 0, STAT_INTERDOMAIN, a, 1)]
    r.vm.attrs.clear()
    assert ev.close(a) == 0
    assert r.vm.evtchn() == [(ATTR_EVTCHN, a, DEASSIGN, 0, 0, 0),
                             (ATTR_EVTCHN, b, DEASSIGN, 0, 0, 0)]
    assert r.k.routes() == {ipi: (STAT_IPI, ipi, 1)}


def test_host_raises_go_through_kvm_and_ours_take_over_where_it_cannot(mem) -> None:
    r = Rig()
    ev, upcalls = _channels(mem, r)
    port = ev.bind_local(lambda: None, vcpu=1)
    assert ev.notify(port)
    assert r.vm.sent == [(port, 1)]
    assert mem.read_u64(SI + PENDING) == 0  # KVM's to set, not ours
    r.vm.send_fails = True  # e.g. KVM lost the shared_info
    assert ev.notify(port)
    assert mem.read_u64(SI + PENDING) == 1 << port and upcalls == [1]
    r.k.close()


def test_events_before_shared_info_wait_and_go_through_kvm_once_it_is_known(mem) -> None:
    r = Rig()
    ev = EventChannels(1, mem, 1, lambda v: None)
    ev.kernel = r.k
    r.k.start(0x4000B)
    port = ev.bind_local(lambda: None)
    assert ev.notify(port) and r.vm.sent == []
    ev.set_shared_info(SI)
    assert r.vm.sent == [(port, 0)]
    r.k.close()


def test_virq_timer_runs_in_kvm_on_its_vcpu_s_thread_and_takes_ours_over(mem) -> None:
    r = Rig()
    ev, _ = _channels(mem, r)
    r.k.take_oneshot = lambda vcpu: 5_000_000 if vcpu == 1 else None
    port = ev.bind_virq(abi.VIRQ_TIMER, 1)
    assert r.fds[1].attrs == []  # not from this (another vCPU's) thread
    r.run_vcpu(1)
    assert r.fds[1].attrs == [(VCPU_TIMER, port, 5_000_000)]
    assert r.k.has_timer(1) and not r.k.has_timer(0)
    r.fds[1].timer = (port, 7_000_000)
    assert r.k.oneshots() == {1: 7_000_000}  # what a save keeps
    given: list[tuple[int, int]] = []
    r.k.give_oneshot = lambda vcpu, ns: given.append((vcpu, ns))
    assert ev.close(port) == 0
    r.run_vcpu(1)
    assert r.fds[1].attrs[-1] == (VCPU_TIMER, 0, 0) and given == [(1, 7_000_000)]


def test_fifo_is_withheld_or_hands_everything_back(mem) -> None:
    from types import SimpleNamespace

    from xenopus.xen.guestmem import GuestAccess

    r = Rig()
    ev, _ = _channels(mem, r)
    ev.fifo_allowed = False
    access = GuestAccess(mem, SimpleNamespace(cr0=0x11, cr3=0, cr4=0, efer=0))
    ctl = abi.evtchn_init_control(control_gfn=0x30, offset=0, vcpu=0)
    mem.write(0x20000, bytes(ctl))
    assert ev.op(abi.EVTCHNOP_init_control, access, 0x20000) == -abi.XEN_ENOSYS
    ev.fifo_allowed = True
    ev.on_fifo = lambda: r.k.stop("FIFO")
    port = ev.bind_virq(abi.VIRQ_TIMER, 0)
    r.run_all()
    r.fds[0].timer = (port, 9_000)
    given: list[tuple[int, int]] = []
    r.k.give_oneshot = lambda vcpu, ns: given.append((vcpu, ns))
    r.vm.attrs.clear()
    assert ev.op(abi.EVTCHNOP_init_control, access, 0x20000) == 0
    r.run_all()
    assert r.vm.evtchn() == [(ATTR_EVTCHN, 0, RESET, 0, 0, 0)]
    assert r.vm.configs[-1] == (abi.XEN_HYPERCALL_MSR, INTERCEPT_HCALL)  # no EVTCHN_SEND
    assert given == [(0, 9_000)] and not r.k.active
    sent = len(r.vm.sent)
    ev.notify(ev.bind_local(lambda: None))
    assert len(r.vm.sent) == sent  # FIFO events are ours


def _domain(mem: GuestMemory, r: Rig) -> XenDomain:
    r.k.start(0x4000B)
    return XenDomain(1, FakeMachine(mem), HypercallTable(), console_out=print, kernel=r.k)


def test_domain_hands_kvm_its_placements_and_upcalls(mem) -> None:
    r = Rig()
    d = _domain(mem, r)
    try:
        r.vm.attrs.clear()
        r.run_all()  # start's vCPU IDs (test_start_configures_kvm_...)
        for fd in r.fds:
            fd.attrs.clear()
        d.map_shared_info(SI)
        assert r.vm.attrs == [(ATTR_SHARED_INFO, SI >> 12)]
        r.run_all()  # until a vCPU registers its own, its vcpu_info is its slot
        assert r.fds[0].attrs == [(VCPU_INFO, SI, 0)]
        assert r.fds[1].attrs == [(VCPU_INFO, SI + 64, 0)]
        assert d.register_vcpu_info(1, 0x20040, 1) == 0
        d.set_upcall_vector(1, 0xF3)
        d.set_time_area(1, 0x21000)
        r.run_vcpu(1)
        assert r.fds[1].attrs[1:] == [(VCPU_INFO, 0x20040, 0), (VCPU_UPCALL_VECTOR, 0xF3, 0),
                                      (VCPU_TIME_INFO, 0x21000, 0)]
        d.set_param(abi.HVM_PARAM_CALLBACK_IRQ, 2 << 56 | 0xF3)
        d.latch_shinfo_size(False)
        assert r.vm.attrs[-2:] == [(ATTR_UPCALL_VECTOR, 0xF3), (ATTR_LONG_MODE, 0)]
        d.set_param(abi.HVM_PARAM_CALLBACK_IRQ, 9)  # a GSI: KVM cannot raise it
        assert not r.k.active
        port = d.evtchn.bind_local(lambda: None)
        sent = len(r.vm.sent)
        d.evtchn.notify(port)
        assert len(r.vm.sent) == sent
    finally:
        d.close()


def test_linux_s_gsi_1_beside_vcpu_0_s_own_vector_keeps_kvm_s_path(mem) -> None:
    """Linux (enlighten_hvm.c xen_set_upcall_vector) gives vCPU 0 its own upcall vector,
    then sets HVM_PARAM_CALLBACK_IRQ to GSI 1 "to trick the toolstack": Xen raises a
    vCPU's own vector before the via (hvm_assert_evtchn_irq), so KVM keeps the events."""
    r = Rig()
    d = _domain(mem, r)
    try:
        d.map_shared_info(SI)
        d.set_upcall_vector(0, 0xF3)
        d.set_param(abi.HVM_PARAM_CALLBACK_IRQ, 1)
        assert r.k.active and r.vm.attrs[-1] == (ATTR_UPCALL_VECTOR, 0)
        port = d.evtchn.bind_local(lambda: None)
        sent = len(r.vm.sent)
        d.evtchn.notify(port)
        assert r.vm.sent[sent:] == [(port, 0)]  # raised through KVM
        state = d.save_state()
    finally:
        d.close()
    r2 = Rig()
    d2 = _domain(mem, r2)
    try:
        d2.restore_state(state)  # the via comes back after vCPU 0's vector: still KVM's
        assert r2.k.active
    finally:
        d2.close()


def test_save_keeps_the_timers_kvm_runs(mem) -> None:
    r = Rig()
    d = _domain(mem, r)
    try:
        d.map_shared_info(SI)
        port = d.evtchn.bind_virq(abi.VIRQ_TIMER, 0)
        r.run_all()
        r.fds[0].timer = (port, 123_456_789)
        assert [0, 123_456_789] in d.save_state()["oneshot"]
    finally:
        d.close()


def test_hypercall_page_on_the_kernel_path_uses_the_cpu_s_call_instruction() -> None:
    assert vmcall_for("AuthenticAMD") == VMMCALL == bytes([0x0F, 0x01, 0xD9])
    assert vmcall_for("GenuineIntel") == VMCALL == bytes([0x0F, 0x01, 0xC1])
    page = hypercall_page(VMMCALL)
    nr = abi.HYPERVISOR_event_channel_op
    # Xen's HVM stub: mov $nr, %eax; vmmcall; ret (then int3 padding)
    assert page[nr * 32:nr * 32 + 9] == bytes([0xB8, nr, 0, 0, 0, 0x0F, 0x01, 0xD9, 0xC3])
    assert page[nr * 32 + 9:nr * 32 + 32] == b"\xcc" * 23


def test_backend_ports_are_eventfds_kvm_signals_and_go_with_the_channel(mem) -> None:
    import os
    import threading

    r = Rig()
    ev, _ = _channels(mem, r)
    fds = r.vm.eventfds
    kicked = threading.Event()
    port = ev.bind_local(kicked.set)
    try:
        assert r.vm.evtchn() == [(ATTR_EVTCHN, port, 0, STAT_INTERDOMAIN, 0, -1)]
        os.eventfd_write(fds[0], 1)  # what KVM does for the guest's EVTCHNOP_send
        assert kicked.wait(10), "the backend was not called"
        ev.disconnect_local(port)
        assert r.vm.evtchn()[-1] == (ATTR_EVTCHN, port, DEASSIGN, 0, 0, 0)
        with pytest.raises(OSError):
            os.fstat(fds[0])  # closed with the route
        assert ev.connect_local(port, kicked.set) == 0  # a reconnecting backend: a new fd
        assert len(fds) == 2 and r.k.routes() == {port: kicked.set}
    finally:
        r.k.close()
    with pytest.raises(OSError):
        os.fstat(fds[1])


def test_a_backend_s_worker_waits_on_its_own_port_s_eventfd(mem) -> None:
    """A callback that offers `watch_eventfd` (a backend's, xenbus._Kick) gets KVM's
    eventfd for its port on its own worker: the guest's send wakes that thread alone, no
    shared eventfd thread; the channel's close hands the fd back to it to close."""
    import os
    import threading

    from xenopus.xen.backends.xenbus import Worker

    r = Rig()
    ev, _ = _channels(mem, r)
    ran: list[threading.Thread] = []
    sent = threading.Event()
    worker = Worker("blkback-test", lambda reasons: None)

    class Kick:  # the shape of xenbus._Kick
        def __call__(self) -> None:
            raise AssertionError("called through the shared eventfd thread")

        def watch_eventfd(self, fd: int) -> Callable[[], None] | None:
            return worker.watch_eventfd(fd, lambda: (ran.append(threading.current_thread()), sent.set()))

    port = ev.bind_local(Kick())
    fds = r.vm.eventfds
    try:
        assert r.vm.evtchn() == [(ATTR_EVTCHN, port, 0, STAT_INTERDOMAIN, 0, -1)]
        os.eventfd_write(fds[0], 1)  # what KVM does for the guest's EVTCHNOP_send
        assert sent.wait(10), "the backend's worker was not woken"
        assert ran == [worker.thread]
        assert not any(t.name == "xen-evtchn-fds" for t in threading.enumerate())
        ev.disconnect_local(port)
        assert r.vm.evtchn()[-1] == (ATTR_EVTCHN, port, DEASSIGN, 0, 0, 0)
    finally:
        worker.stop()  # runs the close the disconnect queued, if the worker had not yet
        r.k.close()
    with pytest.raises(OSError):
        os.fstat(fds[0])
