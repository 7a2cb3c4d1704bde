"""A small blocking XenStore client over the daemon's Unix socket (libxenstore's role).

One reader thread takes every message off the socket: replies go to the caller that is
waiting (requests are serialised), watch events go to the watch's callback (run on a
separate dispatcher thread, so a callback may call the client).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator

from . import wire
from .wire import XsError

WatchCallback = Callable[[str, str], None]


class XsClient:
    """A dom0 client of the XenStore listening on the Unix socket `path`, or over a
    connected stream socket the XenStore's owner handed us."""

    def __init__(self, path: str | socket.socket, timeout: float | None = 30.0) -> None:
        self.timeout = timeout
        if isinstance(path, socket.socket):
            self.sock = path
            self.sock.setblocking(True)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)
        self._lock = threading.Lock()
        self._req_id = 0
        self._replies: queue.Queue[tuple[wire.Header, bytes] | None] = queue.Queue()
        self._callbacks: dict[str, WatchCallback] = {}
        self._calls: queue.Queue[tuple[WatchCallback, str, str] | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name="xenstore-client")
        self._reader.start()

    # --- plumbing -------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("xenstore socket closed")
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                hdr = wire.unpack_header(self._recv(wire.HEADER_SIZE))
                body = self._recv(hdr.len)
                if hdr.type == wire.XS_WATCH_EVENT:
                    parts = body.split(b"\0")
                    if len(parts) < 2:
                        continue
                    path = parts[wire.XS_WATCH_PATH].decode("latin-1")
                    token = parts[wire.XS_WATCH_TOKEN].decode("latin-1")
                    callback = self._callbacks.get(token)
                    if callback is not None:  # else a watch being removed
                        self._calls.put((callback, path, token))
                else:
                    self._replies.put((hdr, body))
        except (ConnectionError, OSError):
            pass
        finally:
            self._replies.put(None)
            self._calls.put(None)

    def _dispatch_loop(self) -> None:
        while (item := self._calls.get()) is not None:
            callback, path, token = item
            callback(path, token)

    def request(self, type_: int, payload: bytes, tx: int = 0) -> bytes:
        """Send one request and return its reply payload; an XS_ERROR raises XsError."""
        with self._lock:
            self._req_id = (self._req_id + 1) & 0xFFFFFFFF
            self.sock.sendall(wire.pack(type_, self._req_id, tx, payload))
            try:
                item = self._replies.get(timeout=self.timeout)
            except queue.Empty:
                raise TimeoutError("no reply from xenstore") from None
            if item is None:
                self._replies.put(None)
                raise ConnectionError("xenstore socket closed")
        hdr, body = item
        if hdr.type == wire.XS_ERROR:
            raise XsError(body.rstrip(b"\0").decode("latin-1") or "EINVAL")
        return body

    def _ok(self, type_: int, *args: str | bytes, tx: int = 0) -> None:
        self.request(type_, wire.strings(*args), tx)

    def _one(self, type_: int, arg: str, tx: int = 0) -> str:
        return self.request(type_, wire.strings(arg), tx).rstrip(b"\0").decode("latin-1")

    # --- operations -----------------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.request(wire.XS_READ, wire.strings(path), tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        self.request(wire.XS_WRITE, wire.strings(path) + data, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self._ok(wire.XS_MKDIR, path, tx=tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self._ok(wire.XS_RM, path, tx=tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        body = self.request(wire.XS_DIRECTORY, wire.strings(path), tx)
        return [s.decode("latin-1") for s in body.split(b"\0")[:-1]]

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        body = self.request(wire.XS_GET_PERMS, wire.strings(path), tx)
        return [s.decode("latin-1") for s in body.split(b"\0")[:-1]]

    def set_perms(self, path: str, perms: Iterable[str], tx: int = 0) -> None:
        """perms like ["n0", "r1"]: the first names the owner and everyone's default."""
        self._ok(wire.XS_SET_PERMS, path, *perms, tx=tx)

    def transaction_start(self) -> int:
        return int(self._one(wire.XS_TRANSACTION_START, ""))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        """Raises XsError("EAGAIN") when a committed transaction conflicted."""
        self._ok(wire.XS_TRANSACTION_END, "T" if commit else "F", tx=tx)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """`with client.transaction() as tx:` commits on success, aborts on error."""
        tx = self.transaction_start()
        try:
            yield tx
        except BaseException:
            self.transaction_end(tx, commit=False)
            raise
        self.transaction_end(tx, commit=True)

    def watch(self, path: str, token: str, callback: WatchCallback) -> str:
        """Watch path; events go to callback(path, token) on the dispatcher thread."""
        self._callbacks[token] = callback
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(target=self._dispatch_loop, daemon=True,
                                                name="xenstore-watch")
            self._dispatcher.start()
        try:
            self._ok(wire.XS_WATCH, path, token)
        except XsError:
            self._callbacks.pop(token, None)
            raise
        return token

    def unwatch(self, path: str, token: str) -> None:
        self._ok(wire.XS_UNWATCH, path, token)
        self._callbacks.pop(token, None)

    def introduce(self, domid: int, mfn: int = 0, port: int = 0) -> None:
        self._ok(wire.XS_INTRODUCE, str(domid), str(mfn), str(port))

    def release(self, domid: int) -> None:
        self._ok(wire.XS_RELEASE, str(domid))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> XsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
