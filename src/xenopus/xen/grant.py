"""Grant tables, version 1: ``GrantTable`` (frames and ``GNTTABOP_*``) and ``GrantMapper``.

Spec: xen/include/public/grant_table.h (v1 entries, ops, GTF_*/GNTST_* codes); the checks
and their order follow Xen's common/grant_table.c, which is what guests are written against.

Where the table lives. On Xen the grant frames are Xen-owned pages that
XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx, gpfn) maps into the guest. Here frame
``idx`` *is* the guest RAM page at ``gpfn``: ``map_frame`` zeroes it on first mapping (a new
Xen frame is zeroed) and carries the entries over when the guest moves a frame. An entry
in a frame never mapped cannot have been written by the guest, so it reads as invalid.

Revocation, as Xen does it. While a grant is in use its entry carries GTF_reading (and
GTF_writing for a writable use), set with a compare-and-swap that also re-checks the
entry; a granting guest ends access with a compare-and-swap of the flags that fails while
either bit is set (Linux's gnttab_end_foreign_access), so it waits for the unmap. Every
``map``/copy re-reads and re-checks the entry: nothing is handed out from a cached check,
and a view is never handed out after its entry changed. A guest that scribbles over an
entry in use anyway only loses control of its own page, exactly as on Xen.

Pins (how many users hold each entry) are counted per process: a ``GrantTable`` built in
another domain's process over the same memory keeps its own counts.

Host mappings (GNTTABOP_map_grant_ref / unmap_grant_ref, grant_table.c map_grant_ref and
unmap_common, for an auto-translated mapper: HVM/PVH). The mapper names a GFN in
``host_addr``; the granted page appears there (``host_map``: the domain's p2m, a memory
slot over the granter's memfd page) until unmapped by the handle the map returned. The
entry is pinned meanwhile (GTF_reading, and GTF_writing unless GNTMAP_readonly), so the
granter cannot end access. The maptrack (handle -> mapping) is the mapper's.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xenopus.memory import GuestMemory, GuestMemoryError
from xenopus.memory.shared import GuestAtomics
from xenopus.stream import StateError
from xenopus.xen import abi
from xenopus.xen.guestmem import GuestAccess, XenError

log = logging.getLogger(__name__)

PER_FRAME = abi.GRANT_ENTRIES_PER_FRAME_V1
_ENTRY = ctypes.sizeof(abi.grant_entry_v1)
_FRAME_OFF = abi.grant_entry_v1.frame.offset
_ENTRIES = struct.Struct("<HHI")  # grant_entry_v1: flags, domid, frame (grant_table.h)
_DOMID_SHIFT = 8 * abi.grant_entry_v1.domid.offset  # flags and domid share one 32-bit word
_NO_GFN = 2**64 - 1  # a frame not mapped into the guest (all-ones xen_pfn_t)
_ULONG = 2**64 - 1
COPY_BATCH_MAX = 4096  # ours: Xen preempts long batches; we refuse absurd ones (-EINVAL)
_UNSTABLE_RETRIES = 4  # Xen gives up on an entry that keeps changing under it
MAPTRACK_MAX = 1024  # ours: handles per mapper (each mapping is a KVM memory slot)
MAP_BATCH_MAX = 512  # ours: map/unmap elements per call (Xen preempts long batches)
# What an HVM mapper may not ask for (grant_table.c map_grant_ref: paging_mode_external).
_PV_ONLY_MAP = abi.GNTMAP_device_map | abi.GNTMAP_application_map | abi.GNTMAP_contains_pte


@dataclass
class HostMapping:
    """One GNTTABOP_map_grant_ref of the mapper: ``table``'s ``ref`` at GFN ``gfn``."""

    table: GrantTable
    ref: int
    gfn: int
    write: bool


class GrantError(Exception):
    """A grant could not be used; ``status`` is the GNTST_* code."""

    def __init__(self, status: int, why: str):
        super().__init__(f"{why} (GNTST {status})")
        self.status = status


class GrantTable:
    """One domain's v1 grant table over that domain's guest memory."""

    def __init__(self, domid: int, memory: GuestMemory, max_frames: int = 32, *,
                 foreign: Callable[[int], GrantTable | None] | None = None):
        """``foreign(domid)`` gives another domain's table for GNTTABOP_copy on its grefs."""
        self.domid = domid
        self.memory = memory
        self.max_frames = max_frames
        self.foreign = foreign
        self.nr_frames = 1  # Xen starts a table with one frame and grows it on demand
        self.frames: dict[int, int] = {}  # frame index -> gpfn
        self.atomics = GuestAtomics(memory)
        self._pins: dict[int, list[int]] = {}  # gref -> [readers, writers]
        self._lock = threading.RLock()
        # Told (frames, nr_frames) whenever a frame is mapped or moved: other domains that
        # view this table look entries up through those frames.
        self.on_frames: Callable[[dict[int, int], int], None] | None = None
        # This domain as a mapper: its maptrack, and how a granted page is put at a GFN of
        # its p2m (gfn, (memfd, offset), readonly) -> done, and taken away again.
        self.maptrack: dict[int, HostMapping] = {}
        self.host_map: Callable[[int, tuple[int, int], bool], bool] | None = None
        self.host_unmap: Callable[[int], None] | None = None

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * PER_FRAME

    def map_frame(self, idx: int, gpfn: int) -> int:
        """XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx, gpfn); 0 or -errno."""
        if idx & abi.XENMAPIDX_grant_table_status:
            return -abi.XEN_EINVAL  # status frames exist only in v2
        if idx >= self.max_frames:
            return -abi.XEN_EINVAL
        gpa = gpfn * abi.PAGE_SIZE
        if not self.memory.contains(gpa, abi.PAGE_SIZE):
            return -abi.XEN_EINVAL
        with self._lock:
            old = self.frames.get(idx)
            if old is None:
                self.memory.fill(gpa, abi.PAGE_SIZE)
            elif old != gpfn:
                self.memory.write(gpa, self.memory.read(old * abi.PAGE_SIZE, abi.PAGE_SIZE))
            self.frames[idx] = gpfn
            self.nr_frames = max(self.nr_frames, idx + 1)
            frames, nr_frames = dict(self.frames), self.nr_frames
        if self.on_frames is not None:
            self.on_frames(frames, nr_frames)
        return 0

    # --- save/restore: the entries live in guest RAM (the frames); the table's own state
    # is where those frames are. Pins are the backends' and go with them.
    def save_state(self) -> dict[str, object]:
        with self._lock:
            if self.maptrack:
                # Another domain's page is mapped here: nothing in a stream can restore it.
                raise StateError(f"d{self.domid} has {len(self.maptrack)} grant mapping(s) "
                                 "of another domain's pages")
            return {"nr_frames": self.nr_frames,
                    "frames": [[i, f] for i, f in sorted(self.frames.items())]}

    def restore_state(self, state: dict[str, object]) -> None:
        nr_frames, frames = state["nr_frames"], state["frames"]
        if not (isinstance(nr_frames, int) and 1 <= nr_frames <= self.max_frames
                and isinstance(frames, list)):
            raise ValueError(f"grant table of {nr_frames} frames (at most {self.max_frames})")
        placed: dict[int, int] = {}
        for idx, gpfn in frames:
            if not (0 <= idx < self.max_frames
                    and self.memory.contains(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)):
                raise ValueError(f"grant frame {idx} at gpfn {gpfn:#x}")
            placed[idx] = gpfn
        with self._lock:
            self.nr_frames, self.frames = nr_frames, placed
        if self.on_frames is not None:
            self.on_frames(dict(placed), nr_frames)

    def writable_pages(self) -> list[int]:
        """GPAs of the RAM pages this domain grants write access to (v1 entries permitting
        access, not read-only): another domain may write them through its view of this
        memory, which neither KVM's dirty log nor this process's write log sees, so a live
        save sends them again once the guest is stopped."""
        pages = set()
        with self._lock:
            frames = [f for i, f in self.frames.items() if i < self.nr_frames]
        for gpfn in frames:
            table = self.memory.read(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)
            for flags, _domid, frame in _ENTRIES.iter_unpack(table):
                if (flags & abi.GTF_type_mask == abi.GTF_permit_access
                        and not flags & abi.GTF_readonly):
                    pages.add(frame * abi.PAGE_SIZE)
        return sorted(p for p in pages if self.memory.is_ram(p, abi.PAGE_SIZE))

    def entry_gpa(self, gref: int) -> int | None:
        gpfn = self.frames.get(gref // PER_FRAME)
        return None if gpfn is None else gpfn * abi.PAGE_SIZE + (gref % PER_FRAME) * _ENTRY

    # --- using a grant: the checks of grant_table.c's _set_status_v1 ------------------------

    def acquire(self, gref: int, user_domid: int, write: bool, *, mapping: bool = False
                ) -> int:
        """Pin ``gref`` for ``user_domid``; returns the granted page's GPA.

        Raises GrantError: GNTST_bad_gntref out of range; GNTST_general_error when the
        entry does not permit access to ``user_domid``, is read-only for a write, or keeps
        changing; GNTST_bad_page when its frame is not this domain's RAM.
        """
        mask = abi.GTF_type_mask | (abi.GTF_sub_page if mapping else 0)
        use = abi.GTF_reading | (abi.GTF_writing if write else 0)
        with self._lock:
            if not 0 <= gref < self.nr_entries:
                raise GrantError(abi.GNTST_bad_gntref, f"gref {gref} >= {self.nr_entries}")
            egpa = self.entry_gpa(gref)
            if egpa is None:
                raise GrantError(abi.GNTST_general_error, f"gref {gref}: frame never mapped")
            for _ in range(_UNSTABLE_RETRIES):
                word = self.memory.read_u32(egpa)
                flags, domid = word & 0xFFFF, word >> _DOMID_SHIFT
                if (flags & mask) != abi.GTF_permit_access or domid != user_domid:
                    raise GrantError(abi.GNTST_general_error,
                                     f"gref {gref}: flags {flags:#x} dom {domid}, "
                                     f"wanted by d{user_domid}")
                if write and flags & abi.GTF_readonly:
                    raise GrantError(abi.GNTST_general_error, f"gref {gref} is read-only")
                if self.atomics.cmpxchg32(egpa, word, word | use) == word:
                    break
            else:
                raise GrantError(abi.GNTST_general_error, f"gref {gref} is unstable")
            pins = self._pins.setdefault(gref, [0, 0])
            pins[0] += 1
            pins[1] += write
            # The frame is read after the pin, as Xen does: from here the guest cannot
            # legitimately change the entry.
            page = self.memory.read_u32(egpa + _FRAME_OFF) * abi.PAGE_SIZE
            if not self.memory.contains(page, abi.PAGE_SIZE):
                self.release(gref, write)
                raise GrantError(abi.GNTST_bad_page, f"gref {gref}: frame {page:#x} not RAM")
            return page

    def release(self, gref: int, write: bool) -> None:
        """Drop a pin; the last writer clears GTF_writing, the last user GTF_reading."""
        with self._lock:
            pins = self._pins.get(gref)
            if pins is None:
                return
            pins[0] -= 1
            pins[1] -= write
            clear = (abi.GTF_writing if pins[1] == 0 else 0) | (
                abi.GTF_reading if pins[0] == 0 else 0)
            if pins[0] == 0:
                del self._pins[gref]
            egpa = self.entry_gpa(gref)
            if clear and egpa is not None:
                self.atomics.fetch_and(egpa, ~clear & _ULONG)

    def in_use(self, gref: int) -> tuple[int, int]:
        """(users, writers) currently pinning ``gref`` in this process."""
        with self._lock:
            return tuple(self._pins.get(gref, (0, 0)))  # type: ignore[return-value]

    # --- GNTTABOP_* -------------------------------------------------------------------------

    def op(self, cmd: int, access: GuestAccess, arg_gva: int, count: int) -> int:
        """HYPERVISOR_grant_table_op(cmd, uop, count): 0 or -errno; per-op GNTST_* codes
        go to each op's ``status`` field."""
        if count < 0 or count >= 2**31:
            return -abi.XEN_EINVAL  # Xen: (int)count < 0
        single = self._single.get(cmd)
        try:
            if single is not None:
                if count != 1:
                    return -abi.XEN_EINVAL
                return single(self, access, arg_gva)
            if cmd == abi.GNTTABOP_copy:
                if count > COPY_BATCH_MAX:
                    return -abi.XEN_EINVAL
                return self._op_copy(access, arg_gva, count)
            batch = self._batch.get(cmd)
            if batch is not None:
                if count > MAP_BATCH_MAX:
                    return -abi.XEN_EINVAL
                struct, one = batch
                size = access.sizeof(struct)
                for i in range(count):
                    op = access.read(arg_gva + i * size, struct)
                    one(self, op)
                    access.write(arg_gva + i * size, op)
                return 0
        except XenError as e:  # GuestFault: -EFAULT
            return -e.errno
        # unmap_and_replace (PV), transfer, dump_table, swap, cache_flush and
        # get_status_frames (v2): not offered.
        return -abi.XEN_ENOSYS

    def _self(self, dom: int) -> bool:
        return dom in (abi.DOMID_SELF, self.domid)

    def _grow(self, nr: int) -> bool:
        if nr > self.max_frames:
            return False
        self.nr_frames = max(self.nr_frames, nr)
        return True

    def _op_setup_table(self, access: GuestAccess, gva: int) -> int:
        """Grows the table; the frame list holds the GFN where each frame is mapped
        (what Xen reports for a translated guest), all-ones for a frame not mapped."""
        op = access.read(gva, abi.gnttab_setup_table)
        if not self._self(op.dom):
            op.status = abi.GNTST_bad_domain
        elif not self._grow(op.nr_frames):
            op.status = abi.GNTST_general_error
        else:
            op.status = abi.GNTST_okay
            try:
                size = access.pfn_size  # xen_pfn_t: 32 bits for a 32-bit caller
                for i in range(op.nr_frames):
                    gfn = self.frames.get(i, _NO_GFN) & ((1 << 8 * size) - 1)
                    access.write(op.frame_list + i * size, gfn.to_bytes(size, "little"))
            except XenError:
                op.status = abi.GNTST_bad_virt_addr
        access.write_field(gva, op, "status")
        return 0

    def _op_query_size(self, access: GuestAccess, gva: int) -> int:
        op = access.read(gva, abi.gnttab_query_size)
        if self._self(op.dom):
            op.nr_frames, op.max_nr_frames = self.nr_frames, self.max_frames
            op.status = abi.GNTST_okay
        else:
            op.status = abi.GNTST_bad_domain
        access.write(gva, op)
        return 0

    def _op_set_version(self, access: GuestAccess, gva: int) -> int:
        op = access.read(gva, abi.gnttab_set_version)
        rc = 0 if op.version == 1 else -abi.XEN_ENOSYS if op.version == 2 else -abi.XEN_EINVAL
        op.version = 1  # Xen writes the version in force back, even on failure
        access.write(gva, op)
        return rc

    def _op_get_version(self, access: GuestAccess, gva: int) -> int:
        op = access.read(gva, abi.gnttab_get_version)
        if not self._self(op.dom):
            return -abi.XEN_ESRCH
        op.version = 1
        access.write(gva, op)
        return 0

    def _op_copy(self, access: GuestAccess, gva: int, count: int) -> int:
        size = access.sizeof(abi.gnttab_copy)
        for i in range(count):
            op = access.read(gva + i * size, abi.gnttab_copy)
            op.status = self.copy_one(op)
            access.write_field(gva + i * size, op, "status")
        return 0

    # --- GNTTABOP_map_grant_ref / unmap_grant_ref (grant_table.c) -------------------------
    def map_one(self, op: abi.gnttab_map_grant_ref) -> None:
        """One map_grant_ref element: sets its status (and handle when GNTST_okay)."""
        op.status = self._map(op)

    def _map(self, op: abi.gnttab_map_grant_ref) -> int:
        if not op.flags & (abi.GNTMAP_device_map | abi.GNTMAP_host_map):
            return abi.GNTST_bad_gntref  # Xen: "Bad flags in grant map op"
        if op.flags & _PV_ONLY_MAP:
            return abi.GNTST_general_error  # device, application or PTE maps: PV only
        table = self if self._self(op.dom) else (
            self.foreign(op.dom) if self.foreign is not None else None)
        if table is None:
            return abi.GNTST_bad_domain
        write = not op.flags & abi.GNTMAP_readonly
        gfn = op.host_addr >> abi.PAGE_SHIFT
        with self._lock:
            handle = next((h for h in range(MAPTRACK_MAX) if h not in self.maptrack), None)
            if handle is None:
                return abi.GNTST_no_device_space
            try:
                page = table.acquire(op.ref, self.domid, write, mapping=True)
            except GrantError as e:
                log.debug("d%d: map of d%d gref %d: %s", self.domid, op.dom, op.ref, e)
                return e.status
            try:
                backing = table.memory.backing(page, abi.PAGE_SIZE)
                mapped = self.host_map is not None and self.host_map(gfn, backing, not write)
            except GuestMemoryError:
                mapped = False
            if not mapped:
                table.release(op.ref, write)
                log.debug("d%d: no grant mapping at gfn %#x", self.domid, gfn)
                return abi.GNTST_general_error  # create_grant_host_mapping failed
            self.maptrack[handle] = HostMapping(table, op.ref, gfn, write)
            op.handle = handle
            op.dev_bus_addr = 0  # no device mapping for a translated mapper
            return abi.GNTST_okay

    def unmap_one(self, op: abi.gnttab_unmap_grant_ref) -> None:
        """One unmap_grant_ref element: the mapping named by the handle, at its GFN."""
        with self._lock:
            m = self.maptrack.get(op.handle)
            if m is None:
                op.status = abi.GNTST_bad_handle
                return
            if op.host_addr >> abi.PAGE_SHIFT != m.gfn:
                # replace_grant_p2m_mapping: no grant mapping of this handle's page there
                op.status = abi.GNTST_general_error
                return
            del self.maptrack[op.handle]
            self._drop(m)
            op.status = abi.GNTST_okay

    def _drop(self, m: HostMapping) -> None:
        if self.host_unmap is not None:
            self.host_unmap(m.gfn)
        m.table.release(m.ref, m.write)

    def unmap_all(self) -> None:
        """The mapper goes (gnttab_release_mappings): every mapping is undone, so the
        granters' entries lose the in-use flags this domain put there."""
        with self._lock:
            mappings, self.maptrack = list(self.maptrack.values()), {}
            for m in mappings:
                self._drop(m)

    _batch: dict[int, tuple[type[ctypes.Structure], Callable[[GrantTable, Any], None]]] = {
        abi.GNTTABOP_map_grant_ref: (abi.gnttab_map_grant_ref, map_one),
        abi.GNTTABOP_unmap_grant_ref: (abi.gnttab_unmap_grant_ref, unmap_one),
    }

    # The ops that take exactly one struct (count must be 1).
    _single: dict[int, Callable[[GrantTable, GuestAccess, int], int]] = {
        abi.GNTTABOP_setup_table: _op_setup_table,
        abi.GNTTABOP_query_size: _op_query_size,
        abi.GNTTABOP_set_version: _op_set_version,
        abi.GNTTABOP_get_version: _op_get_version,
    }

    # --- GNTTABOP_copy (grant_table.c gnttab_copy_one) --------------------------------------

    def _table_for(self, ptr: abi.gnttab_copy_ptr, is_gref: bool) -> GrantTable:
        if not is_gref and ptr.domid != abi.DOMID_SELF:
            raise GrantError(abi.GNTST_permission_denied, "only DOMID_SELF may use a gmfn")
        if self._self(ptr.domid):
            return self
        table = self.foreign(ptr.domid) if self.foreign else None
        if table is None:
            raise GrantError(abi.GNTST_bad_domain, f"no domain {ptr.domid}")
        return table

    def _claim(self, table: GrantTable, ptr: abi.gnttab_copy_ptr, is_gref: bool,
               write: bool) -> int:
        if is_gref:
            return table.acquire(ptr.u.ref, self.domid, write)
        page = ptr.u.gmfn * abi.PAGE_SIZE
        if not self.memory.contains(page, abi.PAGE_SIZE):
            raise GrantError(abi.GNTST_bad_page, f"gmfn {ptr.u.gmfn:#x} is not RAM")
        return page

    def copy_one(self, op: abi.gnttab_copy) -> int:
        """One GNTTABOP_copy element; returns its GNTST_* status."""
        src_gref = bool(op.flags & abi.GNTCOPY_source_gref)
        dst_gref = bool(op.flags & abi.GNTCOPY_dest_gref)
        held: list[tuple[GrantTable, int, bool]] = []
        try:
            src_table = self._table_for(op.source, src_gref)
            dst_table = self._table_for(op.dest, dst_gref)
            src = self._claim(src_table, op.source, src_gref, False)
            if src_gref:
                held.append((src_table, op.source.u.ref, False))
            dst = self._claim(dst_table, op.dest, dst_gref, True)
            if dst_gref:
                held.append((dst_table, op.dest.u.ref, True))
            if (op.source.offset + op.len > abi.PAGE_SIZE
                    or op.dest.offset + op.len > abi.PAGE_SIZE):
                raise GrantError(abi.GNTST_bad_copy_arg, "copy beyond page area")
            data = src_table.memory.read(src + op.source.offset, op.len)
            dst_table.memory.write(dst + op.dest.offset, data)
            return abi.GNTST_okay
        except GrantError as e:
            log.debug("d%d: grant copy: %s", self.domid, e)
            return e.status
        finally:
            for table, gref, write in held:
                table.release(gref, write)


@dataclass
class GrantMapping:
    """A granted page in use by a backend; ``view`` dies at unmap."""

    table: GrantTable
    gref: int
    write: bool
    gpa: int
    view: memoryview = field(repr=False)
    live: bool = True

    def __enter__(self) -> GrantMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        GrantMapper.unmap(self)


class GrantMapper:
    """The only way a backend touches a granted page: through an entry that permits it."""

    def __init__(self, tables: Callable[[int], GrantTable | None]):
        self.tables = tables

    def map(self, granting_domid: int, gref: int, mapper_domid: int, write: bool
            ) -> GrantMapping:
        """Map ``gref`` of ``granting_domid`` for ``mapper_domid``; raises GrantError.

        The entry must permit access to ``mapper_domid`` (and not be read-only for a
        write); GTF_reading/GTF_writing are set in it until ``unmap``. A read mapping's
        view is read-only.
        """
        table = self.tables(granting_domid)
        if table is None:
            raise GrantError(abi.GNTST_bad_domain, f"no domain {granting_domid}")
        gpa = table.acquire(gref, mapper_domid, write, mapping=True)
        view = table.memory.view(gpa, abi.PAGE_SIZE)
        return GrantMapping(table, gref, write, gpa, view if write else view.toreadonly())

    @staticmethod
    def unmap(mapping: GrantMapping) -> None:
        """Release the view and the entry's in-use flags; a second unmap does nothing."""
        if not mapping.live:
            return
        mapping.live = False
        mapping.view.release()
        mapping.table.release(mapping.gref, mapping.write)
