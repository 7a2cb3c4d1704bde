"""The block backend (xen/include/public/io/blkif.h) on a raw image.

One single-page ring (no `max-ring-page-order`, no multi-queue). The ring's layout is
the frontend's `protocol` node (io/protocols.h): absent or "x86_64-abi" is the native
one, "x86_32-abi" the i386 one (GRUB's i386-xen_pvh blkfront writes it), anything else
is refused with an error node, as Linux's blkback does. Requests are copied out of the ring, validated, and their data moves between
the image and the granted pages with `os.preadv`/`os.pwritev` on views of the mappings:
no copy in between. A read maps its pages writable, a write read-only, as Xen's
GNTMAP_readonly does.

Persistent grants (blkif.h `feature-persistent`, offered; used when the frontend's own
node says 1, as Linux's xen-blkfront does): the frontend then reuses one set of pages for
all its requests, and their mappings are kept from first use until the ring disconnects
(up to MAX_PERSISTENT_GRANTS; beyond, or for a page granted read-only, a request maps and
unmaps as without the feature). Mapping a grant (checking and flagging its entry) is most
of a segment's cost here; a kept mapping is a dictionary lookup.

Every malformed request (too many segments, first_sect > last_sect or past the page,
sectors past the end, a grant the mapper refuses) is answered BLKIF_RSP_ERROR and the
ring goes on; only impossible ring indexes break the ring (backend Closing with error).
The image's I/O, flush and discard are `devices.disk.DiskImage`'s, shared with virtio-blk.
"""

from __future__ import annotations

import ctypes
import errno
from typing import NamedTuple

from xenopus.devices.disk import SECTOR_SIZE, DiskImage
from xenopus.stream import StateError, check_state
from xenopus.xen import abi
from xenopus.xen.backends.xenbus import (
    Backend,
    BackRing,
    EventPort,
    FrontendError,
    Host,
    Mapping,
    RingError,
)
from xenopus.xen.xenstore.client import XsClient

SECTOR = SECTOR_SIZE  # blkif sectors are 512 bytes (no feature-large-sector-size)
SECTORS_PER_PAGE = abi.PAGE_SIZE // SECTOR
MAX_INDIRECT_SEGMENTS = 256  # what we advertise; at most 8 pages of 512 segments allow
# blkif.h, feature-persistent: "ideally ... RING_SIZE * BLKIF_MAX_SEGMENTS_PER_REQUEST";
# with indirect requests, every slot's segments and its indirect pages.
MAX_PERSISTENT_GRANTS = abi.BLKIF_RING_SIZE * (
    MAX_INDIRECT_SEGMENTS + -(-MAX_INDIRECT_SEGMENTS // abi.SEGS_PER_INDIRECT_FRAME))

_SEG = abi.blkif_request_segment
_SEG_SIZE = ctypes.sizeof(_SEG)


class RingAbi(NamedTuple):
    """One `protocol`'s ring entries (blkif_back_rings_t's native / x86_32 / x86_64)."""

    request: type[ctypes.Structure]
    discard: type[ctypes.Structure]
    indirect: type[ctypes.Structure]
    response: type[ctypes.Structure]
    entry_size: int


NATIVE = RingAbi(abi.blkif_request, abi.blkif_request_discard, abi.blkif_request_indirect,
                 abi.blkif_response, abi.BLKIF_RING_ENTRY_SIZE)
X86_32 = RingAbi(abi.blkif_x86_32_request, abi.blkif_x86_32_request_discard,
                 abi.blkif_x86_32_request_indirect, abi.blkif_x86_32_response,
                 abi.BLKIF_X86_32_RING_ENTRY_SIZE)
# An absent node is the backend's native ABI (xen-blkback's connect_ring()).
PROTOCOLS = {None: NATIVE, "": NATIVE, abi.XEN_IO_PROTO_ABI_X86_64: NATIVE,
             abi.XEN_IO_PROTO_ABI_X86_32: X86_32}


class BadRequest(Exception):
    """One request is malformed: answered BLKIF_RSP_ERROR, logged once per reason."""


class BlkBack(Backend):
    """A `vbd` backend serving the raw image at `path`."""

    kind = "vbd"
    # The frontend's nodes `xl block-list` shows besides the backend's path
    # (libxl_device_disk_getinfo).
    listed_nodes = ("state", "event-channel", "ring-ref")

    def __init__(
        self,
        xs: XsClient,
        host: Host,
        domid: int,
        devid: int,
        path: str,
        *,
        read_only: bool = False,
        vdev: str = "",
        image: DiskImage | None = None,
    ):
        super().__init__(xs, host, domid, devid)
        self.path = path
        self.read_only = read_only
        self.vdev = vdev
        # `image`: one already open (xl block-attach hands over the CLI's open file)
        self.disk = image or DiskImage(path, read_only=read_only)
        self.sectors = self.disk.size // SECTOR  # a partial last sector is not addressable
        self.ring: BackRing | None = None
        self._ring_map: Mapping | None = None
        self.port: EventPort | None = None
        self.abi = NATIVE
        # gref -> its writable mapping, kept while connected (None: the frontend did not
        # ask for persistent grants)
        self._persistent: dict[int, Mapping] | None = None
        self.stats = {"requests": 0, "errors": 0}
        # A restored connection (`restore_state`): taken by the next `connect`.
        self._resumed: dict | None = None

    def describe(self) -> dict[str, object]:
        """What this backend serves: the vbd's device id (xl's Vdev), its name and image."""
        return {"devid": self.devid, "vdev": self.vdev, **self.disk.describe()}

    # -- xenbus -----------------------------------------------------------------------

    def backend_nodes(self) -> dict[str, str]:
        # libxl's vbd nodes (libxl_disk.c device_disk_add).
        return {
            "params": self.path,
            "type": "phy" if self.path.startswith("/dev/") else "file",
            "mode": "r" if self.read_only else "w",
            "dev": self.vdev,
            "removable": "0",
            "bootable": "1",
            "device-type": "disk",
            "discard-enable": "0" if self.read_only else "1",
        }

    def frontend_nodes(self) -> dict[str, str]:
        return {"virtual-device": str(self.devid), "device-type": "disk"}

    def features(self) -> dict[str, str]:
        writable = not self.read_only
        nodes = {
            "feature-flush-cache": "1",
            "feature-barrier": "1",
            "feature-persistent": "1",
            "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            "feature-discard": "1" if writable else "0",
        }
        if writable:
            nodes |= {"discard-granularity": str(abi.PAGE_SIZE), "discard-alignment": "0",
                      "discard-secure": "0"}
        return nodes

    def connect(self) -> dict[str, str]:
        protocol = self.read_fe("protocol")
        if protocol not in PROTOCOLS:
            known = ", ".join(p for p in PROTOCOLS if p)
            raise FrontendError(f"frontend protocol {protocol!r} is not supported (only {known})")
        self.abi = PROTOCOLS[protocol]
        if self.read_fe("ring-page-order") not in (None, "0"):
            raise FrontendError("multi-page rings are not supported (no max-ring-page-order)")
        gref = self.fe_int("ring-ref", 1 << 32)
        self._ring_map = self.map_grant(gref, write=True)
        self.ring = BackRing(self._ring_map.view, self.abi.entry_size)
        self.port = self.bind_event()
        # Linux's blkback (connect_ring) reads the frontend's node the same way.
        self._persistent = {} if self.read_fe("feature-persistent") == "1" else None
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            self._resume_ring(resumed)
        # blkback's connect() writes these in the Connected transaction.
        return {
            "sectors": str(self.sectors),
            "info": str(abi.VDISK_READONLY if self.read_only else 0),
            "sector-size": str(SECTOR),
            "physical-sector-size": str(SECTOR),
        }

    def disconnect(self) -> None:
        kept, self._persistent = self._persistent, None
        for mapping in (kept or {}).values():
            mapping.unmap()
        port, self.port = self.port, None
        if port is not None:
            port.close()
        self.ring = None
        mapping, self._ring_map = self._ring_map, None
        if mapping is not None:
            mapping.unmap()

    def stop(self, remove: bool = True) -> None:
        super().stop(remove)
        self.disk.close()

    # -- save/restore -----------------------------------------------------------------
    # The shared ring's page (req_prod, rsp_prod, req_event, rsp_event and the slots) is
    # guest RAM and travels with it; what is the backend's own is io/ring.h's back ring
    # private indexes and the persistent grants it holds. Nothing is in flight: the
    # backend is paused between two runs of `service`, which answers and pushes every
    # request it takes (docs/snapshot-stream.md, "Xen PV disks").
    saveable = True
    STATE_VERSION = 1

    def save_state(self) -> object:
        ring = self.ring
        return {
            "version": self.STATE_VERSION, "state": int(self.state),
            "connected": self.connected and ring is not None, "sectors": self.sectors,
            "req_cons": ring.req_cons if ring is not None else 0,
            "rsp_prod_pvt": ring.rsp_prod_pvt if ring is not None else 0,
            "persistent": sorted(self._persistent) if self._persistent is not None else None,
        }

    def restore_state(self, state: object) -> None:
        """Keep a connected backend's ring state for the `connect` that follows when the
        frontend's nodes come back (XenStore import: its `state` is Connected again), after
        the grant table and event channels are restored."""
        s = check_state(state, f"vbd {self.devid}", self.STATE_VERSION)
        if not s["connected"]:
            self._resumed = None
            return
        if s["sectors"] != self.sectors:
            raise StateError(f"vbd {self.devid}: the guest saw {s['sectors']} sectors, "
                             f"{self.path} has {self.sectors}")
        for key in ("req_cons", "rsp_prod_pvt"):
            if not isinstance(s[key], int) or not 0 <= s[key] < 1 << 32:
                raise StateError(f"vbd {self.devid}: {key} {s[key]!r}")
        grefs = s["persistent"]
        if grefs is not None and (not isinstance(grefs, list)
                                  or len(grefs) > MAX_PERSISTENT_GRANTS
                                  or not all(isinstance(g, int) for g in grefs)):
            raise StateError(f"vbd {self.devid}: persistent grants {str(grefs)[:40]}")
        self._resumed = dict(s)

    def _resume_ring(self, saved: dict) -> None:
        """The saved back ring over the frontend's ring page: its private indexes, and its
        persistent grants mapped again (a gref the guest ended since is mapped on use)."""
        ring = self.ring
        assert ring is not None
        ring.req_cons, ring.rsp_prod_pvt = saved["req_cons"], saved["rsp_prod_pvt"]
        try:
            ring.unconsumed()  # RING_REQUEST_PROD_OVERFLOW against the saved indexes
        except RingError as e:
            raise FrontendError(f"restored ring: {e}") from e
        kept = self._persistent
        if kept is None:
            return
        for gref in saved["persistent"] or []:
            try:
                kept[gref] = self.host.map_grant(self.domid, gref, True)
            except Exception as e:  # no longer granted: mapped per request, as before
                self.log_once(f"persistent grant {gref} not mapped again: {e}")

    # -- the ring ---------------------------------------------------------------------

    def service(self) -> None:
        ring = self.ring
        if ring is None:
            return
        try:
            while True:
                while ring.unconsumed():
                    raw = ring.take()
                    op, rid, status = self.handle(raw)
                    ring.put(bytes(self.abi.response(id=rid, operation=op, status=status)))
                    self.stats["requests"] += 1
                    if status != abi.BLKIF_RSP_OKAY:
                        self.stats["errors"] += 1
                if ring.push() and self.port is not None:
                    self.port.notify()
                if not ring.final_check():
                    return
        except RingError as e:
            raise FrontendError(f"ring broken: {e}") from e

    def handle(self, raw: bytes) -> tuple[int, int, int]:
        """One request: (operation to echo, id, BLKIF_RSP_*)."""
        layout = self.abi
        req = layout.request.from_buffer_copy(raw[: ctypes.sizeof(layout.request)])
        op, rid = req.operation, req.id
        try:
            if op in (abi.BLKIF_OP_READ, abi.BLKIF_OP_WRITE, abi.BLKIF_OP_WRITE_BARRIER):
                nseg = req.nr_segments
                if op == abi.BLKIF_OP_WRITE_BARRIER and nseg == 0:
                    return op, rid, self._flush()
                if not 1 <= nseg <= abi.BLKIF_MAX_SEGMENTS_PER_REQUEST:
                    raise BadRequest(f"nr_segments {nseg} outside 1..{abi.BLKIF_MAX_SEGMENTS_PER_REQUEST}")
                segs = [(s.gref, s.first_sect, s.last_sect) for s in req.seg[:nseg]]
                status = self._rw(op != abi.BLKIF_OP_READ, req.sector_number, segs)
                if op == abi.BLKIF_OP_WRITE_BARRIER and status == abi.BLKIF_RSP_OKAY:
                    status = self._flush()  # the barrier's data is stable when we answer
                return op, rid, status
            if op == abi.BLKIF_OP_FLUSH_DISKCACHE:
                return op, rid, self._flush()
            if op == abi.BLKIF_OP_DISCARD:
                d = layout.discard.from_buffer_copy(raw[: ctypes.sizeof(layout.discard)])
                return op, rid, self._discard(d.sector_number, d.nr_sectors)
            if op == abi.BLKIF_OP_INDIRECT:
                ind = layout.indirect.from_buffer_copy(raw[: ctypes.sizeof(layout.indirect)])
                # blkfront matches the response against the indirect operation.
                return ind.indirect_op, rid, self._indirect(ind)
        except BadRequest as e:
            self.log_once(str(e))
            return op, rid, abi.BLKIF_RSP_ERROR
        except OSError as e:
            self.log_once(f"{self.path}: I/O error {errno.errorcode.get(e.errno or 0, e.errno)}")
            return op, rid, abi.BLKIF_RSP_ERROR
        self.log_once(f"unsupported operation {op}")
        return op, rid, abi.BLKIF_RSP_EOPNOTSUPP

    def _indirect(self, ind: ctypes.Structure) -> int:
        op, nseg = ind.indirect_op, ind.nr_segments
        if op not in (abi.BLKIF_OP_READ, abi.BLKIF_OP_WRITE):
            raise BadRequest(f"indirect operation {op} is not read or write")
        if not 1 <= nseg <= MAX_INDIRECT_SEGMENTS:
            raise BadRequest(f"indirect nr_segments {nseg} outside 1..{MAX_INDIRECT_SEGMENTS}")
        pages = -(-nseg // abi.SEGS_PER_INDIRECT_FRAME)
        segs: list[tuple[int, int, int]] = []
        for i in range(pages):
            mapping, release = self._use(ind.indirect_grefs[i], write=False)
            try:
                count = min(abi.SEGS_PER_INDIRECT_FRAME, nseg - len(segs))
                table = bytes(mapping.view[: count * _SEG_SIZE])  # copied: the guest may rewrite it
            finally:
                if release:
                    mapping.unmap()
            for j in range(count):
                s = _SEG.from_buffer_copy(table, j * _SEG_SIZE)
                segs.append((s.gref, s.first_sect, s.last_sect))
        return self._rw(op == abi.BLKIF_OP_WRITE, ind.sector_number, segs)

    def _map(self, gref: int, write: bool) -> Mapping:
        try:
            return self.host.map_grant(self.domid, gref, write)
        except Exception as e:
            raise BadRequest(f"grant {gref}: {e}") from e

    def _use(self, gref: int, write: bool) -> tuple[Mapping, bool]:
        """`gref` mapped for this request: (the mapping, whether to unmap it after). With
        persistent grants, a writable mapping kept for the connection (it serves reads and
        writes alike), made on first use."""
        kept = self._persistent
        if kept is not None:
            mapping = kept.get(gref)
            if mapping is not None:
                return mapping, False
            if len(kept) < MAX_PERSISTENT_GRANTS:
                try:
                    mapping = kept[gref] = self.host.map_grant(self.domid, gref, True)
                    return mapping, False
                except Exception:
                    pass  # e.g. granted read-only: mapped for this request alone
        return self._map(gref, write), True

    def _rw(self, write: bool, sector: int, segs: list[tuple[int, int, int]]) -> int:
        if write and self.read_only:
            raise BadRequest("write to a read-only disk")
        total = 0
        for gref, first, last in segs:
            if not first <= last < SECTORS_PER_PAGE:
                raise BadRequest(f"segment of grant {gref}: sectors {first}..{last} not within 0..7")
            total += last - first + 1
        if sector + total > self.sectors:
            raise BadRequest(f"sectors {sector}+{total} beyond the disk's {self.sectors}")
        # A read fills the frontend's pages: they must be granted writable.
        maps: list[Mapping] = []  # those to unmap after the request
        try:
            views = []
            for gref, first, last in segs:
                m, release = self._use(gref, write=not write)
                if release:
                    maps.append(m)
                views.append(m.view[first * SECTOR : (last + 1) * SECTOR])
            io = self.disk.write_from if write else self.disk.read_into
            if io(views, sector * SECTOR) < total * SECTOR:
                raise BadRequest("the image ended early")  # shrunk under us
            return abi.BLKIF_RSP_OKAY
        finally:
            for m in maps:
                m.unmap()

    def _flush(self) -> int:
        self.disk.flush()
        return abi.BLKIF_RSP_OKAY

    def _discard(self, sector: int, count: int) -> int:
        if self.read_only:
            raise BadRequest("discard on a read-only disk")
        if sector + count > self.sectors:
            raise BadRequest(f"discard {sector}+{count} beyond the disk's {self.sectors}")
        if count:
            self.disk.discard(sector * SECTOR, count * SECTOR)
        return abi.BLKIF_RSP_OKAY
