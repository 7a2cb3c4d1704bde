"""Split virtqueues (virtio 1.2 §2.7), read from guest memory without trusting it.

The descriptor table, the available ring and the used ring live in guest RAM; the
driver can change them at any moment. Every descriptor is bounds-checked and each
chain's length is capped, so a hostile guest gets a `DescriptorError`, never a host
exception of another kind, a hang or an access outside its own RAM. Buffers are handed
to devices as `memoryview`s into guest RAM: payloads are never copied here.

Ordering: the device thread reads `avail.idx` and then the ring entries (x86 keeps loads
in order) and writes a used element before `used.idx` (x86 keeps stores in order). The
two places that need a store→load fence (publishing `avail_event`/`used.idx` and then
reading the driver's index or `used_event`) go through `_fence()`.

Atomicity: the le16 fields the driver reads or writes concurrently (`avail.idx`,
`used_event`, `used.idx`, `avail_event`) are accessed through a native-order `"H"` cast of
the ring view, whose item get/set is one aligned 16-bit load/store. `struct.pack_into`
must not be used for them: it zeroes the field and then stores it a byte at a time, so a
driver polling on another CPU sees `used.idx` go to 0 (or a torn value) and consumes up
to 65535 used elements that are not there; `unpack_from` reads byte by byte and can tear.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
from dataclasses import dataclass, field

from xenopus.memory.guest import GuestMemory, GuestMemoryError

log = logging.getLogger("xenopus.virtio")

# §2.7.5 struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next.
VIRTQ_DESC = struct.Struct("<QIHH")
# §2.7.8 struct virtq_used_elem: le32 id, le32 len.
VIRTQ_USED_ELEM = struct.Struct("<II")
# §2.7.6/§2.7.8 ring headers: le16 flags, le16 idx; ring entries of the avail ring are le16.
VIRTQ_RING_HEADER = struct.Struct("<HH")
LE16 = struct.Struct("<H")

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1  # §2.7.7
VIRTQ_USED_F_NO_NOTIFY = 1  # §2.7.10

# §2.7 table "Virtqueue Part Alignment": desc 16, avail 2, used 4.
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
MAX_QUEUE_SIZE = 32768  # §2.7: Queue Size is at most 32768

# The "H" casts below are native-order; virtio 1.x rings are little-endian (§2.7).
if sys.byteorder != "little":
    raise ImportError("xenopus.devices.virtio.queue needs a little-endian host")
# Indices into the "H" casts of the rings (§2.7.6, §2.7.8): flags @0, idx @2, then the
# avail ring's le16 entries @4, or the used ring's 8-byte elements @4.
_IDX = 1
_AVAIL_RING = 2

# A chain's total length in either direction must fit the used element's le32 len.
MAX_CHAIN_BYTES = (1 << 32) - 1


def desc_table_size(size: int) -> int:
    return VIRTQ_DESC.size * size


def avail_ring_size(size: int) -> int:
    """flags, idx, ring[size], used_event (§2.7.6)."""
    return VIRTQ_RING_HEADER.size + LE16.size * size + LE16.size


def used_ring_size(size: int) -> int:
    """flags, idx, ring[size], avail_event (§2.7.8)."""
    return VIRTQ_RING_HEADER.size + VIRTQ_USED_ELEM.size * size + LE16.size


def vring_need_event(event: int, new: int, old: int) -> bool:
    """§2.7.10: notify iff `event` lies in the window (old, new], modulo 2^16."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


_fence_lock = threading.Lock()


def _fence() -> None:
    # A lock round trip is a locked read-modify-write: a full barrier on x86, which is
    # what §2.7.10's "publish my index, then read yours" needs.
    with _fence_lock:
        pass


class DescriptorError(Exception):
    """A malformed chain or ring. `head` is the chain's head index when the request can
    still be answered (pushed back to the used ring); None when the queue itself is
    broken and the device must go DEVICE_NEEDS_RESET."""

    def __init__(self, reason: str, head: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.head = head

    @property
    def fatal(self) -> bool:
        return self.head is None


@dataclass(slots=True)
class Chain:
    """One request: device-readable buffers, then device-writable ones (§2.7.4.2)."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)
    readable_len: int = 0
    writable_len: int = 0
    # The writable buffers' guest ranges, marked written again when the chain is pushed
    # back (after the device wrote them) for a live save's write log.
    written_ranges: list[tuple[int, int]] = field(default_factory=list)


def split_views(views: list[memoryview], offset: int) -> tuple[list[memoryview], list[memoryview]]:
    """Split a buffer list at byte `offset` without copying (framing is free, §2.6.4)."""
    head: list[memoryview] = []
    tail: list[memoryview] = []
    for i, v in enumerate(views):
        n = len(v)
        if offset >= n:
            head.append(v)
            offset -= n
            continue
        if offset:
            head.append(v[:offset])
        tail.append(v[offset:])
        tail.extend(views[i + 1 :])
        return head, tail
    return head, tail


def gather(views: list[memoryview], length: int) -> bytes:
    """The first `length` bytes of `views` (used for small headers only)."""
    out = bytearray()
    for v in views:
        if len(out) >= length:
            break
        out += v[: length - len(out)]
    return bytes(out)


def scatter(views: list[memoryview], data: bytes | memoryview) -> int:
    """Copy `data` into `views` in order; returns the bytes written."""
    done = 0
    for v in views:
        if done >= len(data):
            break
        n = min(len(v), len(data) - done)
        v[:n] = data[done : done + n]
        done += n
    return done


class SplitQueue:
    """The device side of one split virtqueue.

    The transport sets `desc_addr`, `avail_addr`, `used_addr` (§4.1.4.3 queue_desc,
    queue_driver, queue_device), `event_idx` and `indirect` from the negotiated features,
    then calls `enable()`. Only the device's worker thread calls `pop`/`push`/`needs_notify`.
    """

    def __init__(self, memory: GuestMemory, size: int, name: str = "vq"):
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise ValueError(f"queue size {size} is not a power of 2 in 1..{MAX_QUEUE_SIZE}")
        self.memory = memory
        self.size = size
        self.name = name
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.event_idx = False  # VIRTIO_F_RING_EVENT_IDX negotiated (§2.7.10)
        self.indirect = False  # VIRTIO_F_INDIRECT_DESC negotiated (§2.7.5.3)
        self.ready = False
        self.broken = False
        self.last_avail = 0  # next avail ring slot the device will read (free-running u16)
        self.used_idx = 0  # next used ring slot (free-running u16)
        self._signalled = 0  # used_idx when the driver was last notified
        self._unsignalled = 0  # used elements pushed since the last needs_notify()
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._avail16: memoryview | None = None  # the avail ring as le16 words
        self._used16: memoryview | None = None  # the used ring as le16 words
        self._ram: list[tuple[int, int, memoryview]] = []  # (gpa, end, view) per region
        self._logged: set[str] = set()

    # -- setup -------------------------------------------------------------------

    def enable(self) -> None:
        """Map the three rings; they must be aligned (§2.7) and inside guest RAM."""
        parts = (
            ("descriptor table", self.desc_addr, desc_table_size(self.size), DESC_ALIGN),
            ("available ring", self.avail_addr, avail_ring_size(self.size), AVAIL_ALIGN),
            ("used ring", self.used_addr, used_ring_size(self.size), USED_ALIGN),
        )
        views = []
        for what, addr, length, align in parts:
            if addr % align:
                self._fail(f"{what} at {addr:#x} is not {align}-byte aligned")
            try:
                # The used ring is written through this view for as long as the queue
                # lives: kept, so a live save always sends it again at the end.
                views.append(self.memory.view(addr, length, kept=what == "used ring"))
            except GuestMemoryError:
                self._fail(f"{what} {addr:#x}+{length:#x} is outside guest RAM")
        self._desc, self._avail, self._used = views
        # Both ring sizes are even and their starts 2-aligned (checked above), so each
        # le16 field is one aligned word of these casts: single loads/stores.
        self._avail16 = self._avail.cast("H")
        self._used16 = self._used.cast("H")
        # Guest RAM regions are fixed for the memory's life: _walk slices these directly
        # instead of searching through GuestMemory.view for every descriptor.
        # Not through GuestMemory.view, which would count all RAM as written during a live
        # save: what the device writes through these is marked in _walk instead.
        self._ram = [(r.gpa, r.end, memoryview(r.map)) for r in self.memory.regions]
        self.ready = True
        self.broken = False

    def reset(self) -> None:
        """§2.4: back to the state after device reset; the rings are forgotten."""
        for v in (self._avail16, self._used16, self._desc, self._avail, self._used):
            if v is not None:
                v.release()
        self._ram = []
        self._desc = self._avail = self._used = self._avail16 = self._used16 = None
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.ready = self.broken = False
        self.last_avail = self.used_idx = self._signalled = self._unsignalled = 0
        self._logged.clear()

    # -- save/restore --------------------------------------------------------------

    def save_state(self, held: int = 0) -> dict:
        """The device's ring positions (§2.7: last_avail_idx is the device's alone; used
        idx is also in guest memory, kept here so a restore needs no guest read), with
        `held` chains given back: they were popped and not used."""
        return {"last_avail": (self.last_avail - held) & 0xFFFF, "used_idx": self.used_idx,
                "signalled": self._signalled, "broken": self.broken}

    def restore_state(self, state: dict) -> None:
        """After `enable`: carry on from the saved positions."""
        self.last_avail = state["last_avail"] & 0xFFFF
        self.used_idx = state["used_idx"] & 0xFFFF
        self._signalled = state["signalled"] & 0xFFFF
        self.broken = bool(state["broken"])

    # -- errors ------------------------------------------------------------------

    def _fail(self, reason: str, head: int | None = None) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("virtqueue %s: %s", self.name, reason)
        if head is None:
            self.broken = True
        raise DescriptorError(reason, head)

    # -- driver → device ---------------------------------------------------------

    def avail_idx(self) -> int:
        assert self._avail16 is not None
        return self._avail16[_IDX]

    def pending(self) -> int:
        """Chains the driver has made available and the device has not popped."""
        if not self.ready or self.broken:
            return 0
        return (self.avail_idx() - self.last_avail) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next available chain, or None. A malformed chain is consumed (its head is
        in the DescriptorError so it can be answered); a broken ring raises a fatal one."""
        if not self.ready or self.broken:
            return None
        avail16 = self._avail16
        assert avail16 is not None
        n = (avail16[_IDX] - self.last_avail) & 0xFFFF
        if n == 0:
            if not self.event_idx:
                return None
            # §2.7.10: ask for a kick when the driver adds past what we consumed, then look
            # again in case it added one before it could see avail_event.
            self._set_avail_event(self.last_avail)
            _fence()
            n = self.pending()
            if n == 0:
                return None
        if n > self.size:
            self._fail(f"avail idx moved by {n}, more than the queue size {self.size}")
        slot = self.last_avail % self.size
        head = avail16[_AVAIL_RING + slot]
        if head >= self.size:
            self._fail(f"avail ring entry {head} is not a descriptor index (size {self.size})")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            self._set_avail_event(self.last_avail)
        return self._walk(head)

    def _set_avail_event(self, value: int) -> None:
        assert self._used16 is not None
        # avail_event follows the size 8-byte elements (4 words each) after the header.
        self._used16[_AVAIL_RING + 4 * self.size] = value

    def _buffer(self, addr: int, length: int) -> memoryview | None:
        """A view of guest RAM [addr, addr + length), or None if it is not all RAM."""
        for start, end, view in self._ram:
            if start <= addr and addr + length <= end:
                return view[addr - start : addr - start + length]
        return None

    def _walk(self, head: int) -> Chain:
        """Follow a chain (§2.7.5), through at most one indirect table (§2.7.5.3)."""
        table = self._desc
        assert table is not None
        entries = size = self.size
        chain = Chain(head)
        readable, writable = chain.readable, chain.writable
        readable_len = writable_len = 0
        idx = head
        count = 0
        in_indirect = False
        unpack_desc = VIRTQ_DESC.unpack_from
        ram = self._ram
        while True:
            if idx >= entries:
                self._fail(f"descriptor index {idx} beyond table of {entries}", head)
            addr, length, flags, nxt = unpack_desc(table, idx << 4)
            count += 1
            # Every descriptor, direct or indirect, counts against the queue size: this
            # bounds loops (§2.7.5.3.1: no chain longer than the queue size).
            if count > size:
                self._fail(f"chain longer than the queue size {size} (loop?)", head)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    self._fail("indirect descriptor without VIRTIO_F_INDIRECT_DESC", head)
                if in_indirect:
                    self._fail("indirect descriptor inside an indirect table", head)
                if flags & VIRTQ_DESC_F_NEXT:
                    self._fail("descriptor has both INDIRECT and NEXT", head)
                if length == 0 or length % VIRTQ_DESC.size:
                    self._fail(f"indirect table length {length} is not a multiple of 16", head)
                found = self._buffer(addr, length)
                if found is None:
                    self._fail(f"indirect table {addr:#x}+{length:#x} outside guest RAM", head)
                table = found
                entries = length // VIRTQ_DESC.size
                in_indirect = True
                count -= 1  # the indirect descriptor itself carries no buffer
                idx = 0
                continue
            if length:
                # Inline of _buffer for the one-region common case (the hot path).
                start, end, view = ram[0]
                if start <= addr and addr + length <= end:
                    buf = view[addr - start : addr - start + length]
                else:
                    found = self._buffer(addr, length)
                    if found is None:
                        if addr + length > 1 << 64:
                            self._fail(f"buffer {addr:#x}+{length:#x} wraps the address space", head)
                        self._fail(f"buffer {addr:#x}+{length:#x} outside guest RAM", head)
                    buf = found
                if flags & VIRTQ_DESC_F_WRITE:
                    # The device writes it: a page for a live save's write log, now and
                    # again in `push`, after the write (a log pass between the two would
                    # send the page before the write and never after it).
                    self.memory.mark_dirty(addr, length)
                    chain.written_ranges.append((addr, length))
                    writable.append(buf)
                    writable_len += length
                    if writable_len > MAX_CHAIN_BYTES:
                        self._fail("writable length of the chain overflows 32 bits", head)
                else:
                    if writable:
                        self._fail("device-readable descriptor after a writable one", head)
                    readable.append(buf)
                    readable_len += length
                    if readable_len > MAX_CHAIN_BYTES:
                        self._fail("readable length of the chain overflows 32 bits", head)
            if not flags & VIRTQ_DESC_F_NEXT:
                chain.readable_len, chain.writable_len = readable_len, writable_len
                return chain
            idx = nxt

    # -- device → driver ---------------------------------------------------------

    def push(self, chain: Chain | int, written: int) -> None:
        """Return a chain to the driver with `written` bytes in its writable buffers."""
        if not self.ready or self.broken:
            return
        used, used16 = self._used, self._used16
        assert used is not None and used16 is not None
        head = chain if isinstance(chain, int) else chain.head
        if not isinstance(chain, int):
            written = min(written, chain.writable_len)
            for addr, length in chain.written_ranges:
                self.memory.mark_dirty(addr, length)
        slot = self.used_idx % self.size
        VIRTQ_USED_ELEM.pack_into(
            used, VIRTQ_RING_HEADER.size + VIRTQ_USED_ELEM.size * slot, head, written
        )
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # One 16-bit store after the element (x86 orders stores): see the module docstring.
        used16[_IDX] = self.used_idx
        self._unsignalled += 1

    def needs_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call:
        used_event with EVENT_IDX (§2.7.10), else the NO_INTERRUPT flag (§2.7.7)."""
        if not self._unsignalled or not self.ready or self.broken:
            return False
        self._unsignalled = 0
        avail16 = self._avail16
        assert avail16 is not None
        _fence()  # used.idx must be visible before we read the driver's used_event
        if self.event_idx:
            event = avail16[_AVAIL_RING + self.size]
            old, self._signalled = self._signalled, self.used_idx
            return vring_need_event(event, self.used_idx, old)
        return not avail16[0] & VIRTQ_AVAIL_F_NO_INTERRUPT
