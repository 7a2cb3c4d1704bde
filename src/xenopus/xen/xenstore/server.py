"""Serving the store: the Unix socket (dom0 tools), per-domain streams, and guest rings.

The socket is xenstored's. Who connects is read from the socket (SO_PEERCRED) and
classified by the daemon (`PeerScope`): host tools are dom0 (privileged, the whole
store); a domain process's backends are dom0 scoped to that one domain, so a compromised
domain process reaches its own frontend's home and its own backend directories and nothing
else (Xen reaches the same with a driver domain's own XenStore permissions); anyone else
is refused. A domain's guest traffic reaches the daemon over a stream the daemon made for
it (`attach_domain`), so the daemon, not the domain process, decides which domain is
talking. The guest side, which moves bytes between a `xenstore_domain_interface` page
and that stream, is ring.py's `RingTransport`; who a client is, peer.py's `peer_of`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import NamedTuple

from xenopus.devices.ratelimit import LimitedLog

from . import wire
from .peer import Peer, peer_of
from .store import QUOTA_DESCRIPTIONS, QUOTA_NAMES, Connection, Store, is_below
from .wire import XsError

log = logging.getLogger(__name__)

OK = wire.strings("OK")
# Requests we serve. XS_RESTRICT (dropped in Xen 4.9) answers ENOSYS, as do
# replies-only types sent as requests.
HANDLED = frozenset({
    wire.XS_CONTROL, wire.XS_GET_FEATURE, wire.XS_SET_FEATURE, wire.XS_GET_QUOTA,
    wire.XS_SET_QUOTA,
    wire.XS_DIRECTORY, wire.XS_READ, wire.XS_GET_PERMS, wire.XS_WATCH, wire.XS_UNWATCH,
    wire.XS_TRANSACTION_START, wire.XS_TRANSACTION_END, wire.XS_INTRODUCE, wire.XS_RELEASE,
    wire.XS_GET_DOMAIN_PATH, wire.XS_WRITE, wire.XS_MKDIR, wire.XS_RM, wire.XS_SET_PERMS,
    wire.XS_IS_DOMAIN_INTRODUCED, wire.XS_RESUME, wire.XS_SET_TARGET,
    wire.XS_RESET_WATCHES, wire.XS_DIRECTORY_PART,
})


# xenstored queues output for dom0 without limit (dom0 is exempt from every quota); a
# dom0 client that stops reading would grow the daemon without bound, so at this much
# queued output its connection is closed instead (libxenstore reports the lost socket).
PRIVILEGED_BACKLOG_MAX = 16 * 1024 * 1024
# xenstored's timeout_watch_event_msec (core.c, `-w watch-event=20`): a watch event an
# unprivileged domain has not read within this many seconds is dropped.
WATCH_EVENT_TIMEOUT = 20.0
# The send buffers of a domain's guest stream (the kernel doubles the value, and keeps a
# floor): what the guest has not read waits in the daemon's Outbox, where it is charged
# to the domain and its events are dropped past the quota, and what the daemon has not
# read waits in the guest's ring (domain/xenguest.StoreProxy), not in the kernel.
DOMAIN_STREAM_SNDBUF = 4096
# The daemon's read buffer of that stream (asyncio stops reading past twice this): one
# request of the largest size; the rest waits on the domain's side.
DOMAIN_STREAM_LIMIT = wire.HEADER_SIZE + wire.XENSTORE_PAYLOAD_MAX


def domain_stream_pair() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the domain process's end) of a domain's guest XenStore stream."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DOMAIN_STREAM_SNDBUF)
    return ours, theirs


class Queued(NamedTuple):
    message: bytes
    event: bool
    deadline: float | None  # an unprivileged domain's event: dropped if unread by then


class Outbox:
    """The messages queued for one connection, written in order as its peer reads them.

    Each is charged to the connection's domain until the socket has taken it
    (xenstored's send_reply/send_event → domain_memory_add). For an unprivileged domain,
    as xenstored's send_event() does, a watch event identical to one still queued is
    dropped, and so is one that would take the domain over its memory quota; events it
    has not read within WATCH_EVENT_TIMEOUT go (check_event_timeout()); its requests are
    not read while `outstanding` replies are unread or while it is at its memory quota
    with output still queued (xenstored's domain_can_read()).
    """

    def __init__(self, store: Store, conn: Connection, writer: asyncio.StreamWriter) -> None:
        self.store, self.conn, self.writer = store, conn, writer
        self.queue: collections.deque[Queued] = collections.deque()
        self.replies = 0  # replies queued: xenstored's ACC_OUTST
        self.queued = 0  # bytes queued, all charged to the domain
        self.dropped = 0  # events dropped on the memory quota
        self._events: collections.Counter[bytes] = collections.Counter()
        self._writing = False  # queue[0] is in the socket's hands
        self._loop = asyncio.get_running_loop()
        self._more = asyncio.Event()  # something was queued
        self._sent = asyncio.Event()  # something was written
        # Hand the socket one message at a time, so what the peer has not read is
        # counted here and not hidden in the transport's buffer.
        writer.transport.set_write_buffer_limits(high=0)

    def reply(self, message: bytes) -> None:
        self.store.charge_output(self.conn, len(message), check=False)
        self._queue(Queued(message, False, None))

    def event(self, message: bytes, special: bool) -> None:
        if self.writer.is_closing():
            return
        if not self.conn.privileged and not special and self._events[message]:
            return
        if not self.conn.privileged:
            self._expire()
        if not self.store.charge_output(self.conn, len(message), check=True):
            if not self.dropped:
                log.warning("xenstore: domain %d is not reading its watch events; dropping "
                            "events past its memory quota", self.conn.domid)
            self.dropped += 1
            return
        self._events[message] += 1
        deadline = None if self.conn.privileged else self._loop.time() + WATCH_EVENT_TIMEOUT
        self._queue(Queued(message, True, deadline))

    def _expire(self) -> None:
        """Drop the events past their deadline. Deadlines grow in queue order, so the
        expired events lead the queue (the few replies among them keep their place);
        the message being written stays."""
        now = self._loop.time()
        writing = self.queue.popleft() if self._writing and self.queue else None
        replies: list[Queued] = []
        while self.queue:
            item = self.queue[0]
            if item.event and item.deadline is not None and item.deadline > now:
                break
            self.queue.popleft()
            if item.event:
                self._release(item)
            else:
                replies.append(item)
        self.queue.extendleft(reversed(replies))
        if writing is not None:
            self.queue.appendleft(writing)

    def _queue(self, item: Queued) -> None:
        self.queue.append(item)
        self.queued += len(item.message)
        self.replies += not item.event
        self._more.set()
        if self.conn.privileged and self.queued > PRIVILEGED_BACKLOG_MAX:
            log.warning("xenstore: a dom0 client has %d bytes unread; closing it", self.queued)
            self.writer.close()

    def _blocked(self) -> bool:
        quota = self.store.quota_of(self.conn.domid)  # its own, once introduced
        if not self.queue or self.conn.privileged or self.writer.is_closing():
            return False
        return bool(quota.outstanding and self.replies >= quota.outstanding
                    or self.store.stalled(self.conn))

    async def room(self) -> None:
        """Wait until the connection's next request may be read."""
        while self._blocked():
            self._sent.clear()
            await self._sent.wait()

    async def run(self) -> None:
        """Write queued messages until the connection goes (cancel to stop)."""
        try:
            while not self.writer.is_closing():
                if not self.queue:
                    self._more.clear()
                    await self._more.wait()
                    continue
                self._writing = True
                self.writer.write(self.queue[0].message)
                await self.writer.drain()
                self._writing = False
                self._release(self.queue.popleft())
                self._sent.set()
        except ConnectionError:
            self.writer.close()
        finally:
            self._sent.set()  # a request loop waiting for room sees the connection go

    def _release(self, item: Queued) -> None:
        """item has left the queue (sent or dropped): give back what it was charged."""
        self.queued -= len(item.message)
        self.store.output_sent(self.conn, len(item.message))
        if item.event:
            self._events[item.message] -= 1
            if not self._events[item.message]:
                del self._events[item.message]
        else:
            self.replies -= 1

    def close(self) -> None:
        """Release what is still queued from the domain's account."""
        while self.queue:
            self._release(self.queue.popleft())


# Requests only the unscoped dom0 (the toolstack) may make: they act on other domains.
UNSCOPED_ONLY = frozenset({wire.XS_INTRODUCE, wire.XS_RELEASE, wire.XS_RESUME,
                           wire.XS_SET_TARGET, wire.XS_CONTROL, wire.XS_SET_FEATURE,
                           wire.XS_GET_QUOTA, wire.XS_SET_QUOTA})
# CONTROL's commands (xenstored's control.c cmds[]) we serve, with their parameters as
# "help" lists them; the rest (log, logfile, memreport, live-update) are xenstored's own.
CONTROL_COMMANDS = {"check": "", "print": "<string>",
                    "quota": "[set <name> <val>|<domid>]", "help": ""}
# Requests whose first argument is a path.
PATH_FIRST = frozenset({wire.XS_READ, wire.XS_WRITE, wire.XS_DIRECTORY, wire.XS_DIRECTORY_PART,
                        wire.XS_GET_PERMS, wire.XS_SET_PERMS, wire.XS_MKDIR, wire.XS_RM,
                        wire.XS_WATCH, wire.XS_UNWATCH})


class Scope(NamedTuple):
    """What a Unix-socket client may reach: `domid` None is the whole store."""

    domid: int | None

    def allows(self, path: str) -> bool:
        """A scoped client's paths: the domain's home and its backend directories
        (`/local/domain/0/backend/<kind>/<domid>`, xenbus's layout)."""
        if self.domid is None:
            return True
        if is_below(path, f"/local/domain/{self.domid}"):
            return True
        parts = path.split("/")
        return (len(parts) >= 7 and parts[1:5] == ["local", "domain", "0", "backend"]
                and parts[6] == str(self.domid))


UNSCOPED = Scope(None)
# Classifies a client: its Scope, or None to refuse it.
PeerScope = Callable[[Peer], "Scope | None"]


class XenStoreServer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._log = LimitedLog(log)  # guests choose what they send

    async def serve_unix(self, path: str, classify: PeerScope | None = None) -> asyncio.AbstractServer:
        """Listen on path (what XENSTORED_PATH points at). Each client is dom0, scoped as
        `classify` says when it is given (None: refused)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            scope: Scope | None = UNSCOPED
            if classify is not None:
                scope = classify(peer_of(writer.get_extra_info("socket")))
            if scope is None:
                log.warning("xenstore: refused a client: %s", peer_of(writer.get_extra_info("socket")))
                writer.close()
                return
            await self._serve(0, reader, writer, scope)

        return await asyncio.start_unix_server(client, path=path)

    async def serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           scope: Scope) -> None:
        """Serve a dom0 client on a stream we made (not an accepted one, whose peer
        credentials would classify it), as `scope` says, until it closes."""
        await self._serve(0, reader, writer, scope)

    async def attach_domain(self, domid: int, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """Serve xsd_sockmsg traffic on a stream as domain domid, until it closes."""
        await self._serve(domid, reader, writer)

    async def _serve(self, domid: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, scope: Scope = UNSCOPED) -> None:
        loop = asyncio.get_running_loop()
        outbox: Outbox | None = None

        def deliver(path: str, token: str) -> None:
            # Deferred through the loop so a request's reply always precedes the events
            # it caused (xenstored acks XS_WATCH before the initial event), and so the
            # store may fire from any thread.
            if outbox is None:
                return
            message = wire.watch_event(path, token)
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            with contextlib.suppress(RuntimeError):  # loop already shut down
                (loop.call_soon if on_loop else loop.call_soon_threadsafe)(
                    outbox.event, message, path.startswith("@"))

        def close() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(writer.close)

        conn = self.store.connect(domid, deliver, close)
        if scope.domid is not None:  # a domain process's backends: that domain's quotas
            conn.bound_to = scope.domid
        outbox = Outbox(self.store, conn, writer)
        sender = asyncio.create_task(outbox.run())
        try:
            while True:
                await outbox.room()
                head = await reader.readexactly(wire.HEADER_SIZE)
                hdr = wire.unpack_header(head)
                if hdr.len > wire.XENSTORE_PAYLOAD_MAX:
                    log.warning("xenstore: domain %d sent a %d-byte message; dropping it",
                                domid, hdr.len)
                    break
                payload = await reader.readexactly(hdr.len)
                outbox.reply(self.dispatch(conn, hdr, payload, scope))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.store.disconnect(conn)
            sender.cancel()
            outbox.close()
            writer.close()

    def dispatch(self, conn: Connection, hdr: wire.Header, payload: bytes,
                 scope: Scope = UNSCOPED) -> bytes:
        """One request in, one whole reply message out; never raises."""
        try:
            body = self._handle(conn, hdr, payload, scope)
            if len(body) > wire.XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG", "reply too large")
            return wire.pack(hdr.type, hdr.req_id, hdr.tx_id, body)
        except XsError as err:
            return wire.error_reply(hdr.req_id, hdr.tx_id, err.name)
        except Exception:  # a bug must cost one request, not the daemon (nor flood its log)
            self._log.log(logging.ERROR, "xenstore: request type %d failed", hdr.type,
                          exc_info=True)
            return wire.error_reply(hdr.req_id, hdr.tx_id, "EINVAL")

    def _handle(self, conn: Connection, hdr: wire.Header, payload: bytes,
                scope: Scope = UNSCOPED) -> bytes:
        st, tx, t = self.store, hdr.tx_id, hdr.type
        if t not in HANDLED:
            raise XsError("ENOSYS", f"message type {t}")
        args = wire.parse_request(t, payload)
        if scope.domid is not None:
            if t in UNSCOPED_ONLY:
                raise XsError("EACCES", f"message type {t} is the toolstack's")
            if t in PATH_FIRST and not scope.allows(st.canonical(conn, args[0], special=True)):
                raise XsError("EACCES", f"{args[0][:64]!r} is outside domain {scope.domid}'s paths")
        if t == wire.XS_WRITE:
            path, value = args
            st.write(conn, path, value, tx)
            return OK
        if t == wire.XS_READ:
            return st.read(conn, args[0], tx)
        if t == wire.XS_DIRECTORY:
            return wire.strings(*st.directory(conn, args[0], tx))
        if t == wire.XS_DIRECTORY_PART:
            return st.directory_part(conn, args[0], _number(args[1]), tx)
        if t == wire.XS_GET_PERMS:
            return wire.strings(*(str(p) for p in st.get_perms(conn, args[0], tx)))
        if t == wire.XS_SET_PERMS:
            st.set_perms(conn, args[0], args[1:], tx)
            return OK
        if t == wire.XS_MKDIR:
            st.mkdir(conn, args[0], tx)
            return OK
        if t == wire.XS_RM:
            st.rm(conn, args[0], tx)
            return OK
        if t == wire.XS_WATCH:
            st.watch(conn, args[0], args[1])
            return OK
        if t == wire.XS_UNWATCH:
            st.unwatch(conn, args[0], args[1])
            return OK
        if t == wire.XS_TRANSACTION_START:
            return wire.strings(str(st.transaction_start(conn)))
        if t == wire.XS_TRANSACTION_END:
            if args[0] not in ("T", "F"):
                raise XsError("EINVAL", "transaction end wants T or F")
            st.transaction_end(conn, tx, args[0] == "T")
            return OK
        if t == wire.XS_INTRODUCE:
            st.introduce(conn, _number(args[0]), _number(args[1]), _number(args[2]))
            return OK
        if t == wire.XS_RELEASE:
            st.release(conn, _number(args[0]))
            return OK
        if t == wire.XS_GET_DOMAIN_PATH:
            return wire.strings(st.get_domain_path(_number(args[0])))
        if t == wire.XS_IS_DOMAIN_INTRODUCED:
            return wire.strings("T" if st.is_domain_introduced(_number(args[0])) else "F")
        if t == wire.XS_RESUME:
            st.resume(conn, _number(args[0]))
            return OK
        if t == wire.XS_SET_TARGET:
            st.set_target(conn, _number(args[0]), _number(args[1]))
            return OK
        if t == wire.XS_RESET_WATCHES:
            st.reset_watches(conn)
            return OK
        if t == wire.XS_GET_FEATURE:
            if len(args) > 1:
                raise XsError("EINVAL", "GET_FEATURE takes at most a domid")
            return wire.strings(str(st.get_feature(conn, _number(args[0]) if args else None)))
        if t == wire.XS_SET_FEATURE:
            st.set_feature(conn, _number(args[0]), _number(args[1]))
            return OK
        if t == wire.XS_GET_QUOTA:
            if len(args) > 2:
                raise XsError("EINVAL", "GET_QUOTA takes [[<domid>|]<quota>|]")
            domid = _number(args[0]) if len(args) == 2 else None
            return wire.strings(st.get_quota(conn, domid, args[-1] if args else None))
        if t == wire.XS_SET_QUOTA:
            if len(args) > 3:
                raise XsError("EINVAL", "SET_QUOTA takes [<domid>|]<quota>|<value>|")
            domid = _number(args[0]) if len(args) == 3 else None
            st.set_quota(conn, domid, args[-2], _number(args[-1]))
            return OK
        if t == wire.XS_CONTROL:
            return self._control(conn, args[0], args[1:])
        raise XsError("ENOSYS", f"message type {t}")

    def _control(self, conn: Connection, command: str, params: list[str]) -> bytes:
        """xenstored's do_control() (docs/misc/xenstore.txt CONTROL): dom0 only, an
        unknown command is EINVAL; replies are text or OK."""
        st = self.store
        if not conn.privileged:
            raise XsError("EACCES", "CONTROL is dom0's")
        if command not in CONTROL_COMMANDS:
            raise XsError("EINVAL", f"unknown control command {command[:32]!r}")
        if command == "help":
            return wire.strings("".join(f"{name:<15} {pars}\n"
                                        for name, pars in CONTROL_COMMANDS.items()))
        if command == "check":
            if params:
                raise XsError("EINVAL", "check takes no parameters")
            for problem in st.check():
                log.warning("xenstore check: %s", problem)
            return OK
        if command == "print":
            if len(params) != 1:
                raise XsError("EINVAL", "print takes one string")
            log.info("xenstore control: %s", params[0][:256])
            return OK
        # quota: the settings, "set <name> <val>" (the global value) or "<domid>"'s usage
        if not params:
            return wire.strings("Quota settings:\n" + "".join(
                f"{name:<17}: {st.get_quota(conn, None, name):>8} {descr}\n"
                for name, descr in QUOTA_DESCRIPTIONS.items()))
        if params[0] == "set":
            if len(params) != 3 or not wire.is_number(params[2]) or int(params[2]) < 1:
                raise XsError("EINVAL", "quota set <name> <value of at least 1>")
            st.set_quota(conn, None, params[1], int(params[2]))
            return OK
        if len(params) != 1:
            raise XsError("EINVAL", "quota [set <name> <val>|<domid>]")
        domid = _number(params[0])
        used = st.usage(domid)
        quota = st.quota_of(domid)
        return wire.strings(f"Domain {domid}:\n" + "".join(
            f"{name:<17}: {used.get(name, 0):>8} (quota {getattr(quota, name.replace('-', '_')):>8})\n"
            for name in QUOTA_NAMES))


def _number(text: str) -> int:
    if not wire.is_number(text) or len(text) > 10:
        raise XsError("EINVAL", f"not a number: {text[:16]!r}")
    return int(text)
