"""The domain process's XenStore ring proxy (domain/xenguest.StoreProxy): a guest's
watches survive a daemon restart, set again on the new daemon's store with their
replies kept from the guest (which asked none); a guest that does not read is held to
its quotas without losing its connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from xenopus.domain.xenguest import PROXY_BACKLOG, REPLAY_REQ_ID, StoreProxy
from xenopus.memory import shared
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.ring import RingTransport
from xenopus.xen.xenstore.server import (
    DOMAIN_STREAM_LIMIT,
    XenStoreServer,
    domain_stream_pair,
)
from xenopus.xen.xenstore.store import Store

IFACE = wire.XenstoreDomainInterface
SIZE = wire.XENSTORE_RING_SIZE


def guest_send(page: memoryview, message: bytes) -> None:
    """What a guest's xenbus does: bytes into the request ring, then req_prod."""
    prod = shared.load(page, IFACE.req_prod.offset, 4)
    shared.ring_write(page, IFACE.req.offset, SIZE, prod, message)
    shared.store(page, IFACE.req_prod.offset, 4, prod + len(message))


def guest_receive(page: memoryview) -> bytes:
    cons = shared.load(page, IFACE.rsp_cons.offset, 4)
    prod = shared.load(page, IFACE.rsp_prod.offset, 4)
    data = shared.ring_read(page, IFACE.rsp.offset, SIZE, cons, prod - cons)
    shared.store(page, IFACE.rsp_cons.offset, 4, prod)
    return data


def messages(data: bytes) -> list[tuple[wire.Header, bytes]]:
    out = []
    while data:
        head = wire.unpack_header(data)
        out.append((head, data[wire.HEADER_SIZE : wire.HEADER_SIZE + head.len]))
        data = data[wire.HEADER_SIZE + head.len :]
    return out


async def read_daemon_side(sock: socket.socket, count: int) -> list[tuple[wire.Header, bytes]]:
    loop = asyncio.get_running_loop()
    data = b""
    while len(messages_so_far := _complete(data)) < count:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        assert chunk, "the proxy closed its stream"
        data += chunk
    return messages_so_far


def _complete(data: bytes) -> list[tuple[wire.Header, bytes]]:
    out = []
    while len(data) >= wire.HEADER_SIZE:
        head = wire.unpack_header(data)
        if len(data) < wire.HEADER_SIZE + head.len:
            break
        out.append((head, data[wire.HEADER_SIZE : wire.HEADER_SIZE + head.len]))
        data = data[wire.HEADER_SIZE + head.len :]
    return out


async def guest_reads_until(page: memoryview, proxy: StoreProxy,
                            req_id: int) -> list[tuple[wire.Header, bytes]]:
    """The guest reads (and kicks) until the reply to req_id: every message up to it."""
    got: list[tuple[wire.Header, bytes]] = []
    data = b""
    for _ in range(100000):
        data += guest_receive(page)
        proxy.kick()
        await asyncio.sleep(0)  # (yields to the loop: no time passes)
        complete = _complete(data)
        data = data[sum(wire.HEADER_SIZE + h.len for h, _ in complete):]
        got += complete
        if any(h.type != wire.XS_WATCH_EVENT and h.req_id == req_id for h, _ in complete):
            return got
    raise AssertionError(f"no reply to request {req_id}: {got}")


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, theirs


async def attached_proxy() -> tuple[socket.socket, StoreProxy, memoryview]:
    """A started StoreProxy on one end of a socket pair (the daemon's end returned), a
    guest's ring page attached to it."""
    daemon, end = pair()
    proxy = StoreProxy(asyncio.get_running_loop(), end)
    await proxy.start()
    page = memoryview(bytearray(4096))
    proxy.attach(RingTransport(page))
    return daemon, proxy, page


def test_the_guests_watches_are_set_again_on_a_restarted_daemon() -> None:
    async def scenario() -> None:
        daemon1, proxy, page = await attached_proxy()
        for type_, req_id, payload in ((wire.XS_WATCH, 1, wire.strings("device", "dev")),
                                       (wire.XS_WATCH, 2, wire.strings("/a", "t2")),
                                       (wire.XS_UNWATCH, 3, wire.strings("/a", "t2")),
                                       (wire.XS_WATCH, 4, wire.strings("control/shutdown", "c"))):
            guest_send(page, wire.pack(type_, req_id, 0, payload))
        proxy.kick()
        sent = await read_daemon_side(daemon1, 4)
        assert [h.req_id for h, _ in sent] == [1, 2, 3, 4]  # passed through as they were
        await asyncio.get_running_loop().sock_sendall(daemon1, b"".join(
            wire.pack(h.type, h.req_id, 0, b"OK\0") for h, _ in sent))
        await guest_reads_until(page, proxy, 4)  # the watches the store acked
        daemon1.close()  # the daemon dies

        daemon2, end2 = pair()
        await proxy.reconnect(end2)
        replayed = await read_daemon_side(daemon2, 2)
        assert [(h.type, h.req_id, body) for h, body in replayed] == [
            (wire.XS_WATCH, REPLAY_REQ_ID, wire.strings("device", "dev")),
            (wire.XS_WATCH, REPLAY_REQ_ID, wire.strings("control/shutdown", "c"))]
        # The new store acks them (one refused), fires their first events, and then
        # answers a request of the guest's own.
        await asyncio.get_running_loop().sock_sendall(daemon2, b"".join((
            wire.pack(wire.XS_WATCH, REPLAY_REQ_ID, 0, b"OK\0"),
            wire.watch_event("device", "dev"),
            wire.pack(wire.XS_ERROR, REPLAY_REQ_ID, 0, b"E2BIG\0"),
            wire.watch_event("control/shutdown", "c"),
            wire.pack(wire.XS_READ, 9, 0, b"value"))))
        got: list[tuple[wire.Header, bytes]] = []
        for _ in range(1000):  # until the proxy has moved all three into the ring
            got += messages(guest_receive(page))
            if len(got) >= 3:
                break
            await asyncio.sleep(0.001)
        assert [(h.type, h.req_id) for h, _ in got] == [
            (wire.XS_WATCH_EVENT, 0), (wire.XS_WATCH_EVENT, 0), (wire.XS_READ, 9)]
        await proxy.close()
        daemon2.close()

    asyncio.run(scenario())


def test_a_new_incarnation_forgets_the_old_ones_watches() -> None:
    async def scenario() -> None:
        daemon, proxy, page = await attached_proxy()
        guest_send(page, wire.pack(wire.XS_WATCH, 1, 0, wire.strings("device", "dev")))
        proxy.kick()
        await read_daemon_side(daemon, 1)
        await asyncio.get_running_loop().sock_sendall(daemon, wire.pack(wire.XS_WATCH, 1, 0, b"OK\0"))
        await guest_reads_until(page, proxy, 1)
        assert list(proxy.watches) == [(b"device", b"dev")]
        proxy.attach(RingTransport(memoryview(bytearray(4096))))  # a restart of the guest
        assert proxy.watches == {}
        await proxy.close()
        daemon.close()

    asyncio.run(scenario())




def test_a_guest_that_writes_on_gets_all_its_requests_through(monkeypatch) -> None:
    """RingTransport takes READ_ROUNDS passes per call; a guest still writing then (it
    sends no event: xb_write notifies only when we had caught up) is read again soon."""
    from xenopus.xen.xenstore.ring import READ_ROUNDS

    async def scenario() -> None:
        daemon, proxy, page = await attached_proxy()
        copy = shared.ring_read
        more = READ_ROUNDS + 4  # requests the guest writes while we copy

        def guest_writes_again(*args):
            nonlocal more
            data = copy(*args)
            if more:
                more -= 1
                guest_send(page, wire.pack(wire.XS_READ, 100 + more, 0, b"/a\0"))
            return data

        monkeypatch.setattr(shared, "ring_read", guest_writes_again)
        guest_send(page, wire.pack(wire.XS_READ, 1, 0, b"/a\0"))
        proxy.kick()  # the one event: for the first request
        sent = await read_daemon_side(daemon, READ_ROUNDS + 5)
        assert [h.req_id for h, _ in sent] == [1, *range(100 + READ_ROUNDS + 3, 99, -1)]
        await proxy.close()
        daemon.close()

    asyncio.run(scenario())


# --- a guest that does not read: the bounded thing ------------------------------------


class Daemon:
    """The daemon's XenStoreServer serving domain 1's guest stream to a StoreProxy over
    the socket pair the daemon makes (`domain_stream_pair`), all on this loop."""

    def __init__(self) -> None:
        self.store = Store()
        self.dom0 = self.store.connect(0, lambda p, t: None)
        self.store.mkdir(self.dom0, "/local/domain/1/device")
        self.store.set_perms(self.dom0, "/local/domain/1", ["n1"])
        self.store.set_perms(self.dom0, "/local/domain/1/device", ["n0", "r1"])
        self.server = XenStoreServer(self.store)
        self.page = memoryview(bytearray(4096))
        self.ring = RingTransport(self.page)
        self.kicks = 0

    async def start(self) -> StoreProxy:
        ours, theirs = domain_stream_pair()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=DOMAIN_STREAM_LIMIT)
        self.serving = asyncio.create_task(self.server.attach_domain(1, reader, writer))
        self.proxy = StoreProxy(asyncio.get_running_loop(), theirs)
        await self.proxy.start()
        self.proxy.attach(self.ring, self._notified)
        return self.proxy

    def _notified(self) -> None:
        self.kicks += 1

    async def stop(self) -> None:
        await self.proxy.close()
        self.serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self.serving


async def settle(rounds: int = 300) -> None:
    """Let the loop run what is ready (socket reads and writes included), many times."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def ring_space(page: memoryview) -> int:
    return SIZE - (shared.load(page, IFACE.req_prod.offset, 4)
                   - shared.load(page, IFACE.req_cons.offset, 4))


async def read_until_reply(d: Daemon, req_id: int) -> tuple[list[tuple[wire.Header, bytes]], bytes]:
    """The guest reads (and kicks) until the reply to req_id; what came before it."""
    got: list[tuple[wire.Header, bytes]] = []
    data = b""
    for _ in range(100000):
        data += guest_receive(d.page)
        d.proxy.kick()
        await asyncio.sleep(0)
        complete = _complete(data)
        for i, (head, body) in enumerate(complete):
            if head.type != wire.XS_WATCH_EVENT and head.req_id == req_id:
                return got + complete[:i], body
        if complete:
            data = data[sum(wire.HEADER_SIZE + h.len for h, _ in complete):]
            got += complete
    raise AssertionError(f"no reply to request {req_id}")


def test_a_guest_that_never_reads_its_watch_events_is_bounded_not_cut_off(caplog) -> None:
    """A hostile guest sets watches, has a flood of events fired at it and reads none.
    Xen's xenstored drops the events past the domain's quota (send_event) and keeps the
    connection; so do we: the ring is not broken, the domain process holds no more than
    its small backlog, the daemon no more than the domain's memory quota, and once the
    guest reads again it is served."""
    async def scenario() -> None:
        d = Daemon()
        await d.start()
        token = b"t" * 800  # a message fits the 1 KiB ring whole
        for i in range(10):  # distinct tokens: no event is a duplicate of another
            guest_send(d.page, wire.pack(wire.XS_WATCH, i, 0, b"device\0%s%03d\0" % (token, i)))
            d.proxy.kick()
            await read_until_reply(d, i)
        for i in range(600):  # 6000 events, ~5 MB, for a guest that reads none
            d.store.write(d.dom0, f"/local/domain/1/device/n{i:04}", b"")
            await asyncio.sleep(0)
        await settle()
        assert not d.ring.broken
        assert shared.load(d.page, IFACE.error.offset, 4) == wire.XENSTORE_ERROR_NONE
        assert d.ring.pending <= 2 * PROXY_BACKLOG  # the domain process's share
        assert d.store.memory(1) <= d.store.quota.memory  # the daemon's, charged to it
        assert "not reading its watch events" in caplog.text
        # It reads again: a request of its own is answered, after fewer events than fired.
        d.store.write(d.dom0, "/local/domain/1/device/hello", b"world")
        guest_send(d.page, wire.pack(wire.XS_READ, 77, 0, b"device/hello\0"))
        d.proxy.kick()
        events, body = await read_until_reply(d, 77)
        assert body == b"world"
        assert 0 < len(events) < 6000
        assert all(h.type == wire.XS_WATCH_EVENT for h, _ in events)
        assert not d.ring.broken
        await d.stop()

    asyncio.run(scenario())


def test_a_guest_that_never_reads_its_replies_fills_its_own_ring() -> None:
    """Requests sent as fast as the ring takes them, no reply read: the daemon stops
    reading them at the outstanding-replies quota, the proxy then stops consuming the
    ring (the guest sees it full, as under Xen), and its buffer toward the daemon stays
    small. Read again, every request is answered in order: nothing was dropped."""
    async def scenario() -> None:
        d = Daemon()
        await d.start()
        sent = 0
        request = wire.pack(wire.XS_READ, 0, 0, b"device\0")
        for _ in range(200):
            while ring_space(d.page) >= len(request):
                guest_send(d.page, wire.pack(wire.XS_READ, sent, 0, b"device\0"))
                sent += 1
            d.proxy.kick()
            await settle(10)
        assert ring_space(d.page) < len(request)  # the guest's ring stays full
        writer = d.proxy._writer
        assert writer is not None
        assert writer.transport.get_write_buffer_size() <= PROXY_BACKLOG + wire.HEADER_SIZE + 4096
        assert sent < 2000  # it could not send without limit
        assert not d.ring.broken
        replies = []
        data = b""
        for _ in range(100000):
            if len(replies) == sent:
                break
            data += guest_receive(d.page)
            d.proxy.kick()
            await asyncio.sleep(0)
            complete = _complete(data)
            data = data[sum(wire.HEADER_SIZE + h.len for h, _ in complete):]
            replies += [h.req_id for h, _ in complete]
        assert replies == list(range(sent))
        await d.stop()

    asyncio.run(scenario())


# --- a daemon killed with requests in flight --------------------------------------------


def test_requests_the_dead_daemon_left_unanswered_are_answered_once_by_the_next() -> None:
    """xs_wire.h: every request gets one reply, in order. The daemon dies having read a
    write in a transaction and a read, and having sent half a reply; the guest reads again
    while no daemon is there. The restarted daemon (its store restored) answers the reads,
    in order; the write in the dead daemon's transaction is answered EAGAIN (xenbus starts
    the transaction again) and never applied; the half reply never reaches the guest; the
    guest's watch is set again and fires. A transaction the new daemon numbers as the dead
    one was is renumbered for the guest, so the dead one's number stays dead."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        daemon1, proxy, page = await attached_proxy()

        async def ask(req_id: int, type_: int, payload: bytes, tx: int = 0) -> None:
            guest_send(page, wire.pack(type_, req_id, tx, payload))
            proxy.kick()
            head, _ = (await read_daemon_side(daemon1, 1))[0]
            assert head.req_id == req_id

        await ask(1, wire.XS_WATCH, wire.strings("device", "w"))
        await loop.sock_sendall(daemon1, wire.pack(wire.XS_WATCH, 1, 0, b"OK\0"))
        await guest_reads_until(page, proxy, 1)
        await ask(2, wire.XS_TRANSACTION_START, b"\0")
        await loop.sock_sendall(daemon1, wire.pack(wire.XS_TRANSACTION_START, 2, 0, b"1\0"))
        await guest_reads_until(page, proxy, 2)
        guest_send(page, wire.pack(wire.XS_WRITE, 3, 1, b"device/x\0new"))
        guest_send(page, wire.pack(wire.XS_READ, 4, 0, b"device/x\0"))
        proxy.kick()
        assert [h.req_id for h, _ in await read_daemon_side(daemon1, 2)] == [3, 4]
        await loop.sock_sendall(daemon1, wire.pack(wire.XS_WRITE, 3, 1, b"OK\0")[:10])
        daemon1.close()  # killed: its half reply and the read's never come
        assert proxy._task is not None
        await proxy._task  # the proxy has seen the stream end
        guest_send(page, wire.pack(wire.XS_READ, 5, 0, b"device/x\0"))
        proxy.kick()
        assert guest_receive(page) == b""  # no daemon: the request waits in the ring

        store = Store()  # the restarted daemon's, restored
        dom0 = store.connect(0, lambda p, t: None)
        store.write(dom0, "/local/domain/1/device/x", b"old")
        for path in ("/local/domain/1/device", "/local/domain/1/device/x"):
            store.set_perms(dom0, path, ["n1"])  # the guest's own
        server = XenStoreServer(store)
        ours, theirs = domain_stream_pair()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=DOMAIN_STREAM_LIMIT)
        serving = asyncio.create_task(server.attach_domain(1, reader, writer))
        await proxy.reconnect(theirs)
        got = await guest_reads_until(page, proxy, 5)
        replies = [(h.type, h.req_id, h.tx_id, body) for h, body in got
                   if h.type != wire.XS_WATCH_EVENT]
        assert replies == [(wire.XS_ERROR, 3, 1, b"EAGAIN\0"), (wire.XS_READ, 4, 0, b"old"),
                           (wire.XS_READ, 5, 0, b"old")]
        assert (wire.XS_WATCH_EVENT, b"device\0w\0") in [(h.type, b) for h, b in got]
        assert store.read(dom0, "/local/domain/1/device/x") == b"old"

        # The guest starts its transaction again: the new store's first is number 1, the
        # dead one's, which the guest may still name; it is number 2 to the guest.
        guest_send(page, wire.pack(wire.XS_TRANSACTION_START, 7, 0, b"\0"))
        got = await guest_reads_until(page, proxy, 7)
        for req_id, type_, tx, payload in ((8, wire.XS_WRITE, 2, b"device/x\0new"),
                                           (9, wire.XS_TRANSACTION_END, 1, b"T\0"),
                                           (10, wire.XS_TRANSACTION_END, 2, b"T\0")):
            guest_send(page, wire.pack(type_, req_id, tx, payload))
        got += await guest_reads_until(page, proxy, 10)
        assert [(h.type, h.req_id, h.tx_id, body) for h, body in got
                if h.type != wire.XS_WATCH_EVENT] == [
            (wire.XS_TRANSACTION_START, 7, 0, b"2\0"), (wire.XS_WRITE, 8, 2, b"OK\0"),
            (wire.XS_ERROR, 9, 1, b"EAGAIN\0"), (wire.XS_TRANSACTION_END, 10, 2, b"OK\0")]
        assert store.read(dom0, "/local/domain/1/device/x") == b"new"
        await proxy.close()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await serving

    asyncio.run(scenario())
