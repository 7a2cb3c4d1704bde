"""Loads and stores of fields a guest reads or writes concurrently (ring indices, event
words): each is one aligned native access, so the other side never sees a torn value.

`struct.pack_into` is not enough: for little-endian formats CPython builds the value a
byte at a time in place, so a reader on another CPU can catch the field half written (or
zeroed). A `memoryview` cast to the field's native type stores it with one instruction.
The views are native-endian; x86 and the guests we run are little-endian.

Read-modify-writes of such words (event-channel bits, grant-entry flags) go through
`GuestAtomics`: locked instructions, the same ones the guest uses on them.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenopus.memory.guest import GuestMemory

if sys.byteorder != "little":  # the guest ABIs are little-endian
    raise ImportError("xenopus.memory.shared needs a little-endian host")

log = logging.getLogger(__name__)

_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def load(view: memoryview, offset: int, size: int) -> int:
    """The `size`-byte little-endian field at `offset` of `view`, in one access."""
    return view[offset : offset + size].cast(_FORMATS[size])[0]


def store(view: memoryview, offset: int, size: int, value: int) -> None:
    """Write the `size`-byte field at `offset` of `view` with one access."""
    view[offset : offset + size].cast(_FORMATS[size])[0] = value & ((1 << (8 * size)) - 1)


def ring_read(view: memoryview, base: int, size: int, index: int, n: int) -> bytes:
    """`n` bytes of the byte ring of `size` (a power of two) at `base` of `view`, from
    free-running `index` on, wrapping at the ring's end (io/console.h, io/xs_wire.h)."""
    start = index & (size - 1)
    first = min(n, size - start)
    return bytes(view[base + start : base + start + first]) + bytes(view[base : base + n - first])


def ring_write(view: memoryview, base: int, size: int, index: int, data: bytes | bytearray
               ) -> None:
    """Put `data` (at most `size` bytes) into the byte ring at free-running `index`."""
    start = index & (size - 1)
    first = min(len(data), size - start)
    view[base + start : base + start + first] = data[:first]
    view[base : base + len(data) - first] = data[first:]


_fence = threading.Lock()


def full_barrier() -> None:
    """mb(): a lock round trip is a locked instruction, which orders our store to an
    index before the following load of the guest's (x86 lets a load pass a store)."""
    with _fence:
        pass


_SEQ_CST = 5  # __ATOMIC_SEQ_CST


@functools.cache
def _libatomic() -> tuple[Any, Any, Any] | None:
    """libatomic's fetch_or_8, fetch_and_8 and compare_exchange_4, or None (said once)."""
    try:
        lib = ctypes.CDLL("libatomic.so.1")
    except OSError:
        log.warning("libatomic.so.1 not found: guest-shared bit updates are not locked "
                    "operations")
        return None
    fetch_or, fetch_and = lib["__atomic_fetch_or_8"], lib["__atomic_fetch_and_8"]
    for fn in (fetch_or, fetch_and):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        fn.restype = ctypes.c_uint64
    cas = lib["__atomic_compare_exchange_4"]
    cas.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_int]
    cas.restype = ctypes.c_bool
    return fetch_or, fetch_and, cas


class GuestAtomics:
    """Locked read-modify-write of aligned words in guest RAM.

    Python has no atomic operations on shared memory, and a plain load/or/store of a word
    the guest is updating at the same moment on another CPU can undo the guest's change or
    lose ours. GCC's libatomic (``libatomic1``, present wherever gcc is) exports the
    ``__atomic_*`` builtins as functions; on x86-64 they are ``lock``-prefixed
    instructions, the same ones Xen and the guest use on these words. Without libatomic
    we fall back to a load/store under a host lock: host threads stay consistent, and a
    race with the guest can at worst cost a spurious or a late upcall.
    """

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self._lib = _libatomic()
        self._fallback = threading.Lock()

    def _addr(self, gpa: int, size: int) -> int:
        if gpa % size:
            # Imported here: xenopus.memory.guest imports this module.
            from xenopus.memory.guest import GuestMemoryError
            raise GuestMemoryError(f"unaligned atomic access at {gpa:#x}")
        return ctypes.addressof(ctypes.c_char.from_buffer(self.memory.view(gpa, size)))

    def fetch_or(self, gpa: int, bits: int) -> int:
        """Atomically OR ``bits`` into the 8-byte word at ``gpa``; return its old value."""
        if self._lib is not None:
            return self._lib[0](self._addr(gpa, 8), bits, _SEQ_CST)
        with self._fallback:
            old = self.memory.read_u64(gpa)
            self.memory.write_u64(gpa, old | bits)
            return old

    def fetch_and(self, gpa: int, bits: int) -> int:
        """Atomically AND ``bits`` into the 8-byte word at ``gpa``; return its old value."""
        if self._lib is not None:
            return self._lib[1](self._addr(gpa, 8), bits, _SEQ_CST)
        with self._fallback:
            old = self.memory.read_u64(gpa)
            self.memory.write_u64(gpa, old & bits)
            return old

    def cmpxchg32(self, gpa: int, old: int, new: int) -> int:
        """Compare-and-swap the 4-byte word at ``gpa``; return the value found there."""
        if self._lib is not None:
            seen = ctypes.c_uint32(old)
            self._lib[2](
                self._addr(gpa, 4), ctypes.byref(seen), new, _SEQ_CST, _SEQ_CST)
            return seen.value
        with self._fallback:
            seen = self.memory.read_u32(gpa)
            if seen == old:
                self.memory.write_u32(gpa, new)
            return seen

    def test_and_set_bit(self, gpa: int, nr: int) -> bool:
        word = gpa + 8 * (nr // 64)
        return bool(self.fetch_or(word, 1 << (nr % 64)) >> (nr % 64) & 1)

    def test_and_clear_bit(self, gpa: int, nr: int) -> bool:
        word = gpa + 8 * (nr // 64)
        return bool(self.fetch_and(word, ~(1 << (nr % 64)) & (2**64 - 1)) >> (nr % 64) & 1)

    def test_bit(self, gpa: int, nr: int) -> bool:
        return bool(self.memory.read_u64(gpa + 8 * (nr // 64)) >> (nr % 64) & 1)
