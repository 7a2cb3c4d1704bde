"""The PV channel backend: a named secondary console (xl.cfg `channel=`,
docs/man/xen-pv-channel.7.pod) between the guest's ring and a host socket or pty.

A channel is console N >= 1 (device/console/N): the frontend grants a page holding
`struct xencons_interface` (io/console.h; for N >= 1 `ring-ref` is a grant reference,
not a frame, as QEMU's xen_console reads it), allocates `port`, and goes Initialised;
we map the page, bind the port and go Connected. The byte rings are the primary
console's (`PVConsole`). The frontend nodes are libxl's (libxl__device_console_add for
a channel: `name`, `type` "ioemu", `output`, `tty`, `limit`).

Flow control instead of loss: the guest's output stays in its ring while no host client
is connected (it is read when one connects), and host input the ring has no room for
waits, its socket or pty unread, until the guest has consumed some.
"""

from __future__ import annotations

import logging
import os
import socket

from xenopus.stream import StateError, check_state
from xenopus.xen.backends.console import PVConsole
from xenopus.xen.backends.xenbus import Backend, EventPort, Host, Mapping
from xenopus.xen.xenstore.client import XsClient

log = logging.getLogger("xenopus.xen.channel")

XENCONSOLE_LIMIT = 1048576  # libxl's LIBXL_XENCONSOLE_LIMIT, the frontend's `limit`
READ_CHUNK = 4096
SEND_TIMEOUT = 5.0  # seconds a host client may stall the channel before it is dropped


class ChannelBack(Backend):
    """Channel `devid` of domain `domid`: its host end is `listener` (a listening Unix
    socket; one client at a time) or the pty master `master` (whose slave is `tty`)."""

    kind = "console"

    def __init__(self, xs: XsClient, host: Host, domid: int, devid: int, *, name: str,
                 listener: socket.socket | None = None, path: str | None = None,
                 master: int | None = None, tty: str = ""):
        super().__init__(xs, host, domid, devid)
        if (listener is None) == (master is None):
            raise ValueError("a channel has either a listening socket or a pty master")
        self.name = name
        self.listener = listener
        self.path = path
        self.master = master
        self.tty = tty
        self.client: socket.socket | None = None
        self._ring: PVConsole | None = None
        self._mapping: Mapping | None = None
        self._port: EventPort | None = None
        self._pending = bytearray()  # host input the ring had no room for
        self._resumed: dict | None = None  # a restored connection, for the next `connect`

    # -- nodes (libxl__device_console_add with a channel's name, connection, path) --------
    def backend_nodes(self) -> dict[str, str]:
        nodes = {"protocol": "vt100", "name": self.name,
                 "connection": "socket" if self.listener is not None else "pty"}
        if self.path:
            nodes["path"] = self.path
        return nodes

    def frontend_nodes(self) -> dict[str, str]:
        output = "pty" if self.master is not None else f"chardev:libxl-channel{self.devid}"
        return {"name": self.name, "limit": str(XENCONSOLE_LIMIT), "type": "ioemu",
                "output": output, "tty": self.tty}

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        assert self.worker is not None
        if self.listener is not None:
            self.worker.watch_fd(self.listener.fileno(), self._accept)
        else:
            assert self.master is not None
            self.worker.watch_fd(self.master, self._host_readable, enabled=False)

    def stop(self, remove: bool = True) -> None:
        worker = self.worker
        if worker is not None:
            for fd in self._host_fds():
                worker.unwatch_fd(fd)
            if self.listener is not None:
                worker.unwatch_fd(self.listener.fileno())
        super().stop(remove)
        self._drop_client()

    def connect(self) -> dict[str, str]:
        gref = self.fe_int("ring-ref", 1 << 32)
        self._mapping = self.map_grant(gref, write=True)
        self._port = self.bind_event("port")
        self._ring = PVConsole(self._mapping.view, self._to_host, self._port.notify)
        resumed, self._resumed = self._resumed, None
        if resumed is not None:  # host input the saved ring had no room for yet
            self._pending += resumed["pending"]
        self._feed()  # host input waits while anything pending has no room
        return {}

    # -- save/restore -----------------------------------------------------------------
    # The byte rings and their indexes (io/console.h xencons_interface) are guest RAM;
    # the backend's own is host input read but not yet in the ring. The host end is the
    # restoring host's (its socket or pty, made from the config): a client of the saved
    # one is gone, and what the guest writes waits in its ring until one connects.
    saveable = True
    STATE_VERSION = 1

    def save_state(self) -> object:
        return {"version": self.STATE_VERSION, "state": int(self.state),
                "connected": self.connected and self._ring is not None,
                "pending": bytes(self._pending)}

    def restore_state(self, state: object) -> None:
        s = check_state(state, f"channel {self.devid}", self.STATE_VERSION)
        if not isinstance(s["pending"], bytes):
            raise StateError(f"channel {self.devid}: pending input is not octets")
        self._resumed = dict(s) if s["connected"] else None

    def disconnect(self) -> None:
        self._enable_host_input(False)
        self._ring = None
        port, self._port = self._port, None
        if port is not None:
            port.close()
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            mapping.unmap()

    def service(self) -> None:
        """The guest signalled: its output to the host (if anyone is there to take it),
        then any host input that waited for room."""
        if self._ring is None:
            return
        if self.client is not None or self.master is not None:
            self._ring.kick()
        self._feed()

    # -- the host end (on the worker) -------------------------------------------------
    def _host_fds(self) -> list[int]:
        fds = [self.client.fileno()] if self.client is not None else []
        return fds + ([self.master] if self.master is not None else [])

    def _enable_host_input(self, on: bool) -> None:
        worker = self.worker
        if worker is not None:
            for fd in self._host_fds():
                worker.set_fd(fd, on)

    def _accept(self) -> None:
        assert self.listener is not None and self.worker is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if self.client is not None:
            conn.close()  # one client at a time (the listener is not watched meanwhile)
            return
        conn.settimeout(SEND_TIMEOUT)
        self.client = conn
        self.worker.set_fd(self.listener.fileno(), False)
        self.worker.watch_fd(conn.fileno(), self._host_readable,
                             enabled=self._ring is not None and not self._pending)
        if self._ring is not None:
            self._ring.kick()  # what the guest wrote while no one listened

    def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        worker = self.worker
        if worker is not None:
            worker.unwatch_fd(client.fileno())
            if self.listener is not None:
                worker.set_fd(self.listener.fileno(), True)
        client.close()
        self._pending.clear()  # a new client starts a new conversation

    def _host_readable(self) -> None:
        try:
            if self.client is not None:
                data = self.client.recv(READ_CHUNK)
                if not data:
                    self._drop_client()
                    return
            else:
                assert self.master is not None
                data = os.read(self.master, READ_CHUNK)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:  # a pty with no one on its slave reads EIO; a reset socket
            if self.client is not None:
                self._drop_client()
            return
        self._pending += data
        self._feed()

    def _feed(self) -> None:
        if self._ring is not None and self._pending:
            del self._pending[:self._ring.send(bytes(self._pending))]
        # Read more from the host only once the ring took everything.
        self._enable_host_input(self._ring is not None and not self._pending)

    def _to_host(self, data: bytes) -> None:
        if self.client is not None:
            try:
                self.client.sendall(data)
            except OSError as e:
                self.log_once(f"host client of channel {self.name!r} dropped: {e}")
                self._drop_client()
        elif self.master is not None:
            try:
                sent = os.write(self.master, data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):  # no host tool reads the pty: like xenconsoled, drop
                self.log_once(f"pty {self.tty} of channel {self.name!r} full: output dropped")
