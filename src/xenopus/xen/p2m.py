"""A domain's guest-physical map as Xen's p2m keeps it: which frames hold memory, and
what the domain is charged for (memory.h; Xen's common/memory.c, arch/x86/mm/p2m.c).

RAM is what the builder laid out (`GuestMemory.regions`). On top of it:
- ballooned frames: RAM given back by XENMEM_decrease_reservation (or removed with
  XENMEM_remove_from_physmap); their memory goes back to the host (`GuestMemory.discard`)
  and they read as zeros until XENMEM_populate_physmap brings them back. A KVM memory slot
  cannot be split per page, so a ballooned frame stays mapped: a guest that touches it
  anyway (a read faults a shmem page in too) gets host memory back, as it would have with
  the frame still charged to it.
- populated extents outside RAM: XENMEM_populate_physmap above RAM (Linux's balloon
  growing towards maxmem), each extent a memory slot of its own.
- Xen pages: frames outside RAM where the guest put shared_info or a grant frame
  (XENMEM_add_to_physmap at any free GFN, as Xen's p2m allows: Linux puts its grant
  frames in unused physical space, Xen's PV shim puts shared_info above RAM); each is a
  page of its own, dropped once nothing of Xen's is mapped there any more.
- grant mappings: GNTTABOP_map_grant_ref with GNTMAP_host_map puts a granted page of
  another domain (or of this one) at a GFN the mapper chooses (grant_table.h: host_addr
  is a guest-physical address for an auto-translated mapper; Xen's p2m_grant_map_rw/ro
  entries). Here that is a memory slot over the granter's memfd page. A KVM slot cannot
  be split per page, so the GFN must be free (outside RAM, nothing mapped there): where
  Linux's unpopulated-alloc puts them; a GFN inside RAM (a ballooned frame) is refused.

Accounting follows Xen's: the domain's `d->tot_pages` is its RAM frames not ballooned plus
its populated frames (shared_info and grant frames are Xen's own pages, not charged), and
`max_pages` (the toolstack's maxmem) bounds it.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from xenopus.vm.protocols import MachineView
from xenopus.xen import abi

GPA_LIMIT = 1 << 40  # ours: frames outside RAM stay below 1 TiB (any x86-64 MAXPHYADDR)
MAX_EXTRA_RANGES = 1024  # ours: memory slots for frames outside RAM (KVM allows ~32 K)


class PhysMap:
    """The frames of one domain beyond the RAM it was built with; see the module doc."""

    def __init__(self, machine: MachineView, max_pages: int):
        self.machine = machine
        self.memory = machine.memory
        self.ram_pages = self.memory.ram_size // abi.PAGE_SIZE
        self.max_pages = max(max_pages, self.ram_pages)
        self.ballooned: set[int] = set()  # RAM GPFNs given back
        self.populated: dict[int, int] = {}  # first GPFN -> pages, extents outside RAM
        self.xen_pages: set[int] = set()  # GPFNs outside RAM holding a Xen structure
        self.grant_maps: set[int] = set()  # GPFNs where a granted page is mapped
        self.lock = threading.RLock()

    def current_pages(self) -> int:
        """XENMEM_current_reservation: the frames the domain is charged for."""
        with self.lock:
            return self.ram_pages - len(self.ballooned) + sum(self.populated.values())

    def holds_memory(self, gpfn: int) -> bool:
        """The frame is one of the domain's pages (not ballooned out, not a hole)."""
        with self.lock:
            return (gpfn not in self.ballooned
                    and self.memory.contains(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE))

    def _free(self, gpa: int, size: int) -> bool:
        """Nothing is mapped at the range and one more memory slot is allowed."""
        extra = len(self.populated) + len(self.xen_pages) + len(self.grant_maps)
        return (gpa + size <= GPA_LIMIT and not self.memory.overlaps(gpa, size)
                and extra < MAX_EXTRA_RANGES)

    def _add(self, gpa: int, size: int, backing: tuple[int, int] | None = None,
             readonly: bool = False) -> bool:
        if not self._free(gpa, size):
            return False
        try:
            if backing is None:
                self.machine.add_memory(gpa, size)
            else:
                self.machine.add_memory(gpa, size, backing=backing, readonly=readonly)
        except (ValueError, OSError):  # KVM refused the slot, or the file would not map
            return False
        return True

    # --- grant mappings ----------------------------------------------------------------
    def map_grant(self, gpfn: int, backing: tuple[int, int], readonly: bool) -> bool:
        """The granted page behind ``backing`` (memfd, offset) at the free ``gpfn``."""
        with self.lock:
            if not self._add(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE, backing, readonly):
                return False
            self.grant_maps.add(gpfn)
            return True

    def unmap_grant(self, gpfn: int) -> None:
        with self.lock:
            if gpfn in self.grant_maps:
                self.grant_maps.discard(gpfn)
                self.machine.remove_memory(gpfn * abi.PAGE_SIZE)

    def set_max_pages(self, pages: int) -> None:
        """XEN_DOMCTL_max_mem (the toolstack's `xl mem-set`/`mem-max`): a new bound, taken
        as given. Xen no longer checks it against the pages the domain holds: one below
        them lets the domain "ratchet down", refusing every allocation until it is under."""
        with self.lock:
            self.max_pages = max(0, pages)

    # --- reservations ------------------------------------------------------------------
    def release(self, gpfn: int, pages: int, keep: Collection[int]) -> bool:
        """XENMEM_decrease_reservation of one extent: False (the call ends there) unless
        every frame of it holds memory and none is in `keep` (Xen's own structures)."""
        gpa, size = gpfn * abi.PAGE_SIZE, pages * abi.PAGE_SIZE
        frames = range(gpfn, gpfn + pages)
        with self.lock:
            if self.memory.is_ram(gpa, size):
                if any(f in self.ballooned or f in keep for f in frames):
                    return False  # Xen: a frame with nothing there fails guest_remove_page
                self.memory.discard(gpa, size)
                self.ballooned.update(frames)
                return True
            if self.populated.get(gpfn) == pages and not any(f in keep for f in frames):
                del self.populated[gpfn]
                self.machine.remove_memory(gpa)
                return True
            return False

    def populate(self, gpfn: int, pages: int) -> bool:
        """XENMEM_populate_physmap of one extent: fresh zeroed frames where there were none,
        within max_pages. A frame that is already there ends the call (Xen would put a new
        page over it and leave the old one charged)."""
        gpa, size = gpfn * abi.PAGE_SIZE, pages * abi.PAGE_SIZE
        frames = range(gpfn, gpfn + pages)
        with self.lock:
            if self.current_pages() + pages > self.max_pages:
                return False  # Xen: assign_pages refuses beyond d->max_pages
            if self.memory.is_ram(gpa, size):
                if not all(f in self.ballooned for f in frames):
                    return False
                self.memory.discard(gpa, size)  # whatever the guest wrote meanwhile
                self.ballooned.difference_update(frames)
                return True
            if not self._add(gpa, size):
                return False
            self.populated[gpfn] = pages
            return True

    # --- frames for Xen's structures ---------------------------------------------------
    def back_xen_page(self, gpfn: int) -> bool:
        """A page at `gpfn` for shared_info or a grant frame: RAM or a populated frame is
        used in place; a free GFN gets a page of its own. False if it cannot be had."""
        gpa = gpfn * abi.PAGE_SIZE
        with self.lock:
            if self.memory.contains(gpa, abi.PAGE_SIZE):
                return True
            if not self._add(gpa, abi.PAGE_SIZE):
                return False
            self.xen_pages.add(gpfn)
            return True

    def sweep(self, in_use: Collection[int]) -> None:
        """Drop the Xen pages outside RAM that no Xen structure uses any more."""
        with self.lock:
            for gpfn in sorted(self.xen_pages - set(in_use)):
                self.xen_pages.discard(gpfn)
                self.machine.remove_memory(gpfn * abi.PAGE_SIZE)

    def remove(self, gpfn: int, keep: Collection[int]) -> int:
        """XENMEM_remove_from_physmap: 0 or -errno. Xen unmaps whatever is at the GFN;
        here shared_info, a grant frame or a special page lives in the page its GFN maps,
        so removing that GFN would lose the structure: -EBUSY. A RAM frame is given back
        as by decrease_reservation (Xen keeps it charged until the domain dies)."""
        gpa = gpfn * abi.PAGE_SIZE
        with self.lock:
            if gpfn in keep or gpfn in self.xen_pages or gpfn in self.grant_maps:
                return -abi.XEN_EBUSY  # a grant mapping goes with GNTTABOP_unmap_grant_ref
            if self.memory.is_ram(gpa, abi.PAGE_SIZE):
                return 0 if self.release(gpfn, 1, keep) else -abi.XEN_ENOENT
            if self.populated.get(gpfn) == 1:
                return 0 if self.release(gpfn, 1, keep) else -abi.XEN_EBUSY
            if any(g <= gpfn < g + n for g, n in self.populated.items()):
                return -abi.XEN_EBUSY  # one frame of a larger extent: its slot is one piece
            return -abi.XEN_ENOENT

    # --- save/restore (docs/snapshot-stream.md, the `xen` part) -------------------------
    def save_state(self) -> dict[str, object]:
        """The frames beyond the RAM the domain was built with: ballooned RAM frames,
        populated extents and Xen pages outside RAM (their contents travel as PAGE_DATA
        after the `xen` part, once restoring this has made them addressable again)."""
        with self.lock:
            return {"ballooned": sorted(self.ballooned),
                    "populated": [[g, n] for g, n in sorted(self.populated.items())],
                    "xen_pages": sorted(self.xen_pages)}

    def restore_state(self, state: dict[str, object]) -> None:
        """Into a domain built from the same config and not started: the same extents and
        Xen pages outside RAM (new memory slots, zeroed) and the same ballooned frames
        (which read as zero: the stream leaves them out). ValueError names a frame that
        cannot be had."""
        ballooned = [int(f) for f in state["ballooned"]]  # type: ignore[union-attr]
        populated = [(int(g), int(n)) for g, n in state["populated"]]  # type: ignore[union-attr]
        xen_pages = [int(f) for f in state["xen_pages"]]  # type: ignore[union-attr]
        with self.lock:
            for f in ballooned:
                if not self.memory.is_ram(f * abi.PAGE_SIZE, abi.PAGE_SIZE):
                    raise ValueError(f"ballooned frame {f:#x} is not RAM")
            if self.ram_pages - len(set(ballooned)) + sum(n for _, n in populated) > self.max_pages:
                raise ValueError("the saved frames exceed this domain's maxmem")
            for gpfn, pages in [*populated, *((f, 1) for f in xen_pages)]:
                if pages <= 0 or not self._add(gpfn * abi.PAGE_SIZE, pages * abi.PAGE_SIZE):
                    raise ValueError(f"frames {gpfn:#x}+{pages} outside RAM cannot be had")
            self.ballooned = set(ballooned)
            self.populated = dict(populated)
            self.xen_pages = set(xen_pages)


__all__ = ["PhysMap"]
