"""Guest-physical memory: memfd-backed regions and bounds-checked access.

Each region is its own memfd so that later work can hand it to a backend process,
snapshot it or migrate it without copying. The layout follows what PC firmware gives
a guest: RAM from 0 up to the 32-bit MMIO hole, the rest from 4 GiB up.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
from dataclasses import dataclass, field

from xenopus.memory import shared

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

PAGE_SIZE = 4096
# The 32-bit MMIO hole: PCI BARs, the IOAPIC (0xFEC00000) and LAPIC (0xFEE00000) live here.
MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB


class GuestMemoryError(Exception):
    """A guest-physical access outside the guest's RAM."""


# mmap(2) flags Python's mmap module does not export (the same on x86-64 and arm64).
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_over(addr: int, length: int, fd: int, offset: int) -> None:
    """Replace [addr, addr+length) of this process with a private mapping (MAP_FIXED) of
    `fd` at `offset`, or of zeros (fd -1): copy-on-write, so writes stay in this process
    and the file is never written. Whoever holds views of the range keeps them: the
    address does not change, only what backs it (KVM follows through its MMU notifier)."""
    flags = mmap.MAP_PRIVATE | _MAP_FIXED | _MAP_NORESERVE
    if fd < 0:
        flags |= mmap.MAP_ANONYMOUS
    got = _libc.mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, offset)
    if got == _MAP_FAILED or got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap over {addr:#x}+{length:#x}: {os.strerror(err)}")


@dataclass
class MemoryRegion:
    """One contiguous range of guest RAM backed by a memfd mapped into this process."""

    gpa: int
    size: int
    fd: int  # the memfd behind it; -1 once `private`
    map: mmap.mmap = field(repr=False)
    # Mapped privately (a clone's RAM, copy-on-write from its image file): no memfd
    # behind it, so no other process can map it (the interdomain grant view refuses it).
    private: bool = False

    @classmethod
    def create(cls, gpa: int, size: int, name: str = "xenopus-ram") -> MemoryRegion:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise ValueError(f"region {gpa:#x}+{size:#x} is not page aligned")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # The size is fixed from here on (memfd_create(2) seals): whoever else maps this
            # memfd (a peer domain's process reading grants, a backend) can trust it, and a
            # compromised owner cannot shrink it under them to make their accesses SIGBUS.
            # Punching holes (ballooning, discard) is still allowed.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(gpa, size, fd, m)

    @classmethod
    def map_file(cls, gpa: int, size: int, fd: int, offset: int, *, readonly: bool = False
                 ) -> MemoryRegion:
        """`size` bytes of another region's memfd from `offset`, mapped here shared (a page
        another domain granted, mapped into this guest at `gpa`). The mapping keeps the
        file alive; `fd` stays the caller's."""
        if gpa % PAGE_SIZE or size % PAGE_SIZE or offset % PAGE_SIZE or size <= 0:
            raise ValueError(f"region {gpa:#x}+{size:#x} at offset {offset:#x} is not page aligned")
        prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
        return cls(gpa, size, -1, mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=offset))

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def host_address(self) -> int:
        """The userspace address KVM_SET_USER_MEMORY_REGION needs."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def make_private(self) -> None:
        """Back the whole region by private zero pages instead of its memfd (which is
        closed): what a clone's image is then mapped over (`map_private_file`)."""
        _map_over(self.host_address, self.size, -1, 0)
        self.private = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def map_private_file(self, offset: int, length: int, fd: int, file_offset: int) -> None:
        """Map `length` octets of `fd` from `file_offset` copy-on-write at `offset` of this
        private region (all three page-aligned)."""
        if not self.private:
            raise GuestMemoryError("a file is mapped only over a private region")
        if (offset | length | file_offset) % PAGE_SIZE or offset + length > self.size:
            raise GuestMemoryError(f"file mapping {offset:#x}+{length:#x} from "
                                   f"{file_offset:#x}: not page-aligned within the region")
        _map_over(self.host_address + offset, length, fd, file_offset)

    def zero(self, offset: int, length: int) -> None:
        """Fresh zero pages over a range of a private region (its discard: MADV_REMOVE
        needs a shared mapping, MADV_DONTNEED would bring back the file's contents)."""
        _map_over(self.host_address + offset, length, -1, 0)

    def close(self) -> None:
        # A view still alive keeps the mapping; it goes with the process.
        with contextlib.suppress(BufferError):
            self.map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pages(gpa: int, length: int) -> range:
    """The addresses of the pages [gpa, gpa + length) touches."""
    first = gpa & ~(PAGE_SIZE - 1)
    return range(first, gpa + length, PAGE_SIZE)


class GuestMemory:
    """The guest's RAM as a set of non-overlapping regions, and the pages added outside it
    while the guest runs (`attach`/`detach`: where a Xen guest maps shared_info or grant
    frames above RAM). Those extra pages are addressable like RAM but are not RAM:
    `regions`, `ram_size` and `ram_ranges` describe RAM alone."""

    def __init__(self, regions: list[MemoryRegion]):
        self.regions = sorted(regions, key=lambda r: r.gpa)
        for a, b in zip(self.regions, self.regions[1:], strict=False):
            if a.end > b.gpa:
                raise ValueError(f"regions {a.gpa:#x} and {b.gpa:#x} overlap")
        self.extra: dict[int, MemoryRegion] = {}  # gpa -> a region added outside RAM
        # Replaced whole (never mutated) so that readers on other threads need no lock.
        self._spans: tuple[tuple[MemoryRegion, memoryview], ...] = tuple(
            (r, memoryview(r.map)) for r in self.regions)
        # The write log (`log_writes`): page addresses this process wrote into guest
        # memory (devices, Xen), which KVM's dirty log never sees; None while off. A set's
        # add is atomic under the GIL, so writers on any thread need no lock.
        self._written: set[int] | None = None
        # Pages written through views kept for the domain's life (a PV ring's page): in
        # every `take_dirty` answer while the log is on.
        self._kept: set[int] = set()

    @classmethod
    def create(cls, ram_bytes: int) -> GuestMemory:
        """RAM below the MMIO hole, and whatever does not fit from 4 GiB up."""
        if ram_bytes <= 0 or ram_bytes % PAGE_SIZE:
            raise ValueError(f"guest RAM size {ram_bytes} is not a positive number of pages")
        low = min(ram_bytes, MMIO_HOLE_START)
        regions = [MemoryRegion.create(0, low, "xenopus-ram-low")]
        if ram_bytes > low:
            regions.append(MemoryRegion.create(MMIO_HOLE_END, ram_bytes - low, "xenopus-ram-high"))
        return cls(regions)

    @property
    def ram_size(self) -> int:
        return sum(r.size for r in self.regions)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(r.gpa, r.size) for r in self.regions]

    @property
    def low_ram_end(self) -> int:
        """End of the RAM below 4 GiB (where 32-bit boot structures must go)."""
        return self.regions[0].end if self.regions[0].gpa == 0 else 0

    def _find(self, gpa: int, length: int) -> tuple[MemoryRegion, memoryview]:
        if length < 0:
            raise GuestMemoryError(f"negative length {length} at {gpa:#x}")
        for r, v in self._spans:
            if r.gpa <= gpa < r.end or (length == 0 and gpa == r.end):
                if gpa + length > r.end:
                    break
                return r, v
        raise GuestMemoryError(f"guest-physical range {gpa:#x}+{length:#x} is not in guest RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._find(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def is_ram(self, gpa: int, length: int = 1) -> bool:
        """The range lies in one RAM region (not in a page added outside RAM)."""
        return any(r.gpa <= gpa and gpa + length <= r.end for r in self.regions)

    def overlaps(self, gpa: int, length: int) -> bool:
        """Some byte of the range is RAM or an extra page already."""
        return any(r.gpa < gpa + length and gpa < r.end for r, _ in self._spans)

    def attach(self, region: MemoryRegion) -> None:
        """Make `region` (outside RAM, overlapping nothing) addressable."""
        if self.overlaps(region.gpa, region.size):
            raise GuestMemoryError(f"{region.gpa:#x}+{region.size:#x} overlaps guest memory")
        self.extra = {**self.extra, region.gpa: region}
        self._spans = (*self._spans, (region, memoryview(region.map)))

    def detach(self, gpa: int) -> MemoryRegion:
        """Remove the extra region at `gpa` and return it (its owner closes it)."""
        region = self.extra[gpa]
        self.extra = {g: r for g, r in self.extra.items() if g != gpa}
        self._spans = tuple((r, v) for r, v in self._spans if r is not region)
        return region

    def backing(self, gpa: int, length: int) -> tuple[int, int]:
        """(memfd, offset in it) of a range inside one region, for mapping the same memory
        elsewhere; GuestMemoryError if it is not in one region or that has no memfd."""
        r, _ = self._find(gpa, length)
        if r.fd < 0:
            raise GuestMemoryError(f"{gpa:#x}+{length:#x} has no memfd here")
        return r.fd, gpa - r.gpa

    def view(self, gpa: int, length: int, *, kept: bool = False) -> memoryview:
        """A writable view of guest memory; no copy is made. While the write log is on the
        range counts as written (the view may be written through). `kept`: the caller
        keeps the view and writes through it at any time (a PV ring), so the range counts
        as written in every `take_dirty` answer."""
        if kept:
            self._kept |= set(_pages(gpa, length))
        elif self._written is not None:
            self.mark_dirty(gpa, length)
        return self._slice(gpa, length)

    def _slice(self, gpa: int, length: int) -> memoryview:
        r, v = self._find(gpa, length)
        off = gpa - r.gpa
        return v[off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        r, v = self._find(gpa, length)
        return bytes(v[gpa - r.gpa : gpa - r.gpa + length])

    # --- the write log (live migration) ------------------------------------------------
    def log_writes(self, on: bool) -> None:
        """Start (or stop) logging the pages this process writes into guest memory: every
        `view`, `write`, `write_*`, `fill` and `discard`, and what a writer holding a view
        of its own reports with `mark_dirty`."""
        self._written = set() if on else None

    def mark_dirty(self, gpa: int, length: int) -> None:
        """Count [gpa, gpa + length) as written, if the write log is on."""
        written = self._written
        if written is not None and length > 0:
            written.update(_pages(gpa, length))  # one C call on a range: atomic under the GIL
            # A `take_dirty` on another thread may have swapped the set between the load
            # above and the update, after reading it: the pages go into the new one too.
            now = self._written
            if now is not written and now is not None:
                now.update(_pages(gpa, length))

    def take_dirty(self) -> list[int]:
        """The pages written since `log_writes(True)` or the last call (with the kept
        ones), in order; the log starts again empty."""
        written = self._written
        if written is None:
            return []
        self._written = set()
        return sorted(written | self._kept)

    def discard(self, gpa: int, length: int) -> None:
        """Give the host memory behind a page-aligned range back to the host: MADV_REMOVE
        punches the hole in the region's memfd (madvise(2); fallocate(PUNCH_HOLE) on
        shmem), so the range reads as zeros and costs nothing until written again."""
        if gpa % PAGE_SIZE or length % PAGE_SIZE:
            raise GuestMemoryError(f"discard of {gpa:#x}+{length:#x}: not page aligned")
        r, _ = self._find(gpa, length)
        if r.private:
            r.zero(gpa - r.gpa, length)
        else:
            r.map.madvise(mmap.MADV_REMOVE, gpa - r.gpa, length)
        self.mark_dirty(gpa, length)  # the pages read as zeros now: sent again as such

    # Writers below log the pages after writing them: a log pass between the two then
    # takes the page in its next round, never only before the write.
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self._slice(gpa, len(data))[:] = data
        self.mark_dirty(gpa, len(data))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self._slice(gpa, length)[:] = bytes([byte]) * length
        self.mark_dirty(gpa, length)

    def read_int(self, gpa: int, size: int) -> int:
        r, v = self._find(gpa, size)
        return shared.load(v, gpa - r.gpa, size)

    def write_int(self, gpa: int, size: int, value: int) -> None:
        shared.store(self._slice(gpa, size), 0, size, value)
        self.mark_dirty(gpa, size)

    def read_u8(self, gpa: int) -> int:
        return self.read_int(gpa, 1)

    def read_u16(self, gpa: int) -> int:
        return self.read_int(gpa, 2)

    def read_u32(self, gpa: int) -> int:
        return self.read_int(gpa, 4)

    def read_u64(self, gpa: int) -> int:
        return self.read_int(gpa, 8)

    def write_u8(self, gpa: int, value: int) -> None:
        self.write_int(gpa, 1, value)

    def write_u16(self, gpa: int, value: int) -> None:
        self.write_int(gpa, 2, value)

    def write_u32(self, gpa: int, value: int) -> None:
        self.write_int(gpa, 4, value)

    def write_u64(self, gpa: int, value: int) -> None:
        self.write_int(gpa, 8, value)

    def close(self) -> None:
        spans, self._spans = self._spans, ()
        for _, v in spans:
            v.release()
        for r, _ in spans:
            r.close()
        self.extra = {}

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
