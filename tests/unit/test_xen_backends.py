"""PV backends: the xenbus state machine against a real XenStoreServer, blkback, the
console and netback with hand-built rings in guest memory.

The frontend is played by the test: its XenStore writes go through a connection of the
guest's own domain id (so the permissions libxl sets are exercised), its rings are
built here byte by byte from the io/*.h layouts, and its grants are a small fake
mapper that enforces what Xen's does (granted to this domain, read-only refuses write).
Numbers checked are the headers' (io/blkif.h, io/netif.h, io/console.h, io/ring.h).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenopus.memory import GuestMemory
from xenopus.stream import StateError
from xenopus.xen import abi
from xenopus.xen.backends import BlkBack, NetBack, PVConsole, State
from xenopus.xen.backends.netback import checksum_place
from xenopus.xen.backends.xenbus import DomainHost
from xenopus.xen.xenstore.client import XsClient
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store

DOMID = 5
PAGE = 4096
TIMEOUT = 10.0


# -- the XenStore daemon, in a thread ------------------------------------------------


@dataclass
class Xenstored:
    store: Store
    client: XsClient
    guest: object  # a Connection of DOMID: the frontend's own XenStore access

    def fe_write(self, path: str, value: str) -> None:
        self.store.write(self.guest, path, value.encode())

    def read(self, path: str) -> str:
        return self.client.read(path).decode()


@pytest.fixture
def xs(tmp_path) -> Iterator[Xenstored]:
    store = Store()
    server = XenStoreServer(store)
    loop = asyncio.new_event_loop()
    sock = str(tmp_path / "xs.sock")
    ready = threading.Event()
    done = asyncio.Event()

    async def main() -> None:
        srv = await server.serve_unix(sock)
        ready.set()
        await done.wait()
        srv.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    client = XsClient(sock)
    guest = store.connect(DOMID, lambda path, token: None)
    try:
        yield Xenstored(store, client, guest)
    finally:
        client.close()
        loop.call_soon_threadsafe(done.set)
        thread.join(TIMEOUT)
        loop.close()


# -- a fake grant table and event channel ------------------------------------------------


class FakeMapping:
    def __init__(self, host: FakeHost, view: memoryview):
        self.host = host
        self.view = view
        host.live += 1

    def unmap(self) -> None:
        self.host.live -= 1


@dataclass
class FakePort:
    callback: Callable[[], None]
    notified: threading.Event = field(default_factory=threading.Event)
    closed: bool = False

    def notify(self) -> None:
        self.notified.set()

    def close(self) -> None:
        self.closed = True


class FakeHost:
    """Grants: gref → (pfn, read-only) of DOMID's memory; what the mapper checks."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.grants: dict[int, tuple[int, bool]] = {}
        self.live = 0
        self.ports: dict[int, FakePort] = {}

    def grant(self, gref: int, pfn: int, readonly: bool = False) -> None:
        self.grants[gref] = (pfn, readonly)

    def map_grant(self, domid: int, gref: int, write: bool) -> FakeMapping:
        if domid != DOMID or gref not in self.grants:
            raise PermissionError(f"grant {gref} not granted")
        pfn, ro = self.grants[gref]
        if write and ro:
            raise PermissionError(f"grant {gref} is read-only")
        return FakeMapping(self, self.memory.view(pfn * PAGE, PAGE))

    def bind_event(self, domid: int, port: int, callback: Callable[[], None]) -> FakePort:
        self.ports[port] = FakePort(callback)
        return self.ports[port]


GNT_PFN = 200  # the guest's grant-table frame 0


class RealGrantHost(FakeHost):
    """The same grants through the real GrantTable/GrantMapper: v1 entries in the guest's
    frame, GTF_reading/GTF_writing maintained, read-only refusing write mappings."""

    def __init__(self, memory: GuestMemory):
        from xenopus.xen.grant import GrantMapper, GrantTable

        super().__init__(memory)
        self.table = GrantTable(DOMID, memory)
        assert self.table.map_frame(0, GNT_PFN) == 0
        self.domain = DomainHost(None, GrantMapper(lambda d: self.table if d == DOMID else None))

    def grant(self, gref: int, pfn: int, readonly: bool = False) -> None:
        flags = abi.GTF_permit_access | (abi.GTF_readonly if readonly else 0)
        entry = abi.grant_entry_v1(flags=flags, domid=0, frame=pfn)
        self.memory.write(GNT_PFN * PAGE + gref * ctypes.sizeof(entry), bytes(entry))

    def map_grant(self, domid: int, gref: int, write: bool):
        m = self.domain.map_grant(domid, gref, write)
        self.live += 1
        unmap = m.unmap

        def counted() -> None:
            self.live -= 1
            unmap()

        m.unmap = counted
        return m


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 << 20) as mem:
        yield mem


# -- a frontend's side of an io/ring.h ring -----------------------------------------------


class FrontRing:
    """FRONT_RING_INIT over a page of guest memory; entry size from the header's union."""

    def __init__(self, memory: GuestMemory, pfn: int, entry: int):
        self.mem = memory
        self.base = pfn * PAGE
        self.entry = entry
        self.size = abi.ring_size(entry)
        self.req_prod_pvt = 0
        self.rsp_cons = 0
        memory.fill(self.base, PAGE)
        memory.write_u32(self.base + 4, 1)  # SHARED_RING_INIT: req_event = rsp_event = 1
        memory.write_u32(self.base + 12, 1)

    def put(self, data: bytes) -> None:
        off = self.base + 64 + (self.req_prod_pvt % self.size) * self.entry
        self.mem.write(off, data.ljust(self.entry, b"\0"))
        self.req_prod_pvt += 1

    def push(self) -> None:
        self.mem.write_u32(self.base, self.req_prod_pvt)
        self.mem.write_u32(self.base + 12, self.rsp_cons + 1)  # an event for the next one

    def responses(self, size: int) -> list[bytes]:
        prod = self.mem.read_u32(self.base + 8)
        out = []
        while self.rsp_cons != prod:
            off = self.base + 64 + (self.rsp_cons % self.size) * self.entry
            out.append(self.mem.read(off, size))
            self.rsp_cons += 1
        return out


def test_ring_layouts_match_the_headers():
    # io/blkif.h on x86_64: blkif_request 112 bytes → (4096-64)/112 = 36 → 32 entries;
    # io/netif.h: tx request 12 bytes → 336 → 256; rx 8 bytes → 504 → 256.
    assert abi.BLKIF_RING_ENTRY_SIZE == 112 and abi.BLKIF_RING_SIZE == 32
    assert abi.NETIF_TX_RING_SIZE == 256 and abi.NETIF_RX_RING_SIZE == 256
    # io/console.h: in[1024], out[2048], then in_cons, in_prod, out_cons, out_prod.
    assert abi.xencons_interface.out_prod.offset == 3084


# -- blkback --------------------------------------------------------------------------------

RING_PFN, DATA_PFN, IND_PFN = 16, 32, 64
RING_GREF, DATA_GREF, IND_GREF = 8, 100, 200
SECTORS = 64
DEVID = 51712  # xvda: (202 << 8) | (0 << 4)


def blk_request(op: int, rid: int, sector: int, segs: list[tuple[int, int, int]],
                nr: int | None = None) -> bytes:
    r = abi.blkif_request(operation=op, nr_segments=len(segs) if nr is None else nr,
                          handle=DEVID, id=rid, sector_number=sector)
    for i, (g, f, last) in enumerate(segs[: abi.BLKIF_MAX_SEGMENTS_PER_REQUEST]):
        r.seg[i].gref, r.seg[i].first_sect, r.seg[i].last_sect = g, f, last
    return bytes(r)


def blk_responses(ring: FrontRing) -> list[tuple[int, int, int]]:
    out = []
    for raw in ring.responses(ctypes.sizeof(abi.blkif_response)):
        r = abi.blkif_response.from_buffer_copy(raw)
        out.append((r.id, r.operation, r.status))
    return out


@dataclass
class BlkRig:
    xs: Xenstored
    host: FakeHost
    back: BlkBack
    ring: FrontRing
    image: str

    def connect(self) -> None:
        fe = self.back.fe
        self.xs.fe_write(f"{fe}/ring-ref", str(RING_GREF))
        self.xs.fe_write(f"{fe}/event-channel", "7")
        self.xs.fe_write(f"{fe}/protocol", "x86_64-abi")
        self.xs.fe_write(f"{fe}/state", str(int(State.Initialised)))
        assert self.back.wait_for(State.Connected, TIMEOUT)

    def run(self, *requests: bytes) -> list[tuple[int, int, int]]:
        port = self.host.ports[7]
        port.notified.clear()
        for r in requests:
            self.ring.put(r)
        self.ring.push()
        port.callback()  # the frontend's EVTCHNOP_send
        assert port.notified.wait(TIMEOUT)
        return blk_responses(self.ring)


def make_blk(xs: Xenstored, memory: GuestMemory, tmp_path, read_only: bool = False,
             grants: str = "fake") -> BlkRig:
    image = str(tmp_path / "disk.img")
    with open(image, "wb") as f:
        f.write(bytes(range(256)) * (SECTORS * 2))  # 64 sectors of a known pattern
    host = RealGrantHost(memory) if grants == "real" else FakeHost(memory)
    host.grant(RING_GREF, RING_PFN)
    for i in range(16):
        host.grant(DATA_GREF + i, DATA_PFN + i)
    host.grant(IND_GREF, IND_PFN, readonly=True)
    ring = FrontRing(memory, RING_PFN, abi.BLKIF_RING_ENTRY_SIZE)
    back = BlkBack(xs.client, host, DOMID, DEVID, image, read_only=read_only, vdev="xvda")
    back.start()
    return BlkRig(xs, host, back, ring, image)


@pytest.fixture(params=["fake", "real"])
def blk(xs, memory, tmp_path, request) -> Iterator[BlkRig]:
    """Every blkback test runs with the fake mapper and with xen.grant's."""
    rig = make_blk(xs, memory, tmp_path, grants=request.param)
    yield rig
    rig.back.stop()


def test_xenbus_nodes_perms_and_features(blk: BlkRig):
    xs, be, fe = blk.xs, blk.back.be, blk.back.fe
    assert be == f"/local/domain/0/backend/vbd/{DOMID}/{DEVID}"
    assert fe == f"/local/domain/{DOMID}/device/vbd/{DEVID}"
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    assert xs.read(f"{be}/state") == "2"
    assert xs.read(f"{be}/frontend") == fe and xs.read(f"{be}/frontend-id") == str(DOMID)
    assert xs.read(f"{be}/online") == "1"
    assert xs.read(f"{fe}/backend") == be and xs.read(f"{fe}/backend-id") == "0"
    assert xs.read(f"{fe}/state") == "1"
    # libxl: the backend is dom0's and readable by the guest; the frontend is the guest's.
    assert xs.client.get_perms(be) == ["n0", f"r{DOMID}"]
    assert xs.client.get_perms(fe) == [f"n{DOMID}", "r0"]
    assert xs.client.get_perms(f"{fe}/state")[0] == f"n{DOMID}"
    for node, value in {"feature-flush-cache": "1", "feature-discard": "1",
                        "feature-persistent": "1", "feature-max-indirect-segments": "256",
                        "mode": "w"}.items():
        assert xs.read(f"{be}/{node}") == value
    # the guest itself can read its backend's nodes and write its own
    assert xs.store.read(xs.guest, f"{be}/feature-flush-cache") == b"1"
    xs.fe_write(f"{fe}/ring-ref", "1")


def test_connect_close_reconnect(blk: BlkRig):
    xs, be = blk.xs, blk.back.be
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    assert xs.read(f"{be}/state") == "4"
    assert xs.read(f"{be}/sectors") == str(SECTORS)
    assert xs.read(f"{be}/sector-size") == "512"
    assert xs.read(f"{be}/info") == "0"
    assert blk.host.live == 1  # the ring
    xs.fe_write(f"{blk.back.fe}/state", str(int(State.Closing)))
    assert blk.back.wait_for(State.Closing, TIMEOUT)
    assert blk.host.live == 0 and blk.host.ports[7].closed
    xs.fe_write(f"{blk.back.fe}/state", str(int(State.Closed)))
    assert blk.back.wait_for(State.Closed, TIMEOUT)
    xs.fe_write(f"{blk.back.fe}/state", str(int(State.Initialising)))
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    assert blk.run(blk_request(abi.BLKIF_OP_FLUSH_DISKCACHE, 1, 0, []))[0][2] == 0


@pytest.mark.parametrize("nodes, why", [
    ({"event-channel": "7"}, "no ring-ref"),
    ({"ring-ref": "eight", "event-channel": "7"}, "not a number"),
    ({"ring-ref": str(1 << 32), "event-channel": "7"}, "out of range"),
    ({"ring-ref": "999", "event-channel": "7"}, "cannot map grant 999"),
    ({"ring-ref": str(RING_GREF), "event-channel": "-1"}, "out of range"),
    ({"ring-ref": str(RING_GREF), "event-channel": "7", "protocol": "arm-abi"}, "protocol"),
])
def test_malformed_frontend_closes_with_error(blk: BlkRig, nodes, why):
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    for name, value in nodes.items():
        blk.xs.fe_write(f"{blk.back.fe}/{name}", value)
    blk.xs.fe_write(f"{blk.back.fe}/state", str(int(State.Initialised)))
    assert blk.back.wait_for(State.Closing, TIMEOUT)
    assert why in blk.xs.read(f"{blk.back.be}/error")
    assert blk.host.live == 0
    assert blk.back.worker is not None and blk.back.worker.thread.is_alive()


def test_write_then_read_back(blk: BlkRig, memory: GuestMemory):
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    memory.write(DATA_PFN * PAGE, b"A" * PAGE)
    memory.write((DATA_PFN + 1) * PAGE, b"B" * PAGE)
    # sectors 3..4 of page 0 and 0..7 of page 1 → image sectors 10..19
    rsp = blk.run(blk_request(abi.BLKIF_OP_WRITE, 42, 10, [(DATA_GREF, 3, 4), (DATA_GREF + 1, 0, 7)]))
    assert rsp == [(42, abi.BLKIF_OP_WRITE, abi.BLKIF_RSP_OKAY)]
    with open(blk.image, "rb") as f:
        data = f.read()
    assert data[10 * 512 : 12 * 512] == b"A" * 1024
    assert data[12 * 512 : 20 * 512] == b"B" * 4096
    assert data[20 * 512 : 21 * 512] == bytes(range(256)) * 2  # untouched
    memory.fill((DATA_PFN + 2) * PAGE, PAGE, 0xEE)
    rsp = blk.run(blk_request(abi.BLKIF_OP_READ, 43, 11, [(DATA_GREF + 2, 1, 2)]))
    assert rsp == [(43, abi.BLKIF_OP_READ, abi.BLKIF_RSP_OKAY)]
    page = memory.read((DATA_PFN + 2) * PAGE, PAGE)
    assert page[:512] == b"\xee" * 512 and page[3 * 512 :] == b"\xee" * (PAGE - 3 * 512)
    assert page[512:1536] == b"A" * 512 + b"B" * 512
    assert blk.host.live == 1  # every data mapping was unmapped again


def test_x86_32_frontend_gets_the_i386_ring_layout(blk: BlkRig, memory: GuestMemory):
    # protocol "x86_32-abi" (io/protocols.h), as GRUB's i386-xen_pvh blkfront writes it:
    # io/blkif.h under the i386 psABI puts id at 4, sector_number at 12, seg[] at 20
    # (108-byte entries, 32 per page) and answers with 12-byte responses (status at 10).
    blk.back.wait_for(State.InitWait, TIMEOUT)
    fe = blk.back.fe
    blk.xs.fe_write(f"{fe}/ring-ref", str(RING_GREF))
    blk.xs.fe_write(f"{fe}/event-channel", "7")
    blk.xs.fe_write(f"{fe}/protocol", "x86_32-abi")
    blk.xs.fe_write(f"{fe}/state", str(int(State.Initialised)))
    assert blk.back.wait_for(State.Connected, TIMEOUT)
    blk.ring = FrontRing(memory, RING_PFN, 108)
    memory.write(DATA_PFN * PAGE, b"\0" * PAGE)

    def request(op: int, rid: int, sector: int, gref: int, first: int, last: int) -> bytes:
        head = struct.pack("<BBHQQ", op, 1, DEVID, rid, sector)
        return (head + struct.pack("<IBBxx", gref, first, last)).ljust(108, b"\0")

    port = blk.host.ports[7]
    port.notified.clear()
    for i in range(34):  # more than one lap of the 32-entry ring, each sector once
        blk.ring.put(request(abi.BLKIF_OP_READ, 0x1_0000_0000 + i, i, DATA_GREF, i % 8, i % 8))
        if i % 8 == 7 or i == 33:
            blk.ring.push()
            port.callback()
            assert port.notified.wait(TIMEOUT)
            port.notified.clear()
            for raw in blk.ring.responses(12):
                rid, op, status = struct.unpack("<QBxh", raw)
                assert (op, status) == (abi.BLKIF_OP_READ, abi.BLKIF_RSP_OKAY)
                assert rid >> 32 == 1
    # sector i of the image went to sector slot i % 8 of the page: the last lap's
    image = Path(blk.image).read_bytes()
    page = memory.read(DATA_PFN * PAGE, PAGE)
    for slot in range(8):
        last = max(i for i in range(34) if i % 8 == slot)
        assert page[slot * 512 : (slot + 1) * 512] == image[last * 512 : (last + 1) * 512]


def test_flush_barrier_and_discard_hole(blk: BlkRig, memory: GuestMemory):
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    memory.write(DATA_PFN * PAGE, b"C" * PAGE)
    rsp = blk.run(
        blk_request(abi.BLKIF_OP_FLUSH_DISKCACHE, 1, 0, []),
        blk_request(abi.BLKIF_OP_WRITE_BARRIER, 2, 0, [(DATA_GREF, 0, 7)]),
        bytes(abi.blkif_request_discard(operation=abi.BLKIF_OP_DISCARD, id=3,
                                        sector_number=16, nr_sectors=32)),
    )
    assert rsp == [(1, 3, 0), (2, 2, 0), (3, 5, 0)]
    with open(blk.image, "rb") as f:
        data = f.read()
    assert data[: 8 * 512] == b"C" * 4096
    assert data[16 * 512 : 48 * 512] == bytes(32 * 512)
    fd = os.open(blk.image, os.O_RDONLY)
    try:  # a real hole, not written zeroes (when the filesystem punches)
        assert os.lseek(fd, 16 * 512, os.SEEK_HOLE) == 16 * 512
    finally:
        os.close(fd)


def test_indirect_segments(blk: BlkRig, memory: GuestMemory):
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    # 16 segments of one sector each, one per page, through an indirect page.
    table = b"".join(bytes(abi.blkif_request_segment(gref=DATA_GREF + i, first_sect=0,
                                                     last_sect=0)) for i in range(16))
    memory.write(IND_PFN * PAGE, table)
    for i in range(16):
        memory.write((DATA_PFN + i) * PAGE, bytes([0x30 + i]) * 512)
    ind = abi.blkif_request_indirect(operation=abi.BLKIF_OP_INDIRECT,
                                     indirect_op=abi.BLKIF_OP_WRITE, nr_segments=16, id=9,
                                     sector_number=40, handle=DEVID)
    ind.indirect_grefs[0] = IND_GREF
    assert blk.run(bytes(ind)) == [(9, abi.BLKIF_OP_WRITE, 0)]
    with open(blk.image, "rb") as f:
        f.seek(40 * 512)
        assert f.read(16 * 512) == b"".join(bytes([0x30 + i]) * 512 for i in range(16))
    ind.indirect_op, ind.nr_segments = abi.BLKIF_OP_DISCARD, 1
    assert blk.run(bytes(ind))[0][2] == abi.BLKIF_RSP_ERROR
    ind.indirect_op, ind.nr_segments = abi.BLKIF_OP_READ, 300  # over the advertised 256
    assert blk.run(bytes(ind))[0][2] == abi.BLKIF_RSP_ERROR


def test_persistent_grants_stay_mapped_until_disconnect(blk: BlkRig, memory: GuestMemory):
    """blkif.h feature-persistent, as xen-blkfront asks for it: the data pages' grants are
    mapped once (writable, serving reads and writes) and kept until the frontend closes;
    a page granted read-only is still mapped per request and refused for a read."""
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.xs.fe_write(f"{blk.back.fe}/feature-persistent", "1")
    blk.connect()
    memory.write(DATA_PFN * PAGE, b"P" * PAGE)
    assert blk.run(blk_request(abi.BLKIF_OP_WRITE, 1, 8, [(DATA_GREF, 0, 7)])) == [
        (1, abi.BLKIF_OP_WRITE, 0)]
    assert blk.host.live == 2  # the ring and DATA_GREF, kept
    memory.fill(DATA_PFN * PAGE, PAGE)
    assert blk.run(blk_request(abi.BLKIF_OP_READ, 2, 8, [(DATA_GREF, 0, 7)])) == [
        (2, abi.BLKIF_OP_READ, 0)]
    assert memory.read(DATA_PFN * PAGE, PAGE) == b"P" * PAGE
    assert blk.host.live == 2  # the same mapping served the read
    if isinstance(blk.host, RealGrantHost):  # the entry stays in use: GTF_reading|writing
        users, writers = blk.host.table.in_use(DATA_GREF)
        assert (users, writers) == (1, 1)
    rsp = blk.run(blk_request(abi.BLKIF_OP_WRITE, 3, 16, [(IND_GREF, 0, 0)]),
                  blk_request(abi.BLKIF_OP_READ, 4, 16, [(IND_GREF, 0, 0)]))
    assert rsp == [(3, abi.BLKIF_OP_WRITE, 0), (4, abi.BLKIF_OP_READ, abi.BLKIF_RSP_ERROR)]
    assert blk.host.live == 2  # the read-only page was not kept
    blk.xs.fe_write(f"{blk.back.fe}/state", str(int(State.Closing)))
    assert blk.back.wait_for(State.Closing, TIMEOUT)
    assert blk.host.live == 0
    if isinstance(blk.host, RealGrantHost):
        assert blk.host.table.in_use(DATA_GREF) == (0, 0)


@pytest.mark.parametrize("req, status", [
    (blk_request(abi.BLKIF_OP_READ, 1, 0, [(DATA_GREF, 0, 7)] * 11, nr=12), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_READ, 1, 0, [], nr=0), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_READ, 1, 0, [(DATA_GREF, 5, 4)]), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_READ, 1, 0, [(DATA_GREF, 0, 8)]), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_READ, 1, SECTORS - 1, [(DATA_GREF, 0, 1)]), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_READ, 1, 1 << 63, [(DATA_GREF, 0, 0)]), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_WRITE, 1, 0, [(12345, 0, 0)]), abi.BLKIF_RSP_ERROR),
    # a READ fills the page: a read-only grant must refuse it
    (blk_request(abi.BLKIF_OP_READ, 1, 0, [(IND_GREF, 0, 0)]), abi.BLKIF_RSP_ERROR),
    (bytes(abi.blkif_request_discard(operation=abi.BLKIF_OP_DISCARD, id=1, sector_number=60,
                                     nr_sectors=5)), abi.BLKIF_RSP_ERROR),
    (blk_request(abi.BLKIF_OP_RESERVED_1, 1, 0, []), abi.BLKIF_RSP_EOPNOTSUPP),
    (blk_request(0xEE, 1, 0, []), abi.BLKIF_RSP_EOPNOTSUPP),
])
def test_hostile_requests_fail_alone(blk: BlkRig, memory: GuestMemory, req, status):
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    with open(blk.image, "rb") as f:
        before = f.read()
    memory.write(DATA_PFN * PAGE, b"Z" * 512)
    ok = blk_request(abi.BLKIF_OP_WRITE, 2, 0, [(DATA_GREF, 0, 0)])
    rsp = blk.run(req, ok)
    assert [r[2] for r in rsp] == [status, abi.BLKIF_RSP_OKAY]
    with open(blk.image, "rb") as f:
        assert f.read() == b"Z" * 512 + before[512:]  # only the good request wrote
    assert blk.back.state == State.Connected and blk.host.live == 1


def test_read_only_disk_refuses_writes(xs, memory, tmp_path):
    rig = make_blk(xs, memory, tmp_path, read_only=True)
    try:
        rig.back.wait_for(State.InitWait, TIMEOUT)
        assert xs.read(f"{rig.back.be}/mode") == "r"
        assert xs.read(f"{rig.back.be}/feature-discard") == "0"
        rig.connect()
        assert xs.read(f"{rig.back.be}/info") == str(abi.VDISK_READONLY)
        rsp = rig.run(
            blk_request(abi.BLKIF_OP_WRITE, 1, 0, [(DATA_GREF, 0, 0)]),
            bytes(abi.blkif_request_discard(operation=abi.BLKIF_OP_DISCARD, id=2,
                                            sector_number=0, nr_sectors=8)),
            blk_request(abi.BLKIF_OP_READ, 3, 0, [(DATA_GREF, 0, 0)]),
        )
        assert [r[2] for r in rsp] == [abi.BLKIF_RSP_ERROR, abi.BLKIF_RSP_ERROR, 0]
        with open(rig.image, "rb") as f:
            assert f.read(512) == bytes(range(256)) * 2
    finally:
        rig.back.stop()


def test_hostile_ring_index_closes_the_device(blk: BlkRig, memory: GuestMemory):
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    memory.write_u32(RING_PFN * PAGE, 1000)  # req_prod far past the 32-entry ring
    blk.host.ports[7].callback()
    assert blk.back.wait_for(State.Closing, TIMEOUT)
    assert "ring broken" in blk.xs.read(f"{blk.back.be}/error")
    assert blk.host.live == 0


def test_domain_host_pairs_with_event_channels(memory: GuestMemory):
    from xenopus.xen.evtchn import EventChannels

    ev = EventChannels(DOMID, memory, 1, lambda vcpu: None)
    kicks = []
    host = DomainHost(ev, grants=None)
    guest_port = ev.alloc_unbound(abi.DOMID_SELF, 0)  # the frontend's half
    assert guest_port > 0
    port = host.bind_event(DOMID, guest_port, lambda: kicks.append(1))
    assert ev.send(guest_port) == 0 and kicks == [1]  # guest → backend
    port.notify()  # backend → guest: no error; the port is interdomain
    with pytest.raises(ValueError):
        host.bind_event(DOMID, guest_port, lambda: None)  # already bound


# -- console ---------------------------------------------------------------------------------

CONS_PFN = 80
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = 3072, 3076, 3080, 3084  # io/console.h offsets


@pytest.fixture
def console(memory):
    out: list[bytes] = []
    notes: list[int] = []
    cons = PVConsole.at_pfn(memory, CONS_PFN, out.append, lambda: notes.append(1))
    return cons, out, notes


def test_console_output_wraps(console, memory):
    cons, out, notes = console
    base = CONS_PFN * PAGE
    start = 2040  # out_prod near the end of the 2048-byte out ring
    memory.write_u32(base + OUT_CONS, start)
    msg = b"hello, wrapped world"
    for i, b in enumerate(msg):
        memory.write_u8(base + 1024 + (start + i) % 2048, b)
    memory.write_u32(base + OUT_PROD, start + len(msg))
    cons.kick()
    assert out == [msg] and notes == [1]
    assert memory.read_u32(base + OUT_CONS) == start + len(msg)
    cons.kick()  # nothing new
    assert out == [msg]


def test_console_hostile_out_prod(console, memory):
    cons, out, notes = console
    base = CONS_PFN * PAGE
    memory.write_u32(base + OUT_PROD, 5000)  # 5000 - 0 > 2048
    cons.kick()
    assert out == [] and memory.read_u32(base + OUT_CONS) == 0
    memory.write_u32(base + OUT_CONS, 0xFFFFFFFE)  # a sane wrapped pair works again
    memory.write_u32(base + OUT_PROD, 1)
    cons.kick()
    assert len(out[0]) == 3


def test_console_input(console, memory):
    cons, out, notes = console
    base = CONS_PFN * PAGE
    memory.write_u32(base + IN_CONS, 1020)
    memory.write_u32(base + IN_PROD, 1020)
    assert cons.send(b"abcdefgh") == 8
    assert memory.read_u32(base + IN_PROD) == 1028
    assert memory.read(base + 1020, 4) == b"abcd" and memory.read(base, 4) == b"efgh"
    assert notes == [1]
    assert cons.send(b"x" * 2000) == 1024 - 8  # only what fits
    assert cons.send(b"y") == 0
    memory.write_u32(base + IN_CONS, 0)  # in_prod - in_cons = 2044 > 1024: broken
    assert cons.send(b"z") == 0


# -- netback with a fake tap -----------------------------------------------------------------

TX_PFN, RX_PFN, PKT_PFN = 96, 97, 100
TX_GREF, RX_GREF, PKT_GREF = 1, 2, 300
MAC = bytes.fromhex("00163e010203")
VNET = struct.Struct("<BBHHHHH")


class FakeTap:
    """What netback uses of devices.tap.Tap, with a pipe as the readable fd."""

    name = "faketap"
    vnet_hdr_len = 12

    def __init__(self):
        self.offload = 0  # what TUNSETOFFLOAD was last given
        self.written: list[bytes] = []
        self.inbox: list[bytes] = []
        self.r, self.w = os.pipe()
        self.fd = self.r
        os.set_blocking(self.r, False)

    def write(self, views) -> int:
        frame = b"".join(bytes(v) for v in views)
        self.written.append(frame)
        return len(frame)

    def deliver(self, frame: bytes) -> None:
        self.inbox.append(frame)
        os.write(self.w, b"x")

    def read_into(self, views) -> int | None:
        if not self.inbox:
            return None
        os.read(self.r, 1)
        frame = self.inbox.pop(0)
        views[0][: len(frame)] = frame
        return len(frame)

    def set_offload(self, flags: int) -> None:
        self.offload = flags

    def close(self) -> None:
        for fd in (self.r, self.w):
            os.close(fd)


def udp_frame(payload: bytes) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x01" + MAC + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return eth + ip + struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload


@dataclass
class NetRig:
    xs: Xenstored
    host: FakeHost
    back: NetBack
    tap: FakeTap
    tx: FrontRing
    rx: FrontRing

    def kick(self, wait: bool = True) -> None:
        port = self.host.ports[9]
        port.notified.clear()
        self.tx.push()
        self.rx.push()
        port.callback()
        if wait:
            assert port.notified.wait(TIMEOUT)

    def tx_responses(self) -> list[tuple[int, int]]:
        return [struct.unpack("<Hh", r) for r in self.tx.responses(4)]


def make_net(xs, memory, features: dict[str, int] | None = None) -> NetRig:
    """A connected netback; `features`: the frontend's own feature-* nodes."""
    host = FakeHost(memory)
    host.grant(TX_GREF, TX_PFN)
    host.grant(RX_GREF, RX_PFN)
    for i in range(8):
        host.grant(PKT_GREF + i, PKT_PFN + i)
    tap = FakeTap()
    tx = FrontRing(memory, TX_PFN, ctypes.sizeof(abi.netif_tx_request))
    rx = FrontRing(memory, RX_PFN, ctypes.sizeof(abi.netif_rx_request))
    back = NetBack(xs.client, host, DOMID, 0, tap, MAC)
    back.start()
    assert back.wait_for(State.InitWait, TIMEOUT)
    fe = back.fe
    for name, value in {"tx-ring-ref": TX_GREF, "rx-ring-ref": RX_GREF, "event-channel": 9,
                        "request-rx-copy": 1, **(features or {}),
                        "state": int(State.Connected)}.items():
        xs.fe_write(f"{fe}/{name}", str(value))
    assert back.wait_for(State.Connected, TIMEOUT)
    return NetRig(xs, host, back, tap, tx, rx)


@pytest.fixture
def net(xs, memory) -> Iterator[NetRig]:
    rig = make_net(xs, memory)
    yield rig
    rig.back.stop()


def test_netback_nodes(net: NetRig):
    be = net.back.be
    assert be == f"/local/domain/0/backend/vif/{DOMID}/0"
    assert net.xs.read(f"{be}/feature-rx-copy") == "1"
    assert net.xs.read(f"{be}/mac") == "00:16:3e:01:02:03"
    assert net.xs.read(f"{net.back.fe}/mac") == "00:16:3e:01:02:03"


def test_netback_tx_csum_blank_and_fragments(net: NetRig, memory: GuestMemory):
    frame = udp_frame(b"p" * 100)
    head, rest = frame[:50], frame[50:]
    memory.write(PKT_PFN * PAGE + 100, head)
    memory.write((PKT_PFN + 1) * PAGE, rest)
    net.tx.put(bytes(abi.netif_tx_request(gref=PKT_GREF, offset=100, id=11, size=len(frame),
                                          flags=abi.NETTXF_csum_blank | abi.NETTXF_more_data)))
    net.tx.put(bytes(abi.netif_tx_request(gref=PKT_GREF + 1, offset=0, id=12, size=len(rest))))
    net.kick()
    assert net.tx_responses() == [(11, 0), (12, 0)]
    (out,) = net.tap.written
    flags, gso, _, _, start, off, _ = VNET.unpack(out[:12])
    assert flags == 1 and gso == 0 and (start, off) == (34, 6)  # UDP after 14+20
    assert out[12:] == frame
    assert net.host.live == 2  # the rings only


def test_netback_tx_gso_extra(net: NetRig, memory: GuestMemory):
    frame = udp_frame(b"q" * 60)
    frame = frame[:23] + b"\x06" + frame[24:]  # protocol TCP (checksum at +16)
    memory.write(PKT_PFN * PAGE, frame)
    net.tx.put(bytes(abi.netif_tx_request(gref=PKT_GREF, id=1, size=len(frame),
                                          flags=abi.NETTXF_extra_info | abi.NETTXF_csum_blank)))
    extra = abi.netif_extra_info(type=abi.XEN_NETIF_EXTRA_TYPE_GSO)
    extra.u.gso.size, extra.u.gso.type = 1448, abi.XEN_NETIF_GSO_TYPE_TCPV4
    net.tx.put(bytes(extra))
    net.kick()
    assert net.tx_responses() == [(1, 0), (0, abi.NETIF_RSP_NULL)]
    flags, gso, _, gso_size, start, off, _ = VNET.unpack(net.tap.written[0][:12])
    assert (flags, gso, gso_size, start, off) == (1, 1, 1448, 34, 16)


@pytest.mark.parametrize("req", [
    abi.netif_tx_request(gref=999, id=1, size=60),  # not granted
    abi.netif_tx_request(gref=PKT_GREF, id=1, size=10),  # shorter than Ethernet
    abi.netif_tx_request(gref=PKT_GREF, offset=4090, id=1, size=60),  # crosses the page
    abi.netif_tx_request(gref=PKT_GREF, id=1, size=60, flags=abi.NETTXF_csum_blank),  # not IP
])
def test_netback_tx_hostile(net: NetRig, memory: GuestMemory, req):
    net.tx.put(bytes(req))
    frame = udp_frame(b"ok")
    memory.write((PKT_PFN + 2) * PAGE, frame)
    net.tx.put(bytes(abi.netif_tx_request(gref=PKT_GREF + 2, id=2, size=len(frame))))
    net.kick()
    assert net.tx_responses() == [(1, abi.NETIF_RSP_ERROR), (2, 0)]
    assert [w[12:] for w in net.tap.written] == [frame]
    assert net.back.state == State.Connected


def test_netback_tx_chain_too_long(net: NetRig, memory: GuestMemory):
    for i in range(20):
        net.tx.put(bytes(abi.netif_tx_request(gref=PKT_GREF, id=i, size=100 if i == 0 else 1,
                                              flags=abi.NETTXF_more_data if i < 19 else 0)))
    net.kick()
    assert [s for _, s in net.tx_responses()] == [abi.NETIF_RSP_ERROR] * 20
    assert net.tap.written == []


def test_netback_rx(net: NetRig, memory: GuestMemory):
    frame = udp_frame(b"to the guest")
    net.rx.put(bytes(abi.netif_rx_request(id=77, gref=PKT_GREF + 3)))
    net.kick(wait=False)  # buffers posted before any frame: nothing to answer yet
    port = net.host.ports[9]
    port.notified.clear()
    net.tap.deliver(VNET.pack(2, 0, 0, 0, 0, 0, 0) + frame)  # DATA_VALID
    assert port.notified.wait(TIMEOUT)
    (raw,) = net.rx.responses(8)
    rid, off, flags, status = struct.unpack("<HHHh", raw)
    assert (rid, off, status) == (77, 0, len(frame))
    assert flags == abi.NETRXF_data_validated
    assert memory.read((PKT_PFN + 3) * PAGE, len(frame)) == frame
    # No buffer posted: the frame waits in the tap until the frontend posts one.
    net.tap.deliver(VNET.pack(0, 0, 0, 0, 0, 0, 0) + frame)
    net.rx.put(bytes(abi.netif_rx_request(id=78, gref=PKT_GREF + 4)))
    net.kick()
    assert struct.unpack("<HHHh", net.rx.responses(8)[0])[3] == len(frame)


def test_netback_rx_gso_across_slots(xs, memory: GuestMemory):
    """With xen-netfront's nodes (feature-sg, -gso-tcpv4/6, -ipv6-csum-offload) the tap
    hands over 64 KiB TCP segments with a partial checksum: one frame fills several
    requests' pages, the GSO extra in the slot after the first response (netif.h)."""
    from xenopus.devices.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6

    rig = make_net(xs, memory, {"feature-sg": 1, "feature-gso-tcpv4": 1, "feature-gso-tcpv6": 1,
                                "feature-ipv6-csum-offload": 1})
    try:
        assert rig.tap.offload == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        for i in range(18):  # RX_MAX_SLOTS: a frame is read only when the largest fits
            rig.host.grant(PKT_GREF + 8 + i, PKT_PFN + 8 + i)
            rig.rx.put(bytes(abi.netif_rx_request(id=i, gref=PKT_GREF + 8 + i)))
        rig.kick(wait=False)
        port = rig.host.ports[9]
        port.notified.clear()
        frame = bytes(range(256)) * 39 + b"end"  # 9987 bytes: three pages
        rig.tap.deliver(VNET.pack(1, 1, 54, 1448, 34, 16, 0) + frame)  # NEEDS_CSUM, TCPV4
        assert port.notified.wait(TIMEOUT)
        raw = rig.rx.responses(8)
        first = struct.unpack("<HHHh", raw[0])
        assert first == (0, 0, abi.NETRXF_data_validated | abi.NETRXF_csum_blank
                         | abi.NETRXF_more_data | abi.NETRXF_extra_info, PAGE)
        extra = abi.netif_extra_info.from_buffer_copy(raw[1])
        assert (extra.type, extra.flags) == (abi.XEN_NETIF_EXTRA_TYPE_GSO, 0)
        assert (extra.u.gso.type, extra.u.gso.size) == (abi.XEN_NETIF_GSO_TYPE_TCPV4, 1448)
        assert [struct.unpack("<HHHh", r) for r in raw[2:]] == [
            (2, 0, abi.NETRXF_more_data, PAGE), (3, 0, 0, len(frame) - 2 * PAGE)]
        got = b"".join(memory.read((PKT_PFN + 8 + i) * PAGE, PAGE) for i in (0, 2, 3))
        assert got[: len(frame)] == frame
        # 14 requests left: an event is asked for when 18 are there (req_event = 4 + 18)
        assert memory.read_u32(RX_PFN * PAGE + 4) == 22
    finally:
        rig.back.stop()
    assert rig.tap.offload == 0  # off again for whichever frontend connects next


def test_netback_rx_without_frontend_offloads(net: NetRig):
    assert net.tap.offload == 0  # no feature nodes: frames reach the guest finished


def test_checksum_place():
    assert checksum_place(udp_frame(b"")) == (34, 6)
    v6 = b"\0" * 12 + b"\x86\xdd" + b"\x60" + b"\0" * 5 + b"\x06" + b"\0" * 33
    assert checksum_place(v6) == (54, 16)


def test_blkback_save_and_restore_carries_the_ring_and_persistent_grants(
        blk: BlkRig, memory: GuestMemory, tmp_path):
    """docs/snapshot-stream.md, "Xen PV disks": a paused backend's state is its back
    ring's indexes and persistent grants; a new backend given it connects when the
    frontend's state comes back Connected, to the same ring with those indexes (not from
    0), maps the grants again and takes the request pushed before the save."""
    blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.xs.fe_write(f"{blk.back.fe}/feature-persistent", "1")
    blk.connect()
    memory.write(DATA_PFN * PAGE, b"S" * PAGE)
    for i in range(3):
        assert blk.run(blk_request(abi.BLKIF_OP_WRITE, i, 8 * i, [(DATA_GREF, 0, 7)]))[0][2] == 0
    blk.back.pause()
    blk.ring.put(blk_request(abi.BLKIF_OP_READ, 99, 0, [(DATA_GREF + 1, 0, 0)]))
    blk.ring.push()  # pushed, not taken: it stays in the ring for the restored backend
    state = blk.back.save_state()
    blk.back.resume()
    assert state["connected"] and (state["req_cons"], state["rsp_prod_pvt"]) == (3, 3)
    assert state["persistent"] == [DATA_GREF]
    blk.back.stop(remove=False)
    assert blk.host.live == 0

    again = BlkBack(blk.xs.client, blk.host, DOMID, DEVID, blk.image, vdev="xvda")
    with pytest.raises(StateError, match="sectors"):
        again.restore_state({**state, "sectors": SECTORS + 1})
    with pytest.raises(StateError, match="req_cons"):
        again.restore_state({**state, "req_cons": -1})
    again.restore_state(state)
    again.start()  # as the build does: Initialising in the frontend's state, InitWait
    try:
        assert again.wait_for(State.InitWait, TIMEOUT)
        blk.xs.fe_write(f"{again.fe}/state", str(int(State.Connected)))  # the import
        assert again.wait_for(State.Connected, TIMEOUT)
        assert blk.host.ports[7].notified.wait(TIMEOUT)
        assert blk_responses(blk.ring) == [(99, abi.BLKIF_OP_READ, abi.BLKIF_RSP_OKAY)]
        assert memory.read((DATA_PFN + 1) * PAGE, 512) == b"S" * 512
        # the ring, the saved persistent grant mapped again, the read's page kept too
        assert blk.host.live == 3
        if isinstance(blk.host, RealGrantHost):
            assert blk.host.table.in_use(DATA_GREF) == (1, 1)
    finally:
        again.stop()


def test_netback_save_and_restore_carries_both_rings(net: NetRig, memory: GuestMemory):
    """A paused netback's state is its TX and RX back rings' indexes; a new backend on a
    new tap (the receiving host's) takes them when the frontend's state comes back
    Connected: a frame then fills the buffer posted before the save, not slot 0 again."""
    frame = udp_frame(b"before")
    net.rx.put(bytes(abi.netif_rx_request(id=77, gref=PKT_GREF + 3)))
    net.kick(wait=False)
    port = net.host.ports[9]
    port.notified.clear()
    net.tap.deliver(VNET.pack(0, 0, 0, 0, 0, 0, 0) + frame)
    assert port.notified.wait(TIMEOUT)
    assert struct.unpack("<HHHh", net.rx.responses(8)[0])[0] == 77
    net.back.pause()
    net.rx.put(bytes(abi.netif_rx_request(id=78, gref=PKT_GREF + 4)))
    net.rx.push()  # posted, not yet taken: the restored backend takes it
    state = net.back.save_state()
    net.back.resume()
    assert state["connected"] and state["rx"] == [1, 1] and state["tx"] == [0, 0]
    net.back.stop(remove=False)

    tap = FakeTap()
    again = NetBack(net.xs.client, net.host, DOMID, 0, tap, MAC)
    with pytest.raises(StateError, match="rx ring indexes"):
        again.restore_state({**state, "rx": [1]})
    again.restore_state(state)
    again.start()
    try:
        assert again.wait_for(State.InitWait, TIMEOUT)
        net.xs.fe_write(f"{again.fe}/state", str(int(State.Connected)))  # the import
        assert again.wait_for(State.Connected, TIMEOUT)
        port = net.host.ports[9]
        port.notified.clear()
        after = udp_frame(b"after the move")
        tap.deliver(VNET.pack(0, 0, 0, 0, 0, 0, 0) + after)
        assert port.notified.wait(TIMEOUT)
        (raw,) = net.rx.responses(8)
        assert struct.unpack("<HHHh", raw)[0::3] == (78, len(after))
        assert memory.read((PKT_PFN + 4) * PAGE, len(after)) == after
    finally:
        again.stop()
