"""Xen PV backend cost per request, in this process: blkback with and without persistent
grants (blkif.h feature-persistent), through the real grant table and mapper.

    python benchmarks/xen_backends.py [--requests N] [--segments S]

No guest and no KVM: a XenStore server in a thread, a guest memory with a v1 grant table
whose entries grant S data pages to dom0, a frontend's ring written here byte by byte
(io/ring.h), and BlkBack connected to it as Linux's xen-blkfront connects (its nodes, then
Initialised). Each request reads S whole pages (4 KiB segments) from a raw image; the
time is the backend's, from the ring's kick to the response on the ring, N requests one
at a time (queue depth 1), medians of 5 batches. The table shows µs per request and per
segment, without and with persistent grants. What it leaves out is everything a real
guest adds: the hypercalls, the event delivery and the guest's own driver
(benchmarks/linux_io.py measures those, inside Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from xenopus.memory import GuestMemory
from xenopus.xen import abi
from xenopus.xen.backends import BlkBack, State
from xenopus.xen.backends.xenbus import DomainHost
from xenopus.xen.grant import GrantMapper, GrantTable
from xenopus.xen.xenstore.client import XsClient
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store

DOMID, DEVID, PORT = 5, 51712, 7
PAGE = abi.PAGE_SIZE
GNT_PFN, RING_PFN, DATA_PFN = 1, 2, 16
RING_GREF, DATA_GREF = 8, 100
TIMEOUT = 10.0


class Kick:
    """The guest's end of the event channel: the backend's notify sets `done`."""

    def __init__(self) -> None:
        self.callback = None
        self.done = threading.Event()

    def notify(self) -> None:
        self.done.set()

    def close(self) -> None:
        pass


class Host(DomainHost):
    """The real grant mapper; the event channel is `Kick`."""

    def __init__(self, table: GrantTable):
        super().__init__(None, GrantMapper(lambda d: table if d == DOMID else None))  # type: ignore[arg-type]
        self.kick = Kick()

    def bind_event(self, domid, remote_port, callback):  # type: ignore[override]
        self.kick.callback = callback
        return self.kick


def run(persistent: bool, requests: int, segments: int, image: Path) -> list[float]:
    """Seconds per request for 5 batches of `requests`."""
    store = Store()
    loop = asyncio.new_event_loop()
    sock = str(image.with_suffix(".sock"))
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        srv = await XenStoreServer(store).serve_unix(sock)
        ready.set()
        await stop.wait()
        srv.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(TIMEOUT)
    client = XsClient(sock)
    guest = store.connect(DOMID, lambda path, token: None)
    with GuestMemory.create(1 << 20) as memory:
        table = GrantTable(DOMID, memory)
        table.map_frame(0, GNT_PFN)
        entry = ctypes.sizeof(abi.grant_entry_v1)
        for gref, pfn in [(RING_GREF, RING_PFN)] + [(DATA_GREF + i, DATA_PFN + i)
                                                   for i in range(segments)]:
            e = abi.grant_entry_v1(flags=abi.GTF_permit_access, domid=0, frame=pfn)
            memory.write(GNT_PFN * PAGE + gref * entry, bytes(e))
        ring = RING_PFN * PAGE
        memory.write_u32(ring + 4, 1)  # SHARED_RING_INIT: req_event = rsp_event = 1
        memory.write_u32(ring + 12, 1)
        host = Host(table)
        back = BlkBack(client, host, DOMID, DEVID, str(image), vdev="xvda")
        back.start()
        back.wait_for(State.InitWait, TIMEOUT)
        nodes = {"ring-ref": RING_GREF, "event-channel": PORT, "protocol": "x86_64-abi",
                 "feature-persistent": int(persistent), "state": int(State.Initialised)}
        for name, value in nodes.items():
            store.write(guest, f"{back.fe}/{name}", str(value).encode())
        if not back.wait_for(State.Connected, TIMEOUT):
            sys.exit("xen_backends: blkback did not connect")
        req = abi.blkif_request(operation=abi.BLKIF_OP_READ, nr_segments=segments,
                                handle=DEVID, sector_number=0)
        for i in range(segments):
            req.seg[i].gref, req.seg[i].first_sect, req.seg[i].last_sect = DATA_GREF + i, 0, 7
        slots, size = abi.BLKIF_RING_SIZE, abi.BLKIF_RING_ENTRY_SIZE
        batches = []
        prod = 0
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(requests):
                req.id = prod
                memory.write(ring + abi.SRING_HEADER_SIZE + (prod % slots) * size, bytes(req))
                prod += 1
                host.kick.done.clear()
                memory.write_u32(ring, prod)  # req_prod
                memory.write_u32(ring + 12, prod)  # rsp_event: an event for response prod - 1
                host.kick.callback()  # the frontend's EVTCHNOP_send
                if not host.kick.done.wait(TIMEOUT):
                    sys.exit("xen_backends: no response")
                rsp = abi.blkif_response.from_buffer_copy(memory.read(
                    ring + abi.SRING_HEADER_SIZE + ((prod - 1) % slots) * size,
                    ctypes.sizeof(abi.blkif_response)))
                if rsp.status != abi.BLKIF_RSP_OKAY or rsp.id != prod - 1:
                    sys.exit(f"xen_backends: response {rsp.id} status {rsp.status}")
            batches.append((time.perf_counter() - start) / requests)
        back.stop()
    client.close()
    loop.call_soon_threadsafe(stop.set)
    thread.join(TIMEOUT)
    loop.close()
    return batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--requests", type=int, default=500, help="requests per batch (default 500)")
    p.add_argument("--segments", type=int, default=abi.BLKIF_MAX_SEGMENTS_PER_REQUEST,
                   help=f"4 KiB segments per request (1..{abi.BLKIF_MAX_SEGMENTS_PER_REQUEST}, "
                        f"default {abi.BLKIF_MAX_SEGMENTS_PER_REQUEST})")
    args = p.parse_args()
    if args.requests < 1 or not 1 <= args.segments <= abi.BLKIF_MAX_SEGMENTS_PER_REQUEST:
        p.error("--requests must be positive, --segments within 1..11")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        image.write_bytes(bytes(range(256)) * (16 * args.segments))
        rows = {mode: statistics.median(run(mode, args.requests, args.segments, image))
                for mode in (False, True)}
    print(f"\nblkback, {args.segments} x 4 KiB read segments per request, QD1, "
          f"median of 5 x {args.requests} requests")
    print("| grants | µs per request | µs per segment |")
    print("|---|---|---|")
    for mode, seconds in rows.items():
        name = "persistent (feature-persistent)" if mode else "mapped per request"
        print(f"| {name} | {seconds * 1e6:.1f} | {seconds * 1e6 / args.segments:.1f} |")
    print(f"ratio (per request, mapped / persistent): {rows[False] / rows[True]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
