"""XenStore watch fan-out benchmark: what one write costs with many watches set.

    python benchmarks/xenstore.py [--watches 0,100,1000,10000] [--writes N] [--repeats R]

A store (`xen/xenstore/store.py`) gets W watches from dom0 connections, 100 watches per
connection, on W distinct paths elsewhere in the tree (as backends watching their own
devices would: none of them fires), plus one watch on the written node's parent that
does. Then N writes to that node; one write is the median over R repeats of (time of
N writes) / N, in microseconds. The delivery callback only counts, so the figure is the
store's own cost: permission checks, the transaction-free write, and finding the
watches to tell. With the watches indexed by path it should not grow with W.
"""

from __future__ import annotations

import argparse
import statistics
import time

from xenopus.xen.xenstore.store import Store

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


if __name__ == "__main__":
    main()
