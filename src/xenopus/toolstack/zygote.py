"""The zygote: a warm, single-threaded process that forks domain processes.

Starting a domain process from scratch costs a Python start-up and the import of every
layer (tens of milliseconds); forking a process that has already imported them costs
about a millisecond. The daemon runs one zygote (exec'd, so it shares no state with the
daemon) and sends it spawn requests; each request carries the new domain's control
channel as a file descriptor. The zygote reaps its children and reports how each ended,
with its resource usage.

Messages on the zygote's socket (`xenopus.control`, framed by `xenopus.ipc`):
  daemon → zygote  `Spawn` + 2 or 3 fds: the control channel, the domain's XenStore
                   connection and its interdomain broker channel (SOCK_SEQPACKET)
  zygote → daemon  `Spawned` (the new process's pid), `Exited` (how it ended, its usage)
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys

# Imported here, before any fork, so that children start warm (the seccomp binding finds
# its C library here, which a jailed child could not).
import xenopus.domain.process as domain_process  # noqa: E402, I001
from xenopus.control import ProtocolError
from xenopus.domain import jail
from xenopus.domain.protocol import (
    Exited,
    Spawn,
    Spawned,
)
from xenopus.ipc import Channel

with contextlib.suppress(ImportError, OSError):  # without libseccomp the layer says it is missing
    import xenopus.domain.seccomp_policy  # noqa: F401


def _child(chan: Channel, spawn: Spawn, fd: int, xs_fd: int, id_fd: int | None) -> None:
    code = 1
    try:
        chan.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        code = domain_process.run_domain(spawn, fd, xenstore_fd=xs_fd, interdomain_fd=id_fd)
    except BaseException:  # noqa: BLE001 - the child must never return into the zygote loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> None:
    chan = Channel(sock)
    children: dict[int, int] = {}  # pid -> domid
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    forker = jail.PidNamespaceForker()
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                while True:
                    try:
                        os.read(wake_r, 256)
                    except BlockingIOError:
                        break
                _reap(chan, children)
                continue
            msg, fds = chan.recv_with_fds(3)
            if msg is None:
                return  # the daemon is gone
            try:
                spawn = Spawn.from_wire(msg)
                if len(fds) not in (2, 3):
                    raise ProtocolError(f"spawn: {len(fds)} file descriptors, not 2 or 3")
            except ProtocolError as e:  # the daemon gives up on it after its timeout
                print(f"xenopus zygote: refused a request: {e}", file=sys.stderr)
                for fd in fds:
                    os.close(fd)
                continue
            # Each domain process is pid 1 of a PID namespace of its own: it sees no other
            # process. (Made here: only children enter a new one.)
            pid = forker.fork()
            if pid == 0:
                sel.close()
                os.close(wake_r)
                os.close(wake_w)
                _child(chan, spawn, fds[0], fds[1], fds[2] if len(fds) == 3 else None)
            for fd in fds:
                os.close(fd)
            children[pid] = spawn.domid
            chan.send(Spawned(spawn.domid, pid).to_wire())
        _reap(chan, children)


def _reap(chan: Channel, children: dict[int, int]) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        domid = children.pop(pid, None)
        if domid is None:
            continue
        chan.send(Exited(domid, pid, os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                         usage.ru_utime + usage.ru_stime).to_wire())


def main() -> None:
    fd = int(sys.argv[1])
    # The zygote is useless without its daemon: die with it (prctl PR_SET_PDEATHSIG).
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    # Everything imported so far lives as long as the zygote: keep the collector from
    # walking it in each child (touching an object copies its page: PSS per domain).
    gc.freeze()
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
