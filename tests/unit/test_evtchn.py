"""Event channels: the 2-level ABI bits in guest memory and every EVTCHNOP_*.

Offsets are hand-written from the headers, not taken from our ctypes structs:
xen.h (x86_64) struct shared_info = vcpu_info[32] (64 bytes each), then
evtchn_pending[64] at 32*64 = 2048 and evtchn_mask[64] at 2048+512 = 2560;
struct vcpu_info = evtchn_upcall_pending (u8, 0), evtchn_upcall_mask (u8, 1),
evtchn_pending_sel (xen_ulong_t, 8). event_channel.h: EVTCHNOP_* numbers and structs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from xenopus.memory import GuestMemory, MiB
from xenopus.memory.shared import GuestAtomics
from xenopus.xen.backends.xenbus import DomainHost
from xenopus.xen.evtchn import EventChannels, State
from xenopus.xen.grant import GrantMapper
from xenopus.xen.guestmem import GuestAccess

SI = 0x10000  # where the test puts shared_info
PENDING, MASK = 2048, 2560
VI_SIZE, VI_MASK, VI_SEL = 64, 1, 8
EINVAL, ENOENT, ESRCH, EEXIST, ENOSPC, ENOSYS, EFAULT, ENXIO = 22, 2, 3, 17, 28, 38, 14, 6
EOPNOTSUPP = 95
DOMID_SELF = 0x7FF0
VIRQ_TIMER, VIRQ_CONSOLE = 0, 2  # xen.h
# event_channel.h command numbers
ALLOC_UNBOUND, SEND, STATUS, BIND_INTERDOMAIN, BIND_VIRQ, CLOSE = 6, 4, 5, 0, 1, 3
BIND_IPI, BIND_VCPU, UNMASK, RESET, BIND_PIRQ = 7, 8, 9, 10, 2
EXPAND_ARRAY, SET_PRIORITY = 12, 13
ARG = 0x20000  # an argument struct, identity-mapped (paging off)


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 * MiB) as m:
        yield m


class Chans(SimpleNamespace):
    ev: EventChannels
    upcalls: list[int]


def make(mem: GuestMemory, nr_vcpus: int = 2, mapped: bool = True, **kw: object) -> Chans:
    upcalls: list[int] = []
    ev = EventChannels(1, mem, nr_vcpus, upcalls.append, **kw)  # type: ignore[arg-type]
    if mapped:
        ev.set_shared_info(SI)
    return Chans(ev=ev, upcalls=upcalls)


@pytest.fixture
def c(mem: GuestMemory) -> Chans:
    return make(mem)


def access(mem: GuestMemory) -> GuestAccess:
    return GuestAccess(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))  # PE, no paging


def bit(mem: GuestMemory, base: int, nr: int) -> int:
    return mem.read_u64(base + 8 * (nr // 64)) >> (nr % 64) & 1


def pending(mem: GuestMemory, port: int) -> int:
    return bit(mem, SI + PENDING, port)


def sel(mem: GuestMemory, vcpu: int) -> int:
    return mem.read_u64(SI + vcpu * VI_SIZE + VI_SEL)


def upcall(mem: GuestMemory, vcpu: int) -> int:
    return mem.read_u8(SI + vcpu * VI_SIZE)


def mask(mem: GuestMemory, port: int) -> None:
    a = SI + MASK + 8 * (port // 64)
    mem.write_u64(a, mem.read_u64(a) | 1 << (port % 64))


# --- the 2-level bits ----------------------------------------------------------------------


def test_send_sets_pending_selector_and_upcall_once(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(1)
    assert port == 1  # port 0 is reserved
    assert c.ev.send(port) == 0
    assert pending(mem, port) == 1
    assert sel(mem, 1) == 1 << (port // 64)
    assert upcall(mem, 1) == 1 and upcall(mem, 0) == 0
    assert c.upcalls == [1]
    mem.write_u8(SI + VI_SIZE, 0)  # the guest took the upcall; the port is still pending
    assert c.ev.send(port) == 0  # nothing new: the guest's scan will find it
    assert c.upcalls == [1]


def test_port_in_second_word_sets_its_selector_bit(mem: GuestMemory, c: Chans) -> None:
    ports = [c.ev.bind_ipi(0) for _ in range(70)]
    assert c.ev.send(ports[-1]) == 0  # port 70: word 1
    assert sel(mem, 0) == 1 << 1 and pending(mem, 70) == 1


def test_upcall_not_taken_yet_is_sent_again(mem: GuestMemory, c: Chans) -> None:
    # evtchn_upcall_pending is set but the upcall never arrived (KVM drops an MSI to a
    # software-disabled LAPIC; Linux binds ports before it enables its APIC): every later
    # event re-sends it, pending port or not, until the guest takes it.
    a, b = c.ev.bind_ipi(0), c.ev.bind_ipi(0)
    c.ev.send(a)
    assert c.upcalls == [0]
    c.ev.send(a)  # already pending, selector already set
    c.ev.send(b)  # new port, selector word already set
    assert c.upcalls == [0, 0, 0] and pending(mem, a) and pending(mem, b)
    mem.write_u8(SI, 0)  # the guest takes it: clears the flag, then scans
    c.ev.send(b)
    assert c.upcalls == [0, 0, 0]


def test_upcall_flag_set_by_the_guest_alone_gets_an_upcall(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(0)
    mem.write_u8(SI, 1)  # set, with no upcall of ours on its way
    c.ev.send(port)
    assert c.upcalls == [0] and sel(mem, 0) == 1


def test_masked_port_sends_no_upcall_again(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(0)
    mem.write_u8(SI, 1)
    mask(mem, port)
    c.ev.send(port)
    c.ev.send(port)
    assert c.upcalls == []


def test_masked_port_stays_pending_and_fires_on_unmask(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(0)
    mask(mem, port)
    c.ev.send(port)
    assert pending(mem, port) == 1 and sel(mem, 0) == 0 and upcall(mem, 0) == 0
    assert c.upcalls == []
    assert c.ev.unmask(port) == 0
    assert bit(mem, SI + MASK, port) == 0
    assert sel(mem, 0) == 1 and upcall(mem, 0) == 1 and c.upcalls == [0]


def test_unmask_of_idle_port_only_clears_mask(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(0)
    mask(mem, port)
    assert c.ev.unmask(port) == 0
    assert bit(mem, SI + MASK, port) == 0 and c.upcalls == [] and sel(mem, 0) == 0


def test_upcall_mask_ignored_for_hvm_by_default(mem: GuestMemory, c: Chans) -> None:
    mem.write_u8(SI + VI_MASK, 1)
    c.ev.send(c.ev.bind_ipi(0))
    assert c.upcalls == [0]  # Xen ignores evtchn_upcall_mask for HVM vCPUs


def test_upcall_mask_suppresses_deliver_when_honoured(mem: GuestMemory) -> None:
    c = make(mem, honour_upcall_mask=True)
    mem.write_u8(SI + VI_MASK, 1)
    port = c.ev.bind_ipi(0)
    c.ev.send(port)
    assert upcall(mem, 0) == 1 and sel(mem, 0) == 1 and c.upcalls == []


def test_guest_bits_set_concurrently_survive(mem: GuestMemory, c: Chans) -> None:
    mem.write_u64(SI + PENDING, 1 << 40)  # the guest's own bits in the same word
    c.ev.send(c.ev.bind_ipi(0))
    assert mem.read_u64(SI + PENDING) == 1 << 40 | 1 << 1


def test_events_before_shared_info_are_marked_when_it_is_mapped(mem: GuestMemory) -> None:
    c = make(mem, mapped=False)
    port = c.ev.bind_ipi(1)
    assert c.ev.send(port) == 0
    assert c.upcalls == [] and mem.read_u64(SI + PENDING) == 0
    c.ev.set_shared_info(SI)
    assert pending(mem, port) == 1 and c.upcalls == [1]


def test_register_vcpu_info_moves_and_marks_everything(mem: GuestMemory, c: Chans) -> None:
    new = 0x30040
    mem.write_u8(SI + VI_SIZE + VI_MASK, 0)
    assert c.ev.register_vcpu_info(1, new) == 0
    assert mem.read_u8(new) == 1 and mem.read_u64(new + VI_SEL) == 2**64 - 1
    assert c.upcalls == [1]
    assert c.ev.vcpu_info_gpa(1) == new
    assert c.ev.register_vcpu_info(1, new) == -EINVAL  # once only
    assert c.ev.register_vcpu_info(2, new) == -ENOENT
    assert c.ev.register_vcpu_info(0, 0x30000 + 4096 - 32) == -ENXIO  # crosses a page
    assert c.ev.register_vcpu_info(0, 0x30004) == -ENXIO  # misaligned
    assert c.ev.register_vcpu_info(0, 0x7000_0000) == -EINVAL  # not RAM


def test_events_go_to_registered_vcpu_info(mem: GuestMemory, c: Chans) -> None:
    new = 0x30000
    c.ev.register_vcpu_info(1, new)
    mem.write_u8(new, 0)
    mem.write_u64(new + VI_SEL, 0)
    c.upcalls.clear()
    c.ev.send(c.ev.bind_ipi(1))
    assert mem.read_u64(new + VI_SEL) == 1 and mem.read_u8(new) == 1
    assert sel(mem, 1) == 0 and c.upcalls == [1]


def test_vcpu_beyond_legacy_slots_has_no_vcpu_info_until_registered(mem: GuestMemory) -> None:
    c = make(mem, nr_vcpus=40)
    port = c.ev.bind_ipi(35)
    c.ev.send(port)
    assert pending(mem, port) == 1 and c.upcalls == []
    assert c.ev.register_vcpu_info(35, 0x30000) == 0
    assert c.upcalls == [35] and mem.read_u8(0x30000 + VI_MASK) == 1  # Xen: fresh = masked


# --- bindings ------------------------------------------------------------------------------


def test_virq_binding_and_raise(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_virq(VIRQ_TIMER, 1)
    assert port > 0
    assert c.ev.bind_virq(VIRQ_TIMER, 1) == -EEXIST
    assert c.ev.bind_virq(VIRQ_TIMER, 0) > 0  # per-vCPU: vCPU 0 has its own
    assert c.ev.raise_virq(1, VIRQ_TIMER)
    assert pending(mem, port) and sel(mem, 1) and c.upcalls == [1]
    assert c.ev.send(port) == -EINVAL  # a guest cannot send on a VIRQ
    assert c.ev.close(port) == 0
    assert not c.ev.raise_virq(1, VIRQ_TIMER)
    assert c.ev.bind_virq(VIRQ_TIMER, 1) > 0  # free to bind again


def test_global_virq_binds_on_vcpu0_and_moves(mem: GuestMemory, c: Chans) -> None:
    assert c.ev.bind_virq(VIRQ_CONSOLE, 1) == -EINVAL
    port = c.ev.bind_virq(VIRQ_CONSOLE, 0)
    assert c.ev.bind_vcpu(port, 1) == 0
    assert c.ev.raise_virq(0, VIRQ_CONSOLE)
    assert sel(mem, 1) and c.upcalls == [1]


def test_virq_errors(c: Chans) -> None:
    assert c.ev.bind_virq(24, 0) == -EINVAL  # NR_VIRQS
    assert c.ev.bind_virq(VIRQ_TIMER, 2) == -ENOENT
    assert c.ev.bind_virq(VIRQ_TIMER, 2**32 - 1) == -ENOENT
    assert not c.ev.raise_virq(7, VIRQ_TIMER)


def test_ipi_goes_to_its_vcpu_and_rebinding_is_refused(mem: GuestMemory, c: Chans) -> None:
    port = c.ev.bind_ipi(1)
    assert c.ev.bind_vcpu(port, 0) == -EINVAL  # Xen: IPIs stay on their vCPU
    c.ev.send(port)
    assert c.upcalls == [1]
    assert c.ev.bind_ipi(2) == -ENOENT


def test_interdomain_loopback(mem: GuestMemory, c: Chans) -> None:
    a = c.ev.alloc_unbound(DOMID_SELF, DOMID_SELF)
    assert c.ev.port_state(a) == State.UNBOUND
    assert c.ev.send(a) == 0 and pending(mem, a) == 0  # unbound: dropped
    b = c.ev.bind_interdomain(DOMID_SELF, a)
    assert b > 0 and c.ev.port_state(a) == State.INTERDOMAIN
    assert pending(mem, b) == 1  # Xen raises the binder's port in case of lost sends
    assert c.ev.bind_vcpu(a, 1) == 0
    c.upcalls.clear()
    assert c.ev.send(b) == 0
    assert pending(mem, a) == 1 and c.upcalls == [1]
    assert c.ev.bind_interdomain(DOMID_SELF, a) == -EINVAL  # no longer unbound
    assert c.ev.close(a) == 0
    assert c.ev.port_state(b) == State.UNBOUND
    assert pending(mem, a) == 0  # closing clears the pending bit


def test_bind_interdomain_checks_the_remote_port(c: Chans) -> None:
    other = c.ev.alloc_unbound(DOMID_SELF, 5)  # meant for domain 5
    assert c.ev.bind_interdomain(DOMID_SELF, other) == -EINVAL
    assert c.ev.bind_interdomain(DOMID_SELF, 4096) == -EINVAL
    assert c.ev.bind_interdomain(DOMID_SELF, 3000) == -EINVAL  # free
    assert c.ev.bind_interdomain(5, other) == -ESRCH  # no broker: no other domains
    assert c.ev.port_state(2) == State.FREE  # failed binds leaked nothing


def test_local_port_callbacks_both_ways(mem: GuestMemory, c: Chans) -> None:
    calls: list[str] = []
    port = c.ev.bind_local(lambda: calls.append("store"))
    assert c.ev.send(port) == 0 and calls == ["store"]
    assert c.ev.notify(port)
    assert pending(mem, port) == 1 and c.upcalls == [0]
    # a frontend's port for the backend domain (0), bound by the backend in this process
    fe = c.ev.alloc_unbound(DOMID_SELF, 0)
    assert c.ev.connect_local(fe, lambda: calls.append("blk")) == 0
    c.ev.send(fe)
    assert calls == ["store", "blk"]
    assert c.ev.connect_local(fe, lambda: None) == -EINVAL  # already connected
    assert not c.ev.notify(c.ev.bind_ipi(0))  # not a host endpoint


def test_backend_close_leaves_the_frontend_port_unbound(mem: GuestMemory, c: Chans) -> None:
    # event_channel.c evtchn_close: closing one end of an interdomain channel makes the
    # other end unbound again (for the same remote domain), ready to be bound anew.
    calls: list[str] = []
    fe = c.ev.alloc_unbound(DOMID_SELF, 0)
    host = DomainHost(c.ev, GrantMapper(lambda domid: None))
    backend_end = host.bind_event(1, fe, lambda: calls.append("old"))
    c.ev.send(fe)
    backend_end.close()
    assert c.ev.port_state(fe) == State.UNBOUND
    assert c.ev.send(fe) == 0 and calls == ["old"]  # the closed backend hears nothing
    assert not c.ev.notify(fe)
    host.bind_event(1, fe, lambda: calls.append("new"))
    c.ev.send(fe)
    assert calls == ["old", "new"]


def test_local_callback_may_notify_back_at_once(mem: GuestMemory, c: Chans) -> None:
    ports: list[int] = []
    ports.append(c.ev.bind_local(lambda: c.ev.notify(ports[0])))
    c.ev.send(ports[0])
    assert pending(mem, ports[0]) == 1


def test_interdomain_between_two_domains_through_a_broker(mem: GuestMemory) -> None:
    with GuestMemory.create(1 * MiB) as mem_b:
        doms: dict[int, EventChannels] = {}

        class Broker:
            closed: list[tuple[int, int]] = []

            def bind(self, ldom: int, lport: int, rdom: int, rport: int
                     ) -> Callable[[], None] | int:
                far = doms.get(rdom)
                if far is None:
                    return -ESRCH
                rc = far.connect_remote(rport, ldom, lport, lambda: doms[ldom].remote_notify(lport))
                return rc if rc < 0 else (lambda: far.remote_notify(rport))

            def close(self, ldom: int, lport: int, rdom: int, rport: int) -> None:
                doms[rdom].remote_closed(rport)

        up_a: list[int] = []
        up_b: list[int] = []
        a = EventChannels(1, mem, 1, up_a.append, broker=Broker())
        b = EventChannels(2, mem_b, 1, up_b.append, broker=Broker())
        doms.update({1: a, 2: b})
        a.set_shared_info(SI)
        b.set_shared_info(SI)
        pa = a.alloc_unbound(DOMID_SELF, 2)
        assert b.bind_interdomain(3, pa) == -ESRCH
        assert b.bind_interdomain(1, pa + 1) == -EINVAL
        pb = b.bind_interdomain(1, pa)
        assert pb > 0 and up_b == [0]
        assert b.send(pb) == 0 and pending(mem, pa) == 1 and up_a == [0]
        mem_b.write_u64(SI + PENDING, 0)
        assert a.send(pa) == 0 and pending(mem_b, pb) == 1
        st = a.status(DOMID_SELF, pa)
        assert not isinstance(st, int) and (st[1].u.interdomain.dom, st[1].u.interdomain.port) == (2, pb)
        assert b.close(pb) == 0
        assert a.port_state(pa) == State.UNBOUND


# --- errors and status, through the hypercall entry ----------------------------------------


def call(mem: GuestMemory, ev: EventChannels, cmd: int, fmt: str, *vals: int) -> tuple[int, bytes]:
    raw = struct.pack(fmt, *vals)
    mem.write(ARG, raw.ljust(32, b"\0"))
    return ev.op(cmd, access(mem), ARG), mem.read(ARG, 32)


def test_op_alloc_unbound_writes_the_port(mem: GuestMemory, c: Chans) -> None:
    # struct evtchn_alloc_unbound { domid_t dom, remote_dom; evtchn_port_t port; }
    rc, out = call(mem, c.ev, ALLOC_UNBOUND, "<HHI", DOMID_SELF, 0, 0)
    assert rc == 0 and struct.unpack_from("<I", out, 4) == (1,)
    rc, _ = call(mem, c.ev, ALLOC_UNBOUND, "<HHI", 9, 0, 0)
    assert rc == -ESRCH


def test_op_status_contents(mem: GuestMemory, c: Chans) -> None:
    # struct evtchn_status: dom@0 port@4 status@8 vcpu@12 u@16 (interdomain: dom@16 port@20)
    a = c.ev.alloc_unbound(DOMID_SELF, 7)
    rc, out = call(mem, c.ev, STATUS, "<HHI", DOMID_SELF, 0, a)
    assert rc == 0 and struct.unpack_from("<IIH", out, 8) == (1, 0, 7)  # unbound to d7
    x = c.ev.alloc_unbound(DOMID_SELF, DOMID_SELF)
    y = c.ev.bind_interdomain(DOMID_SELF, x)
    c.ev.bind_vcpu(y, 1)
    rc, out = call(mem, c.ev, STATUS, "<HHI", DOMID_SELF, 0, y)
    assert struct.unpack_from("<IIHHI", out, 8) == (2, 1, 1, 0, x)  # interdomain to d1:x
    v = c.ev.bind_virq(VIRQ_TIMER, 1)
    rc, out = call(mem, c.ev, STATUS, "<HHI", DOMID_SELF, 0, v)
    assert struct.unpack_from("<III", out, 8) == (4, 1, VIRQ_TIMER)
    i = c.ev.bind_ipi(1)
    rc, out = call(mem, c.ev, STATUS, "<HHI", DOMID_SELF, 0, i)
    assert struct.unpack_from("<II", out, 8) == (5, 1)
    for closed in (0, 4095):
        rc, out = call(mem, c.ev, STATUS, "<HHI", 1, 0, closed)
        assert rc == 0 and struct.unpack_from("<I", out, 8) == (0,)
    assert call(mem, c.ev, STATUS, "<HHI", DOMID_SELF, 0, 4096)[0] == -EINVAL
    assert call(mem, c.ev, STATUS, "<HHI", 3, 0, a)[0] == -ESRCH


@pytest.mark.parametrize("cmd", [CLOSE, SEND, UNMASK])
@pytest.mark.parametrize("port", [4096, 2**32 - 1])
def test_out_of_range_ports_are_einval(mem: GuestMemory, c: Chans, cmd: int, port: int) -> None:
    assert call(mem, c.ev, cmd, "<I", port)[0] == -EINVAL


def test_closed_and_reserved_ports(mem: GuestMemory, c: Chans) -> None:
    for port in (0, 5):
        assert call(mem, c.ev, CLOSE, "<I", port)[0] == -EINVAL
        assert call(mem, c.ev, SEND, "<I", port)[0] == -EINVAL
    assert call(mem, c.ev, BIND_VCPU, "<II", 5, 0)[0] == -EINVAL
    assert call(mem, c.ev, BIND_VCPU, "<II", 4096, 0)[0] == -EINVAL
    port = c.ev.bind_ipi(0)
    assert call(mem, c.ev, CLOSE, "<I", port)[0] == 0
    assert call(mem, c.ev, CLOSE, "<I", port)[0] == -EINVAL


def test_bad_vcpu_numbers(mem: GuestMemory, c: Chans) -> None:
    assert call(mem, c.ev, BIND_IPI, "<II", 2, 0)[0] == -ENOENT
    assert call(mem, c.ev, BIND_VIRQ, "<III", VIRQ_TIMER, 99, 0)[0] == -ENOENT
    port = c.ev.alloc_unbound(DOMID_SELF, 0)
    assert call(mem, c.ev, BIND_VCPU, "<II", port, 2)[0] == -ENOENT


def test_op_binds_write_their_port(mem: GuestMemory, c: Chans) -> None:
    rc, out = call(mem, c.ev, BIND_IPI, "<II", 1, 0)
    assert rc == 0 and struct.unpack_from("<I", out, 4) == (1,)
    rc, out = call(mem, c.ev, BIND_VIRQ, "<III", VIRQ_TIMER, 0, 0)
    assert rc == 0 and struct.unpack_from("<I", out, 8) == (2,)
    # struct evtchn_bind_interdomain { domid_t remote_dom; port remote_port@4; local_port@8 }
    a = c.ev.alloc_unbound(DOMID_SELF, DOMID_SELF)
    rc, out = call(mem, c.ev, BIND_INTERDOMAIN, "<HHII", DOMID_SELF, 0, a, 0)
    assert rc == 0 and struct.unpack_from("<I", out, 8) == (4,)


def test_unsupported_ops(mem: GuestMemory, c: Chans) -> None:
    for cmd in (SET_PRIORITY, 14, 99):  # set_priority: 2-level has no priorities
        assert call(mem, c.ev, cmd, "<I", 0)[0] == -ENOSYS
    # event_fifo.c: no FIFO control block was ever set up, so there is no array to expand.
    assert call(mem, c.ev, EXPAND_ARRAY, "<Q", 0)[0] == -EOPNOTSUPP
    assert c.ev.fifo is None
    assert call(mem, c.ev, BIND_PIRQ, "<III", 1, 0, 0)[0] == -EINVAL


def test_bad_pointer_is_efault(mem: GuestMemory, c: Chans) -> None:
    assert c.ev.op(SEND, access(mem), 0x7FFF_0000) == -EFAULT
    assert c.ev.op(ALLOC_UNBOUND, access(mem), 1 * MiB - 2) == -EFAULT  # straddles RAM end


def test_reset_closes_everything(mem: GuestMemory, c: Chans) -> None:
    ports = [c.ev.bind_ipi(0), c.ev.alloc_unbound(DOMID_SELF, 0), c.ev.bind_virq(VIRQ_TIMER, 0)]
    c.ev.send(ports[0])
    assert call(mem, c.ev, RESET, "<H", 4)[0] == -ESRCH
    assert call(mem, c.ev, RESET, "<H", DOMID_SELF)[0] == 0
    assert all(c.ev.port_state(p) == State.FREE for p in ports)
    assert c.ev.port_state(0) == State.RESERVED and pending(mem, ports[0]) == 0
    assert c.ev.bind_virq(VIRQ_TIMER, 0) > 0


def test_table_full_is_enospc(c: Chans) -> None:
    for _ in range(4095):
        assert c.ev.alloc_unbound(DOMID_SELF, 0) > 0
    assert c.ev.alloc_unbound(DOMID_SELF, 0) == -ENOSPC
    assert c.ev.bind_ipi(0) == -ENOSPC


def test_atomics_return_old_values(mem: GuestMemory) -> None:
    at = GuestAtomics(mem)
    assert not at.test_and_set_bit(0x100, 70) and at.test_and_set_bit(0x100, 70)
    assert mem.read_u64(0x108) == 1 << 6
    assert at.test_and_clear_bit(0x100, 70) and mem.read_u64(0x108) == 0
    mem.write_u32(0x200, 5)
    assert at.cmpxchg32(0x200, 4, 9) == 5 and mem.read_u32(0x200) == 5
    assert at.cmpxchg32(0x200, 5, 9) == 5 and mem.read_u32(0x200) == 9
