"""Split virtqueues (virtio 1.2 §2.7), driven by a driver written here from the spec's
layouts: descriptors of 16 bytes (addr le64 @0, len le32 @8, flags le16 @12, next le16
@14, §2.7.5), the avail ring (flags @0, idx @2, ring[i] @4+2i, used_event @4+2n, §2.7.6)
and the used ring (flags @0, idx @2, elem i @4+8i as id le32/len le32, avail_event @4+8n,
§2.7.8)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from xenopus.devices.virtio.queue import (
    DescriptorError,
    SplitQueue,
    split_views,
    vring_need_event,
)
from xenopus.memory.guest import GuestMemory

# §2.7.5 flags
NEXT, WRITE, INDIRECT = 1, 2, 4
RAM = 16 << 20


class VqDriver:
    """The driver side of one split queue, as a guest would lay it out."""

    def __init__(
        self, mem: GuestMemory, size: int = 8, base: int = 0x10000, buf_base: int = 0x100000
    ):
        self.mem = mem
        self.size = size
        self.desc_addr = base
        self.avail_addr = base + 0x1000 * ((16 * size + 0xFFF) // 0x1000)
        self.used_addr = self.avail_addr + 0x1000 * ((6 + 2 * size + 0xFFF) // 0x1000)
        self.next_free = 0
        self.avail_idx = 0
        self.next_buf = buf_base

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """A guest buffer holding `data` (or `data` zero bytes): (gpa, length)."""
        raw = bytes(data) if isinstance(data, int) else data
        gpa = self.next_buf
        self.mem.write(gpa, raw)
        self.next_buf += (len(raw) + 0xFFF) & ~0xFFF or 0x1000
        return gpa, len(raw)

    def write_desc(
        self, table: int, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0
    ) -> None:
        d = table + 16 * i
        self.mem.write_u64(d, addr)
        self.mem.write_u32(d + 8, length)
        self.mem.write_u16(d + 12, flags)
        self.mem.write_u16(d + 14, nxt)

    def chain(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Descriptors for (gpa, len, device-writable) buffers, linked by NEXT; the head."""
        head = self.next_free
        for k, (addr, length, writable) in enumerate(bufs):
            i = (head + k) % self.size
            last = k == len(bufs) - 1
            flags = (WRITE if writable else 0) | (0 if last else NEXT)
            self.write_desc(self.desc_addr, i, addr, length, flags, (i + 1) % self.size)
        self.next_free = (head + len(bufs)) % self.size
        return head

    def indirect(self, bufs: list[tuple[int, int, bool]]) -> int:
        """An indirect table (§2.7.5.3) for `bufs`, referenced by one descriptor."""
        table, _ = self.buffer(16 * len(bufs))
        for k, (addr, length, writable) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (WRITE if writable else 0) | (0 if last else NEXT)
            self.write_desc(table, k, addr, length, flags, k + 1)
        head = self.next_free
        self.write_desc(self.desc_addr, head, table, 16 * len(bufs), INDIRECT)
        self.next_free = (head + 1) % self.size
        return head

    def post(self, head: int) -> None:
        self.mem.write_u16(self.avail_addr + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail_addr + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write_u16(self.avail_addr, flags)

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail_addr + 4 + 2 * self.size, value)

    @property
    def used_idx(self) -> int:
        return self.mem.read_u16(self.used_addr + 2)

    def used_elem(self, slot: int) -> tuple[int, int]:
        e = self.used_addr + 4 + 8 * (slot % self.size)
        return self.mem.read_u32(e), self.mem.read_u32(e + 4)

    @property
    def avail_event(self) -> int:
        return self.mem.read_u16(self.used_addr + 4 + 8 * self.size)

    def queue(self, *, event_idx: bool = False, indirect: bool = True) -> SplitQueue:
        q = SplitQueue(self.mem, self.size, "test")
        q.desc_addr, q.avail_addr, q.used_addr = self.desc_addr, self.avail_addr, self.used_addr
        q.event_idx, q.indirect = event_idx, indirect
        q.enable()
        return q


@pytest.fixture
def mem():
    m = GuestMemory.create(RAM)
    yield m
    m.close()


def test_direct_chain(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    a, b, w = d.buffer(b"hello "), d.buffer(b"world"), d.buffer(16)
    d.post(d.chain([(*a, False), (*b, False), (*w, True)]))
    q = d.queue()
    chain = q.pop()
    assert chain is not None and chain.head == 0
    assert [bytes(v) for v in chain.readable] == [b"hello ", b"world"]
    assert chain.readable_len == 11 and chain.writable_len == 16
    chain.writable[0][:3] = b"abc"  # a view into guest RAM, not a copy
    assert mem.read(w[0], 3) == b"abc"
    assert q.pop() is None


def test_indirect_chain(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    r, w = d.buffer(b"req!"), d.buffer(8)
    d.post(d.indirect([(*r, False), (*w, True)]))
    chain = d.queue().pop()
    assert chain is not None
    assert [bytes(v) for v in chain.readable] == [b"req!"] and chain.writable_len == 8


def test_push_writes_used_ring_at_spec_offsets(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(64)
    d.post(d.chain([(*w, True)]))
    d.post(d.chain([(*w, True)]))
    q = d.queue()
    c1, c2 = q.pop(), q.pop()
    assert c1 is not None and c2 is not None
    q.push(c2, 10)
    q.push(c1, 1000)  # clamped to the chain's writable length
    assert d.used_idx == 2
    assert d.used_elem(0) == (1, 10) and d.used_elem(1) == (0, 64)


def test_a_writable_buffer_is_logged_again_when_its_chain_is_pushed(mem: GuestMemory) -> None:
    """A live save's log pass may come between the pop (the device has not written yet)
    and the push (it has): the pass sends the page as it was, so the push must log it
    again or the stop-and-copy never sends what the device wrote (a guest migrated
    mid-request read its status byte as never written)."""
    d = VqDriver(mem)
    r, w = d.buffer(b"hdr!"), d.buffer(1)
    d.post(d.chain([(*r, False), (*w, True)]))
    q = d.queue()
    mem.log_writes(True)
    chain = q.pop()
    assert chain is not None
    page = w[0] & ~0xFFF  # take_dirty answers page addresses
    assert page in mem.take_dirty()  # the pass between the pop and the write
    chain.writable[0][0] = 0
    q.push(chain, 1)
    assert page in mem.take_dirty()
    mem.log_writes(False)


def test_used_idx_wraps_at_2_16(mem: GuestMemory) -> None:
    d = VqDriver(mem, size=4)
    w = d.buffer(8)
    q = d.queue()
    for _ in range(70000):
        d.post(d.chain([(*w, True)]))
        c = q.pop()
        assert c is not None
        q.push(c, 1)
    assert d.used_idx == 70000 & 0xFFFF and q.last_avail == 70000 & 0xFFFF


# -- hostile chains: each raises DescriptorError and leaves the queue usable ----------------


def _hostile_then_good(d: VqDriver, q: SplitQueue, reason: str) -> None:
    with pytest.raises(DescriptorError, match=reason) as e:
        q.pop()
    assert not e.value.fatal and not q.broken
    # The bad chain was consumed; answering it and the next good chain both work.
    q.push(e.value.head, 0)
    w = d.buffer(4)
    d.post(d.chain([(*w, True)]))
    good = q.pop()
    assert good is not None and good.writable_len == 4


def test_loop_is_refused(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    d.write_desc(d.desc_addr, 0, *w, NEXT, 1)
    d.write_desc(d.desc_addr, 1, *w, NEXT, 0)
    d.next_free = 2
    d.post(0)
    _hostile_then_good(d, d.queue(), "longer than the queue size")


def test_chain_longer_than_queue_counts_indirect_descriptors(mem: GuestMemory) -> None:
    d = VqDriver(mem, size=4)
    w = d.buffer(4)
    d.post(d.indirect([(*w, True)] * 5))  # 5 > queue size 4 (§2.7.5.3.1)
    _hostile_then_good(d, d.queue(), "longer than the queue size")


def test_nested_indirect_is_refused(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    inner, _ = d.buffer(16)
    table, _ = d.buffer(16)
    d.write_desc(table, 0, inner, 16, INDIRECT)
    d.write_desc(d.desc_addr, 0, table, 16, INDIRECT)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "inside an indirect table")


def test_indirect_without_feature_is_refused(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    d.post(d.indirect([(*w, True)]))
    _hostile_then_good(d, d.queue(indirect=False), "without VIRTIO_F_INDIRECT_DESC")


def test_indirect_with_next_is_refused(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    table, _ = d.buffer(16)
    d.write_desc(d.desc_addr, 0, table, 16, INDIRECT | NEXT, 1)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "both INDIRECT and NEXT")


@pytest.mark.parametrize("length", [0, 8, 24])
def test_indirect_length_not_multiple_of_16(mem: GuestMemory, length: int) -> None:
    d = VqDriver(mem)
    table, _ = d.buffer(32)
    d.write_desc(d.desc_addr, 0, table, length, INDIRECT)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "not a multiple of 16")


def test_indirect_table_outside_ram(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    d.write_desc(d.desc_addr, 0, RAM - 16, 32, INDIRECT)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "outside guest RAM")


@pytest.mark.parametrize(
    "addr,length",
    [
        (RAM, 4),  # just past the end of RAM
        (RAM - 2, 4),  # straddles the end
        (0xC000_0000, 4096),  # the MMIO hole: not RAM
        ((1 << 64) - 8, 16),  # wraps the 64-bit address space
        (0, 0xFFFF_FFFF),  # 4 GiB - 1: longer than RAM
    ],
)
def test_buffer_outside_ram(mem: GuestMemory, addr: int, length: int) -> None:
    d = VqDriver(mem)
    d.write_desc(d.desc_addr, 0, addr, length, WRITE)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "outside guest RAM|wraps")


def test_total_length_overflowing_32_bits(mem: GuestMemory) -> None:
    big = GuestMemory.create(3 << 30)  # memfd: sparse, costs nothing until touched
    try:
        d = VqDriver(big, size=4)
        # Three 2 GiB - 1 buffers: each valid, together more than a used element's le32.
        n = (1 << 31) - 1
        d.post(d.chain([(0x1000_0000, n, True), (0x1000_0000, n, True), (0, n, True)]))
        _hostile_then_good(d, d.queue(), "overflows 32 bits")
    finally:
        big.close()


def test_readable_after_writable_is_refused(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w, r = d.buffer(4), d.buffer(4)
    d.post(d.chain([(*w, True), (*r, False)]))  # §2.7.4.2 order violated
    _hostile_then_good(d, d.queue(), "readable descriptor after a writable")


def test_next_index_out_of_range(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    d.write_desc(d.desc_addr, 0, *w, NEXT, 200)
    d.next_free = 1
    d.post(0)
    _hostile_then_good(d, d.queue(), "beyond table")


def test_avail_idx_jump_is_fatal(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    q = d.queue()
    mem.write_u16(d.avail_addr + 2, 9)  # 9 new entries in a queue of 8
    with pytest.raises(DescriptorError, match="more than the queue size") as e:
        q.pop()
    assert e.value.fatal and q.broken
    assert q.pop() is None  # a broken queue is left alone until reset
    q.reset()
    assert not q.broken and not q.ready


def test_head_out_of_range_is_fatal(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    d.post(8)  # descriptor index 8 in a queue of 8
    q = d.queue()
    with pytest.raises(DescriptorError) as e:
        q.pop()
    assert e.value.fatal


@pytest.mark.parametrize(
    "what,offset", [("desc", RAM - 64), ("avail", 0xC000_0000), ("used", (1 << 40))]
)
def test_rings_outside_ram(mem: GuestMemory, what: str, offset: int) -> None:
    d = VqDriver(mem)
    q = SplitQueue(mem, 8)
    q.desc_addr, q.avail_addr, q.used_addr = d.desc_addr, d.avail_addr, d.used_addr
    setattr(q, f"{what}_addr", offset)
    with pytest.raises(DescriptorError, match="outside guest RAM"):
        q.enable()
    assert not q.ready and q.pop() is None


def test_misaligned_descriptor_table(mem: GuestMemory) -> None:
    q = SplitQueue(mem, 8)
    q.desc_addr, q.avail_addr, q.used_addr = 0x1008, 0x2000, 0x3000  # §2.7: desc align 16
    with pytest.raises(DescriptorError, match="aligned"):
        q.enable()


def test_each_reason_logged_once(mem: GuestMemory, caplog: pytest.LogCaptureFixture) -> None:
    d = VqDriver(mem)
    q = d.queue()
    for _ in range(5):
        w, r = d.buffer(4), d.buffer(4)
        d.post(d.chain([(*w, True), (*r, False)]))
        with caplog.at_level(logging.WARNING), pytest.raises(DescriptorError):
            q.pop()
    hits = [r for r in caplog.records if "after a writable" in r.getMessage()]
    assert len(hits) == 1


def test_queue_size_must_be_power_of_two(mem: GuestMemory) -> None:
    for bad in (0, 3, 100, 65536):
        with pytest.raises(ValueError):
            SplitQueue(mem, bad)


# -- notification suppression -----------------------------------------------------------


@pytest.mark.parametrize(
    "event,new,old,expect",
    [
        # §2.7.10: (u16)(new - event - 1) < (u16)(new - old)
        (0, 1, 0, True),  # driver wants an interrupt after the first used entry
        (5, 12, 10, False),  # event already passed before old: no
        (10, 12, 10, True),  # old < event + 1 <= new
        (11, 12, 10, True),
        (12, 12, 10, False),  # not yet reached
        (0xFFFF, 0, 0xFFFE, True),  # wraparound: event at 65535, used idx crossed 0
        (0xFFFE, 1, 0xFFFF, False),  # event behind the window across the wrap
        (0, 2, 0xFFFF, True),
    ],
)
def test_vring_need_event(event: int, new: int, old: int, expect: bool) -> None:
    assert vring_need_event(event, new, old) is expect


def test_no_interrupt_flag_without_event_idx(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    q = d.queue()
    assert not q.needs_notify()  # nothing pushed: nothing to say
    for flags, expect in ((0, True), (1, False)):  # §2.7.7 VIRTQ_AVAIL_F_NO_INTERRUPT
        d.set_avail_flags(flags)
        d.post(d.chain([(*w, True)]))
        c = q.pop()
        assert c is not None
        q.push(c, 0)
        assert q.needs_notify() is expect


def test_event_idx_suppression(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    q = d.queue(event_idx=True)
    d.set_avail_flags(1)  # ignored with EVENT_IDX (§2.7.10)
    d.set_used_event(2)  # interrupt once used idx passes 2, i.e. after the 3rd entry
    results = []
    for _ in range(4):
        d.post(d.chain([(*w, True)]))
        c = q.pop()
        assert c is not None
        q.push(c, 0)
        results.append(q.needs_notify())
    assert results == [False, False, True, False]


def test_event_idx_batch_crossing_event(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    q = d.queue(event_idx=True)
    d.set_used_event(1)
    for _ in range(3):
        d.post(d.chain([(*w, True)]))
    for _ in range(3):
        c = q.pop()
        assert c is not None
        q.push(c, 0)
    assert q.needs_notify()  # used idx moved 0 -> 3, across used_event + 1 = 2


def test_avail_event_published(mem: GuestMemory) -> None:
    d = VqDriver(mem)
    w = d.buffer(4)
    q = d.queue(event_idx=True)
    d.post(d.chain([(*w, True)]))
    d.post(d.chain([(*w, True)]))
    assert q.pop() is not None and q.pop() is not None
    assert q.pop() is None
    assert d.avail_event == 2  # §2.7.10: kick me when avail idx passes 2


def test_split_views() -> None:
    a, b = memoryview(bytearray(b"0123")), memoryview(bytearray(b"4567"))
    head, tail = split_views([a, b], 6)
    assert [bytes(v) for v in head] == [b"0123", b"45"] and [bytes(v) for v in tail] == [b"67"]
    head, tail = split_views([a, b], 4)
    assert [bytes(v) for v in head] == [b"0123"] and [bytes(v) for v in tail] == [b"4567"]
    head, tail = split_views([a, b], 9)
    assert len(tail) == 0 and sum(map(len, head)) == 8


# Another process watching two le16 ring fields (word indices argv[2], argv[3] of the
# memfd) until the word at argv[4] is non-zero, counting every step backwards.
_WATCH = """
import mmap, sys
fd, a, b, stop = (int(x) for x in sys.argv[1:5])
h = memoryview(mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)).cast("H")
la, lb, back = h[a], h[b], 0
print("ready", flush=True)
while not h[stop]:
    va, vb = h[a], h[b]
    back += ((va - la) & 0xFFFF >= 0x8000) + ((vb - lb) & 0xFFFF >= 0x8000)
    la, lb = va, vb
print(back, flush=True)
"""


def test_indices_never_seen_going_back_from_another_cpu(mem: GuestMemory) -> None:
    """A driver polling used.idx (and reading avail_event) on another CPU must only ever
    see them move forwards (§2.7.8, §2.7.10). Each must be one 16-bit store: written
    as a zeroed field and then byte by byte (struct.pack_into), a poller sees 0 or a torn
    value, hundreds of times in this many pushes, and takes up to 65535 phantom used
    elements (the benchmark guest counted 65543 completions of 1024 requests)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: the race is between the device and a driver elsewhere")
    d = VqDriver(mem, size=256)
    q = d.queue(event_idx=True)
    w = d.buffer(4)
    stop = RAM - 2
    region = mem.regions[0]
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(region.fd), str((d.used_addr + 2) // 2),
         str((d.used_addr + 4 + 8 * d.size) // 2), str(stop // 2)],
        stdout=subprocess.PIPE, text=True, pass_fds=[region.fd],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpus[1]}),
    )
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})  # this thread: the device, on the other CPU
        assert watcher.stdout is not None and watcher.stdout.readline() == "ready\n"
        for _ in range(40000):
            d.post(d.chain([(*w, True)]))
            chain = q.pop()  # moves avail_event
            assert chain is not None
            q.push(chain, 0)  # moves used.idx
            q.push(chain.head, 0)  # twice as many used.idx stores (the ring wraps anyway)
    finally:
        os.sched_setaffinity(0, saved)
        mem.write_u16(stop, 1)
        out, _ = watcher.communicate(timeout=30)
    assert q.used_idx == 80000 & 0xFFFF
    assert out.strip() == "0", f"the watcher saw an index go backwards {out.strip()} times"
