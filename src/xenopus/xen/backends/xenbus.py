"""The backend half of a xenbus split device (xen/include/public/io/xenbus.h).

A `Backend` writes the device's nodes as libxl does (`libxl_device.c`): the backend
directory `/local/domain/0/backend/<kind>/<domid>/<devid>` owned by dom0 and readable by
the guest, the frontend directory `/local/domain/<domid>/device/<kind>/<devid>` owned by
the guest and readable by dom0, each naming the other. It then advertises its features,
goes to InitWait and watches the frontend's `state`:

    frontend Initialised/Connected -> connect() (read ring-ref, event-channel, map, bind)
                                      -> backend Connected
    frontend Closing               -> disconnect, backend Closing
    frontend Closed / node gone    -> disconnect, backend Closed
    frontend Initialising again    -> (after Closed) InitWait: the frontend reconnects

A frontend that gives malformed values (a missing ring-ref, a non-number, a grant the
mapper refuses) makes `connect` raise `FrontendError`: the backend logs it once, writes
`<backend>/error` (libxl's convention) and goes to Closing. Nothing escapes to the caller.

Every backend has one worker thread: watch events and event-channel kicks only set a flag
and wake it, so neither the XenStore client's reader thread nor a vCPU thread ever does a
backend's work (a XenStore call from the client's own reader thread would deadlock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

from xenopus.memory import shared
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.grant import GrantMapper, GrantMapping
from xenopus.xen.xenstore.client import XsClient
from xenopus.xen.xenstore.wire import XsError

log = logging.getLogger("xenopus.xen.backends")


class State(IntEnum):
    """io/xenbus.h enum xenbus_state."""

    Unknown = abi.XenbusStateUnknown
    Initialising = abi.XenbusStateInitialising
    InitWait = abi.XenbusStateInitWait
    Initialised = abi.XenbusStateInitialised
    Connected = abi.XenbusStateConnected
    Closing = abi.XenbusStateClosing
    Closed = abi.XenbusStateClosed
    Reconfiguring = abi.XenbusStateReconfiguring
    Reconfigured = abi.XenbusStateReconfigured


class FrontendError(Exception):
    """The frontend's nodes or ring are malformed; the message says which and how."""


class Mapping(Protocol):
    """A granted page mapped for a backend (xen/grant.py)."""

    view: memoryview

    def unmap(self) -> None: ...


class EventPort(Protocol):
    """The backend's end of an event channel (xen/evtchn.py)."""

    def notify(self) -> None: ...

    def close(self) -> None: ...


class Host(Protocol):
    """What a backend needs from the domain process: grants and event channels."""

    def map_grant(self, domid: int, gref: int, write: bool) -> Mapping: ...

    def bind_event(self, domid: int, remote_port: int, callback: Callable[[], None]) -> EventPort: ...


_TX_RETRIES = 8  # EAGAIN: another dom0 client wrote meanwhile; libxl retries too


class RingError(Exception):
    """The frontend's ring indexes are impossible: the ring is broken for good."""


_REQ_PROD = abi.sring_header.req_prod.offset
_REQ_EVENT = abi.sring_header.req_event.offset
_RSP_PROD = abi.sring_header.rsp_prod.offset
_RSP_EVENT = abi.sring_header.rsp_event.offset
_fence = threading.Lock()


def full_barrier() -> None:
    """mb(): a lock round trip is a locked instruction, which orders our store to an
    index before the following load of the guest's (x86 lets a load pass a store)."""
    with _fence:
        pass


class BackRing:
    """The backend's view of an io/ring.h shared ring: DEFINE_RING_TYPES' back ring with
    its private req_cons / rsp_prod_pvt, over a page this process mapped.

    Requests are copied out of the ring before they are looked at, so a frontend that
    rewrites a slot while we work sees its change ignored, not half-used."""

    def __init__(self, page: memoryview, entry_size: int):
        self.page = page
        self.entry_size = entry_size
        self.size = abi.ring_size(entry_size, len(page))
        self.req_cons = 0
        self.rsp_prod_pvt = 0

    def _get(self, off: int) -> int:
        return shared.load(self.page, off, 4)

    def _set(self, off: int, value: int) -> None:
        shared.store(self.page, off, 4, value)

    def _slot(self, idx: int) -> int:
        return abi.SRING_HEADER_SIZE + (idx & (self.size - 1)) * self.entry_size

    def unconsumed(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS, refusing RING_REQUEST_PROD_OVERFLOW: more
        requests than free response slots means the frontend lies about req_prod."""
        prod = self._get(_REQ_PROD)
        n = (prod - self.req_cons) & 0xFFFFFFFF
        if (prod - self.rsp_prod_pvt) & 0xFFFFFFFF > self.size:
            raise RingError(
                f"req_prod {prod} is more than {self.size} ahead of responses {self.rsp_prod_pvt}"
            )
        return n

    def peek(self, ahead: int = 0) -> bytes:
        """A copy of request req_cons+ahead (the caller checked it is unconsumed)."""
        off = self._slot(self.req_cons + ahead)
        return bytes(self.page[off : off + self.entry_size])

    def take(self) -> bytes:
        data = self.peek()
        self.req_cons = (self.req_cons + 1) & 0xFFFFFFFF
        return data

    def skip(self, n: int) -> None:
        self.req_cons = (self.req_cons + n) & 0xFFFFFFFF

    def put(self, response: bytes) -> None:
        """Queue a response (RING_GET_RESPONSE at rsp_prod_pvt); `push` publishes it."""
        off = self._slot(self.rsp_prod_pvt)
        self.page[off : off + len(response)] = response
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & 0xFFFFFFFF

    def push(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish rsp_prod; True when the
        frontend's rsp_event lies in the newly published range (it wants an event)."""
        old = self._get(_RSP_PROD)
        new = self.rsp_prod_pvt
        self._set(_RSP_PROD, new)  # x86 keeps the response stores before this one
        full_barrier()
        event = self._get(_RSP_EVENT)
        return (new - event) & 0xFFFFFFFF < (new - old) & 0xFFFFFFFF

    def request_event(self, ahead: int) -> None:
        """Ask for an event when request req_cons+ahead is pushed (a partial chain)."""
        self._set(_REQ_EVENT, self.req_cons + ahead + 1)
        full_barrier()

    def final_check(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: True when requests are waiting; else ask for
        an event on the next one (req_event) and check once more for a race."""
        if self.unconsumed():
            return True
        self._set(_REQ_EVENT, self.req_cons + 1)
        full_barrier()
        return self.unconsumed() > 0


class _LocalPort:
    """A backend's end of a frontend's port, connected with EventChannels.connect_local."""

    def __init__(self, evtchn: EventChannels, port: int):
        self.evtchn = evtchn
        self.port = port

    def notify(self) -> None:
        self.evtchn.notify(self.port)

    def close(self) -> None:
        self.evtchn.disconnect_local(self.port)  # the frontend's port is unbound again


class _Granted:
    """A GrantMapper mapping with the `Mapping` shape (`view`, `unmap()`)."""

    def __init__(self, mapper: GrantMapper, mapping: GrantMapping):
        self._mapper = mapper
        self._mapping = mapping
        self.view = mapping.view

    def unmap(self) -> None:
        self._mapper.unmap(self._mapping)  # idempotent; clears GTF_reading/GTF_writing


class DomainHost:
    """`Host` over a domain's `EventChannels` and `GrantMapper` (the domain process's)."""

    def __init__(self, evtchn: EventChannels, grants: GrantMapper, backend_domid: int = 0):
        self.evtchn = evtchn
        self.grants = grants
        self.backend_domid = backend_domid

    def map_grant(self, domid: int, gref: int, write: bool) -> Mapping:
        """Raises xen.grant.GrantError when the entry does not allow it."""
        return _Granted(self.grants, self.grants.map(domid, gref, self.backend_domid, write))

    def bind_event(self, domid: int, remote_port: int, callback: Callable[[], None]) -> EventPort:
        # The frontend allocated `remote_port` unbound for us (alloc_unbound, remote 0).
        rc = self.evtchn.connect_local(remote_port, callback)
        if rc < 0:
            raise ValueError(f"port {remote_port} is not unbound for dom{self.backend_domid} ({rc})")
        return _LocalPort(self.evtchn, remote_port)


def frontend_dir(domid: int, kind: str, devid: int) -> str:
    return f"/local/domain/{domid}/device/{kind}/{devid}"


def backend_dir(domid: int, kind: str, devid: int, backend_domid: int = 0) -> str:
    return f"/local/domain/{backend_domid}/backend/{kind}/{domid}/{devid}"


class Worker:
    """One thread: waits on a wake eventfd and any fds a backend watches (epoll), and
    runs the backend's `work(reasons)` with the reasons posted since the last run."""

    def __init__(self, name: str, work: Callable[[set[str]], None]):
        self._work = work
        self._lock = threading.Lock()
        self._reasons: set[str] = set()
        self._fds: dict[int, Callable[[], None]] = {}
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ep = select.epoll()
        self._ep.register(self._wake, select.EPOLLIN)
        self._stopping = False
        # Held while `work` or an fd handler runs: `pause` takes it, so a paused worker is
        # between two runs (every request it took answered), as Xen's blkback drains its
        # in-flight requests before a suspend (xen_blkif_disconnect waits for them).
        self._busy = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def post(self, reason: str) -> None:
        """Callable from any thread: run `work` soon with `reason` among its reasons."""
        with self._lock:
            self._reasons.add(reason)
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def watch_fd(self, fd: int, callback: Callable[[], None], enabled: bool = True) -> None:
        """Call `callback` on the worker when `fd` is readable (from the worker thread)."""
        self._fds[fd] = callback
        self._ep.register(fd, select.EPOLLIN if enabled else 0)

    def set_fd(self, fd: int, enabled: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._ep.modify(fd, select.EPOLLIN if enabled else 0)

    def unwatch_fd(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def pause(self) -> None:
        """Return once the worker is idle; it stays so (reasons posted meanwhile wait)
        until `resume`. Not from the worker thread."""
        self._busy.acquire()

    def resume(self) -> None:
        self._busy.release()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        if threading.current_thread() is not self.thread:
            self.thread.join()
        self._ep.close()
        os.close(self._wake)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                events = self._ep.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            for fd, _ in events:
                if self._stopping:
                    return
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                    with self._busy:
                        if self._stopping:
                            return
                        with self._lock:
                            reasons, self._reasons = self._reasons, set()
                        if reasons:
                            self._work(reasons)
                elif (cb := self._fds.get(fd)) is not None:
                    with self._busy:
                        if self._stopping:
                            return
                        self._run_fd(cb)

    def _run_fd(self, cb: Callable[[], None]) -> None:
        try:
            cb()
        except Exception:
            log.exception("backend worker: fd handler failed")


class Backend:
    """A split device's backend: its XenStore nodes, its state machine, its worker.

    Subclasses set `kind` and override `features`, `backend_nodes`, `frontend_nodes`,
    `connect`, `disconnect` and `service` (the ring work after an event-channel kick)."""

    kind = "generic"

    def __init__(
        self,
        xs: XsClient,
        host: Host,
        domid: int,
        devid: int,
        *,
        frontend_path: str | None = None,
        backend_path: str | None = None,
        backend_domid: int = 0,
    ):
        self.xs = xs
        self.host = host
        self.domid = domid
        self.devid = devid
        self.backend_domid = backend_domid
        self.fe = frontend_path or frontend_dir(domid, self.kind, devid)
        self.be = backend_path or backend_dir(domid, self.kind, devid, backend_domid)
        self.state = State.Initialising
        self.connected = False
        self._logged: set[str] = set()
        self._token = f"backend:{self.be}"
        self._watching = False
        # What is ours in the store, for a restarted daemon's new one (`reconnect`): every
        # node this backend wrote (path -> value) and the frontend's nodes it read.
        self._written: dict[str, str] = {}
        self._fe_read: dict[str, str] = {}
        self.worker: Worker | None = None
        self._paused: Worker | None = None
        # Tests and the toolstack wait on this: set whenever the backend's state changes.
        self.changed = threading.Condition()

    # -- hooks -----------------------------------------------------------------------

    def backend_nodes(self) -> dict[str, str]:
        """Device-specific nodes libxl writes in the backend directory (params, mode …)."""
        return {}

    def frontend_nodes(self) -> dict[str, str]:
        """Device-specific nodes libxl writes in the frontend directory (virtual-device …)."""
        return {}

    def features(self) -> dict[str, str]:
        """What the backend driver advertises before InitWait (feature-*, sectors …)."""
        return {}

    def connect(self) -> dict[str, str]:
        """Read the frontend's nodes, map the rings, bind the event channel; return nodes
        to write before Connected. Raise FrontendError for malformed frontend values."""
        return {}

    def disconnect(self) -> None:
        """Undo `connect`: unbind, unmap. Must be safe to call when not connected."""

    def service(self) -> None:
        """Do the ring work after an event-channel kick (on the worker thread)."""

    # -- save/restore (domain/inventory.PvDevicePart) ----------------------------------
    # A backend that can be saved sets `saveable` and implements save_state/restore_state.
    saveable = False

    def pause(self) -> None:
        """Stop working once the current run is over: every request taken is answered
        and its response pushed (the guest is paused, so no new one comes)."""
        worker = self.worker
        if worker is not None:
            worker.pause()
        self._paused = worker

    def resume(self) -> None:
        worker, self._paused = self._paused, None
        if worker is not None:
            worker.resume()

    # -- lifecycle -------------------------------------------------------------------

    def _perms(self) -> tuple[list[str], list[str]]:
        """(backend, frontend) directory permissions, as libxl sets them."""
        return [f"n{self.backend_domid}", f"r{self.domid}"], [f"n{self.domid}", f"r{self.backend_domid}"]

    def _publish(self, be_nodes: dict[str, str], fe_nodes: dict[str, str]) -> None:
        """Both directories with their permissions and `nodes` in one transaction, as
        libxl's: the guest's xenbus probes the frontend directory as soon as it appears
        and must find `backend` and `state` in it."""
        be_perms, fe_perms = self._perms()
        for attempt in range(_TX_RETRIES):
            try:
                with self.xs.transaction() as tx:
                    for path, perms, nodes in ((self.be, be_perms, be_nodes),
                                               (self.fe, fe_perms, fe_nodes)):
                        self.xs.mkdir(path, tx=tx)
                        self.xs.set_perms(path, perms, tx=tx)
                        for name, value in nodes.items():  # children inherit the perms
                            self.xs.write(f"{path}/{name}", value, tx=tx)
                break
            except XsError as e:
                if e.name != "EAGAIN" or attempt == _TX_RETRIES - 1:
                    raise
        for path, nodes in ((self.be, be_nodes), (self.fe, fe_nodes)):
            self._written.update({f"{path}/{name}": value for name, value in nodes.items()})

    def _write(self, name: str, value: str) -> None:
        """A node of the backend directory, remembered for `reconnect`."""
        self.xs.write(f"{self.be}/{name}", value)
        self._written[f"{self.be}/{name}"] = value

    def start(self) -> None:
        """Write the nodes (toolstack's part and the driver's), go to InitWait and watch
        the frontend's state."""
        be_nodes = {
            "frontend": self.fe,
            "frontend-id": str(self.domid),
            "online": "1",
            "state": str(int(State.Initialising)),
            **self.backend_nodes(),
        }
        fe_nodes = {
            "backend": self.be,
            "backend-id": str(self.backend_domid),
            "state": str(int(State.Initialising)),
            **self.frontend_nodes(),
        }
        self._publish(be_nodes, fe_nodes)
        self.worker = Worker(f"{self.kind}back-{self.domid}-{self.devid}", self._work)
        for name, value in self.features().items():
            self._write(name, value)
        self._switch(State.InitWait)
        self.xs.watch(f"{self.fe}/state", self._token, self._on_watch)
        self._watching = True

    def reconnect(self, xs: XsClient) -> None:
        """A restarted daemon: its XenStore is new (only the domain's own nodes), and `xs`
        our connection to it. The device goes on as it was (its ring and event channel
        never left this process): both directories are written again as they were —
        ours with every node we wrote, the current state among them, the frontend's with
        what it had written that we read — and the frontend's state watched again."""
        self.xs = xs
        be_prefix, fe_prefix = self.be + "/", self.fe + "/"
        be_nodes = {p[len(be_prefix):]: v for p, v in self._written.items() if p.startswith(be_prefix)}
        fe_nodes = {p[len(fe_prefix):]: v for p, v in self._written.items() if p.startswith(fe_prefix)}
        fe_nodes.update(self._fe_read)
        be_nodes["state"] = str(int(self.state))
        self._publish(be_nodes, fe_nodes)
        if self._watching:
            self.xs.watch(f"{self.fe}/state", self._token, self._on_watch)

    def stop(self, remove: bool = True) -> None:
        """Tear the device down: unwatch, disconnect, stop the worker and (by default)
        remove both directories, as `xl block-detach` / domain destruction does."""
        if self._watching:
            with contextlib.suppress(Exception):
                self.xs.unwatch(f"{self.fe}/state", self._token)
            self._watching = False
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()
        self._disconnect()
        if remove:
            for path in (self.fe, self.be):
                with contextlib.suppress(Exception):
                    self.xs.rm(path)

    def close(self, timeout: float) -> bool:
        """The toolstack's removal (libxl__initiate_device_generic_remove): `online` 0 and
        the backend Closing, then wait for the frontend to close and the backend to reach
        Closed. Whether it did within `timeout` seconds; the caller then `stop`s it."""
        self._write("online", "0")
        worker = self.worker
        if worker is not None:
            worker.post("close")
        return self.wait_for(State.Closed, timeout)

    def kick(self) -> None:
        """The event-channel callback: the frontend pushed requests. Any thread."""
        worker = self.worker
        if worker is not None:
            worker.post("kick")

    def _on_watch(self, path: str, token: str) -> None:
        worker = self.worker
        if worker is not None:
            worker.post("frontend")

    # -- the state machine (on the worker) ---------------------------------------------

    def _work(self, reasons: set[str]) -> None:
        try:
            if "close" in reasons and self.state != State.Closed:
                self._disconnect()
                self._switch(State.Closing)  # io/xenbus.h: the frontend closes on this
            if "frontend" in reasons or "close" in reasons:
                self._frontend_changed()
            if "kick" in reasons and self.connected:
                self.service()
        except FrontendError as e:
            self.fail(str(e))
        except Exception as e:  # a backend bug must not take the domain process down
            log.exception("%s: backend failed", self.be)
            self.fail(f"internal error {e!r}")

    def frontend_state(self) -> State:
        raw = self.read_fe("state")
        if raw is None:
            return State.Unknown
        try:
            return State(int(raw))
        except ValueError:
            self.log_once(f"frontend state {raw!r} is not a XenbusState")
            return State.Unknown

    def _frontend_changed(self) -> None:
        fe = self.frontend_state()
        if fe == State.Initialising and self.state == State.Closed:
            self._switch(State.InitWait)  # the frontend is back after a close
        elif fe in (State.Initialised, State.Connected):
            if self.state == State.InitWait:
                nodes = self.connect()
                self.connected = True
                for name, value in nodes.items():
                    self._write(name, value)
                self._switch(State.Connected)
                self.service()  # requests posted before we were up
        elif fe == State.Closing:
            self._disconnect()
            self._switch(State.Closing)
        elif fe in (State.Closed, State.Unknown):
            self._disconnect()
            self._switch(State.Closed)

    def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
        try:
            self.disconnect()
        except Exception:
            log.exception("%s: disconnect failed", self.be)

    def fail(self, message: str) -> None:
        """The frontend broke the protocol: log once, `<backend>/error`, Closing."""
        self.log_once(message)
        self._disconnect()
        with contextlib.suppress(Exception):
            self._write("error", message)
        with contextlib.suppress(Exception):
            self._switch(State.Closing)

    def _switch(self, state: State) -> None:
        if state == self.state and state != State.InitWait:
            return
        self._write("state", str(int(state)))
        with self.changed:
            self.state = state
            self.changed.notify_all()

    def wait_for(self, state: State, timeout: float = 10.0) -> bool:
        """Block until the backend reaches `state` (for tests and the toolstack)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.state == state, timeout)

    # -- helpers for subclasses ------------------------------------------------------

    def log_once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("%s: %s", self.be, reason)

    def read_fe(self, name: str) -> str | None:
        try:
            value = self.xs.read(f"{self.fe}/{name}")
        except XsError as e:
            if e.name in ("ENOENT", "EACCES"):
                self._fe_read.pop(name, None)
                return None
            raise
        text = value.decode(errors="replace")
        self._fe_read[name] = text
        return text

    def fe_int(self, name: str, limit: int, default: int | None = None) -> int:
        """Frontend node `name` as an integer in [0, limit): FrontendError otherwise."""
        raw = self.read_fe(name)
        if raw is None:
            if default is not None:
                return default
            raise FrontendError(f"frontend {self.fe} has no {name}")
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise FrontendError(f"frontend {name} {raw[:32]!r} is not a number") from None
        if not 0 <= value < limit:
            raise FrontendError(f"frontend {name} {value} is out of range")
        return value

    def map_grant(self, gref: int, write: bool) -> Mapping:
        """Map a page the frontend granted; any refusal becomes a FrontendError."""
        try:
            return self.host.map_grant(self.domid, gref, write)
        except Exception as e:
            raise FrontendError(f"cannot map grant {gref}: {e}") from e

    def bind_event(self, name: str = "event-channel") -> EventPort:
        port = self.fe_int(name, 1 << 32)
        try:
            return self.host.bind_event(self.domid, port, self.kick)
        except Exception as e:
            raise FrontendError(f"cannot bind event channel {port}: {e}") from e
