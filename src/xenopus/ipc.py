"""Message framing between the CLI, the daemon, the zygote and domain processes.

One JSON object per line over a Unix stream socket (one per datagram on the interdomain
SOCK_SEQPACKET pairs). What the messages say is `xenopus.control` and
`xenopus.domain.protocol`; this module only frames them: `Channel` for blocking ends (the
CLI, the zygote), `read_message` / `write_message` for asyncio streams (the daemon, a
domain process). File descriptors travel beside a message with SCM_RIGHTS
(`send_with_fds`, `Channel.recv_with_fds`), which is how the daemon hands a domain process
its control channel.
"""

from __future__ import annotations

import _json
import _socket
import os
import stat
from types import SimpleNamespace

# `typing` costs every CLI command milliseconds of imports (with `re`): names for the
# type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:  # asyncio too costs the CLI milliseconds of imports
    import asyncio
    import socket
    from typing import TextIO

DEFAULT_RUN_DIR = "/run/xenopus"
MAX_LINE = 1 << 20  # a request larger than this is refused, not buffered without bound

# Paths are plain strings: pathlib costs the CLI milliseconds of imports on every command.
def run_dir() -> str:
    return os.environ.get("XENOPUS_RUN_DIR") or DEFAULT_RUN_DIR


class RunDirError(OSError):
    """The run directory (or a file in it) is not one the daemon may trust."""


def ensure_run_dir(path: str) -> None:
    """Create the run directory 0700, or accept an existing one only if it is ours: a
    real directory (not a symlink), owned by us, writable by nobody else. Any other
    user who could write there could plant a symlink for the daemon to write through."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:  # noqa: SIM105 - contextlib (with functools) costs the CLI its import
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run directory {path} is not a directory (a symlink?)")
    if st.st_uid != os.geteuid():
        raise RunDirError(f"run directory {path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RunDirError(f"run directory {path} is writable by others (mode {st.st_mode & 0o777:o})")


def open_private(path: str | os.PathLike[str], flags: int = os.O_RDWR) -> int:
    """Open (creating, 0600) a file of the run directory without following a symlink."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def open_log(path: str | os.PathLike[str]) -> TextIO:
    """A log file of the run directory, for appending: 0600, never through a symlink."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    return open(fd, "a", buffering=1, encoding="utf-8", errors="replace")


def daemon_socket_path(base: str | os.PathLike[str] | None = None) -> str:
    return os.path.join(base or run_dir(), "xenopus.sock")


def xenstored_socket_path(base: str | os.PathLike[str] | None = None) -> str:
    """XenStore for host tools (XENSTORED_PATH) and the domains' backends, as dom0."""
    return os.path.join(base or run_dir(), "xenstored.sock")


def domain_dir(domid: int, base: str | os.PathLike[str] | None = None) -> str:
    return os.path.join(base or run_dir(), "domains", str(domid))


def control_socket_path(domid: int, base: str | os.PathLike[str] | None = None) -> str:
    """Where a domain process waits for a restarted daemon to adopt it."""
    return os.path.join(domain_dir(domid, base), "control.sock")


def domain_table_path(base: str | os.PathLike[str] | None = None) -> str:
    """The daemon's persisted domain table, for a restarted daemon to adopt from."""
    return os.path.join(base or run_dir(), "domains.json")


CONSOLE_SOCKETS = {"serial": "console.sock", "virtio": "vconsole.sock", "pv": "pvconsole.sock"}


def console_socket_path(domid: int, base: str | os.PathLike[str] | None = None, kind: str = "serial") -> str:
    return os.path.join(domain_dir(domid, base), CONSOLE_SOCKETS[kind])


# Messages are coded by `json`'s own C encoder and scanner, called directly as
# `json.dumps(msg, separators=(",", ":"))` and `json.loads` call them: importing `json`
# (with the `re` it imports and the expressions it compiles) and `socket` (with `enum`
# and `selectors`) costs every CLI command ~10 ms of CPU, a third of its start.


def _not_serialisable(o: object) -> object:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


# What json.decoder's c_make_scanner reads of a default JSONDecoder.
_scan = _json.make_scanner(SimpleNamespace(
    strict=True, object_hook=None, object_pairs_hook=None, parse_float=float, parse_int=int,
    parse_constant={"-Infinity": float("-inf"), "Infinity": float("inf"),
                    "NaN": float("nan")}.__getitem__))
_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE


def encode(msg: dict[str, object]) -> bytes:
    # json.encoder's c_make_encoder, as json.dumps(separators=(",", ":")) makes it: a new
    # one per message, as its circular-reference markers are not cleared after an error.
    encoder = _json.make_encoder({}, _not_serialisable, _json.encode_basestring_ascii, None,
                                 ":", ",", False, False, True)
    return "".join(encoder(msg, 0)).encode() + b"\n"


def _loads(line: bytes) -> object:
    """json.loads(line) for a UTF-8 line that is one JSON value; anything else (and any
    error) is left to `json` itself: the scanner raises its errors through json.decoder,
    which only `json` imports."""
    try:
        text = line.decode()
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _scan(text, start)
        if len(text[end:].lstrip(_WHITESPACE)) == 0:
            return value
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - json decides, and names the problem
        pass
    import json

    return json.loads(line)


def decode(line: bytes) -> dict[str, object]:
    """One message; ValueError if it is not a JSON object (or nests too deeply for the
    parser, whose RecursionError would otherwise escape: found by fuzz/ configdict)."""
    try:
        msg = _loads(line)
    except RecursionError:
        raise ValueError("message nests too deeply") from None
    if not isinstance(msg, dict):
        raise ValueError("message is not a JSON object")
    return msg


def send_with_fds(sock: socket.socket, msg: dict[str, object], fds: list[int]) -> None:
    import socket

    socket.send_fds(sock, [encode(msg)], fds)


async def receive_fds(writer: asyncio.StreamWriter, maxfds: int,
                      timeout: float) -> list[int]:
    """The descriptors the peer of an asyncio stream sends next, beside one message
    (`send_with_fds`), which is dropped. An asyncio stream reads with recv(2), which
    discards SCM_RIGHTS, so its transport stops reading until they have come: the peer
    must send them only when asked (and nothing else in between)."""
    import asyncio
    import socket

    loop = asyncio.get_running_loop()
    transport = writer.transport
    transport.pause_reading()
    sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    got: asyncio.Future[list[int]] = loop.create_future()

    def readable() -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_LINE, maxfds, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if not got.done():
                got.set_exception(e)
            return
        if got.done():
            for fd in fds:
                os.close(fd)
        elif not data:
            got.set_exception(ConnectionError("the peer closed the connection"))
        elif flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            got.set_exception(ValueError(f"more than {maxfds} descriptors sent"))
        else:
            got.set_result(fds)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await asyncio.wait_for(got, timeout)
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
        transport.resume_reading()


async def read_message(reader: asyncio.StreamReader) -> dict[str, object] | None:
    """The next message on an asyncio stream, or None at its end. ValueError for a
    malformed line (the next call reads the line after it) or one over the stream's limit."""
    line = await reader.readline()
    return decode(line) if line else None


async def recv_with_fds(sock: socket.socket, maxfds: int) -> tuple[dict[str, object] | None, list[int]]:
    """The first message on a non-blocking stream socket and the fds sent with it, awaited
    on the running loop (asyncio streams cannot carry SCM_RIGHTS). The message must come
    in one piece, as `send_with_fds` sends it."""
    import asyncio
    import socket

    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def readable() -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_LINE, maxfds)
        except BlockingIOError:
            return
        except OSError as e:
            data, fds = b"", []
            done.set_exception(e)
        loop.remove_reader(sock)
        if not done.done():
            done.set_result((data, fds))

    loop.add_reader(sock, readable)
    try:
        data, fds = await done
    finally:
        loop.remove_reader(sock)
    return (decode(data) if data else None), fds


def write_message(writer: asyncio.StreamWriter, msg: dict[str, object]) -> None:
    writer.write(encode(msg))


class Channel:
    """A blocking line-oriented JSON channel over a connected stream socket."""

    def __init__(self, sock: socket.socket | _socket.socket):
        self.sock = sock
        self._buf = bytearray()

    @classmethod
    def connect(cls, path: str, timeout: float | None = None) -> Channel:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return cls(sock)

    def send(self, msg: dict[str, object], fds: list[int] | None = None) -> None:
        if fds:
            send_with_fds(self.sock, msg, fds)
        else:
            self.sock.sendall(encode(msg))

    def recv(self) -> dict[str, object] | None:
        """The next message, or None at end of stream."""
        msg, _ = self.recv_with_fds(0)
        return msg

    def recv_with_fds(self, maxfds: int) -> tuple[dict[str, object] | None, list[int]]:
        fds: list[int] = []
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise ValueError("message too long")
            if maxfds:
                import socket

                data, got, _flags, _addr = socket.recv_fds(self.sock, 65536, maxfds)
                fds.extend(got)
            else:
                data = self.sock.recv(65536)
            if not data:
                return None, fds
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return decode(line), fds

    def request(self, msg: dict[str, object]) -> dict[str, object]:
        self.send(msg)
        reply = self.recv()
        if reply is None:
            raise ConnectionError("the daemon closed the connection")
        return reply

    def close(self) -> None:
        self.sock.close()
