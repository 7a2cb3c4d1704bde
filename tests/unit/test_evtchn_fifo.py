"""The FIFO event channel ABI: the queues as a guest consuming them sees them.

Layouts are hand-written from xen/include/public/event_channel.h ("FIFO ABI"):
event_word_t is a uint32_t with PENDING bit 31, MASKED 30, LINKED 29, BUSY 28 and LINK in
bits 0-16 (EVTCHN_FIFO_LINK_BITS 17); struct evtchn_fifo_control_block is
{ uint32_t ready; uint32_t _rsvd; uint32_t head[16]; } (72 bytes, head at 8);
EVTCHN_FIFO_PRIORITY_DEFAULT is 7, _MIN 15. The consumer below follows Linux's
drivers/xen/events/events_fifo.c (consume_one_event, clear_linked): a private HEAD cursor
per queue, the control block's HEAD read only once the cursor reached 0, the READY word
taken with an exchange, lowest priority number first.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from xenopus.memory import GuestMemory, MiB
from xenopus.memory.shared import GuestAtomics
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.guestmem import GuestAccess

PENDING, MASKED, LINKED, BUSY = 1 << 31, 1 << 30, 1 << 29, 1 << 28
LINK_MASK = (1 << 17) - 1
CB_SIZE, CB_HEAD = 72, 8
SI = 0x10000
CONTROL = [0x30000, 0x30000 + 0x100]  # vCPU 0 and 1 share a page (Xen allows it)
ARRAY = [0x40000, 0x41000]
ARG = 0x20000
INIT_CONTROL, EXPAND_ARRAY, SET_PRIORITY, UNMASK, RESET = 11, 12, 13, 9, 10
EINVAL, ENOSPC, EOPNOTSUPP = 22, 28, 95
DOMID_SELF = 0x7FF0


def access(mem: GuestMemory) -> GuestAccess:
    return GuestAccess(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))


def op(mem: GuestMemory, ev: EventChannels, cmd: int, fmt: str, *vals: int) -> int:
    mem.write(ARG, struct.pack(fmt, *vals).ljust(32, b"\0"))
    return ev.op(cmd, access(mem), ARG)


class Guest:
    """A guest's FIFO consumer on one vCPU (Linux's algorithm, with its atomic updates)."""

    def __init__(self, mem: GuestMemory, vcpu: int = 0):
        self.mem, self.atomics = mem, GuestAtomics(mem)
        self.control = CONTROL[vcpu]
        self.heads = [0] * 16
        self.got: list[int] = []

    def word(self, port: int) -> int:
        return ARRAY[port // 1024] + 4 * (port % 1024)

    def init_array_page(self, index: int) -> None:
        for port in range(1024 * index, 1024 * (index + 1)):
            self.mem.write_u32(self.word(port), MASKED)  # Linux: every event starts masked

    def cmpxchg_loop(self, port: int, change) -> int:
        w = self.mem.read_u32(self.word(port))
        while True:
            found = self.atomics.cmpxchg32(self.word(port), w, change(w))
            if found == w:
                return w
            w = found

    def unmask(self, ev: EventChannels, port: int) -> None:
        """evtchn_fifo_unmask: clear MASKED unless BUSY; ask Xen if pending (or busy)."""
        w = self.mem.read_u32(self.word(port))
        while not w & (BUSY | PENDING):
            found = self.atomics.cmpxchg32(self.word(port), w, w & ~MASKED)
            if found == w:
                return
            w = found
        assert ev.unmask(port) == 0

    def mask(self, port: int) -> None:
        self.cmpxchg_loop(port, lambda w: w | MASKED)

    def ready(self) -> int:
        return self.mem.read_u32(self.control)

    def head(self, priority: int) -> int:
        return self.mem.read_u32(self.control + CB_HEAD + 4 * priority)

    def consume_one(self, priority: int, ready: list[int]) -> None:
        head = self.heads[priority]
        if head == 0:
            head = self.head(priority)
        port = head
        old = self.cmpxchg_loop(port, lambda w: w & ~(LINKED | LINK_MASK))  # clear_linked
        head = old & LINK_MASK
        if head == 0:
            ready[0] &= ~(1 << priority)
        w = self.mem.read_u32(self.word(port))
        if w & PENDING and not w & MASKED:
            self.cmpxchg_loop(port, lambda w: w & ~PENDING)  # the handler's EOI
            self.got.append(port)
        self.heads[priority] = head

    def take_ready(self) -> int:
        return self.atomics.fetch_and(self.control, ~0xFFFFFFFF & (2**64 - 1)) & 0xFFFFFFFF

    def drain(self, steps: int = 10_000) -> list[int]:
        """The upcall: every queued event, lowest priority number first."""
        self.mem.write_u8(SI, 0)  # vcpu_info.evtchn_upcall_pending (vCPU 0's, in shared_info)
        ready = [self.take_ready()]
        for _ in range(steps):
            if not ready[0]:
                break
            self.consume_one((ready[0] & -ready[0]).bit_length() - 1, ready)
            ready[0] |= self.take_ready()
        got, self.got = self.got, []
        return got


class Dom(SimpleNamespace):
    ev: EventChannels
    upcalls: list[int]
    g: Guest


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 * MiB) as m:
        yield m


def switch(mem: GuestMemory, nr_vcpus: int = 2) -> Dom:
    upcalls: list[int] = []
    ev = EventChannels(1, mem, nr_vcpus, upcalls.append)
    ev.set_shared_info(SI)
    g = Guest(mem)
    g.init_array_page(0)
    assert op(mem, ev, INIT_CONTROL, "<QII", CONTROL[0] >> 12, CONTROL[0] & 0xFFF, 0) == 0
    assert struct.unpack_from("<B", mem.read(ARG + 16, 1)) == (17,)  # link_bits out
    assert op(mem, ev, EXPAND_ARRAY, "<Q", ARRAY[0] >> 12) == 0
    return Dom(ev=ev, upcalls=upcalls, g=g)


@pytest.fixture
def d(mem: GuestMemory) -> Dom:
    return switch(mem)


def ipi(d: Dom, priority: int | None = None, vcpu: int = 0) -> int:
    port = d.ev.bind_ipi(vcpu)
    assert port > 0
    if priority is not None:
        assert op(d.g.mem, d.ev, SET_PRIORITY, "<II", port, priority) == 0
    d.g.unmask(d.ev, port)
    return port


def test_one_event_sets_head_ready_and_the_upcall(mem: GuestMemory, d: Dom) -> None:
    port = ipi(d)
    assert d.ev.send(port) == 0
    assert mem.read_u32(d.g.word(port)) == PENDING | LINKED  # LINK 0: the tail
    assert d.g.head(7) == port and d.g.ready() == 1 << 7  # the default priority's queue
    assert mem.read_u8(SI) == 1 and d.upcalls == [0]  # vcpu_info.evtchn_upcall_pending
    assert d.g.drain() == [port]
    assert mem.read_u32(d.g.word(port)) == 0


def test_events_of_one_queue_come_in_raising_order(mem: GuestMemory, d: Dom) -> None:
    ports = [ipi(d) for _ in range(4)]
    for p in (ports[2], ports[0], ports[3], ports[1]):
        d.ev.send(p)
    # Each linked to the previous tail: head 2 -> 0 -> 3 -> 1.
    assert d.g.head(7) == ports[2]
    assert mem.read_u32(d.g.word(ports[2])) & LINK_MASK == ports[0]
    assert d.upcalls == [0]  # the queue was already READY for the later ones
    assert d.g.drain() == [ports[2], ports[0], ports[3], ports[1]]


def test_priorities_are_separate_queues_highest_first(d: Dom) -> None:
    low, mid, high = ipi(d, 15), ipi(d), ipi(d, 0)
    for p in (low, mid, high):
        d.ev.send(p)
    assert d.g.ready() == (1 << 15) | (1 << 7) | 1
    assert (d.g.head(15), d.g.head(7), d.g.head(0)) == (low, mid, high)
    assert d.g.drain() == [high, mid, low]


def test_queues_are_per_vcpu(mem: GuestMemory, d: Dom) -> None:
    assert op(mem, d.ev, INIT_CONTROL, "<QII", CONTROL[1] >> 12, CONTROL[1] & 0xFFF, 1) == 0
    p0, p1 = ipi(d, vcpu=0), ipi(d, vcpu=1)
    d.ev.send(p1)
    d.ev.send(p0)
    g1 = Guest(mem, 1)
    assert d.upcalls == [1, 0]
    assert g1.drain() == [p1] and d.g.drain() == [p0]


def test_a_masked_event_stays_pending_until_unmasked(mem: GuestMemory, d: Dom) -> None:
    port = ipi(d)
    d.g.mask(port)
    d.ev.send(port)
    assert mem.read_u32(d.g.word(port)) == PENDING | MASKED  # not linked
    assert d.g.ready() == 0 and d.upcalls == []
    d.g.unmask(d.ev, port)  # pending: the guest asks Xen, which links it
    assert d.upcalls == [0] and d.g.drain() == [port]


def test_a_pending_event_is_not_linked_twice(d: Dom) -> None:
    port = ipi(d)
    d.ev.send(port)
    d.ev.send(port)
    assert d.g.drain() == [port]
    assert d.g.drain() == []


def test_consumer_between_links_empties_and_refills_the_queue(mem: GuestMemory, d: Dom) -> None:
    """The guest consumes while we link: an event linked after a tail the guest has
    already unlinked must go into HEAD (and raise READY again), else it is lost."""
    a, b, c, e = (ipi(d) for _ in range(4))
    d.ev.send(a)
    d.ev.send(b)
    mem.write_u8(SI, 0)  # the upcall starts
    ready = [d.g.take_ready()]
    d.g.consume_one(7, ready)  # a handled; the cursor is at b
    d.ev.send(c)  # b is the tail and still LINKED: c goes into b's LINK
    assert mem.read_u32(d.g.word(b)) & LINK_MASK == c
    d.g.consume_one(7, ready)
    d.g.consume_one(7, ready)  # c: LINK 0, queue empty, READY bit cleared locally
    assert ready == [0] and d.g.got == [a, b, c]
    d.ev.send(e)  # the tail c is unlinked now: e is a new HEAD, READY again, new upcall
    assert d.g.head(7) == e and d.g.ready() == 1 << 7 and len(d.upcalls) == 2
    d.g.got = []
    assert d.g.drain() == [e]


def test_link_retries_under_busy_when_the_guest_changes_the_tail(
        mem: GuestMemory, d: Dom, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest masks the tail between our read and our swap: the swap fails, BUSY is
    set (so an unmask could not slip in), the retry links, BUSY is cleared by it."""
    a, b = ipi(d), ipi(d)
    d.ev.send(a)
    atomics = d.ev.atomics
    real = atomics.cmpxchg32
    seen: list[int] = []

    def racing(gpa: int, old: int, new: int) -> int:
        if not seen:
            mem.write_u32(d.g.word(a), mem.read_u32(d.g.word(a)) | MASKED)  # the guest
        seen.append(mem.read_u32(d.g.word(a)))
        return real(gpa, old, new)

    monkeypatch.setattr(atomics, "cmpxchg32", racing)
    d.ev.send(b)
    assert len(seen) == 2 and seen[1] & BUSY  # the retry ran with BUSY held
    assert mem.read_u32(d.g.word(a)) == PENDING | MASKED | LINKED | b  # linked, BUSY gone


def test_tail_unlinked_during_the_swap_makes_a_new_head(
        mem: GuestMemory, d: Dom, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = ipi(d), ipi(d)
    d.ev.send(a)
    atomics = d.ev.atomics
    real = atomics.cmpxchg32
    ready = [d.g.take_ready()]

    def racing(gpa: int, old: int, new: int) -> int:
        if gpa == d.g.word(a) and mem.read_u32(gpa) & LINKED:
            atomics.cmpxchg32 = real  # type: ignore[method-assign]
            d.g.consume_one(7, ready)  # the guest takes a meanwhile
        return real(gpa, old, new)

    monkeypatch.setattr(atomics, "cmpxchg32", racing)
    d.ev.send(b)
    assert d.g.got == [a]
    assert not mem.read_u32(d.g.word(a)) & (BUSY | LINK_MASK)  # BUSY released, no link
    assert d.g.head(7) == b and d.g.ready() == 1 << 7
    d.g.got = []
    assert d.g.drain() == [b]


def test_changing_priority_moves_future_events_only(mem: GuestMemory, d: Dom) -> None:
    port = ipi(d)
    d.ev.send(port)
    assert op(mem, d.ev, SET_PRIORITY, "<II", port, 2) == 0
    assert d.g.drain() == [port]  # it was on queue 7 already
    d.ev.send(port)
    assert d.g.head(2) == port and d.g.drain() == [port]
    assert op(mem, d.ev, SET_PRIORITY, "<II", port, 16) == -EINVAL


def test_rebinding_moves_the_event_and_its_old_tail_is_forgotten(mem: GuestMemory, d: Dom) -> None:
    """event_fifo.c: when an event last linked on another queue was that queue's tail,
    the old tail is reset, else linking after it would corrupt the old queue."""
    assert op(mem, d.ev, INIT_CONTROL, "<QII", CONTROL[1] >> 12, CONTROL[1] & 0xFFF, 1) == 0
    port = d.ev.alloc_unbound(DOMID_SELF, DOMID_SELF)
    peer = d.ev.bind_interdomain(DOMID_SELF, port)
    d.g.unmask(d.ev, port)
    d.g.unmask(d.ev, peer)
    d.g.drain()  # bind_interdomain raised peer once
    d.ev.send(peer)  # port raised on vCPU 0
    assert d.g.drain() == [port]
    other = ipi(d)
    assert d.ev.bind_vcpu(port, 1) == 0
    d.ev.send(peer)  # port is now linked on vCPU 1's queue
    d.ev.send(other)  # vCPU 0's queue 7: its old tail (port) was forgotten, other is HEAD
    assert d.g.head(7) == other and d.g.drain() == [other]
    assert Guest(mem, 1).drain() == [port]


def test_switching_from_2_level_keeps_pending_events(mem: GuestMemory) -> None:
    upcalls: list[int] = []
    ev = EventChannels(1, mem, 1, upcalls.append)
    ev.set_shared_info(SI)
    port = ev.bind_ipi(0)
    ev.send(port)  # pending in shared_info's 2-level bitmap
    g = Guest(mem)
    assert op(mem, ev, INIT_CONTROL, "<QII", CONTROL[0] >> 12, 0, 0) == 0
    assert op(mem, ev, SET_PRIORITY, "<II", port, 1) == 0
    assert ev.is_pending(port) is False  # its word has no page yet: parked
    g.init_array_page(0)
    mem.write_u32(g.word(port), 0)  # unmasked, as a guest binding it would
    assert op(mem, ev, EXPAND_ARRAY, "<Q", ARRAY[0] >> 12) == 0  # raised as it appears
    assert g.head(1) == port and g.drain() == [port]


def test_ports_beyond_the_array_wait_for_their_page(mem: GuestMemory, d: Dom) -> None:
    ports = [d.ev.bind_ipi(0) for _ in range(1030)]
    far = ports[-1]
    assert far >= 1024
    d.ev.send(far)
    assert d.upcalls == []
    d.g.init_array_page(1)
    mem.write_u32(d.g.word(far), 0)
    assert op(mem, d.ev, EXPAND_ARRAY, "<Q", ARRAY[1] >> 12) == 0
    assert d.g.drain() == [far]


def test_expand_array_checks(mem: GuestMemory, d: Dom) -> None:
    assert op(mem, d.ev, EXPAND_ARRAY, "<Q", (2 * MiB) >> 12) == -EINVAL  # not the domain's
    for _ in range(127):
        assert op(mem, d.ev, EXPAND_ARRAY, "<Q", ARRAY[1] >> 12) == 0
    assert op(mem, d.ev, EXPAND_ARRAY, "<Q", ARRAY[1] >> 12) == -ENOSPC  # 128 pages: 2^17


def test_close_clears_pending_and_poll_sees_fifo(mem: GuestMemory, d: Dom) -> None:
    port = ipi(d)
    d.g.mask(port)
    d.ev.send(port)
    assert d.ev.is_pending(port)
    assert d.ev.close(port) == 0
    assert not mem.read_u32(d.g.word(port)) & PENDING


def test_reset_goes_back_to_2_level(mem: GuestMemory, d: Dom) -> None:
    ipi(d)
    assert op(mem, d.ev, RESET, "<H", DOMID_SELF) == 0
    assert d.ev.fifo is None
    assert op(mem, d.ev, EXPAND_ARRAY, "<Q", ARRAY[0] >> 12) == -EOPNOTSUPP
    port = d.ev.bind_ipi(0)
    d.ev.send(port)
    assert mem.read_u64(SI + 2048) >> port & 1  # the 2-level pending bitmap again


def test_save_and_restore_keep_the_queues(mem: GuestMemory, d: Dom) -> None:
    a, b = ipi(d, 3), ipi(d, 3)
    d.ev.send(a)
    state = d.ev.save_state()
    ev2 = EventChannels(1, mem, 2, d.upcalls.append)
    ev2.restore_state(state)
    assert ev2.fifo is not None
    ev2.send(b)  # linked after a: the tail survived
    assert mem.read_u32(d.g.word(a)) & LINK_MASK == b
    assert d.g.drain() == [a, b]


def test_no_event_lost_with_a_concurrent_consumer(mem: GuestMemory, d: Dom) -> None:
    """A host thread raises events on 24 ports of 3 priorities while the guest thread
    consumes on each upcall; every raise is delivered exactly once."""
    ports = [ipi(d, (0, 7, 15)[i % 3]) for i in range(24)]
    kick = threading.Event()
    d.ev.deliver = lambda vcpu: kick.set()
    outstanding = {p: threading.Event() for p in ports}
    for e in outstanding.values():
        e.set()
    delivered: list[int] = []
    total = 600
    done = threading.Event()

    def consumer() -> None:
        while not (done.is_set() and len(delivered) == total):
            if not kick.wait(timeout=10):
                return
            kick.clear()
            for port in d.g.drain():
                delivered.append(port)
                outstanding[port].set()

    t = threading.Thread(target=consumer)
    t.start()
    raised = 0
    while raised < total:
        port = ports[raised % len(ports)]
        assert outstanding[port].wait(timeout=10), f"port {port} never delivered"
        outstanding[port].clear()
        d.ev.send(port)
        raised += 1
    done.set()
    t.join(timeout=30)
    assert len(delivered) == total
    assert sorted(set(delivered)) == sorted(ports)
