"""The FIFO event channel ABI: per-priority queues of events linked through the guest's
event words.

Spec: xen/include/public/event_channel.h ("FIFO ABI": event words with PENDING, MASKED,
LINKED, BUSY and a 17-bit LINK; per vCPU a control block with a READY bit and a HEAD per
queue; EVTCHNOP_init_control, expand_array, set_priority) and, for what the header leaves
to the implementation, Xen's common/event_fifo.c, whose queueing protocol the guest's
consumer (Linux drivers/xen/events/events_fifo.c) is written against:

* Xen keeps each queue's TAIL; the guest keeps its own HEAD cursor and reads the control
  block's HEAD only once it has consumed the whole queue (its cursor is 0).
* Linking an event: set LINKED on its word; then, if the queue's tail word is still
  LINKED, put the new port into the tail's LINK (a compare-and-swap that succeeds only if
  the tail is still LINKED); otherwise the queue is empty as far as the guest knows, so the
  new port goes into HEAD. Either way it becomes the tail.
* The guest may meanwhile clear LINKED/LINK (consuming), clear PENDING, and set or clear
  MASKED. To stop it unmasking the tail between our read and our swap, Xen sets BUSY on the
  tail word; the guest's unmask does not clear MASKED while BUSY is set (it asks Xen with
  EVTCHNOP_unmask instead). With BUSY set only MASKED/PENDING/LINKED can still change, so
  the swap is retried at most four times.
* A queue that becomes non-empty sets its priority's READY bit; the first READY bit raised
  marks the vCPU's upcall pending (vcpu_info.evtchn_upcall_pending, as in 2-level).

Every guest-visible update is a locked operation on the word (`GuestAtomics`); the queue
tails, priorities and the last queue of each event are ours and live under the caller's
lock (`EventChannels` holds one lock over all of a domain's queues where Xen has a lock
per queue: with one lock the "queue changed under us" retries of event_fifo.c cannot occur,
but the old queue's TAIL is still invalidated when an event moves queues).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterable

from xenopus.memory import GuestMemoryError
from xenopus.memory.shared import GuestAtomics
from xenopus.xen import abi

log = logging.getLogger(__name__)

WORDS_PER_PAGE = abi.PAGE_SIZE // 4  # event_word_t per event-array page
MAX_ARRAY_PAGES = abi.EVTCHN_FIFO_NR_CHANNELS // WORDS_PER_PAGE
CONTROL_BLOCK_SIZE = ctypes.sizeof(abi.evtchn_fifo_control_block)
_READY = abi.evtchn_fifo_control_block.ready.offset
_HEAD = abi.evtchn_fifo_control_block.head.offset
_PENDING = 1 << abi.EVTCHN_FIFO_PENDING
_MASKED = 1 << abi.EVTCHN_FIFO_MASKED
_LINKED = 1 << abi.EVTCHN_FIFO_LINKED
_BUSY = 1 << abi.EVTCHN_FIFO_BUSY
_LINK_TRIES = 4  # event_fifo.c evtchn_fifo_set_link: the guest can change at most 4 bits


class FifoEvents:
    """One domain's FIFO queues (created by the first EVTCHNOP_init_control).

    ``mark_pending(vcpu)`` sets that vCPU's evtchn_upcall_pending and delivers the upcall
    (event_channel.c vcpu_mark_events_pending); ``holds_memory(gfn)`` says whether a frame
    is the domain's (map_guest_page's check).
    """

    def __init__(self, atomics: GuestAtomics, nr_vcpus: int,
                 holds_memory: Callable[[int], bool], mark_pending: Callable[[int], None]):
        self.atomics = atomics
        self.memory = atomics.memory
        self.nr_vcpus = nr_vcpus
        self.holds_memory = holds_memory
        self.mark_pending = mark_pending
        self.control: list[int | None] = [None] * nr_vcpus  # GPA of each control block
        self.array: list[int] = []  # GPA of each event-array page, in port order
        self.tails = [[0] * abi.EVTCHN_FIFO_MAX_QUEUES for _ in range(nr_vcpus)]
        self.priority: dict[int, int] = {}  # port -> its queue for future events
        self.lastq: dict[int, tuple[int, int]] = {}  # port -> (vcpu, priority) last linked on
        self.parked: set[int] = set()  # raised while no array page held their word

    # --- set-up ------------------------------------------------------------------------
    def map_control_block(self, vcpu: int, gfn: int, offset: int) -> int:
        """The control block of ``vcpu`` at ``gfn``/``offset`` (checked by the caller as
        evtchn_fifo_init_control does): 0 or -errno."""
        if self.control[vcpu] is not None:
            return -abi.XEN_EINVAL  # map_control_block: already has one
        if not self.holds_memory(gfn):
            return -abi.XEN_EINVAL  # map_guest_page: not a page of the domain
        self.control[vcpu] = gfn * abi.PAGE_SIZE + offset
        return 0

    def expand_array(self, gfn: int, bound: Callable[[int], int | None]) -> int:
        """EVTCHNOP_expand_array (add_page_to_event_array): one more page of event words;
        events raised meanwhile on its ports are raised now. ``bound(port)`` is the
        port's notify vCPU, or None for a port not in use."""
        if len(self.array) >= MAX_ARRAY_PAGES:
            return -abi.XEN_ENOSPC
        if not self.holds_memory(gfn):
            return -abi.XEN_EINVAL
        first = len(self.array) * WORDS_PER_PAGE
        self.array.append(gfn * abi.PAGE_SIZE)
        for port in sorted(p for p in self.parked if first <= p < first + WORDS_PER_PAGE):
            self.parked.discard(port)
            vcpu = bound(port)
            if vcpu is not None:
                self.set_pending(port, vcpu)
        return 0

    def init_port(self, port: int) -> None:
        """A port was just bound (evtchn_fifo_init): default priority."""
        self.priority[port] = abi.EVTCHN_FIFO_PRIORITY_DEFAULT
        word = self.word(port)
        if word is not None and self._load(word) & _LINKED:
            # event_fifo.c warns the same: its first event may reach an unexpected queue.
            log.warning("FIFO port %d bound while still on a queue", port)

    def adopt(self, pending: Iterable[int]) -> None:
        """Switching from 2-level (setup_ports): events pending there wait for their page."""
        self.parked.update(pending)

    def set_priority(self, port: int, priority: int) -> int:
        """evtchn_fifo_set_priority: future events of ``port`` go to that queue."""
        if not 0 <= priority <= abi.EVTCHN_FIFO_PRIORITY_MIN:
            return -abi.XEN_EINVAL
        self.priority[port] = priority
        return 0

    # --- event words -------------------------------------------------------------------
    @property
    def nr_words(self) -> int:
        return len(self.array) * WORDS_PER_PAGE

    def word(self, port: int) -> int | None:
        """GPA of ``port``'s event word, or None while no array page holds it."""
        if not 0 <= port < self.nr_words:
            return None
        return self.array[port // WORDS_PER_PAGE] + 4 * (port % WORDS_PER_PAGE)

    def _load(self, word: int) -> int:
        return self.memory.read_u32(word)

    def _test_and_set(self, word: int, bit: int) -> bool:
        # The 4-byte word's bit, in the aligned 8-byte word holding it (x86: one locked OR).
        return self.atomics.test_and_set_bit(word & ~7, 32 * (word & 4 != 0) + bit)

    def _test_and_clear(self, word: int, bit: int) -> bool:
        return self.atomics.test_and_clear_bit(word & ~7, 32 * (word & 4 != 0) + bit)

    def is_pending(self, port: int) -> bool:
        word = self.word(port)
        try:
            return word is not None and bool(self._load(word) & _PENDING)
        except GuestMemoryError:
            return False

    def is_masked(self, port: int) -> bool:
        word = self.word(port)
        try:
            return word is None or bool(self._load(word) & _MASKED)
        except GuestMemoryError:
            return True

    def clear_pending(self, port: int) -> None:
        """evtchn_fifo_clear_pending: just the P bit; the guest unlinks and skips it."""
        self.parked.discard(port)
        word = self.word(port)
        if word is not None:
            with contextlib.suppress(GuestMemoryError):
                self._test_and_clear(word, abi.EVTCHN_FIFO_PENDING)

    def unmask(self, port: int, vcpu: int) -> None:
        """EVTCHNOP_unmask: clear MASKED and link the event if it is pending."""
        word = self.word(port)
        if word is None:
            return
        try:
            self._test_and_clear(word, abi.EVTCHN_FIFO_MASKED)
            pending = bool(self._load(word) & _PENDING)
        except GuestMemoryError:
            return
        if pending:
            self.set_pending(port, vcpu)

    # --- linking (evtchn_fifo_set_pending) ---------------------------------------------
    def set_pending(self, port: int, vcpu: int) -> bool:
        """Raise ``port`` on ``vcpu``'s queue of its priority; True if it was not pending
        already (the caller then wakes pollers)."""
        word = self.word(port)
        if word is None:
            self.parked.add(port)  # the page may come: expand_array raises it then
            return True
        try:
            return self._set_pending(port, vcpu, word)
        except GuestMemoryError as e:
            log.warning("FIFO port %d: %s; event dropped", port, e)
            return False

    def _set_pending(self, port: int, vcpu: int, word: int) -> bool:
        priority = self.priority.get(port, abi.EVTCHN_FIFO_PRIORITY_DEFAULT)
        old_vcpu, old_priority = self.lastq.get(port, (0, 0))  # Xen's zeroed fifo_lastq
        was_pending = self._test_and_set(word, abi.EVTCHN_FIFO_PENDING)
        control = self.control[vcpu]
        if control is None:
            # The guest may not unmask before its control block exists: drop (as Xen).
            log.warning("FIFO: vCPU %d has no control block; port %d dropped", vcpu, port)
            return not was_pending
        linked = True
        if not self._load(word) & _MASKED and not self._test_and_set(
                word, abi.EVTCHN_FIFO_LINKED):
            if self.tails[old_vcpu][old_priority] == port:
                # It was that queue's tail: the queue is empty now, and linking after it
                # would put events of that queue onto this one.
                self.tails[old_vcpu][old_priority] = 0
            self.lastq[port] = (vcpu, priority)
            tail = self.tails[vcpu][priority]
            linked = False
            if tail:
                tail_word = self.word(tail)
                linked = tail_word is not None and self._set_link(tail_word, port)
            if not linked:
                self.memory.write_u32(control + _HEAD + 4 * priority, port)
            self.tails[vcpu][priority] = port
        # READY is the first word of a block 8-byte aligned (init_control checks it).
        if not linked and not self.atomics.test_and_set_bit(control + _READY, priority):
            self.mark_pending(vcpu)
        return not was_pending

    def _try_link(self, word: int, seen: int, port: int) -> tuple[int, int]:
        """(1 linked | 0 tail not linked | -1 raced, the word as found)."""
        if not seen & _LINKED:
            return 0, seen
        new = (seen & ~(_BUSY | abi.EVTCHN_FIFO_LINK_MASK)) | port
        found = self.atomics.cmpxchg32(word, seen, new)
        return (1, found) if found == seen else (-1, found)

    def _set_link(self, word: int, port: int) -> bool:
        """Put ``port`` into the tail ``word``'s LINK iff it is still LINKED (True), with
        BUSY held over the retries so the guest cannot unmask it meanwhile."""
        done, seen = self._try_link(word, self._load(word), port)
        if done >= 0:
            return bool(done)
        self._test_and_set(word, abi.EVTCHN_FIFO_BUSY)
        seen = self._load(word)
        for _ in range(_LINK_TRIES):
            done, seen = self._try_link(word, seen, port)
            if done >= 0:
                if done == 0:
                    self._test_and_clear(word, abi.EVTCHN_FIFO_BUSY)
                return bool(done)
        log.warning("FIFO: tail word at %#x kept changing; port %d not linked", word, port)
        self._test_and_clear(word, abi.EVTCHN_FIFO_BUSY)
        return True

    # --- save/restore ------------------------------------------------------------------
    def save_state(self) -> dict[str, object]:
        """The words, control blocks and HEADs are guest RAM; this is where they are and
        the queues' tails, priorities and last queues."""
        return {"control": list(self.control), "array": list(self.array),
                "tails": [list(t) for t in self.tails],
                "priority": sorted(self.priority.items()),
                "lastq": sorted([p, v, q] for p, (v, q) in self.lastq.items()),
                "parked": sorted(self.parked)}

    def restore_state(self, state: dict) -> None:
        if len(state["control"]) != self.nr_vcpus or len(state["tails"]) != self.nr_vcpus:
            raise ValueError("FIFO state of another vCPU count")
        if len(state["array"]) > MAX_ARRAY_PAGES:
            raise ValueError("FIFO event array too large")
        self.control = list(state["control"])
        self.array = list(state["array"])
        self.tails = [list(t) for t in state["tails"]]
        self.priority = {p: q for p, q in state["priority"]}
        self.lastq = {p: (v, q) for p, v, q in state["lastq"]}
        self.parked = set(state["parked"])
