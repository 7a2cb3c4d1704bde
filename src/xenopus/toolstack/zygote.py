"""The zygote: a warm, single-threaded process that forks domain processes.

Starting a domain process from scratch costs a Python start-up and the import of every
layer (tens of milliseconds); forking a process that has already imported them costs
about a millisecond. The daemon runs one zygote (exec'd, so it shares no state with the
daemon) and sends it spawn requests; each request carries the new domain's control
channel as a file descriptor. The zygote reaps its children and reports how each ended,
with its resource usage.

A domain forked from the zygote shares its address-space layout with every other such
domain, so by default (`xenopus daemon --spares N`, N ≥ 1) domains are not forked: the
zygote keeps N spare processes (toolstack/spare.py), each exec'd afresh as pid 1 of its
own PID namespace and already warm, hands each create one of them, and starts its
replacement in the background. `--spares 0` forks instead (less memory per domain, one
layout for all; the domain's jail reports the `aslr` layer as shared).

A fresh daemon's first domain waits for the first spare, so that one goes first: the
daemon starts the zygote before it imports itself, the zygote starts it before importing
anything but the domain protocol (and every layer only if it forks domains: `--spares 0`,
or a pool that broke), and the others start once it is ready. (Replacements are not
started at a lower priority: on a busy host they would starve, and a burst of creates
would wait for them.) But a replacement that is not needed yet (another spare is ready)
imports at the lowest CPU priority, so that on a busy host it does not take the CPU from
the domain whose create consumed its predecessor, which is building and booting just
then; it is back at normal priority once ready, or as soon as no spare is ready (a
create waits for it).

Messages on the zygote's socket (`xenopus.control`, framed by `xenopus.ipc`):
  daemon → zygote  `Spawn` + 2 or 3 fds: the control channel, the domain's XenStore
                   connection and its interdomain broker channel (SOCK_SEQPACKET)
  zygote → daemon  `Spawned` (the new process's pid), `Exited` (how it ended, its usage)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

# Nothing here imports a layer: `serve` starts the first spare, then imports the domain
# protocol (every layer only before forking a domain: spare.warm).
from xenopus.domain.pidns import PidNamespaceForker
from xenopus.ipc import Channel
from xenopus.toolstack import spare
from xenopus.trace import mark

if TYPE_CHECKING:
    from xenopus.domain.protocol import Spawn

# Spare domain processes the zygote keeps exec'd and warm (toolstack/spare.py): each
# domain gets an address-space layout of its own at the cost of one idle Python per
# spare; creations faster than spares start wait for one. 0: fork from the zygote.
DEFAULT_SPARES = 2
# nice(2) of a replacement spare while another is ready (see above).
BACKGROUND_NICE = 19


def spares_wanted(given: int | None) -> int:
    """`daemon --spares N`, else $XENOPUS_SPARES, else DEFAULT_SPARES; ValueError if the
    variable is not a number."""
    if given is None:
        try:
            given = int(os.environ.get("XENOPUS_SPARES", DEFAULT_SPARES))
        except ValueError:
            raise ValueError("XENOPUS_SPARES must be a number") from None
    return max(0, given)


def start(spares: int) -> tuple[subprocess.Popen, socket.socket]:
    """Exec a zygote keeping `spares` spares; returns it and the daemon's end of its
    socket. A starting daemon calls this before it imports itself: the zygote's spares
    import every layer meanwhile, and a fresh daemon's first domain waits the less."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenopus.toolstack.zygote", str(theirs.fileno()),
         "--spares", str(spares)],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    return proc, ours


class SparePool:
    """Up to `size` spare domain processes (toolstack/spare.py), each exec'd afresh."""

    # Spares that die before they are ready, in a row, before the pool gives up and
    # creates fork from the zygote (sharing its layout) rather than wait for ever.
    MAX_FAILURES = 3

    def __init__(self, size: int, forker: PidNamespaceForker, sel: selectors.BaseSelector):
        self.size = size
        self.forker = forker
        self.sel = sel
        self.starting: dict[int, socket.socket] = {}  # pid -> its socket, until READY
        self.ready: list[tuple[int, socket.socket]] = []
        self.failures = 0
        self.broken: str | None = None
        self.warmed = False  # a spare has been ready once (see fill)
        self.niced: set[int] = set()  # starting at BACKGROUND_NICE

    @property
    def usable(self) -> bool:
        return self.size > 0 and self.broken is None

    def fill(self) -> None:
        """Start spares until the pool has `size` ready or starting. The very first one
        alone: on a fresh daemon a domain waits for it, and it is ready as soon as one
        Python has imported every layer, not when several sharing the CPUs have; after
        that, replacements start together (a burst of creates takes them all)."""
        while self.usable and len(self.starting) + len(self.ready) < self.size:
            if self.starting and not self.warmed:
                return
            self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        background = bool(self.ready)  # not needed yet: see the module's docstring
        pid = self.forker.fork()
        if pid == 0:
            try:
                if background:
                    os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
                theirs.set_inheritable(True)
                os.execv(sys.executable, [sys.executable, "-m", "xenopus.toolstack.spare",
                                          str(theirs.fileno())])
            finally:
                os._exit(127)
        theirs.close()
        mark("zygote: spare forked")
        self.starting[pid] = ours
        self.sel.register(ours, selectors.EVENT_READ, self)
        if background:
            self.niced.add(pid)

    def _normal_priority(self, pid: int) -> None:
        if pid in self.niced:
            self.niced.discard(pid)
            with contextlib.suppress(OSError):  # gone already: reaped as usual
                os.setpriority(os.PRIO_PROCESS, pid, 0)

    def readable(self, sock: socket.socket) -> None:
        """A starting spare said READY, or died trying."""
        pid = next(p for p, s in self.starting.items() if s is sock)
        del self.starting[pid]
        self.sel.unregister(sock)
        self._normal_priority(pid)  # a domain's process from its claim on
        if sock.recv(1) == spare.READY:
            self.failures = 0
            self.warmed = True
            self.ready.append((pid, sock))
            self.fill()
            return
        sock.close()  # it died before it was ready: _reap collects it
        self.failures += 1
        if self.failures >= self.MAX_FAILURES:
            self.broken = f"{self.failures} spares in a row died before they were ready"
            print(f"xenopus zygote: {self.broken}; forking domains from the zygote, which "
                  "share its address-space layout", file=sys.stderr)
        self.fill()

    def take(self) -> tuple[int, socket.socket] | None:
        taken = self.ready.pop(0) if self.ready else None
        self._boost_if_none_ready()
        return taken

    def _boost_if_none_ready(self) -> None:
        """No spare ready: the next create waits for a starting one, no longer background."""
        if not self.ready:
            for pid in list(self.niced):
                self._normal_priority(pid)

    def close(self) -> None:
        """In a forked domain process: the spares are not its business."""
        for sock in [*self.starting.values(), *(s for _, s in self.ready)]:
            sock.close()

    def forget(self, pid: int) -> None:
        """A spare exited unused (killed, or its READY was lost with it)."""
        for i, (p, sock) in enumerate(self.ready):
            if p == pid:
                sock.close()
                del self.ready[i]
        self.niced.discard(pid)
        self._boost_if_none_ready()
        self.fill()


def serve(sock: socket.socket, spares: int = 0,
          compile_seccomp: Callable[[], int | None] = lambda: None) -> None:
    """Fork or hand out one domain process per Spawn. With `spares`, each domain is an
    exec'd spare with its own layout; with none, a fork of this process.
    `compile_seccomp`: the compiled seccomp filter each domain's jail loads (None: each
    compiles its own), called once the first spare has started: it compiles while that
    spare imports, off a fresh daemon's first domain's path, and goes to each domain
    with its spawn."""
    chan = Channel(sock)
    children: dict[int, int] = {}  # pid -> domid
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    forker = PidNamespaceForker()
    pool = SparePool(spares, forker, sel)
    pool.fill()
    seccomp_fd = compile_seccomp()
    warmed = False

    def warm() -> None:
        """Every layer imported (and the seccomp binding, which finds its C library here
        where a jailed child could not) before any domain is forked from here, so that
        forked children start warm. With spares only if the pool breaks and domains are
        forked after all: until then every domain is a spare, which imports its own, and
        a fresh daemon's first domain waits for one, not for this process too."""
        nonlocal warmed
        if not warmed:
            spare.warm()
            gc.freeze()  # imported objects live as long as the zygote: see main
            warmed = True

    if not pool.usable:
        warm()
    # The domain protocol (and the config it carries), while the first spare imports:
    # a fresh daemon's first request comes about when that spare is ready.
    from xenopus.control import ProtocolError
    from xenopus.domain.protocol import Spawn, Spawned
    pending: collections.deque[tuple[Spawn, list[int]]] = collections.deque()
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                while True:
                    try:
                        os.read(wake_r, 256)
                    except BlockingIOError:
                        break
                _reap(chan, children, pool)
                continue
            if key.data is pool:
                pool.readable(key.fileobj)  # type: ignore[arg-type]
                continue
            msg, fds = chan.recv_with_fds(3)
            for fd in fds:  # SCM_RIGHTS fds arrive inheritable: no spare exec'd later gets one
                os.set_inheritable(fd, False)
            if msg is None:
                return  # the daemon is gone (spares die with us: PR_SET_PDEATHSIG)
            try:
                spawn = Spawn.from_wire(msg)
                if len(fds) not in (2, 3):
                    raise ProtocolError(f"spawn: {len(fds)} file descriptors, not 2 or 3")
            except ProtocolError as e:  # the daemon gives up on it after its timeout
                print(f"xenopus zygote: refused a request: {e}", file=sys.stderr)
                for fd in fds:
                    os.close(fd)
                continue
            mark("zygote: spawn received")
            pending.append((spawn, fds))
        while pending:  # in order; a create waits for a spare that is still starting
            if pool.usable:
                taken = pool.take()
                if taken is None:
                    break
                pid, spare_sock = taken
                try:
                    # The filter last, flagged, after the 2 or 3 fds of the spawn.
                    Channel(spare_sock).send(
                        {**pending[0][0].to_wire(), "seccomp": seccomp_fd is not None},
                        pending[0][1] + ([seccomp_fd] if seccomp_fd is not None else []))
                except OSError:  # it died after READY, not yet reaped: the next one
                    pool.fill()
                    continue
                finally:
                    spare_sock.close()
                spawn, fds = pending.popleft()
            else:
                spawn, fds = pending.popleft()
                warm()
                pid = _fork_domain(forker, pool, chan, sel, wake_r, wake_w, spawn, fds,
                                   seccomp_fd)
            # Closed before any further fork: a child holding a copy of the domain's
            # control channel would hide its end from the daemon.
            for fd in fds:
                os.close(fd)
            children[pid] = spawn.domid
            chan.send(Spawned(spawn.domid, pid).to_wire())
            mark("zygote: handed over")
            pool.fill()  # a consumed spare's replacement starts now, in the background
        _reap(chan, children, pool)


def _fork_domain(forker: PidNamespaceForker, pool: SparePool, chan: Channel,
                 sel: selectors.BaseSelector, wake_r: int, wake_w: int, spawn: Spawn,
                 fds: list[int], seccomp_fd: int | None) -> int:
    # Each domain process is pid 1 of a PID namespace of its own: it sees no other
    # process. (Made here: only children enter a new one.)
    pid = forker.fork()
    if pid == 0:
        chan.close()
        pool.close()
        sel.close()
        os.close(wake_r)
        os.close(wake_w)
        spare.become_domain(spawn, fds, fresh_layout=False, seccomp_fd=seccomp_fd)
    return pid


def _reap(chan: Channel, children: dict[int, int], pool: SparePool) -> None:
    """Collect every child that has exited: a domain (reported) or a spare (replaced).
    Spares are children too, so this runs until wait4 has none, not until no domain is
    left (a spare dying while no domain ran stayed a zombie, and unreplaced)."""
    from xenopus.domain.protocol import Exited  # imported by serve, after the spares' start

    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        domid = children.pop(pid, None)
        if domid is None:
            pool.forget(pid)
            continue
        chan.send(Exited(domid, pid, os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                         usage.ru_utime + usage.ru_stime).to_wire())


def main() -> None:
    parser = argparse.ArgumentParser(prog="xenopus.toolstack.zygote")
    parser.add_argument("fd", type=int)
    parser.add_argument("--spares", type=int, default=0)
    args = parser.parse_args()
    spare.die_with_parent()  # the zygote is useless without its daemon
    # Everything imported so far lives as long as the zygote: keep the collector from
    # walking it in each child (touching an object copies its page: PSS per domain).
    gc.freeze()
    serve(socket.socket(fileno=args.fd), spares=max(0, args.spares), compile_seccomp=_compile_seccomp)


def _compile_seccomp() -> int | None:
    """The domains' seccomp filter, compiled once here (the only use of libseccomp) while
    the first spare imports; None if it cannot be, and each domain's jail then tries
    itself and reports why not."""
    try:
        from xenopus.domain import jail, seccomp_policy

        return seccomp_policy.compile_filter(log_only="log" in jail.debug_flags(),
                                             ioctls=jail.IOCTLS)
    except (ImportError, OSError, RuntimeError, ValueError) as e:
        print(f"xenopus zygote: cannot compile the seccomp filter: {e}", file=sys.stderr)
        return None


if __name__ == "__main__":
    main()
