"""Grant tables, versions 1 and 2: ``GrantTable`` (frames and ``GNTTABOP_*``) and
``GrantMapper``.

Spec: xen/include/public/grant_table.h (v1 and v2 entries, ops, GTF_*/GNTST_* codes); the
checks and their order follow Xen's common/grant_table.c, which is what guests are written
against.

Version 2 (GNTTABOP_set_version): 16-byte entries (a header, then a 64-bit frame, or a
sub-page window), and the in-use bits GTF_reading/GTF_writing move out of the entries into
status frames (one uint16_t per entry), which the guest maps with
XENMAPIDX_grant_table_status and finds with GNTTABOP_get_status_frames. Switching keeps the
8 reserved entries (converted) and clears the rest, refused while a grant beyond them is in
use (-EBUSY), as Xen does. Transitive grants are refused (GNTST_general_error); a grant
whose status frame the guest has not mapped cannot be used either (its in-use bits would
have nowhere to go: Xen's status frames are its own pages, ours are the guest's).

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
_ENTRIES_V2 = struct.Struct("<HHHHQ")  # grant_entry_v2: flags, domid, page_off, length, frame
_ENTRY_V2 = ctypes.sizeof(abi.grant_entry_v2)
_FRAME_OFF_V2 = abi.grant_entry_v2.frame.offset
_PER_FRAME = {1: PER_FRAME, 2: abi.GRANT_ENTRIES_PER_FRAME_V2}
_ENTRY_SIZE = {1: _ENTRY, 2: _ENTRY_V2}
STATUS_PER_FRAME = abi.GRANT_STATUS_PER_FRAME
RESERVED = abi.GNTTAB_NR_RESERVED_ENTRIES
MAX_VERSION = 2  # what set_version may ask for (xl.cfg max_grant_version's default)
_IN_USE = abi.GTF_reading | abi.GTF_writing
_DOMID_SHIFT = 8 * abi.grant_entry_v1.domid.offset  # flags and domid share one 32-bit word
_NO_GFN = 2**64 - 1  # a frame not mapped into the guest (all-ones xen_pfn_t)
_ULONG = 2**64 - 1
COPY_BATCH_MAX = 4096  # ours: Xen preempts long batches; we refuse absurd ones (-EINVAL)
_UNSTABLE_RETRIES = 4  # Xen gives up on an entry that keeps changing under it
MAPTRACK_MAX = 1024  # ours: handles per mapper (each mapping is a KVM memory slot)
MAP_BATCH_MAX = 512  # ours: map/unmap elements per call (Xen preempts long batches)
# What an HVM mapper may not ask for (grant_table.c map_grant_ref: paging_mode_external).
_PV_ONLY_MAP = abi.GNTMAP_device_map | abi.GNTMAP_application_map | abi.GNTMAP_contains_pte


def _check_header(gref: int, word: int, user_domid: int, write: bool, mask: int) -> None:
    """A grant entry's header word (flags, domid) against a use by ``user_domid``, as
    grant_table.c's _set_status checks it: access permitted to that domain, and writable
    for a write. GNTST_general_error otherwise."""
    flags, domid = word & 0xFFFF, word >> _DOMID_SHIFT
    if (flags & mask) != abi.GTF_permit_access or domid != user_domid:
        raise GrantError(abi.GNTST_general_error,
                         f"gref {gref}: flags {flags:#x} dom {domid}, wanted by d{user_domid}")
    if write and flags & abi.GTF_readonly:
        raise GrantError(abi.GNTST_general_error, f"gref {gref} is read-only")


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
        self.version = 1
        self.status_frames: dict[int, int] = {}  # v2: status frame index -> gpfn
        self.atomics = GuestAtomics(memory)
        self._pins: dict[int, list[int]] = {}  # gref -> [readers, writers]
        self._lock = threading.RLock()
        # Told `layout()` whenever a frame is mapped or moved or the version changes: other
        # domains that view this table look entries up through those frames.
        self.on_frames: Callable[[dict[str, Any]], None] | None = None
        # This domain as a mapper: its maptrack, and how a granted page is put at a GFN of
        # its p2m (gfn, (memfd, offset), readonly) -> done, and taken away again.
        self.maptrack: dict[int, HostMapping] = {}
        self.host_map: Callable[[int, tuple[int, int], bool], bool] | None = None
        self.host_unmap: Callable[[int], None] | None = None

    @property
    def per_frame(self) -> int:
        return _PER_FRAME[self.version]

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * self.per_frame

    @property
    def nr_status_frames(self) -> int:
        """grant_to_status_frames(): enough uint16_t for every entry; none in v1."""
        return -(-self.nr_entries // STATUS_PER_FRAME) if self.version == 2 else 0

    def layout(self) -> dict[str, Any]:
        """Where the table is, for a domain that views it (JSON-able)."""
        with self._lock:
            return {"frames": {str(k): v for k, v in self.frames.items()},
                    "nr_frames": self.nr_frames, "version": self.version,
                    "status_frames": {str(k): v for k, v in self.status_frames.items()}}

    def apply_layout(self, msg: dict[str, Any]) -> None:
        """A peer's `layout()`: only RAM pages of that peer's memory count."""
        def pages(value: object, limit: int) -> dict[int, int]:
            good: dict[int, int] = {}
            for k, gpfn in (value.items() if isinstance(value, dict) else ()):
                if (str(k).isdigit() and int(k) < limit and isinstance(gpfn, int)
                        and self.memory.contains(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)):
                    good[int(k)] = gpfn
            return good
        nr, version = msg.get("nr_frames"), msg.get("version", 1)
        if not isinstance(nr, int) or version not in (1, 2):
            return
        with self._lock:
            self.version = version
            self.nr_frames = max(1, min(nr, self.max_frames))
            self.frames = pages(msg.get("frames"), self.max_frames)
            self.status_frames = pages(msg.get("status_frames"), self.nr_status_frames)

    def _told(self) -> None:
        if self.on_frames is not None:
            self.on_frames(self.layout())

    def map_frame(self, idx: int, gpfn: int) -> int:
        """XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx, gpfn); 0 or -errno. With
        XENMAPIDX_grant_table_status in idx, status frame idx (v2 only)."""
        status = bool(idx & abi.XENMAPIDX_grant_table_status)
        idx &= ~abi.XENMAPIDX_grant_table_status
        gpa = gpfn * abi.PAGE_SIZE
        if not self.memory.contains(gpa, abi.PAGE_SIZE):
            return -abi.XEN_EINVAL
        with self._lock:
            if status:
                # gnttab_map_frame: only a status frame the v2 table has
                if self.version != 2 or idx >= self.nr_status_frames:
                    return -abi.XEN_EINVAL
                placed = self.status_frames
            else:
                if idx >= self.max_frames:
                    return -abi.XEN_EINVAL
                placed = self.frames
            old = placed.get(idx)
            if old is None:
                self.memory.fill(gpa, abi.PAGE_SIZE)
            elif old != gpfn:
                self.memory.write(gpa, self.memory.read(old * abi.PAGE_SIZE, abi.PAGE_SIZE))
            placed[idx] = gpfn
            if not status:
                self.nr_frames = max(self.nr_frames, idx + 1)
        self._told()
        return 0

    # --- save/restore: the entries live in guest RAM (the frames); the table's own state
    # is where those frames are. Pins are the backends' and go with them.
    def save_state(self) -> dict[str, object]:
        with self._lock:
            if self.maptrack:
                # Another domain's page is mapped here: nothing in a stream can restore it.
                raise StateError(f"d{self.domid} has {len(self.maptrack)} grant mapping(s) "
                                 "of another domain's pages")
            state: dict[str, object] = {
                "nr_frames": self.nr_frames,
                "frames": [[i, f] for i, f in sorted(self.frames.items())]}
            if self.version == 2:  # absent: v1, as every stream before v2 was written
                state["version"] = 2
                state["status_frames"] = [[i, f] for i, f in sorted(self.status_frames.items())]
            return state

    def restore_state(self, state: dict[str, object]) -> None:
        nr_frames, frames = state["nr_frames"], state["frames"]
        version, status = state.get("version", 1), state.get("status_frames", [])
        if not (isinstance(nr_frames, int) and 1 <= nr_frames <= self.max_frames
                and isinstance(frames, list) and version in (1, 2)
                and isinstance(status, list)):
            raise ValueError(f"grant table v{version} of {nr_frames} frames"
                             f" (at most {self.max_frames})")

        def placed(items: list, limit: int, what: str) -> dict[int, int]:
            out: dict[int, int] = {}
            for idx, gpfn in items:
                if not (0 <= idx < limit
                        and self.memory.contains(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)):
                    raise ValueError(f"grant {what} {idx} at gpfn {gpfn:#x}")
                out[idx] = gpfn
            return out

        with self._lock:
            self.version, self.nr_frames = version, nr_frames
            self.frames = placed(frames, self.max_frames, "frame")
            self.status_frames = placed(status, self.nr_status_frames, "status frame")
        self._told()

    def writable_pages(self) -> list[int]:
        """GPAs of the RAM pages this domain grants write access to (v1 entries permitting
        access, not read-only): another domain may write them through its view of this
        memory, which neither KVM's dirty log nor this process's write log sees, so a live
        save sends them again once the guest is stopped."""
        pages = set()
        with self._lock:
            frames = [f for i, f in self.frames.items() if i < self.nr_frames]
            layout = _ENTRIES if self.version == 1 else _ENTRIES_V2
        for gpfn in frames:
            table = self.memory.read(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)
            for flags, _domid, *rest in layout.iter_unpack(table):
                if (flags & abi.GTF_type_mask == abi.GTF_permit_access
                        and not flags & abi.GTF_readonly):
                    pages.add(rest[-1] * abi.PAGE_SIZE)
        return sorted(p for p in pages if self.memory.is_ram(p, abi.PAGE_SIZE))

    def entry_gpa(self, gref: int) -> int | None:
        per, size = self.per_frame, _ENTRY_SIZE[self.version]
        gpfn = self.frames.get(gref // per)
        return None if gpfn is None else gpfn * abi.PAGE_SIZE + (gref % per) * size

    def status_gpa(self, gref: int) -> int | None:
        """v2: where gref's grant_status_t is, if the guest mapped that status frame."""
        gpfn = self.status_frames.get(gref // STATUS_PER_FRAME)
        return None if gpfn is None else gpfn * abi.PAGE_SIZE + (gref % STATUS_PER_FRAME) * 2

    def _status_update(self, sgpa: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Atomically set or clear bits of the uint16_t at sgpa (a 32-bit compare-and-swap
        on the aligned word holding it: the guest reads it while we write)."""
        word, shift = sgpa & ~3, 8 * (sgpa & 2)
        for _ in range(64):
            old = self.memory.read_u32(word)
            new = (old | set_bits << shift) & ~(clear_bits << shift) & 0xFFFFFFFF
            if self.atomics.cmpxchg32(word, old, new) == old:
                return
        raise GrantError(abi.GNTST_general_error, "status word keeps changing")

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
            if self.version == 2:
                return self._acquire_v2(gref, egpa, user_domid, write, mask, use)
            for _ in range(_UNSTABLE_RETRIES):
                word = self.memory.read_u32(egpa)
                _check_header(gref, word, user_domid, write, mask)
                if self.atomics.cmpxchg32(egpa, word, word | use) == word:
                    break
            else:
                raise GrantError(abi.GNTST_general_error, f"gref {gref} is unstable")
            # The frame is read after the pin, as Xen does: from here the guest cannot
            # legitimately change the entry.
            return self._pin(gref, write, self.memory.read_u32(egpa + _FRAME_OFF))

    def _pin(self, gref: int, write: bool, frame: int) -> int:
        """Count a use of ``gref`` whose header checks passed; the frame's GPA, or the pin
        undone and GNTST_bad_page when it is not this domain's RAM."""
        pins = self._pins.setdefault(gref, [0, 0])
        pins[0] += 1
        pins[1] += write
        page = frame * abi.PAGE_SIZE
        if not self.memory.contains(page, abi.PAGE_SIZE):
            self.release(gref, write)
            raise GrantError(abi.GNTST_bad_page, f"gref {gref}: frame {page:#x} not RAM")
        return page

    def _acquire_v2(self, gref: int, egpa: int, user_domid: int, write: bool, mask: int,
                    use: int) -> int:
        """grant_table.c _set_status_v2: check the header, set the in-use bits in the
        status frame, then check the header again (the guest clears its flags before it
        reads the status to end access, so one of the two sides sees the other)."""
        sgpa = self.status_gpa(gref)
        if sgpa is None:
            raise GrantError(abi.GNTST_general_error, f"gref {gref}: status frame not mapped")

        def check(word: int) -> None:
            if word & abi.GTF_type_mask == abi.GTF_transitive:
                raise GrantError(abi.GNTST_general_error, f"gref {gref}: transitive grant")
            _check_header(gref, word, user_domid, write, mask)

        check(self.memory.read_u32(egpa))
        pinned = gref in self._pins
        self._status_update(sgpa, set_bits=use)
        try:
            check(self.memory.read_u32(egpa))
        except GrantError:
            if not pinned:  # Xen: !act->pin, so no one else holds these bits
                self._status_update(sgpa, clear_bits=_IN_USE)
            raise
        return self._pin(gref, write, self.memory.read_u64(egpa + _FRAME_OFF_V2))

    def window(self, gref: int) -> tuple[int, int]:
        """The bytes of the granted page a pinned gref allows: a v2 sub-page grant's
        [page_off, page_off + length), else the whole page."""
        egpa = self.entry_gpa(gref)
        if self.version != 2 or egpa is None:
            return 0, abi.PAGE_SIZE
        if not self.memory.read_u16(egpa) & abi.GTF_sub_page:
            return 0, abi.PAGE_SIZE
        off = self.memory.read_u16(egpa + abi.grant_entry_v2.page_off.offset)
        length = self.memory.read_u16(egpa + abi.grant_entry_v2.length.offset)
        return off, off + length

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
            if not clear:
                return
            if self.version == 2:
                sgpa = self.status_gpa(gref)
                if sgpa is not None:
                    self._status_update(sgpa, clear_bits=clear)
                return
            egpa = self.entry_gpa(gref)
            if egpa is not None:
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
        # unmap_and_replace (PV), transfer, dump_table, swap and cache_flush: not offered.
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
        rc = self.set_version(op.version)
        op.version = self.version  # Xen writes the version in force back, even on failure
        access.write(gva, op)
        return rc

    def _in_use(self, gref: int) -> bool:
        """Whether gref's in-use bits are set, by any process (they live in guest RAM)."""
        if gref in self._pins:
            return True
        if self.version == 1:
            egpa = self.entry_gpa(gref)
            return egpa is not None and bool(self.memory.read_u16(egpa) & _IN_USE)
        sgpa = self.status_gpa(gref)
        return sgpa is not None and bool(self.memory.read_u16(sgpa) & _IN_USE)

    def set_version(self, version: int) -> int:
        """grant_table.c gnttab_set_version: 0 or -errno."""
        if version not in (1, 2):
            return -abi.XEN_EINVAL
        if version > MAX_VERSION:
            return -abi.XEN_ENOSYS
        with self._lock:
            if version == self.version:
                return 0
            if any(self._in_use(g) for g in range(RESERVED, self.nr_entries)):
                return -abi.XEN_EBUSY  # only the reserved entries may be in use
            # The reserved entries, as v1 ones (flags with the in-use bits, domid, frame).
            reserved: list[tuple[int, int, int]] = []
            for g in range(RESERVED):
                egpa = self.entry_gpa(g)
                if egpa is None:
                    reserved.append((0, 0, 0))
                elif self.version == 1:
                    flags, domid, frame = _ENTRIES.unpack(self.memory.read(egpa, _ENTRY))
                    reserved.append((flags, domid, frame))
                else:
                    flags, domid, _off, _len, frame = _ENTRIES_V2.unpack(
                        self.memory.read(egpa, _ENTRY_V2))
                    kind = flags & abi.GTF_type_mask
                    if kind == abi.GTF_transitive or (kind == abi.GTF_permit_access
                                                      and frame >> 32):
                        return -abi.XEN_ERANGE  # not representable in v1
                    sgpa = self.status_gpa(g)
                    status = self.memory.read_u16(sgpa) if sgpa is not None else 0
                    reserved.append((flags | status, domid, frame)
                                    if kind == abi.GTF_permit_access else (0, 0, 0))
            self.version = version
            if version == 1:
                self.status_frames = {}  # gnttab_unpopulate_status_frames
            for i, gpfn in self.frames.items():  # "no crud left over from the old version"
                if i < self.nr_frames:
                    self.memory.fill(gpfn * abi.PAGE_SIZE, abi.PAGE_SIZE)
            for g, (flags, domid, frame) in enumerate(reserved):
                egpa = self.entry_gpa(g)
                if egpa is None:
                    continue
                if version == 1:
                    self.memory.write(egpa, _ENTRIES.pack(flags, domid, frame))
                    continue
                self.memory.write(egpa, _ENTRIES_V2.pack(flags & ~_IN_USE, domid, 0, 0, frame))
                sgpa = self.status_gpa(g)
                if sgpa is not None:
                    self._status_update(sgpa, set_bits=flags & _IN_USE,
                                        clear_bits=~flags & _IN_USE)
        self._told()
        return 0

    def _op_get_version(self, access: GuestAccess, gva: int) -> int:
        op = access.read(gva, abi.gnttab_get_version)
        if not self._self(op.dom):
            return -abi.XEN_ESRCH
        op.version = self.version
        access.write(gva, op)
        return 0

    def _op_get_status_frames(self, access: GuestAccess, gva: int) -> int:
        """The GFNs where the status frames are mapped (gnttab_status_gfn: all-ones for
        one not mapped); asking for more than the table has is GNTST_general_error."""
        op = access.read(gva, abi.gnttab_get_status_frames)
        if not self._self(op.dom):
            op.status = abi.GNTST_bad_domain
        elif op.nr_frames > self.nr_status_frames:
            op.status = abi.GNTST_general_error
        else:
            op.status = abi.GNTST_okay
            try:
                for i in range(op.nr_frames):  # uint64_t elements in both ABIs
                    gfn = self.status_frames.get(i, _NO_GFN)
                    access.write(op.frame_list + 8 * i, gfn.to_bytes(8, "little"))
            except XenError:
                op.status = abi.GNTST_bad_virt_addr
        access.write_field(gva, op, "status")
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
        abi.GNTTABOP_get_status_frames: _op_get_status_frames,
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
            # The page, or a v2 sub-page grant's window (gnttab_copy_claim_buf's checks)
            src_lo, src_hi = src_table.window(op.source.u.ref) if src_gref else (0, abi.PAGE_SIZE)
            dst_lo, dst_hi = dst_table.window(op.dest.u.ref) if dst_gref else (0, abi.PAGE_SIZE)
            if (op.source.offset < src_lo or op.source.offset + op.len > src_hi
                    or op.dest.offset < dst_lo or op.dest.offset + op.len > dst_hi):
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
        if mapping.write:  # logged at map time too; again now, after the backend's writes
            mapping.table.memory.mark_dirty(mapping.gpa, abi.PAGE_SIZE)
        mapping.table.release(mapping.gref, mapping.write)
