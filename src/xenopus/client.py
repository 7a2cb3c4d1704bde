"""Talking to the xenopus daemon: one connection, requests and replies, typed errors.

This is the transport under both the `xl`/`xenopus` command and the Python API
(`xenopus.api`): `Connection.request(op, **args)` sends one `xenopus.control.Request` and
returns the reply's data, or raises the `XenopusError` subclass that says why not. It
stays as cheap to import as the CLI itself (every command pays for its imports); the typed
objects of the API live in `xenopus.api`.
"""

from __future__ import annotations

import _socket  # not `socket`: with its `enum` and `selectors`, ms of every command's start
import os
import select

from xenopus import ipc
from xenopus.control import ProtocolError, Reply, Request

# `typing` costs every CLI command milliseconds of imports (with `re`): names for the
# type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Seconds a freshly started daemon has to say it is ready. A daemon that dies closes the
# pipe at once; only a slow start (an emulated host runs Python 10-20 times slower) waits.
DAEMON_START_TIMEOUT = 60.0


class XenopusError(Exception):
    """Something the daemon refused or could not do; the message is for a human."""


class DaemonUnavailable(XenopusError):
    """No daemon answers (and none could be started)."""


class NoSuchDomain(XenopusError):
    """The request named a domain that does not exist."""


class DomainExists(XenopusError):
    """A domain of that name already exists (create, rename)."""


class ConfigInvalid(XenopusError):
    """The domain configuration was refused (file, line, key and problem in the message)."""


class DomainStateError(XenopusError):
    """The domain is not in a state that allows the operation (e.g. shut down, paused)."""


class NoParavirt(XenopusError):
    """The guest has no PV control interface for the request (shutdown or reboot without
    `fallback`: xl's "PV control interface not available")."""


# The daemon's failure replies carry a `code` naming the kind of refusal.
ERRORS: dict[str, type[XenopusError]] = {
    "no-such-domain": NoSuchDomain,
    "domain-exists": DomainExists,
    "config": ConfigInvalid,
    "state": DomainStateError,
    "noparavirt": NoParavirt,
}


def error_for(reply: Reply) -> XenopusError:
    """The exception a failure reply stands for."""
    kind = ERRORS.get(str(reply.data.get("code")), XenopusError)
    return kind(reply.error or "request failed")


class Connection:
    """One connection to the daemon (started on demand unless `autostart` is False)."""

    def __init__(self, autostart: bool = True, run_dir: str | None = None):
        self.run_dir = run_dir or ipc.run_dir()
        path = ipc.daemon_socket_path(self.run_dir)
        try:
            self.chan = ipc.Channel.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if not autostart:
                raise DaemonUnavailable(f"no xenopus daemon is running (socket {path})") from None
            start_daemon(self.run_dir)
            self.chan = ipc.Channel.connect(path)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.chan.close()

    def ask(self, req: Request) -> Reply:
        """Send `req`; its reply, refusals included."""
        return decode_reply(self.chan.request(req.to_wire()))

    def send(self, req: Request) -> None:
        """A further message on this connection without waiting (create -c's go-ahead)."""
        self.chan.send(req.to_wire())

    def next_reply(self) -> Reply | None:
        """A further reply to the request in flight (create -c, -F); None if the daemon went."""
        msg = self.chan.recv()
        return None if msg is None else decode_reply(msg)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One request; the reply's data, or the XenopusError it stands for."""
        reply = self.ask(Request(op, args))
        if not reply.ok:
            raise error_for(reply)
        return dict(reply.data)


def decode_reply(msg: dict[str, object]) -> Reply:
    try:
        return Reply.from_wire(msg)
    except ProtocolError as e:
        raise XenopusError(f"the daemon sent a malformed reply: {e}") from None


def request(op: str, **args: Any) -> dict[str, Any]:
    """One request on a connection of its own."""
    with Connection() as conn:
        return conn.request(op, **args)


def start_daemon(base: str | None = None, timeout: float = DAEMON_START_TIMEOUT) -> None:
    """Start the daemon for run directory `base` in the background and wait until it
    listens; its output goes to `base/xenopus.log`. Commands that find no daemon at the
    same time take turns (a lock in the run directory): the first starts it, the others
    find it listening. (Without the lock the second daemon lost the race for the pid file
    and its command failed, "did not start", beside a daemon that had.)"""
    import fcntl

    base = base or ipc.run_dir()
    try:  # trusted only if ours: owner and mode checked, the lock opened without following links
        ipc.ensure_run_dir(base)
        lock = ipc.open_private(os.path.join(base, "autostart.lock"))
    except OSError as e:
        raise DaemonUnavailable(f"cannot use the run directory {base}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held at most one start's timeout by the other
        if not _listening(ipc.daemon_socket_path(base)):
            _spawn_daemon(base, timeout)
    finally:
        os.close(lock)


def _listening(path: str) -> bool:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _spawn_daemon(base: str, timeout: float) -> None:
    import subprocess
    import sys

    logfile = os.path.join(base, "xenopus.log")
    try:
        log_fd = ipc.open_private(logfile, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise DaemonUnavailable(f"cannot use the run directory {base}: {e.strerror or e}") from None
    r, w = os.pipe()
    with open(log_fd, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "xenopus", "daemon", "--background", f"--ready-fd={w}"],
            pass_fds=[w],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "XENOPUS_RUN_DIR": base},
        )
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    answer = os.read(r, 64) if ready else b""
    os.close(r)
    if answer != b"ready\n":
        raise DaemonUnavailable(f"the xenopus daemon did not start; see {logfile}")


def connect_console(path: str, dom: object) -> _socket.socket:
    """A connected socket on the console socket at `path` (the daemon named it): the bare
    `_socket.socket` (no context manager; `socket.socket(fileno=sock.detach())` makes
    one of it)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise XenopusError(f"cannot attach to the console of domain {dom}: {e.strerror}") from None
    return sock
