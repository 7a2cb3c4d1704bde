"""HYPERVISOR_memory_op (memory.h; Xen's common/memory.c, arch/x86/mm.c): the memory map,
reservations and ballooning, add_to_physmap (where shared_info and grant frames go) and
remove_from_physmap; the frames themselves are the domain's `PhysMap` (xen/p2m.py)."""

from __future__ import annotations

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
    """memory_op of one domain."""

    def __init__(self, domain: XenDomain):
        self.domain = domain
        self.memory = domain.memory
        self.p2m = domain.p2m

    def memory_op(self, call: Call) -> int:
        cmd, arg = call.args[0], call.args[1]
        op, start = cmd & abi.MEMOP_CMD_MASK, cmd >> abi.MEMOP_EXTENT_SHIFT
        a = call.access
        d = self.domain
        if op == abi.XENMEM_add_to_physmap:
            xatp = a.read(arg, abi.xen_add_to_physmap)
            d.check_self(xatp.domid)
            return self.add_to_physmap(xatp.space, xatp.idx, xatp.gpfn, call.vcpu)
        if op == abi.XENMEM_remove_from_physmap:
            if start:
                return -abi.XEN_EINVAL  # not a continuable op
            xrfp = a.read(arg, abi.xen_remove_from_physmap)
            d.check_self(xrfp.domid)
            return self.p2m.remove(xrfp.gpfn, d.xen_gpfns())
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
                return self.p2m.max_pages
            return self.p2m.current_pages()
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
        """Map shared_info or grant frame `idx` at `gpfn`: in RAM, or at any free GFN,
        which gets a page of its own (arch/x86/mm.c xenmem_add_to_physmap_one)."""
        d = self.domain
        if space not in (abi.XENMAPSPACE_shared_info, abi.XENMAPSPACE_grant_table):
            return -abi.XEN_ENOSYS  # gmfn / gmfn_range / foreign / dev_mmio: not offered
        if space == abi.XENMAPSPACE_shared_info and idx != 0:
            return -abi.XEN_EINVAL
        with self.p2m.lock:
            if not self.p2m.back_xen_page(gpfn):
                return -abi.XEN_EINVAL
            if space == abi.XENMAPSPACE_shared_info:
                d.map_shared_info(gpfn * abi.PAGE_SIZE, vcpu)
                rc = 0
            else:
                rc = d.grants.map_frame(idx, gpfn)
            self.p2m.sweep(d.xen_gpfns())  # the page the structure left, or ours on failure
        return rc

    def _reservation(self, op: int, a: GuestAccess, r: abi.xen_memory_reservation,
                     start: int) -> int:
        pages = 1 << r.extent_order
        done = start
        keep = self.domain.xen_gpfns()
        size = a.pfn_size  # xen_pfn_t: 32 bits for a 32-bit caller
        for i in range(start, r.nr_extents):
            try:
                gpfn = int.from_bytes(a.read(r.extent_start + size * i, size), "little")
            except XenError:
                break  # as Xen: the extents done so far are the result
            if gpfn % pages:
                break
            if op == abi.XENMEM_decrease_reservation:
                ok = self.p2m.release(gpfn, pages, keep)
            else:
                ok = self.p2m.populate(gpfn, pages)
            if not ok:
                break
            done = i + 1
        return done
