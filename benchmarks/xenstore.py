"""XenStore benchmark: what one write costs with many watches set, and what guest floods
cost the daemon in memory.

    python benchmarks/xenstore.py [--watches 0,100,1000,10000] [--writes N] [--repeats R]

A store (`xen/xenstore/store.py`) gets W watches from dom0 connections, 100 watches per
connection, on W distinct paths elsewhere in the tree (as backends watching their own
devices would: none of them fires), plus one watch on the written node's parent that
does. Then N writes to that node; one write is the median over R repeats of (time of
N writes) / N, in microseconds. The delivery callback only counts, so the figure is the
store's own cost: permission checks, the transaction-free write, and finding the
watches to tell. With the watches indexed by path it should not grow with W.

Floods (the daemon's memory growth, tracemalloc, MiB):
- unread events: 4 domain connections over socket pairs (`XenStoreServer.attach_domain`)
  each set 10 watches (2000-byte tokens) on a dom0 directory they may read and never
  read again; dom0 writes 600 nodes there: 24 000 events, about 48 MB of messages.
- transaction reads: one domain reads 100 000 missing paths in one transaction (each
  failed read is a path the transaction keeps for its commit check).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import tracemalloc

from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store
from xenopus.xen.xenstore.wire import XsError

MiB = 1024 * 1024

PER_CONNECTION = 100


def one_write_us(watches: int, writes: int) -> float:
    store = Store()
    delivered = 0

    def count(path: str, token: str) -> None:
        nonlocal delivered
        delivered += 1

    conns = [store.connect(0, count) for _ in range(max(1, -(-watches // PER_CONNECTION)))]
    for i in range(watches):
        store.watch(conns[i // PER_CONNECTION], f"/backend/vbd/{i}/0/state", "t")
    store.watch(conns[0], "/bench", "fires")
    writer = store.connect(0, count)
    store.write(writer, "/bench/node", b"0")
    start = time.perf_counter()
    for i in range(writes):
        store.write(writer, "/bench/node", b"%d" % i)
    elapsed = time.perf_counter() - start
    assert delivered == watches + 2 + writes  # initial events, the first write, the rest
    return elapsed / writes * 1e6


async def unread_events(watchers: int = 4, watches: int = 10, writes: int = 600) -> float:
    """MiB the daemon grows by while domains that do not read are sent watch events."""
    loop = asyncio.get_running_loop()
    store = Store()
    server = XenStoreServer(store)
    dom0 = store.connect(0, lambda path, token: None)
    peers, tasks = [], []
    for domid in range(1, watchers + 1):
        store.mkdir(dom0, f"/local/domain/{domid}/device")
        store.set_perms(dom0, f"/local/domain/{domid}/device", ["n0", f"r{domid}"])
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=theirs)
        tasks.append(asyncio.create_task(server.attach_domain(domid, reader, writer)))
        for i in range(watches):
            token = b"%04d" % i + b"t" * 1996
            await loop.sock_sendall(ours, wire.pack(wire.XS_WATCH, i, 0, b"device\0" + token + b"\0"))
        peers.append(ours)  # from here on, nobody reads it
    for _ in range(100):
        await asyncio.sleep(0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for domid in range(1, watchers + 1):
        for i in range(writes):
            store.write(dom0, f"/local/domain/{domid}/device/n{i:04}", b"")
    for _ in range(100):
        await asyncio.sleep(0)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for peer in peers:
        peer.close()
    return grown / MiB


def transaction_reads(reads: int = 100_000) -> tuple[float, str]:
    """MiB one transaction of failed reads grows the store by, and how it ended."""
    store = Store()
    dom0 = store.connect(0, lambda path, token: None)
    store.mkdir(dom0, "/local/domain/1")
    store.set_perms(dom0, "/local/domain/1", ["n1"])
    guest = store.connect(1, lambda path, token: None)
    tx = store.transaction_start(guest)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ended = f"{reads} reads kept"
    for i in range(reads):
        try:
            store.read(guest, f"missing/{i:06}", tx)
        except XsError as e:
            if e.name != "ENOENT":
                ended = f"{e.name} after {i} reads"
                break
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown / MiB, ended


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--watches", default="0,100,1000,10000",
                    help="comma-separated watch counts (default %(default)s)")
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"{'watches':>8} {'one write (us)':>15}")
    for watches in (int(w) for w in args.watches.split(",")):
        us = statistics.median(one_write_us(watches, args.writes) for _ in range(args.repeats))
        print(f"{watches:>8} {us:>15.1f}")
    print()
    print(f"{'flood':<20} {'daemon grows (MiB)':>19}  ends")
    print(f"{'unread events':<20} {asyncio.run(unread_events()):>19.1f}")
    grown, ended = transaction_reads()
    print(f"{'transaction reads':<20} {grown:>19.1f}  {ended}")


if __name__ == "__main__":
    main()
