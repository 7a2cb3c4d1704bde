"""HYPERVISOR_memory_op (memory.h; Xen's common/memory.c, arch/x86/mm.c): the memory map,
reservations and ballooning, and add_to_physmap (where shared_info and grant frames go)."""

from __future__ import annotations

import mmap
import threading
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.guestmem import GuestAccess, XenError
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

MAX_EXTENT_ORDER = 9  # Xen's default domU_max_order
MAX_EXTENTS = 1 << 20  # per call: bounds the work one hypercall can ask for


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_memory_op, MemoryOps(domain).memory_op)


class MemoryOps:
    """memory_op of one domain; the frames it ballooned out are its own state."""

    def __init__(self, domain: XenDomain):
        self.domain = domain
        self.memory = domain.memory
        self.ballooned: set[int] = set()  # GPFNs given back by decrease_reservation
        self._lock = threading.Lock()

    def memory_op(self, call: Call) -> int:
        cmd, arg = call.args[0], call.args[1]
        op, start = cmd & abi.MEMOP_CMD_MASK, cmd >> abi.MEMOP_EXTENT_SHIFT
        a = call.access
        d = self.domain
        if op == abi.XENMEM_add_to_physmap:
            xatp = a.read(arg, abi.xen_add_to_physmap)
            d.check_self(xatp.domid)
            return self.add_to_physmap(xatp.space, xatp.idx, xatp.gpfn, call.vcpu)
        if op == abi.XENMEM_memory_map:
            mm = a.read(arg, abi.xen_memory_map)
            if not d.e820:
                return -abi.XEN_ENOSYS
            n = min(mm.nr_entries, len(d.e820))
            entries = (abi.e820entry * n)(*[abi.e820entry(*e) for e in d.e820[:n]])
            a.write(mm.buffer, entries)
            mm.nr_entries = n
            a.write(arg, mm)
            return 0
        if op in (abi.XENMEM_current_reservation, abi.XENMEM_maximum_reservation):
            d.check_self(int.from_bytes(a.read(arg, 2), "little"))
            if op == abi.XENMEM_maximum_reservation:
                return d.max_pages
            return d.max_pages - len(self.ballooned)
        if op == abi.XENMEM_maximum_ram_page:
            return max(gpa + size for gpa, size in self.memory.ram_ranges()) // abi.PAGE_SIZE
        if op in (abi.XENMEM_decrease_reservation, abi.XENMEM_populate_physmap):
            r = a.read(arg, abi.xen_memory_reservation)
            d.check_self(r.domid)
            if r.extent_order > MAX_EXTENT_ORDER or r.nr_extents > MAX_EXTENTS:
                return start  # Xen: nothing done beyond the continuation point
            return self._reservation(op, a, r, start)
        return -abi.XEN_ENOSYS

    def add_to_physmap(self, space: int, idx: int, gpfn: int, vcpu: int = -1) -> int:
        gpa = gpfn * abi.PAGE_SIZE
        if space == abi.XENMAPSPACE_shared_info:
            if idx != 0:
                return -abi.XEN_EINVAL
            if not self.memory.contains(gpa, abi.PAGE_SIZE):
                return -abi.XEN_EINVAL
            self.domain.map_shared_info(gpa, vcpu)
            return 0
        if space == abi.XENMAPSPACE_grant_table:
            return self.domain.grants.map_frame(idx, gpfn)
        return -abi.XEN_ENOSYS  # gmfn / gmfn_range / foreign / dev_mmio: not offered

    def _reservation(self, op: int, a: GuestAccess, r: abi.xen_memory_reservation,
                     start: int) -> int:
        pages = 1 << r.extent_order
        done = start
        give = op == abi.XENMEM_decrease_reservation
        for i in range(start, r.nr_extents):
            try:
                gpfn = int.from_bytes(a.read(r.extent_start + 8 * i, 8), "little")
            except XenError:
                break  # as Xen: the extents done so far are the result
            if gpfn % pages or not self._balloon(gpfn, pages, give=give):
                break
            done = i + 1
        return done

    def _balloon(self, gpfn: int, pages: int, *, give: bool) -> bool:
        """Give `pages` frames at `gpfn` back (their memory is released to the host) or
        take them again (zeroed). False if the range is not plain guest RAM."""
        gpa, size = gpfn * abi.PAGE_SIZE, pages * abi.PAGE_SIZE
        region = next((r for r in self.memory.regions if r.gpa <= gpa and gpa + size <= r.end),
                      None)
        if region is None:
            return False
        if any(gpa <= s < gpa + size for s in self.domain.special_gpas()):
            return False  # not the pages Xen's own structures live in
        with self._lock:
            frames = range(gpfn, gpfn + pages)
            if give:
                region.map.madvise(mmap.MADV_REMOVE, gpa - region.gpa, size)
                self.ballooned.update(frames)
            else:
                self.ballooned.difference_update(frames)
        return True
