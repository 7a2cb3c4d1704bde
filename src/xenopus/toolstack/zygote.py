"""The zygote: a warm, single-threaded process that forks domain processes.

Starting a domain process from scratch costs a Python start-up and the import of every
layer (tens of milliseconds); forking a process that has already imported them costs
about a millisecond. The daemon runs one zygote (exec'd, so it shares no state with the
daemon) and sends it spawn requests; each request carries the new domain's control
channel as a file descriptor. The zygote reaps its children and reports how each ended,
with its resource usage.

Protocol on the zygote's socket (JSON lines, `xenopus.ipc`):
  daemon → zygote  {"op": "spawn", "domid": N, "config": {...}, "run_dir": "..."}
                   + 2 or 3 fds: the control channel, the domain's XenStore connection
                     and its interdomain broker channel (SOCK_SEQPACKET)
  zygote → daemon  {"spawned": N, "pid": P}
  zygote → daemon  {"exited": N, "pid": P, "status": S, "maxrss_kib": K, "cpu": T}
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

# Imported here, before any fork, so that children start warm.
import xenopus.domain.process as domain_process  # noqa: E402, I001
from xenopus.ipc import Channel


def _child(chan: Channel, req: dict, fd: int, xs_fd: int, id_fd: int | None) -> None:
    code = 1
    try:
        chan.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        code = domain_process.run_domain(
            req["domid"], req["config"], fd, req["run_dir"], paused=bool(req.get("paused")),
            xenstore_fd=xs_fd, interdomain_fd=id_fd,
        )
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
            req, fds = chan.recv_with_fds(3)
            if req is None:
                return  # the daemon is gone
            if req.get("op") != "spawn" or len(fds) not in (2, 3):
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                sel.close()
                os.close(wake_r)
                os.close(wake_w)
                _child(chan, req, fds[0], fds[1], fds[2] if len(fds) == 3 else None)
            for fd in fds:
                os.close(fd)
            children[pid] = req["domid"]
            chan.send({"spawned": req["domid"], "pid": pid})
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
        chan.send(
            {
                "exited": domid,
                "pid": pid,
                "status": os.waitstatus_to_exitcode(status),
                "maxrss_kib": usage.ru_maxrss,
                "cpu": usage.ru_utime + usage.ru_stime,
            }
        )


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
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
