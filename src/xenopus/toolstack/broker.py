"""The daemon's interdomain broker: event channels and grant views between two domains.

Each domain process has a SOCK_SEQPACKET pair to the daemon, made at spawn
(`xenopus.domain.interdomain_port` is the other side, and describes the protocol). The daemon
is the only party that knows which process is which domain: it stamps every request with
the sender's domid, so the permission checks in the peer (`connect_remote`: the port must
be unbound *for this domain*, as alloc_unbound's remote_dom said; grant entries naming the
copying domain) hold against a lying process too. It never waits on a domain for long:
a peer that does not answer within `PEER_TIMEOUT` costs the requester -ESRCH.

Links (a bound pair of ports) and views (who has mapped whose memory) are tracked here so
that when a domain's incarnation ends or its process dies, the other ends are told: their
ports go back to unbound, their views of its memory are dropped.

A restarted daemon learns them again from the domains it adopts: each process, handed a
new pair, says which links it holds (number, port, peer) and whose memory it views
(`rejoin`). A link is re-made when both ends name it alike; an end whose peer does not
(its domain was lost with the old daemon, or lies) is told to unlink, as when a peer
dies. Binds wait until every adopted domain has rejoined (`hold`/`release`), so a new
link cannot take an old one's number. The eventfds of a link pass between the domain
processes directly, so its events flow while no daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import Any

from xenopus.domain.interdomain_port import close_fds, receive, send
from xenopus.xen import abi

log = logging.getLogger("xenopus.daemon.interdomain")

PEER_TIMEOUT = 3.0  # seconds; less than the requester's own timeout


@dataclass(frozen=True)
class Link:
    a: int  # the domain that allocated the unbound port
    a_port: int
    b: int  # the domain that bound to it
    b_port: int

    def other(self, domid: int) -> int:
        return self.b if domid == self.a else self.a


class InterdomainBroker:
    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}
        self.links: dict[int, Link] = {}
        self.viewers: dict[int, set[int]] = {}  # domid -> domains holding a view of it
        self._next_link = 1
        # (domid, link) -> (port, peer): an adopted domain's end of a link whose other end
        # has not rejoined yet.
        self._halves: dict[tuple[int, int], tuple[int, int]] = {}
        self._open = asyncio.Event()  # binds may go ahead (cleared while adopting)
        self._open.set()
        self._seq = itertools.count(1)
        self._pending: dict[tuple[int, int], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- domains -----------------------------------------------------------------------
    def add(self, domid: int, sock: socket.socket) -> None:
        """A new domain process's end (made at spawn)."""
        self.remove(domid)
        sock.setblocking(False)
        self.socks[domid] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, domid, sock)

    def remove(self, domid: int) -> None:
        """The domain process is gone: its peers lose their links and views."""
        self._forget(domid)
        sock = self.socks.pop(domid, None)
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        for key in [k for k in self._pending if k[0] == domid]:
            fut = self._pending.pop(key)
            if not fut.done():
                fut.set_result(({"rc": -abi.XEN_ESRCH}, []))

    def _forget(self, domid: int) -> None:
        """The domain's incarnation ended: unlink its ports, drop views of its memory."""
        for lid, link in list(self.links.items()):
            if domid in (link.a, link.b):
                self._unlink(lid, domid)
        for viewer in self.viewers.pop(domid, set()):
            self._send(viewer, {"op": "drop", "dom": domid})
        for viewed in self.viewers.values():
            viewed.discard(domid)  # its views went with its incarnation

    # -- a restarted daemon --------------------------------------------------------------
    def hold(self) -> None:
        """Adoption begins: binds wait until `release`."""
        self._open.clear()

    def release(self) -> None:
        """Every domain is adopted: take the rejoins still unread, unlink the ends whose
        peer never named the link, and let binds go ahead."""
        for domid, sock in list(self.socks.items()):
            self._readable(domid, sock)
        for (domid, lid), (port, rdom) in self._halves.items():
            log.info("event channel: domain %d port %d: domain %d did not rejoin link %d",
                     domid, port, rdom, lid)
            self._send(domid, {"op": "unlink", "link": lid})
        self._halves.clear()
        self._open.set()

    def _rejoin(self, domid: int, msg: dict[str, Any]) -> None:
        """An adopted domain's links and views, as it held them under the lost daemon
        (only while adopting: a process may not rewrite them later)."""
        if self._open.is_set():
            log.warning("domain %d: a rejoin outside adoption; ignored", domid)
            return
        links, views = msg.get("links"), msg.get("views")
        for item in links if isinstance(links, list) else []:
            if not (isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) for v in item)):
                continue
            lid, port, rdom = item
            self._next_link = max(self._next_link, lid + 1)
            other = self._halves.get((rdom, lid))
            if other is not None and other[1] == domid and lid not in self.links:
                del self._halves[(rdom, lid)]
                self.links[lid] = Link(rdom, other[0], domid, port)
                log.info("event channel: domain %d port %d <-> domain %d port %d (link %d)"
                         " rejoined", rdom, other[0], domid, port, lid)
            elif rdom != domid and lid not in self.links and (domid, lid) not in self._halves:
                self._halves[(domid, lid)] = (port, rdom)  # until its peer rejoins
            else:  # the number is taken, or a link with itself: not a link of ours
                self._send(domid, {"op": "unlink", "link": lid})
        for dom in views if isinstance(views, list) else []:
            if isinstance(dom, int) and dom != domid:
                self.viewers.setdefault(dom, set()).add(domid)

    def _new_link(self) -> int:
        lid, self._next_link = self._next_link, self._next_link + 1
        return lid

    def _unlink(self, lid: int, by: int) -> None:
        link = self.links.pop(lid, None)
        if link is not None and by in (link.a, link.b):
            self._send(link.other(by), {"op": "unlink", "link": lid})

    def reserve(self) -> int:
        """A number for files to hand over later (`hand_over`'s `token`): a request can
        name them before they are ready (a clone's image still being checked)."""
        return next(self._seq)

    def hand_over(self, domid: int, fds: list[int], token: int | None = None) -> int:
        """Give a domain process open files (a save image, a migration pipe): they go
        beside a numbered `files` message, and a control request names the number
        (`InterdomainPort.take_files`), a new one or `token` (`reserve`). This pair is the
        domain's one descriptor-carrying channel to the daemon. Our copies stay ours to
        close."""
        if token is None:
            token = next(self._seq)
        if not self._send(domid, {"op": "files", "token": token}, fds):
            raise ConnectionError(f"domain {domid} cannot be handed files")
        return token

    def _send(self, domid: int, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        sock = self.socks.get(domid)
        return sock is not None and send(sock, msg, fds)

    # -- messages ----------------------------------------------------------------------
    def _readable(self, domid: int, sock: socket.socket) -> None:
        while (got := receive(sock)) is not None:
            msg, fds = got
            if msg is not None and msg.get("op") == "eof":
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(sock.fileno())
                return  # the process is ending; `remove` follows from the daemon
            if msg is None or self.socks.get(domid) is not sock:
                close_fds(fds)
                continue
            try:
                self._handle(domid, msg, fds)
            except Exception:  # noqa: BLE001 - one bad message must not stop the daemon
                log.exception("domain %d: bad interdomain message", domid)
                close_fds(fds)

    def _handle(self, domid: int, msg: dict[str, Any], fds: list[int]) -> None:
        if "re" in msg:
            fut = self._pending.pop((domid, msg["re"]), None) if isinstance(msg["re"], int) else None
            if fut is not None and not fut.done():
                fut.set_result((msg, fds))
                return
            close_fds(fds)
            if msg.get("rc") == 0 and isinstance(msg.get("link"), int):
                # A connect we gave up on went through after all: undo it there.
                self._send(domid, {"op": "unlink", "link": msg["link"]})
            return
        op = msg.get("op")
        if op == "bind":
            self._spawn(self._bind(domid, msg, fds))
            return
        close_fds(fds)
        if op == "view":
            self._spawn(self._view(domid, msg))
        elif op == "close":
            if isinstance(msg.get("link"), int):
                self._unlink(msg["link"], domid)
        elif op == "frames":
            for viewer in self.viewers.get(domid, ()):
                self._send(viewer, {**msg, "dom": domid})
        elif op == "reset":
            self._forget(domid)
        elif op == "rejoin":
            self._rejoin(domid, msg)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, domid: int, msg: dict[str, Any], fds: list[int] | None = None
                   ) -> tuple[dict[str, Any], list[int]]:
        seq = next(self._seq)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[(domid, seq)] = fut
        try:
            if not self._send(domid, {**msg, "seq": seq}, fds):
                return {"rc": -abi.XEN_ESRCH}, []
            return await asyncio.wait_for(fut, PEER_TIMEOUT)
        except TimeoutError:
            log.warning("domain %d did not answer %s", domid, msg.get("op"))
            return {"rc": -abi.XEN_ESRCH}, []
        finally:
            self._pending.pop((domid, seq), None)

    def _reply(self, domid: int, msg: dict[str, Any], reply: dict[str, Any],
               fds: list[int] | None = None) -> bool:
        return self._send(domid, {**reply, "re": msg.get("seq")}, fds)

    async def _bind(self, domid: int, msg: dict[str, Any], fds: list[int]) -> None:
        """`domid` binds its new port to `rdom`'s unbound `rport` (EVTCHNOP_bind_interdomain)."""
        try:
            await self._open.wait()  # a restarted daemon: until every domain has rejoined
            port, rdom, rport = (msg.get(k) for k in ("port", "rdom", "rport"))
            if len(fds) != 1 or not all(isinstance(v, int) for v in (port, rdom, rport)):
                self._reply(domid, msg, {"rc": -abi.XEN_EINVAL})
                return
            if rdom == domid or rdom not in self.socks:
                self._reply(domid, msg, {"rc": -abi.XEN_ESRCH})
                return
            lid = self._new_link()
            reply, got = await self._ask(
                rdom, {"op": "connect", "port": rport, "rdom": domid, "rport": port, "link": lid}, fds)
        finally:
            close_fds(fds)
        try:
            rc = reply.get("rc")
            if rc != 0 or len(got) != 1:
                if rc == 0:
                    self._send(rdom, {"op": "unlink", "link": lid})
                self._reply(domid, msg, {"rc": rc if isinstance(rc, int) and rc < 0 else -abi.XEN_EINVAL})
                return
            self.links[lid] = Link(rdom, rport, domid, port)
            if not self._reply(domid, msg, {"rc": 0, "link": lid}, got):
                self._unlink(lid, domid)  # the binder is gone already
            else:
                log.info("event channel: domain %d port %d <-> domain %d port %d (link %d)",
                         rdom, rport, domid, port, lid)
        finally:
            close_fds(got)

    async def _view(self, domid: int, msg: dict[str, Any]) -> None:
        """`domid` wants `dom`'s memory memfds for grant copies. The grant entries decide
        what it may touch, as in Xen; the view only lets it look them up."""
        dom = msg.get("dom")
        if not isinstance(dom, int) or dom == domid or dom not in self.socks:
            self._reply(domid, msg, {"rc": -abi.XEN_ESRCH})
            return
        # Registered first: a frame move pushed while the answer is on its way reaches it.
        self.viewers.setdefault(dom, set()).add(domid)
        reply, fds = await self._ask(dom, {"op": "memory"})
        try:
            if reply.get("rc") != 0:
                self._reply(domid, msg, {"rc": reply.get("rc", -abi.XEN_ESRCH)})
                return
            keep = {k: reply[k] for k in ("regions", "frames", "nr_frames", "version",
                                          "status_frames") if k in reply}
            self._reply(domid, msg, {"rc": 0, **keep}, fds)
        finally:
            close_fds(fds)
