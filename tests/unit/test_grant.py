"""Grant tables v1 and v2: frames, GNTTABOP_* and the grant-checking mapper.

Layouts hand-written from xen/include/public/grant_table.h (x86_64):
grant_entry_v1 = {u16 flags @0, domid_t domid @2, u32 frame @4}, 8 bytes, 512 per frame;
GTF_permit_access 1, GTF_readonly 1<<2, GTF_reading 1<<3, GTF_writing 1<<4;
gnttab_setup_table = {dom @0, nr_frames @4, status(i16) @8, frame_list @16};
gnttab_query_size = {dom @0, nr_frames @4, max_nr_frames @8, status @12};
gnttab_copy = {source {u @0, domid @8, offset @10}, dest @16.., len @32, flags @34,
status @36}, 40 bytes; GNTCOPY_source_gref 1, GNTCOPY_dest_gref 2; GNTST_* codes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from xenopus.memory import GuestMemory, MiB
from xenopus.xen.grant import GrantError, GrantMapper, GrantTable
from xenopus.xen.guestmem import GuestAccess

PAGE = 4096
PERMIT, RO, READING, WRITING = 1, 1 << 2, 1 << 3, 1 << 4
OKAY, GENERAL, BAD_DOMAIN, BAD_GNTREF = 0, -1, -2, -3
BAD_VIRT_ADDR, PERMISSION_DENIED, BAD_PAGE, BAD_COPY_ARG = -5, -8, -9, -10
SRC_GREF, DST_GREF = 1, 2
SETUP, COPY, QUERY, SET_VERSION, GET_VERSION, MAP = 2, 5, 6, 8, 10, 0
EINVAL, ENOSYS, EFAULT, ESRCH = 22, 38, 14, 3
DOMID_SELF = 0x7FF0
ME, PEER = 1, 2
FRAME_GPFN = 0x40  # where the test guest maps grant frame 0
ARG = 0x20000


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 * MiB) as m:
        yield m


@pytest.fixture
def gt(mem: GuestMemory) -> GrantTable:
    t = GrantTable(ME, mem, max_frames=4)
    assert t.map_frame(0, FRAME_GPFN) == 0
    return t


def grant(mem: GuestMemory, gref: int, flags: int, domid: int, frame: int,
          at: int = FRAME_GPFN) -> None:
    mem.write(at * PAGE + 8 * gref, struct.pack("<HHI", flags, domid, frame))


def flags(mem: GuestMemory, gref: int, at: int = FRAME_GPFN) -> int:
    return mem.read_u16(at * PAGE + 8 * gref)


def access(mem: GuestMemory) -> GuestAccess:
    return GuestAccess(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))


def call(mem: GuestMemory, t: GrantTable, cmd: int, raw: bytes, count: int = 1
         ) -> tuple[int, bytes]:
    mem.write(ARG, raw)
    return t.op(cmd, access(mem), ARG, count), mem.read(ARG, len(raw))


# --- frames, setup, size, version ----------------------------------------------------------


def test_map_frame_zeroes_then_moves_entries(mem: GuestMemory) -> None:
    t = GrantTable(ME, mem, max_frames=4)
    mem.write(0x50 * PAGE, b"\xff" * PAGE)
    assert t.map_frame(1, 0x50) == 0
    assert mem.read(0x50 * PAGE, PAGE) == bytes(PAGE) and t.nr_frames == 2
    grant(mem, 0, PERMIT, PEER, 0x60, at=0x50)  # frame 1 entry 0: gref 512
    assert t.map_frame(1, 0x51) == 0
    assert flags(mem, 0, at=0x51) == PERMIT and t.entry_gpa(512) == 0x51 * PAGE
    assert t.map_frame(4, 0x52) == -EINVAL  # max_frames
    assert t.map_frame(0x8000_0000, 0x52) == -EINVAL  # status frames: v2 only
    assert t.map_frame(0, 0x7_0000) == -EINVAL  # not RAM


def setup_raw(dom: int, nr: int, frame_list: int) -> bytes:
    return struct.pack("<HHIhHIQ", dom, 0, nr, 0, 0, 0, frame_list)


def test_setup_table_lists_gfns_and_grows(mem: GuestMemory, gt: GrantTable) -> None:
    rc, out = call(mem, gt, SETUP, setup_raw(DOMID_SELF, 2, 0x21000))
    assert rc == 0 and struct.unpack_from("<h", out, 8) == (OKAY,)
    assert struct.unpack("<QQ", mem.read(0x21000, 16)) == (FRAME_GPFN, 2**64 - 1)
    assert gt.nr_frames == 2
    rc, out = call(mem, gt, SETUP, setup_raw(DOMID_SELF, 5, 0x21000))
    assert rc == 0 and struct.unpack_from("<h", out, 8) == (GENERAL,)  # > max_nr_frames
    rc, out = call(mem, gt, SETUP, setup_raw(9, 1, 0x21000))
    assert struct.unpack_from("<h", out, 8) == (BAD_DOMAIN,)
    rc, out = call(mem, gt, SETUP, setup_raw(ME, 1, 0x7000_0000))
    assert rc == 0 and struct.unpack_from("<h", out, 8) == (BAD_VIRT_ADDR,)
    assert call(mem, gt, SETUP, setup_raw(ME, 1, 0x21000), count=2)[0] == -EINVAL
    assert gt.op(SETUP, access(mem), 0x7000_0000, 1) == -EFAULT


def test_query_size(mem: GuestMemory, gt: GrantTable) -> None:
    rc, out = call(mem, gt, QUERY, struct.pack("<HHIIhH", DOMID_SELF, 0, 0, 0, 7, 0))
    assert rc == 0 and struct.unpack_from("<IIh", out, 4) == (1, 4, OKAY)
    rc, out = call(mem, gt, QUERY, struct.pack("<HHIIhH", 3, 0, 0, 0, 7, 0))
    assert struct.unpack_from("<h", out, 12) == (BAD_DOMAIN,)


def test_versions(mem: GuestMemory, gt: GrantTable) -> None:
    assert call(mem, gt, SET_VERSION, struct.pack("<I", 1)) == (0, struct.pack("<I", 1))
    assert call(mem, gt, SET_VERSION, struct.pack("<I", 3)) == (-EINVAL, struct.pack("<I", 1))
    rc, out = call(mem, gt, GET_VERSION, struct.pack("<HHI", DOMID_SELF, 0, 0))
    assert rc == 0 and struct.unpack_from("<I", out, 4) == (1,)
    assert call(mem, gt, GET_VERSION, struct.pack("<HHI", 5, 0, 0))[0] == -ESRCH
    assert call(mem, gt, SET_VERSION, struct.pack("<I", 2)) == (0, struct.pack("<I", 2))
    rc, out = call(mem, gt, GET_VERSION, struct.pack("<HHI", DOMID_SELF, 0, 0))
    assert rc == 0 and struct.unpack_from("<I", out, 4) == (2,)


# --- version 2 (grant_table.h: grant_entry_v2 = {hdr {u16 flags, domid}, u16 page_off,
# u16 length, u64 frame}, 16 bytes, 256 per frame; grant_status_t u16, 2048 per status
# frame; gnttab_get_status_frames = {u32 nr_frames @0, dom @4, status @6, frame_list @8}) ---
GET_STATUS_FRAMES, SUB_PAGE, TRANSITIVE, STATUS_GPFN = 9, 1 << 8, 3, 0x41
EBUSY, ERANGE = 16, 34


def grant_v2(mem: GuestMemory, gref: int, flags: int, domid: int, frame: int,
             off: int = 0, length: int = 0) -> None:
    mem.write(FRAME_GPFN * PAGE + 16 * gref, struct.pack("<HHHHQ", flags, domid, off, length, frame))


def status(mem: GuestMemory, gref: int) -> int:
    return mem.read_u16(STATUS_GPFN * PAGE + 2 * gref)


@pytest.fixture
def gt2(mem: GuestMemory, gt: GrantTable) -> GrantTable:
    grant(mem, 3, PERMIT, PEER, 0x70)  # a reserved entry (gref < 8): kept across versions
    grant(mem, 9, PERMIT, PEER, 0x71)  # not reserved: cleared by the switch
    assert call(mem, gt, SET_VERSION, struct.pack("<I", 2))[0] == 0
    assert gt.map_frame(0x8000_0000, STATUS_GPFN) == 0  # XENMAPIDX_grant_table_status
    return gt


def test_v2_switch_keeps_the_reserved_entries_and_clears_the_rest(mem: GuestMemory,
                                                                  gt2: GrantTable) -> None:
    page = mem.read(FRAME_GPFN * PAGE, PAGE)
    assert struct.unpack_from("<HHHHQ", page, 16 * 3) == (PERMIT, PEER, 0, 0, 0x70)
    assert page[16 * 4:] == bytes(PAGE - 64) and gt2.nr_entries == 256
    assert gt2.map_frame(0x8000_0001, 0x42) == -EINVAL  # one status frame for 256 entries
    rc, out = call(mem, gt2, GET_STATUS_FRAMES, struct.pack("<IHhQ", 1, DOMID_SELF, 7, 0x21000))
    assert rc == 0 and struct.unpack_from("<h", out, 6) == (OKAY,)
    assert struct.unpack("<Q", mem.read(0x21000, 8)) == (STATUS_GPFN,)
    rc, out = call(mem, gt2, GET_STATUS_FRAMES, struct.pack("<IHhQ", 2, DOMID_SELF, 7, 0x21000))
    assert struct.unpack_from("<h", out, 6) == (GENERAL,)  # more than the table has
    # back to v1: the reserved entry again as a v1 entry, the status frames gone
    assert call(mem, gt2, SET_VERSION, struct.pack("<I", 1)) == (0, struct.pack("<I", 1))
    assert struct.unpack("<HHI", mem.read(FRAME_GPFN * PAGE + 24, 8)) == (PERMIT, PEER, 0x70)
    assert gt2.status_frames == {} and gt2.map_frame(0x8000_0000, STATUS_GPFN) == -EINVAL


def test_v2_in_use_bits_live_in_the_status_frame(mem: GuestMemory, gt2: GrantTable) -> None:
    grant_v2(mem, 20, PERMIT, PEER, 0x90)
    mapper = GrantMapper(lambda d: gt2 if d == ME else None)
    m = mapper.map(ME, 20, PEER, write=True)
    assert m.gpa == 0x90 * PAGE
    assert status(mem, 20) == READING | WRITING
    assert mem.read_u16(FRAME_GPFN * PAGE + 16 * 20) == PERMIT  # the entry's flags untouched
    # In use: the version cannot change (grefs past the reserved 8).
    assert call(mem, gt2, SET_VERSION, struct.pack("<I", 1)) == (-EBUSY, struct.pack("<I", 2))
    GrantMapper.unmap(m)
    assert status(mem, 20) == 0
    # a read-only grant refuses a write; another domain's grant refuses us
    grant_v2(mem, 21, PERMIT | RO, PEER, 0x91)
    with pytest.raises(GrantError):
        mapper.map(ME, 21, PEER, write=True)
    assert status(mem, 21) == 0
    with pytest.raises(GrantError):
        mapper.map(ME, 20, 5, write=False)
    grant_v2(mem, 22, TRANSITIVE, PEER, 0)
    with pytest.raises(GrantError, match="transitive"):
        mapper.map(ME, 22, PEER, write=False)


def test_v2_grant_needs_its_status_frame_mapped(mem: GuestMemory, gt: GrantTable) -> None:
    assert call(mem, gt, SET_VERSION, struct.pack("<I", 2))[0] == 0
    grant_v2(mem, 20, PERMIT, PEER, 0x90)
    with pytest.raises(GrantError, match="status frame not mapped"):
        GrantMapper(lambda d: gt).map(ME, 20, PEER, write=False)


def test_v2_sub_page_grant_bounds_a_copy_and_cannot_be_mapped(mem: GuestMemory,
                                                             gt2: GrantTable) -> None:
    peer = GrantTable(PEER, mem, max_frames=1)
    grant_v2(mem, 30, PERMIT | SUB_PAGE, PEER, 0x90, off=0x100, length=0x20)
    mem.write(0x90 * PAGE + 0x100, b"S" * 0x20)
    peer.foreign = lambda d: gt2 if d == ME else None

    def copy(offset: int, length: int) -> int:
        op = struct.pack("<QHH4xQHH4xHHh2x", 30, ME, offset, 0x95, DOMID_SELF, 0, length,
                         SRC_GREF, 0)
        mem.write(ARG, op)
        assert peer.op(COPY, access(mem), ARG, 1) == 0
        return struct.unpack("<h", mem.read(ARG + 36, 2))[0]

    assert copy(0x100, 0x20) == OKAY and mem.read(0x95 * PAGE, 0x20) == b"S" * 0x20
    assert copy(0x100, 0x21) == BAD_COPY_ARG  # past the window
    assert copy(0xFF, 0x10) == BAD_COPY_ARG  # before it
    assert status(mem, 30) == 0  # released after each copy
    with pytest.raises(GrantError):
        GrantMapper(lambda d: gt2).map(ME, 30, PEER, write=False)  # sub-page: no mapping


def test_unoffered_ops_and_counts(mem: GuestMemory, gt: GrantTable) -> None:
    assert call(mem, gt, 7, bytes(32))[0] == -ENOSYS  # unmap_and_replace: PV only
    assert gt.op(COPY, access(mem), ARG, 2**31) == -EINVAL
    assert gt.op(MAP, access(mem), ARG, 513) == -EINVAL  # beyond our batch limit


# --- GNTTABOP_map_grant_ref / unmap_grant_ref ---------------------------------------------
# grant_table.h: gnttab_map_grant_ref = {host_addr u64 @0, flags u32 @8, ref @12, dom @16,
# status i16 @18, handle u32 @20, dev_bus_addr u64 @24} (32 bytes); gnttab_unmap_grant_ref =
# {host_addr @0, dev_bus_addr @8, handle @16, status i16 @20} (24 bytes);
# GNTMAP_device_map 1, host_map 1<<1, readonly 1<<2; GNTST_bad_handle -4, no_device_space -7.
UNMAP = 1
DEVICE_MAP, HOST_MAP, MAP_RO = 1, 1 << 1, 1 << 2
BAD_HANDLE = -4
MAP_GFN = 0x200  # above the mapper's 1 MiB of RAM: where the mapped page appears


def map_raw(gfn: int, fl: int, ref: int, dom: int) -> bytes:
    return struct.pack("<QIIHhIQ", gfn * PAGE, fl, ref, dom, 99, 0xFFFF, 0)


def do_map(mem: GuestMemory, t: GrantTable, gfn: int, fl: int, ref: int, dom: int
           ) -> tuple[int, int]:
    rc, out = call(mem, t, MAP, map_raw(gfn, fl, ref, dom))
    assert rc == 0
    status, handle = struct.unpack_from("<hI", out, 18)
    return status, handle


def do_unmap(mem: GuestMemory, t: GrantTable, gfn: int, handle: int) -> int:
    rc, out = call(mem, t, UNMAP, struct.pack("<QQIhxx", gfn * PAGE, 0, handle, 99))
    assert rc == 0
    return struct.unpack_from("<h", out, 20)[0]


class Pair(SimpleNamespace):
    me: GrantTable
    peer: GrantTable
    peer_mem: GuestMemory
    refuse: bool


@pytest.fixture
def pair(mem: GuestMemory) -> Iterator[Pair]:
    """A mapper (ME) whose p2m puts mapped pages into its GuestMemory, as the domain's
    PhysMap does with a memory slot; and a granting peer with its own memory."""
    from xenopus.memory.guest import MemoryRegion

    with GuestMemory.create(1 * MiB) as peer_mem:
        peer = GrantTable(PEER, peer_mem)
        peer.map_frame(0, FRAME_GPFN)
        me = GrantTable(ME, mem, foreign={PEER: peer}.get)
        me.map_frame(0, FRAME_GPFN)
        p = Pair(me=me, peer=peer, peer_mem=peer_mem, refuse=False)

        def host_map(gfn: int, backing: tuple[int, int], readonly: bool) -> bool:
            if p.refuse or mem.overlaps(gfn * PAGE, PAGE):
                return False
            mem.attach(MemoryRegion.map_file(gfn * PAGE, PAGE, *backing, readonly=readonly))
            return True

        me.host_map = host_map
        me.host_unmap = lambda gfn: mem.detach(gfn * PAGE).close()
        yield p


def test_a_mapped_grant_is_the_granters_page(mem: GuestMemory, pair: Pair) -> None:
    grant(pair.peer_mem, 5, PERMIT, ME, 0x70)
    pair.peer_mem.write(0x70 * PAGE, b"from the granter")
    status, handle = do_map(mem, pair.me, MAP_GFN, HOST_MAP, 5, PEER)
    assert (status, handle) == (OKAY, 0)
    assert flags(pair.peer_mem, 5) == PERMIT | READING | WRITING
    assert mem.read(MAP_GFN * PAGE, 16) == b"from the granter"
    mem.write(MAP_GFN * PAGE + 2048, b"from the mapper")  # both see each other's writes
    assert pair.peer_mem.read(0x70 * PAGE + 2048, 15) == b"from the mapper"
    # The granter cannot end access meanwhile (gnttab_end_foreign_access's cmpxchg fails).
    entry = FRAME_GPFN * PAGE + 8 * 5
    word = pair.peer_mem.read_u32(entry) & ~0xFFFF | PERMIT
    assert pair.peer.atomics.cmpxchg32(entry, word, word & ~0xFFFF) != word
    assert do_unmap(mem, pair.me, MAP_GFN + 1, handle) == GENERAL  # not mapped there
    assert do_unmap(mem, pair.me, MAP_GFN, handle) == OKAY
    assert flags(pair.peer_mem, 5) == PERMIT and not mem.contains(MAP_GFN * PAGE)
    assert do_unmap(mem, pair.me, MAP_GFN, handle) == BAD_HANDLE
    assert pair.peer.atomics.cmpxchg32(entry, word, word & ~0xFFFF) == word  # now it can


def test_read_only_grants_and_mappings(mem: GuestMemory, pair: Pair) -> None:
    grant(pair.peer_mem, 6, PERMIT | RO, ME, 0x71)
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP, 6, PEER)[0] == GENERAL
    assert flags(pair.peer_mem, 6) == PERMIT | RO  # the failed map pinned nothing
    status, handle = do_map(mem, pair.me, MAP_GFN, HOST_MAP | MAP_RO, 6, PEER)
    assert status == OKAY and flags(pair.peer_mem, 6) == PERMIT | RO | READING
    assert do_unmap(mem, pair.me, MAP_GFN, handle) == OKAY
    assert flags(pair.peer_mem, 6) == PERMIT | RO


def test_map_errors_in_xens_order(mem: GuestMemory, pair: Pair) -> None:
    grant(pair.peer_mem, 5, PERMIT, ME, 0x70)
    grant(pair.peer_mem, 7, PERMIT, 9, 0x70)  # for another domain
    assert do_map(mem, pair.me, MAP_GFN, 0, 5, PEER)[0] == BAD_GNTREF  # no map kind
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP | DEVICE_MAP, 5, PEER)[0] == GENERAL
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP, 5, 7)[0] == BAD_DOMAIN
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP, 512, PEER)[0] == BAD_GNTREF  # 1 frame
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP, 7, PEER)[0] == GENERAL
    assert do_map(mem, pair.me, 0x10, HOST_MAP, 5, PEER)[0] == GENERAL  # a RAM gfn
    pair.refuse = True  # the p2m has no room
    assert do_map(mem, pair.me, MAP_GFN, HOST_MAP, 5, PEER)[0] == GENERAL
    assert flags(pair.peer_mem, 5) == PERMIT and pair.me.maptrack == {}


def test_maps_in_one_batch_and_unmap_all(mem: GuestMemory, pair: Pair) -> None:
    grant(pair.peer_mem, 5, PERMIT, ME, 0x70)
    grant(pair.peer_mem, 6, PERMIT, ME, 0x71)
    grant(mem, 8, PERMIT, ME, 0x72)  # our own grant, mapped by ourselves (DOMID_SELF)
    batch = (map_raw(MAP_GFN, HOST_MAP, 5, PEER) + map_raw(MAP_GFN + 1, HOST_MAP, 6, PEER)
             + map_raw(MAP_GFN + 2, HOST_MAP | MAP_RO, 8, DOMID_SELF))
    mem.write(ARG, batch)
    assert pair.me.op(MAP, access(mem), ARG, 3) == 0
    out = mem.read(ARG, 96)
    assert [struct.unpack_from("<hI", out, 32 * i + 18) for i in range(3)] == [
        (OKAY, 0), (OKAY, 1), (OKAY, 2)]
    mem.write(0x72 * PAGE, b"own page")
    assert mem.read((MAP_GFN + 2) * PAGE, 8) == b"own page"
    assert flags(mem, 8) == PERMIT | READING
    pair.me.unmap_all()  # the mapper goes: every entry is released
    assert flags(pair.peer_mem, 5) == flags(pair.peer_mem, 6) == flags(mem, 8) == PERMIT
    assert not mem.contains(MAP_GFN * PAGE)


# --- GNTTABOP_copy -------------------------------------------------------------------------


def copy_raw(src: tuple[int, int, int], dst: tuple[int, int, int], length: int,
             fl: int) -> bytes:
    return struct.pack("<QHHxxxxQHHxxxxHHhxx", *src, *dst, length, fl, 99)


def copy_status(mem: GuestMemory, t: GrantTable, *args: object) -> int:
    rc, out = call(mem, t, COPY, copy_raw(*args))  # type: ignore[arg-type]
    assert rc == 0
    return struct.unpack_from("<h", out, 36)[0]


def test_copy_between_gref_and_gmfn(mem: GuestMemory) -> None:
    with GuestMemory.create(1 * MiB) as peer_mem:
        peer = GrantTable(PEER, peer_mem)
        peer.map_frame(0, FRAME_GPFN)
        me = GrantTable(ME, mem, foreign={PEER: peer}.get)
        me.map_frame(0, FRAME_GPFN)
        grant(peer_mem, 3, PERMIT | RO, ME, 0x70)
        peer_mem.write(0x70 * PAGE + 100, b"granted!")
        # from the peer's read-only gref 3 to my own gmfn 0x30
        assert copy_status(mem, me, (3, PEER, 100), (0x30, DOMID_SELF, 8), 8, SRC_GREF) == OKAY
        assert mem.read(0x30 * PAGE + 8, 8) == b"granted!"
        assert flags(peer_mem, 3) == PERMIT | RO  # in-use flags dropped after the copy
        # into the peer's writable gref 4
        grant(peer_mem, 4, PERMIT, ME, 0x71)
        assert copy_status(mem, me, (0x30, DOMID_SELF, 8), (4, PEER, 0), 8, DST_GREF) == OKAY
        assert peer_mem.read(0x71 * PAGE, 8) == b"granted!"
        # the read-only one refuses to be a destination
        assert copy_status(mem, me, (0x30, DOMID_SELF, 0), (3, PEER, 0), 8, DST_GREF) == GENERAL
        assert copy_status(mem, me, (0x30, DOMID_SELF, 0), (3, 7, 0), 8, DST_GREF) == BAD_DOMAIN


def test_copy_errors(mem: GuestMemory, gt: GrantTable) -> None:
    grant(mem, 1, PERMIT, ME, 0x30)
    grant(mem, 2, PERMIT, PEER, 0x30)  # granted to someone else
    grant(mem, 3, PERMIT, ME, 0x7_0000)  # frame outside RAM
    own = (0x31, DOMID_SELF, 0)
    assert copy_status(mem, gt, (1, ME, 0), own, 16, SRC_GREF) == OKAY  # self-grant is fine
    assert copy_status(mem, gt, (512, ME, 0), own, 16, SRC_GREF) == BAD_GNTREF
    assert copy_status(mem, gt, (2**32 - 1, ME, 0), own, 16, SRC_GREF) == BAD_GNTREF
    assert copy_status(mem, gt, (2, ME, 0), own, 16, SRC_GREF) == GENERAL
    assert copy_status(mem, gt, (0, ME, 0), own, 16, SRC_GREF) == GENERAL  # GTF_invalid
    assert copy_status(mem, gt, (3, ME, 0), own, 16, SRC_GREF) == BAD_PAGE
    assert copy_status(mem, gt, (0x31, ME, 0), own, 16, 0) == PERMISSION_DENIED
    assert copy_status(mem, gt, (0x7_0000, DOMID_SELF, 0), own, 16, 0) == BAD_PAGE
    assert copy_status(mem, gt, (1, 9, 0), own, 16, SRC_GREF) == BAD_DOMAIN
    assert copy_status(mem, gt, (1, ME, 4000), own, 200, SRC_GREF) == BAD_COPY_ARG
    assert copy_status(mem, gt, (1, ME, 0), (0x31, DOMID_SELF, 4095), 2, SRC_GREF) == BAD_COPY_ARG
    assert flags(mem, 1) == PERMIT  # every failure released its pin


def test_copy_batch_statuses_and_faults(mem: GuestMemory, gt: GrantTable) -> None:
    grant(mem, 1, PERMIT, ME, 0x30)
    raw = copy_raw((1, ME, 0), (0x31, DOMID_SELF, 0), 8, SRC_GREF) + copy_raw(
        (600, ME, 0), (0x31, DOMID_SELF, 0), 8, SRC_GREF)
    rc, out = call(mem, gt, COPY, raw, count=2)
    assert rc == 0 and struct.unpack_from("<h", out, 36)[0] == OKAY
    assert struct.unpack_from("<h", out, 40 + 36)[0] == BAD_GNTREF
    assert gt.op(COPY, access(mem), 1 * MiB - 40, 2) == -EFAULT


# --- the mapper ----------------------------------------------------------------------------


def test_mapper_maintains_in_use_flags(mem: GuestMemory, gt: GrantTable) -> None:
    grant(mem, 5, PERMIT, PEER, 0x33)
    mapper = GrantMapper({ME: gt}.get)
    w = mapper.map(ME, 5, PEER, write=True)
    assert flags(mem, 5) == PERMIT | READING | WRITING
    r = mapper.map(ME, 5, PEER, write=False)
    w.view[:4] = b"back"
    assert mem.read(0x33 * PAGE, 4) == b"back" and bytes(r.view[:4]) == b"back"
    with pytest.raises(TypeError):
        r.view[0] = 1  # a read mapping's view is read-only
    mapper.unmap(w)
    assert flags(mem, 5) == PERMIT | READING  # a reader remains
    with pytest.raises(ValueError):
        w.view[0]  # the view died with the mapping
    mapper.unmap(r)
    mapper.unmap(r)  # twice is harmless
    assert flags(mem, 5) == PERMIT and gt.in_use(5) == (0, 0)


def test_a_writable_mapping_is_logged_again_at_unmap(mem: GuestMemory, gt: GrantTable) -> None:
    # A live save's pass between the map and the backend's write sent the page before the
    # write; the grant may be ended before the stop, so the unmap logs it again.
    grant(mem, 5, PERMIT, PEER, 0x33)
    mapper = GrantMapper({ME: gt}.get)
    mem.log_writes(True)
    try:
        w = mapper.map(ME, 5, PEER, write=True)
        r = mapper.map(ME, 5, PEER, write=False)
        page = 0x33 * PAGE  # (the entry's flags, in the table's own page, are logged too)
        assert page in mem.take_dirty()  # mapped writable: logged
        w.view[:4] = b"late"
        mapper.unmap(r)
        assert page not in mem.take_dirty()  # a read mapping writes nothing
        mapper.unmap(w)
        assert page in mem.take_dirty()
    finally:
        mem.log_writes(False)


def test_mapper_refusals(mem: GuestMemory, gt: GrantTable) -> None:
    grant(mem, 5, PERMIT, PEER, 0x33)
    grant(mem, 6, PERMIT | RO, PEER, 0x33)
    mapper = GrantMapper({ME: gt}.get)
    for args, status in [((ME, 5, 3, False), GENERAL),  # granted to PEER, not d3
                         ((ME, 6, PEER, True), GENERAL),  # read-only
                         ((ME, 512, PEER, False), BAD_GNTREF),
                         ((4, 5, PEER, False), BAD_DOMAIN)]:
        with pytest.raises(GrantError) as e:
            mapper.map(*args)
        assert e.value.status == status
    with mapper.map(ME, 6, PEER, write=False) as m:
        assert flags(mem, 6) == PERMIT | RO | READING and len(m.view) == PAGE
    assert flags(mem, 6) == PERMIT | RO


def test_revoked_grant_is_refused(mem: GuestMemory, gt: GrantTable) -> None:
    grant(mem, 5, PERMIT, PEER, 0x33)
    mapper = GrantMapper({ME: gt}.get)
    m = mapper.map(ME, 5, PEER, write=False)
    # Linux's gnttab_end_foreign_access: cmpxchg(flags, GTF_permit_access, 0) fails while
    # GTF_reading is set, so the guest cannot revoke a grant in use...
    assert gt.atomics.cmpxchg32(FRAME_GPFN * PAGE + 40, PERMIT | PEER << 16, 0) != PERMIT | PEER << 16
    mapper.unmap(m)
    # ...after the unmap it can, and the next map sees the revocation.
    assert gt.atomics.cmpxchg32(FRAME_GPFN * PAGE + 40, PERMIT | PEER << 16, 0) == PERMIT | PEER << 16
    with pytest.raises(GrantError):
        mapper.map(ME, 5, PEER, write=False)
    grant(mem, 5, PERMIT, 3, 0x33)  # re-granted to another domain
    with pytest.raises(GrantError):
        mapper.map(ME, 5, PEER, write=False)
