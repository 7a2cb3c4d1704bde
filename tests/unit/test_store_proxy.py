"""The domain process's XenStore ring proxy (domain/xenguest.StoreProxy): a guest's
watches survive a daemon restart, set again on the new daemon's store with their
replies kept from the guest (which asked none)."""

from __future__ import annotations

import asyncio
import socket

from xenopus.domain.xenguest import REPLAY_REQ_ID, StoreProxy
from xenopus.memory import shared
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import RingTransport

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


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, theirs


def test_the_guests_watches_are_set_again_on_a_restarted_daemon() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        daemon1, end1 = pair()
        proxy = StoreProxy(loop, end1)
        await proxy.start()
        page = memoryview(bytearray(4096))
        proxy.attach(RingTransport(page))
        for type_, req_id, payload in ((wire.XS_WATCH, 1, wire.strings("device", "dev")),
                                       (wire.XS_WATCH, 2, wire.strings("/a", "t2")),
                                       (wire.XS_UNWATCH, 3, wire.strings("/a", "t2")),
                                       (wire.XS_WATCH, 4, wire.strings("control/shutdown", "c"))):
            guest_send(page, wire.pack(type_, req_id, 0, payload))
        proxy.kick()
        sent = await read_daemon_side(daemon1, 4)
        assert [h.req_id for h, _ in sent] == [1, 2, 3, 4]  # passed through as they were
        daemon1.close()  # the daemon dies

        daemon2, end2 = pair()
        await proxy.reconnect(end2)
        replayed = await read_daemon_side(daemon2, 2)
        assert [(h.type, h.req_id, body) for h, body in replayed] == [
            (wire.XS_WATCH, REPLAY_REQ_ID, wire.strings("device", "dev")),
            (wire.XS_WATCH, REPLAY_REQ_ID, wire.strings("control/shutdown", "c"))]
        # The new store acks them (one refused), fires their first events, and then
        # answers a request of the guest's own.
        await loop.sock_sendall(daemon2, b"".join((
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
        loop = asyncio.get_running_loop()
        daemon, end = pair()
        proxy = StoreProxy(loop, end)
        await proxy.start()
        page = memoryview(bytearray(4096))
        proxy.attach(RingTransport(page))
        guest_send(page, wire.pack(wire.XS_WATCH, 1, 0, wire.strings("device", "dev")))
        proxy.kick()
        await read_daemon_side(daemon, 1)
        assert list(proxy.watches) == [(b"device", b"dev")]
        proxy.attach(RingTransport(memoryview(bytearray(4096))))  # a restart of the guest
        assert proxy.watches == {}
        await proxy.close()
        daemon.close()

    asyncio.run(scenario())




def test_a_guest_that_writes_on_gets_all_its_requests_through(monkeypatch) -> None:
    """RingTransport takes READ_ROUNDS passes per call; a guest still writing then (it
    sends no event: xb_write notifies only when we had caught up) is read again soon."""
    from xenopus.xen.xenstore.server import READ_ROUNDS

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        daemon, end = pair()
        proxy = StoreProxy(loop, end)
        await proxy.start()
        page = memoryview(bytearray(4096))
        proxy.attach(RingTransport(page))
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
