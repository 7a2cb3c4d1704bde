"""Serving the store: the Unix socket (dom0 tools), per-domain streams, and guest rings.

The socket is xenstored's. Who connects is read from the socket (SO_PEERCRED) and
classified by the daemon (`PeerScope`): host tools are dom0 (privileged, the whole
store); a domain process's backends are dom0 scoped to that one domain, so a compromised
domain process reaches its own frontend's home and its own backend directories and nothing
else (Xen reaches the same with a driver domain's own XenStore permissions); anyone else
is refused. A domain's guest traffic reaches the daemon over a stream the daemon made for
it (`attach_domain`), so the daemon, not the domain process, decides which domain is
talking. `RingTransport` is the
guest side: it moves bytes between a `xenstore_domain_interface` page and that stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from xenopus.devices.ratelimit import LimitedLog
from xenopus.memory import shared

from . import wire
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


class Peer(NamedTuple):
    """A Unix-socket client, as the kernel saw it connect (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


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


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))


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


_IFACE = wire.XenstoreDomainInterface
_REQ = _IFACE.req.offset
_RSP = _IFACE.rsp.offset
_SIZE = wire.XENSTORE_RING_SIZE
_MASK = 0xFFFFFFFF


READ_ROUNDS = 16  # passes over the request ring per read_messages (16 KiB at most)


class RingTransport:
    """Moves xsd_sockmsg bytes between a guest's xenstore_domain_interface page and us.

    The guest is untrusted: indexes that claim more than a ring's worth of data or a
    header whose len exceeds XENSTORE_PAYLOAD_MAX break the connection, as xenstored
    does — the `error` field says why, the ring is no longer served, one log line is
    written, and nothing raises. Whoever owns the event channel calls `read_messages`
    on a guest kick and `flush` after queueing output, and notifies the guest when
    either returns that it moved something.
    """

    def __init__(self, page: memoryview, max_pending: int = 64 * 1024,
                 on_broken: Callable[[int], None] | None = None) -> None:
        page = page.cast("B") if page.format != "B" else page
        if len(page) < ctypes.sizeof(_IFACE):
            raise ValueError("page smaller than xenstore_domain_interface")
        self.page = page
        self.broken = False
        self.more = False  # read_messages left bytes in the ring (its rounds were used up)
        self.max_pending = max_pending
        self.on_broken = on_broken
        self._in = bytearray()
        self._out = bytearray()
        # Advertised before any data moves (xenstore-ring.txt): the error indicator and
        # ring reconnection.
        self._set(_IFACE.server_features.offset, wire.XENSTORE_SERVER_FEATURE_ERROR
                  | wire.XENSTORE_SERVER_FEATURE_RECONNECTION)

    def _get(self, off: int) -> int:
        return shared.load(self.page, off, 4)

    def _set(self, off: int, value: int) -> None:
        shared.store(self.page, off, 4, value)

    def _break(self, code: int, why: str) -> None:
        if not self.broken:
            log.warning("xenstore ring broken: %s", why)
            self.broken = True
            self._set(_IFACE.error.offset, code)
            self._in.clear()
            self._out.clear()
            if self.on_broken:
                self.on_broken(code)

    @property
    def reconnect_requested(self) -> bool:
        """The guest set the connection state to XENSTORE_RECONNECT (xenstore-ring.txt
        "The ring reconnection feature"); only it sets 1, only we set 0."""
        return self._get(_IFACE.connection.offset) == wire.XENSTORE_RECONNECT

    def reset(self) -> None:
        """Reconnect: drop partial packets both ways, empty both queues, clear a broken
        ring's error and set the state back to connected. The caller discards the
        connection's in-flight requests, watches and transactions, then signals the
        guest."""
        self._in.clear()
        self._out.clear()
        self.broken = False
        for field in ("req_cons", "req_prod", "rsp_cons", "rsp_prod"):
            self._set(getattr(_IFACE, field).offset, 0)
        self._set(_IFACE.error.offset, wire.XENSTORE_ERROR_NONE)
        # Indexes before the state: the guest reads nothing else until it sees 0.
        self._set(_IFACE.connection.offset, wire.XENSTORE_CONNECTED)

    def read_messages(self, rounds: int = READ_ROUNDS) -> list[bytes]:
        """Consume the request ring; return the complete messages (header + payload).
        `more` says the ring still had bytes after `rounds` passes: call again soon."""
        self.more = False
        if self.broken:
            return []
        try:
            # Until the ring is empty after req_cons is published: Linux's xb_write
            # (xenbus_comms.c) notifies only when `prod <= req_cons` after it wrote, so
            # bytes it adds while we copy, before it sees our req_cons, come with no
            # event. xenstored likewise looks at every ring again on each pass. A guest
            # that never stops writing gets `rounds` passes, then its turn again later.
            for _ in range(rounds):
                cons = self._get(_IFACE.req_cons.offset)
                prod = self._get(_IFACE.req_prod.offset)
                avail = (prod - cons) & _MASK
                if avail > _SIZE:
                    self._break(wire.XENSTORE_ERROR_RINGIDX, f"req indexes {cons}..{prod}")
                    return []
                if not avail:
                    break
                self._in += shared.ring_read(self.page, _REQ, _SIZE, cons, avail)
                self._set(_IFACE.req_cons.offset, cons + avail)
                shared.full_barrier()  # req_cons is out before req_prod is read again
            else:
                self.more = True
            out = []
            while len(self._in) >= wire.HEADER_SIZE:
                hdr = wire.unpack_header(self._in)
                if hdr.len > wire.XENSTORE_PAYLOAD_MAX:
                    self._break(wire.XENSTORE_ERROR_PROTO, f"message len {hdr.len}")
                    return []
                end = wire.HEADER_SIZE + hdr.len
                if len(self._in) < end:
                    break
                out.append(bytes(self._in[:end]))
                del self._in[:end]
            return out
        except Exception:  # never let a guest's page take the caller down
            log.exception("xenstore ring: unexpected failure")
            self._break(wire.XENSTORE_ERROR_COMM, "internal error")
            return []

    def write(self, data: bytes) -> None:
        """Queue reply/event bytes for the guest; `flush` moves them into the ring."""
        if self.broken:
            return
        self._out += data
        if len(self._out) > self.max_pending:
            self._break(wire.XENSTORE_ERROR_COMM, "guest is not reading its replies")

    @property
    def pending(self) -> int:
        return len(self._out)

    def flush(self) -> bool:
        """Copy queued output into the response ring; True if rsp_prod moved."""
        moved = False
        try:
            # While output is left, until the ring is full after rsp_prod is published:
            # Linux's xb_read notifies only when the ring was full as it began reading,
            # so space it frees while we copy comes with no event.
            while self._out and not self.broken:
                cons = self._get(_IFACE.rsp_cons.offset)
                prod = self._get(_IFACE.rsp_prod.offset)
                used = (prod - cons) & _MASK
                if used > _SIZE:
                    self._break(wire.XENSTORE_ERROR_RINGIDX, f"rsp indexes {cons}..{prod}")
                    return False
                n = min(_SIZE - used, len(self._out))
                if not n:
                    break
                shared.ring_write(self.page, _RSP, _SIZE, prod, self._out[:n])
                # Data before index: x86 keeps stores in order, so the guest never sees
                # the new rsp_prod ahead of the bytes it covers.
                self._set(_IFACE.rsp_prod.offset, prod + n)
                del self._out[:n]
                moved = True
                shared.full_barrier()  # rsp_prod is out before rsp_cons is read again
            return moved
        except Exception:
            log.exception("xenstore ring: unexpected failure")
            self._break(wire.XENSTORE_ERROR_COMM, "internal error")
            return False
