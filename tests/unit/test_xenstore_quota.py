"""A hostile domain against the store's quotas (xenstored's, tools/xenstored/domain.c
`quotas[]`): every flood ends in the error xenstored answers, the daemon's memory stays
bounded, and other connections are still served."""

from __future__ import annotations

import asyncio
import socket
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from xenopus.toolstack import xenstored
from xenopus.xen.xenstore import server as server_module
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import NODE_HDR_SIZE, PERM_SIZE, Connection, Quota, Store
from xenopus.xen.xenstore.wire import XsError

MiB = 1024 * 1024


def err(fn, *args) -> str:
    with pytest.raises(XsError) as info:
        fn(*args)
    return info.value.name


def guest_store(quota: Quota | None = None) -> tuple[Store, Connection, Connection]:
    """A store with dom1's home made as the toolstack makes it, and both connections."""
    store = Store(quota)
    dom0 = store.connect(0, lambda p, t: None)
    dom1 = store.connect(1, lambda p, t: None)
    store.mkdir(dom0, "/local/domain/1")
    store.set_perms(dom0, "/local/domain/1", ["n1"])
    return store, dom0, dom1


def traced(fn) -> int:
    """Bytes still allocated after fn ran (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_quota_names_and_parse_follow_xenstored():
    assert Quota.parse("nodes=2000, memory=4194304 transaction-nodes=10") == Quota(
        nodes=2000, memory=4 * MiB, transaction_nodes=10)
    for bad in ("nodes", "nodes=x", "bogus=1"):
        with pytest.raises(ValueError):
            Quota.parse(bad)


def test_node_flood_stops_at_the_node_quota():
    store, dom0, dom1 = guest_store()
    with pytest.raises(XsError) as info:
        for i in range(5000):
            store.write(dom1, f"d{i % 10}/n{i}", b"v")  # 10 directories: none too big
    assert info.value.name == "ENOSPC"
    assert store.owned(1) == 1000  # its home, 10 directories, 989 leaves
    store.write(dom0, "/local/domain/0/still", b"served")  # dom0 is exempt
    store.rm(dom1, "d0/n0")
    store.write(dom1, "again", b"")  # room again once a node goes


def test_a_directory_is_a_node_its_children_count_in_its_size():
    store, _, dom1 = guest_store()
    with pytest.raises(XsError) as info:
        for i in range(1000):
            store.write(dom1, f"dir/child{i:03}", b"")
    assert info.value.name == "ENOSPC"  # the directory's node is over node-size
    assert len(store.directory(dom1, "dir")) == (2048 - NODE_HDR_SIZE - PERM_SIZE) // 9


def test_big_entries_hit_node_size_then_memory():
    store, _, dom1 = guest_store()
    biggest = 2048 - NODE_HDR_SIZE - PERM_SIZE  # one permission, no children
    store.write(dom1, "big", b"x" * biggest)
    assert err(store.write, dom1, "big", b"x" * (biggest + 1)) == "ENOSPC"
    assert err(store.write, dom1, "new", b"x" * (biggest + 1)) == "ENOSPC"
    assert store.read(dom1, "big") == b"x" * biggest  # the refused write changed nothing
    # Below the node quota, big nodes meet the memory quota: ENOMEM.
    store, _, dom1 = guest_store(Quota(memory=64 * 1024))
    with pytest.raises(XsError) as info:
        for i in range(1000):
            store.write(dom1, f"n{i}", b"x" * biggest)
    assert info.value.name == "ENOMEM"
    assert store.memory(1) <= 64 * 1024


def test_node_permissions_quota():
    store, _, dom1 = guest_store()
    store.write(dom1, "p", b"")
    store.set_perms(dom1, "p", ["n1", "r2", "r3", "r4", "r5"])
    assert err(store.set_perms, dom1, "p", ["n1", "r2", "r3", "r4", "r5", "r6"]) == "ENOSPC"


def test_watch_flood_stops_at_the_watch_quota_and_memory():
    store, _, dom1 = guest_store()
    for i in range(128):
        store.watch(dom1, f"w{i}", "t")
    assert err(store.watch, dom1, "w128", "t") == "ENOSPC"
    store, _, dom1 = guest_store(Quota(memory=16 * 1024))
    with pytest.raises(XsError) as info:
        for i in range(128):
            store.watch(dom1, f"w{i}", "t" * 1000)
    assert info.value.name == "ENOMEM"
    assert store.memory(1) <= 16 * 1024
    store.reset_watches(dom1)
    assert store.memory(1) == store.memory(1) and not dom1.watches


def test_transaction_with_many_reads_is_bounded_and_fails():
    store, dom0, dom1 = guest_store()
    home_memory = store.memory(1)
    tx = store.transaction_start(dom1)

    def flood() -> None:
        with pytest.raises(XsError) as info:
            for i in range(200_000):
                try:
                    store.read(dom1, f"missing{i}", tx)
                except XsError as e:
                    if e.name != "ENOENT":
                        raise
        assert info.value.name == "ENOSPC"

    grown = traced(flood)
    assert len(dom1.transactions[tx].seen) <= 1024
    assert grown < 1 * MiB, grown  # 200 000 kept paths would be tens of MB
    assert store.memory(1) > home_memory  # the kept paths are charged ...
    assert err(store.transaction_end, dom1, tx, True) == "ENOMEM"  # ... and it failed
    assert store.memory(1) == home_memory  # ... and given back
    # Other transactions, and other connections, go on.
    tx = store.transaction_start(dom1)
    store.write(dom1, "ok", b"1", tx)
    store.transaction_end(dom1, tx, True)
    assert store.read(dom0, "/local/domain/1/ok") == b"1"


def test_transaction_kept_paths_count_against_memory():
    store, _, dom1 = guest_store(Quota(memory=32 * 1024, transaction_nodes=0))
    tx = store.transaction_start(dom1)
    with pytest.raises(XsError) as info:
        for i in range(10_000):
            try:
                store.read(dom1, f"missing{i:05}", tx)
            except XsError as e:
                if e.name != "ENOENT":
                    raise
    assert info.value.name == "ENOMEM"
    assert store.memory(1) <= 32 * 1024
    store.transaction_end(dom1, tx, False)


# --- the server: a connection that does not read --------------------------------------


class Served:
    """A XenStoreServer on an event loop thread, domains attached over socket pairs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.server = XenStoreServer(store)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def attach(self, domid: int, small_buffers: bool = False) -> socket.socket:
        ours, theirs = socket.socketpair()
        if small_buffers:  # so that what the peer does not read stays in the daemon
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ours.settimeout(10)

        async def attach() -> None:
            reader, writer = await asyncio.open_unix_connection(sock=theirs)
            await self.server.attach_domain(domid, reader, writer)

        asyncio.run_coroutine_threadsafe(attach(), self.loop)
        return ours

    def on_loop(self, fn) -> None:
        """Run fn on the loop's thread, where the daemon's own store writes run."""
        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def settle(self, rounds: int = 20) -> None:
        """Let the loop run everything already scheduled, a few times over."""
        for _ in range(rounds):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Served]:
    store, dom0, _ = guest_store()
    store.mkdir(dom0, "/local/domain/1/device")  # dom0's nodes, dom1 may read them
    store.set_perms(dom0, "/local/domain/1/device", ["n0", "r1"])
    for domid in (2, 3):
        store.mkdir(dom0, f"/local/domain/{domid}")
        store.set_perms(dom0, f"/local/domain/{domid}", [f"n{domid}"])
    s = Served(store)
    s.dom0 = dom0  # type: ignore[attr-defined]
    yield s
    s.stop()


def recv_message(sock: socket.socket) -> tuple[wire.Header, bytes]:
    head = b""
    while len(head) < wire.HEADER_SIZE:
        head += sock.recv(wire.HEADER_SIZE - len(head))
    hdr = wire.unpack_header(head)
    body = b""
    while len(body) < hdr.len:
        body += sock.recv(hdr.len - len(body))
    return hdr, body


def call(sock: socket.socket, type_: int, payload: bytes, req_id: int = 1) -> bytes:
    """One request; its reply (watch events before it are skipped)."""
    sock.sendall(wire.pack(type_, req_id, 0, payload))
    while True:
        hdr, body = recv_message(sock)
        if hdr.type != wire.XS_WATCH_EVENT:
            return body


def test_watcher_that_never_reads_is_held_to_its_memory_quota(served):
    store: Store = served.store
    attacker = served.attach(1, small_buffers=True)
    token = b"t" * 2000
    for i in range(10):  # distinct tokens: no event is a duplicate of another
        assert call(attacker, wire.XS_WATCH, b"device\0%s%03d\0" % (token, i)) == b"OK\0"
    served.settle()
    before = store.memory(1)

    def write_nodes() -> None:
        for i in range(600):
            store.write(served.dom0, f"/local/domain/1/device/n{i:04}", b"")

    def flood() -> None:
        # dom0 writes 600 nodes below the watched path: 6000 events (~12 MB) for a
        # domain that reads none of them.
        served.on_loop(write_nodes)
        served.settle()

    grown = traced(flood)
    quota = store.quota.memory
    assert store.memory(1) <= quota
    assert grown < 3 * quota, grown  # the queue itself, nodes and bookkeeping
    bystander = served.attach(2)  # the daemon still serves others
    assert call(bystander, wire.XS_WRITE, b"data/x\0hello") == b"OK\0"
    assert call(bystander, wire.XS_READ, b"data/x\0") == b"hello"
    attacker.close()  # what it had queued is given back
    served.settle()
    assert store.memory(1) < before


def test_identical_unread_events_are_queued_once(served):
    store: Store = served.store
    attacker = served.attach(1, small_buffers=True)
    assert call(attacker, wire.XS_WATCH, b"device\0%s\0" % (b"t" * 200)) == b"OK\0"
    served.settle()
    before = store.memory(1)

    def write_nodes() -> None:
        for _ in range(5000):
            store.write(served.dom0, "/local/domain/1/device/same", b"")

    served.on_loop(write_nodes)
    served.settle()
    # The first event may sit in the socket; past it one event is queued, not 5000.
    assert store.memory(1) - before < 1024


class CountingStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.counted = threading.Condition()

    def read(self, *args, **kwargs) -> bytes:
        with self.counted:
            self.reads += 1
            self.counted.notify_all()
        return super().read(*args, **kwargs)


def test_requests_stall_at_outstanding_replies():
    store = CountingStore()
    dom0 = store.connect(0, lambda p, t: None)
    store.mkdir(dom0, "/local/domain/1")
    store.set_perms(dom0, "/local/domain/1", ["n1"])
    served = Served(store)
    try:
        attacker = served.attach(1, small_buffers=True)
        value = b"v" * 1900
        assert call(attacker, wire.XS_WRITE, b"big\0" + value) == b"OK\0"
        served.settle()
        base = store.memory(1)
        attacker.sendall(b"".join(wire.pack(wire.XS_READ, i, 0, b"big\0") for i in range(200)))
        with store.counted:
            assert store.counted.wait_for(lambda: store.reads >= store.quota.outstanding, 10)
        served.settle()
        reply = wire.HEADER_SIZE + len(value)
        assert store.memory(1) - base <= store.quota.outstanding * reply
        assert store.reads < 200  # it stopped reading the requests
        replies = [recv_message(attacker) for _ in range(200)]  # none lost once it reads
        assert [h.req_id for h, _ in replies] == list(range(200))
        assert all(body == value for _, body in replies)
    finally:
        served.stop()


def test_a_dom0_client_that_never_reads_is_closed(served, monkeypatch):
    # xenstored queues for dom0 without limit; we close it past PRIVILEGED_BACKLOG_MAX.
    monkeypatch.setattr(server_module, "PRIVILEGED_BACKLOG_MAX", 256 * 1024)
    store: Store = served.store
    tool = served.attach(0, small_buffers=True)
    for i in range(10):
        assert call(tool, wire.XS_WATCH, b"/local/domain/1\0%04d%s\0" % (i, b"t" * 2000)) == b"OK\0"
    served.settle()

    def write_nodes() -> None:
        for i in range(100):  # 1000 events, about 2 MB
            store.write(served.dom0, f"/local/domain/1/device/n{i:03}", b"")

    served.on_loop(write_nodes)
    served.settle()
    received = 0
    while chunk := tool.recv(65536):  # what it was sent, then the end of the stream
        received += len(chunk)
    assert received < 2 * 256 * 1024
    bystander = served.attach(2)
    assert call(bystander, wire.XS_WRITE, b"data/x\0v") == b"OK\0"


def test_the_daemon_takes_quotas_from_its_environment(monkeypatch):
    monkeypatch.setenv(xenstored.QUOTA_ENV, "nodes=7")
    assert xenstored.XenStored().store.quota == Quota(nodes=7)
    monkeypatch.setenv(xenstored.QUOTA_ENV, "bogus=1")
    with pytest.raises(ValueError, match="bogus"):
        xenstored.XenStored()


def test_unread_events_expire_after_the_watch_event_timeout(served, monkeypatch, caplog):
    # xenstored's -w watch-event=20: with no time to read them, each new event finds the
    # older ones gone (all but the one in the socket's hands) instead of the quota full.
    monkeypatch.setattr(server_module, "WATCH_EVENT_TIMEOUT", 0.0)
    store: Store = served.store
    attacker = served.attach(1, small_buffers=True)
    for i in range(10):
        assert call(attacker, wire.XS_WATCH, b"device\0%04d%s\0" % (i, b"t" * 2000)) == b"OK\0"
    served.settle()
    before = store.memory(1)

    def write_nodes() -> None:
        for i in range(600):
            store.write(served.dom0, f"/local/domain/1/device/n{i:04}", b"")

    served.on_loop(write_nodes)
    served.settle()
    assert store.memory(1) - before < 3 * 2100
    assert "not reading its watch events" not in caplog.text


def test_a_write_costs_the_same_with_10000_unrelated_watches():
    """Watch fan-out is indexed by path (xenstored walks the watched path's ancestors, not
    every watch): 10 000 watches on other paths used to cost 51 ms per write, a scan of
    each. Compared with the same writes and no watches, best of several rounds."""
    import time

    def per_write(store: Store, dom0: Connection) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for i in range(200):
                store.write(dom0, f"/local/domain/1/data/n{i}", b"x")
            best = min(best, (time.perf_counter() - start) / 200)
        return best

    quiet, dom0, _ = guest_store()
    busy, busy0, _ = guest_store()
    watcher = busy.connect(0, lambda p, t: None)
    for i in range(10_000):
        busy.watch(watcher, f"/elsewhere/w{i}", f"t{i}")
    assert per_write(busy, busy0) < 5 * per_write(quiet, dom0) + 20e-6
