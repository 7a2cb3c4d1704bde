"""A domain process's end of the daemon's interdomain broker: event channels and grant
copies between two xenopus domains.

Domain processes never talk to each other: everything goes through the daemon over a
SOCK_SEQPACKET pair made at spawn (one JSON message per datagram, file descriptors beside
it with SCM_RIGHTS; `xenopus.toolstack.broker` is the daemon's side).

* An interdomain channel is a pair of eventfds. Each process reads its own (`fd_in`,
  which raises its port: `EventChannels.remote_notify`) and holds the other's (`Wire`,
  written when its guest sends). The daemon names both ends (a process cannot claim
  another domid) and numbers the pair (a *link*).
* A foreign grant table is the granting domain's own table over its memory memfds,
  mapped here on first use (`foreign`); the granting process pushes its grant-frame
  locations when they change, and the daemon tells us to drop the view when it goes. A
  grant our guest maps (GNTTABOP_map_grant_ref) is a memory slot over its own mapping of
  the granter's memfd, so it outlives the view, as a mapped page outlives its granter on
  Xen until it is unmapped.

`bind` and `foreign` run on vCPU threads inside a hypercall and wait for the daemon with
a timeout: a dead or stuck peer costs the guest -ESRCH / GNTST_bad_domain, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import stat
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from xenopus import ipc
from xenopus.memory import GuestMemory
from xenopus.memory.guest import MemoryRegion
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.grant import GrantTable

log = logging.getLogger("xenopus.interdomain")

T = TypeVar("T")

REQUEST_TIMEOUT = 4.0  # seconds; the daemon gives the peer less (toolstack.broker)
MAX_MESSAGE = 1 << 16
MAX_FDS = 8


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
    """One datagram; False if it could not go (peer gone or not reading: never blocks)."""
    data = ipc.encode(msg)
    try:
        if fds:
            socket.send_fds(sock, [data], fds, socket.MSG_DONTWAIT)
        else:
            sock.send(data, socket.MSG_DONTWAIT)
    except (BrokenPipeError, ConnectionResetError):
        return False  # the other side has gone (a process ending): nobody to tell
    except OSError as e:
        log.warning("interdomain message %s not sent: %s", msg.get("op", "reply"), e)
        return False
    return True


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]] | None:
    """The next datagram as (message or None if malformed, fds); None when none is
    waiting; ({"op": "eof"}, []) at end of stream."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return {"op": "eof"}, []
    if not data and not fds:
        return {"op": "eof"}, []
    try:
        msg: dict[str, Any] | None = ipc.decode(data)
    except ValueError:
        msg = None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        msg = None
    return msg, fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Wire:
    """The far end's eventfd: written from any vCPU thread, closed from the loop. The lock
    keeps a write from landing on a descriptor number already reused."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.Lock()

    def send(self) -> None:
        with self._lock:
            if self.fd >= 0:
                with contextlib.suppress(BlockingIOError):  # counter full: already raised
                    os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


@dataclass
class Link:
    """One interdomain event channel's link to the peer domain's process."""

    id: int
    port: int
    fd_in: int
    wire: Wire
    rdom: int = 0


@dataclass
class _Attached:
    """The current incarnation's Xen state (XenGuest)."""

    evtchn: EventChannels
    grants: GrantTable
    memory: GuestMemory
    views: dict[int, GrantTable] = field(default_factory=dict)


class InterdomainPort:
    """This process's broker client; implements evtchn's `InterdomainBroker`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, domid: int,
                 timeout: float = REQUEST_TIMEOUT):
        self.loop = loop
        self.sock = sock
        self.domid = domid
        self.timeout = timeout
        self.links: dict[int, Link] = {}
        self.cur: _Attached | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._files: dict[int, asyncio.Future[list[int]]] = {}  # handed over by the daemon
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    # -- incarnations ------------------------------------------------------------------
    def attach(self, evtchn: EventChannels, grants: GrantTable, memory: GuestMemory) -> None:
        with self._lock:
            self.cur = _Attached(evtchn, grants, memory)

    def detach(self) -> None:
        """The incarnation ends: every link and view of it goes, here and in the daemon."""
        with self._lock:
            cur, self.cur = self.cur, None
            links, self.links = list(self.links.values()), {}
        for view in cur.views.values() if cur else ():
            _close_fds_of(view)
        self._call(self._reset, links)

    def _reset(self, links: list[Link]) -> None:
        for link in links:
            self._drop_link(link)
        send(self.sock, {"op": "reset"})

    def shutdown(self) -> None:
        """The domain process ends."""
        self.detach()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        for files in self._files.values():
            if files.done() and not files.cancelled():
                close_fds(files.result())

    def reconnect(self, sock: socket.socket) -> None:
        """A restarted daemon's broker end replaces the lost daemon's (on the loop). Our
        links' eventfds never went through the daemon and still work; the new broker is
        told which links we hold and whose memory we view (`rejoin`), and re-makes each
        link whose other end names it too (toolstack/broker.py)."""
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fut in self._pending.values():  # asked of the lost daemon: never answered
            if not fut.done():
                fut.set_result(({"rc": -abi.XEN_ESRCH}, []))
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)
        with self._lock:
            links = [[link.id, link.port, link.rdom] for link in self.links.values()]
            views = list(self.cur.views) if self.cur is not None else []
        send(sock, {"op": "rejoin", "links": links, "views": views})

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run on the loop: now if we are its thread, else soon."""
        if self._on_loop():
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the process ends
                self.loop.call_soon_threadsafe(fn, *args)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # -- requests to the daemon (from vCPU threads) ------------------------------------
    async def _request(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future = self.loop.create_future()
        self._pending[seq] = fut
        try:
            if not send(self.sock, {**msg, "seq": seq}, fds):
                return {"rc": -abi.XEN_ESRCH}, []
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            log.warning("d%d: the daemon did not answer %s", self.domid, msg.get("op"))
            return {"rc": -abi.XEN_ESRCH}, []
        finally:
            self._pending.pop(seq, None)

    def _blocking(self, coro: Coroutine[Any, Any, T], unreachable: T) -> T:
        """Run `coro` on the loop and wait for it (from a vCPU thread); `unreachable` if
        the loop is ours, gone or stuck."""
        if self._on_loop():
            coro.close()
            return unreachable  # waiting here would stall the loop we need
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout + 1.0)
        except Exception:  # noqa: BLE001 - loop gone or stuck: the peer is unreachable
            return unreachable

    def bind(self, local_domid: int, local_port: int, remote_domid: int,
             remote_port: int) -> Callable[[], None] | int:
        """EVTCHNOP_bind_interdomain to another domain (called by EventChannels)."""
        got = self._blocking(self._bind(local_port, remote_domid, remote_port), -abi.XEN_ESRCH)
        if isinstance(got, int):
            return got
        with self._lock:
            if self.links.get(got.id) is not got:
                return -abi.XEN_ESRCH  # the peer went away while we were binding
        return got.wire.send

    async def _bind(self, port: int, rdom: int, rport: int) -> Link | int:
        """On the loop, so that the link is known before any `unlink` for it is read."""
        fd_in = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with self._lock:
            cur = self.cur
        reply, fds = await self._request({"op": "bind", "port": port, "rdom": rdom, "rport": rport},
                                         [fd_in])
        rc = reply.get("rc")
        if rc != 0 or len(fds) != 1 or not isinstance(reply.get("link"), int):
            close_fds([fd_in, *fds])
            if rc == 0 and isinstance(reply.get("link"), int):
                send(self.sock, {"op": "close", "link": reply["link"]})
            return rc if isinstance(rc, int) and rc < 0 else -abi.XEN_EINVAL
        link = Link(reply["link"], port, fd_in, Wire(fds[0]), rdom)
        with self._lock:
            current = cur is not None and self.cur is cur
            if current:
                self.links[link.id] = link
        if not current:  # the incarnation ended while we asked
            self._drop_link(link, tell=True)
            return -abi.XEN_ESRCH
        self._watch(link)
        return link

    def foreign(self, domid: int) -> GrantTable | None:
        """`domid`'s grant table over its memory, for GNTTABOP_copy (GrantTable.foreign)."""
        with self._lock:
            cur = self.cur
            if cur is None or domid >= abi.DOMID_FIRST_RESERVED:
                return None
            view = cur.views.get(domid)
        if view is not None:
            return view
        reply, fds = self._blocking(self._request({"op": "view", "dom": domid}, []),
                                    ({"rc": -abi.XEN_ESRCH}, []))
        try:
            view = self._build_view(domid, reply, fds) if reply.get("rc") == 0 else None
        finally:
            close_fds(fds)
        if view is None:
            return None
        with self._lock:
            if self.cur is not cur:
                return None
            return cur.views.setdefault(domid, view)

    def publish_frames(self, layout: dict[str, Any]) -> None:
        """Our grant frames moved (add_to_physmap) or the table changed version: the
        daemon tells whoever views them."""
        self._call(send, self.sock, {"op": "frames", **layout})

    # -- links -------------------------------------------------------------------------
    def _watch(self, link: Link) -> None:
        self.loop.add_reader(link.fd_in, self._fired, link)

    def _fired(self, link: Link) -> None:
        _take_count(link.fd_in)
        with self._lock:
            cur = self.cur if self.links.get(link.id) is link else None
        if cur is not None:
            cur.evtchn.remote_notify(link.port)

    def _drop_link(self, link: Link, tell: bool = False) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(link.fd_in)
        close_fds([link.fd_in])
        link.wire.close()
        if tell:
            send(self.sock, {"op": "close", "link": link.id})

    def close(self, local_domid: int, local_port: int, remote_domid: int,
                   remote_port: int) -> None:
        """EVTCHNOP_close (or reset) of our end: the other side's port goes unbound."""
        with self._lock:
            link = next((k for k in self.links.values() if k.port == local_port), None)
            if link is not None:
                del self.links[link.id]
        if link is not None:
            link.wire.close()  # no send from here on, whichever thread
            self._call(self._drop_link, link, True)

    # -- from the daemon (on the loop) ---------------------------------------------------
    def _readable(self) -> None:
        while (got := receive(self.sock)) is not None:
            msg, fds = got
            if msg is None:
                close_fds(fds)
                continue
            if msg.get("op") == "eof":
                self.loop.remove_reader(self.sock.fileno())
                return
            try:
                self._handle(msg, fds)
            except Exception:  # noqa: BLE001 - a bad message must not take the domain down
                log.exception("d%d: interdomain message failed", self.domid)
                close_fds(fds)

    def _handle(self, msg: dict[str, Any], fds: list[int]) -> None:
        if "re" in msg:
            fut = self._pending.get(msg["re"]) if isinstance(msg["re"], int) else None
            if fut is not None and not fut.done():
                fut.set_result((msg, fds))
            else:
                close_fds(fds)
                if msg.get("rc") == 0 and isinstance(msg.get("link"), int):
                    send(self.sock, {"op": "close", "link": msg["link"]})  # we gave up on it
            return
        op = msg.get("op")
        if op == "connect":
            self._connect(msg, fds)
            return
        if op == "files" and isinstance(msg.get("token"), int):
            slot = self._file_slot(msg["token"])
            if slot.done():
                close_fds(fds)  # a token handed over twice: the first stands
            else:
                slot.set_result(fds)
            return
        close_fds(fds)  # no other message carries descriptors
        if op == "unlink":
            self._unlink(msg.get("link"))
        elif op == "memory":
            self._memory(msg)
        elif op == "frames":
            self._frames(msg)
        elif op == "drop":
            with self._lock:
                view = self.cur.views.pop(msg.get("dom"), None) if self.cur else None  # type: ignore[arg-type]
            if view is not None:
                _close_fds_of(view)

    def _file_slot(self, token: int) -> asyncio.Future[list[int]]:
        slot = self._files.get(token)
        if slot is None:
            slot = self._files[token] = self.loop.create_future()
        return slot

    async def take_files(self, token: int, timeout: float | None = None) -> list[int]:
        """The open files the daemon handed over as `token` (`InterdomainBroker.hand_over`):
        the message carrying them and the control request naming them travel on two
        sockets, so either may come first; waited for `timeout` s (default: as long as
        any request). Ours to close from here on."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._file_slot(token)),
                                          timeout or self.timeout)
        except TimeoutError:
            raise ConnectionError(f"the daemon's files {token} never came") from None
        finally:
            self._files.pop(token, None)

    def _reply(self, msg: dict[str, Any], reply: dict[str, Any], fds: list[int] | None = None) -> None:
        send(self.sock, {**reply, "re": msg.get("seq")}, fds)

    def _connect(self, msg: dict[str, Any], fds: list[int]) -> None:
        """Domain `rdom` binds to our unbound `port` (the daemon vouches for `rdom`)."""
        port, rdom, rport, lid = (msg.get(k) for k in ("port", "rdom", "rport", "link"))
        with self._lock:
            cur = self.cur
        if (cur is None or len(fds) != 1 or lid in self.links
                or not all(isinstance(v, int) for v in (port, rdom, rport, lid))):
            close_fds(fds)
            self._reply(msg, {"rc": -abi.XEN_ESRCH if cur is None else -abi.XEN_EINVAL})
            return
        fd_in = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        link = Link(lid, port, fd_in, Wire(fds[0]), rdom)  # type: ignore[arg-type]
        rc = cur.evtchn.connect_remote(port, rdom, rport, link.wire.send)  # type: ignore[arg-type]
        if rc < 0:
            self._drop_link(link)
            self._reply(msg, {"rc": rc})
            return
        with self._lock:
            self.links[link.id] = link
        self._watch(link)
        self._reply(msg, {"rc": 0, "link": link.id}, [fd_in])

    def _unlink(self, lid: object) -> None:
        """The other end is gone (closed, its domain died or rebooted)."""
        with self._lock:
            link = self.links.pop(lid, None) if isinstance(lid, int) else None
            cur = self.cur
        if link is None:
            return
        # A send that reached our eventfd before the far end went counts, wherever the
        # loop reports it relative to this message: Xen's EVTCHNOP_send marks the port
        # pending at once, and closing the far end leaves it so (event_channel.c
        # evtchn_send, evtchn_close).
        sent = _take_count(link.fd_in)
        self._drop_link(link)
        if cur is not None:
            if sent:
                cur.evtchn.remote_notify(link.port)
            cur.evtchn.remote_closed(link.port)
            log.info("d%d: port %d: domain %d closed its end", self.domid, link.port, link.rdom)

    def _memory(self, msg: dict[str, Any]) -> None:
        """Our memory memfds and grant frames, for a domain about to copy our grants."""
        with self._lock:
            cur = self.cur
        if cur is None:
            self._reply(msg, {"rc": -abi.XEN_ESRCH})
            return
        regions = cur.memory.regions
        if any(r.private for r in regions):  # a clone's RAM: no memfd another process can map
            self._reply(msg, {"rc": -abi.XEN_EOPNOTSUPP})
            return
        self._reply(msg, {
            "rc": 0, "regions": [[r.gpa, r.size] for r in regions],
            **cur.grants.layout(),
        }, [r.fd for r in regions])

    def _frames(self, msg: dict[str, Any]) -> None:
        with self._lock:
            view = self.cur.views.get(msg.get("dom")) if self.cur else None  # type: ignore[arg-type]
        if view is not None:
            _set_frames(view, msg)

    # -- views -------------------------------------------------------------------------
    def _build_view(self, domid: int, reply: dict[str, Any], fds: list[int]) -> GrantTable | None:
        """Map another domain's memfds: checked against what they claim (a bad or short
        memfd would mean SIGBUS here), read-write, shared."""
        spans = reply.get("regions")
        if not isinstance(spans, list) or len(spans) != len(fds) or not fds:
            return None
        regions: list[MemoryRegion] = []
        try:
            for span, fd in zip(spans, fds, strict=True):
                gpa, size = span
                st = os.fstat(fd)
                if (not isinstance(gpa, int) or not isinstance(size, int) or size <= 0
                        or not stat.S_ISREG(st.st_mode) or st.st_size < size):
                    raise ValueError(f"d{domid}: region {span} does not match its memfd")
                m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                # The region keeps a descriptor: GNTTABOP_map_grant_ref maps a page of
                # it into our guest (GuestMemory.backing) with a mapping of its own.
                regions.append(MemoryRegion(gpa, size, os.dup(fd), m))
            memory = GuestMemory(regions)
        except (ValueError, TypeError, OSError) as e:
            log.warning("d%d: no view of d%d: %s", self.domid, domid, e)
            for r in regions:
                r.close()
            return None
        view = GrantTable(domid, memory)
        _set_frames(view, reply)
        log.info("d%d: mapped d%d's memory for grant copies", self.domid, domid)
        return view


def _close_fds_of(view: GrantTable) -> None:
    """A dropped view's descriptors (its mappings go with their last user; pages our guest
    has mapped from it keep mappings of their own)."""
    for region in view.memory.regions:
        if region.fd >= 0:
            os.close(region.fd)
            region.fd = -1


def _take_count(fd: int) -> bool:
    """Read and reset an eventfd: True if it had been written since it was last read."""
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False


def _set_frames(view: GrantTable, msg: dict[str, Any]) -> None:
    """Frame locations (and the table's version) from a peer: GrantTable.apply_layout."""
    view.apply_layout(msg)
