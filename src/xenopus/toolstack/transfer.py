"""The CLI's side of `xenopus save`, `restore`, `migrate` and `migrate-receive` (xl's).

The CLI opens the file the user named, as that user, and hands the open file to the
daemon (which passes it on to the domain process: SCM_RIGHTS both ways); neither the
daemon nor the domain process opens a user-named path. A save goes to a temporary file
beside the target, which the domain process fsyncs and the CLI renames into place once
the save has succeeded: FILE is the whole image or untouched.

When stderr is a terminal, a progress bar there (tqdm, imported only then) follows the
file: the open file's size for a save, its offset (shared with the domain process, which
reads through the same open file description) for a restore; a migration's stream then
goes through the CLI (`StreamRelay`), which shows the pages sent, their rate, the
pre-copy round and the downtime stopping now would cost.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace as Namespace
from typing import Any

from xenopus.client import XenopusError
from xenopus.control import INCOMING, MIGRATED_AWAY, Request
from xenopus.toolstack.cli import CliError, connect, request

PAGE_RECORD_OCTETS = 4096 + 8  # a page and its frame number in PAGE_DATA: pages ≈ octets / this
PROGRESS_INTERVAL = 0.2  # seconds between two updates of the bar
Measure = Callable[[], tuple[int, dict[str, object]]]  # octets so far, what else to show


def showing_progress() -> bool:
    """Progress bars go to stderr, and only when it is a terminal."""
    return sys.stderr.isatty()


class Progress:
    """A tqdm bar on stderr in octets with their rate, and what `measure()` adds to it."""

    def __init__(self, measure: Measure, total: int | None, what: str):
        from tqdm import tqdm  # only on a terminal: the CLI starts without it

        self.measure = measure
        try:  # a terminal that reports no size (a bare pty) gets 80x24, not nothing
            size = os.get_terminal_size(sys.stderr.fileno())
            sized = size.columns > 0 and size.lines > 0
        except OSError:
            sized = False
        fixed = {} if sized else {"ncols": 80, "nrows": 24}
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=what, dynamic_ncols=sized, leave=False, file=sys.stderr,
                        **fixed)

    def update(self) -> None:
        done, postfix = self.measure()
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.update()  # the final figures, shown once whatever the refresh interval
        self.bar.refresh()
        self.bar.close()


def _file_octets(measure: Callable[[], int]) -> Measure:
    def octets() -> tuple[int, dict[str, object]]:
        done = measure()
        return done, {"pages": done // PAGE_RECORD_OCTETS}

    return octets


def send_file(req: Request, fd: int, measure: Measure | None, total: int | None,
              what: str, finished: Callable[[], None] | None = None,
              ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Ask the daemon `req`, hand it `fd` when it asks (calling `ready()` first: the
    daemon has taken the request and waits for the file), and wait for the answer (with
    a progress bar on a terminal, following `measure()`); the answer's data, or
    CliError."""
    conn = connect()
    chan = conn.chan
    try:
        first = conn.ask(req)
        if not first.ok:
            raise CliError(first.error or f"{req.op} refused")
        if first.data.get("send_fds") != 1:
            raise CliError(f"the daemon did not ask for the file: {dict(first.data)}")
        if ready is not None:
            ready()
        chan.send({"fds": 1}, [fd])
        bar = Progress(measure, total, what) if measure and showing_progress() else None
        try:
            while bar is not None and not select.select([chan.sock], [], [], PROGRESS_INTERVAL)[0]:
                bar.update()
            reply = conn.next_reply()
            if bar is not None and finished is not None:
                finished()  # e.g. the stream's last octets still on their way
        finally:
            if bar is not None:
                bar.close()
    finally:
        conn.close()
    if reply is None:
        raise CliError("lost the connection to the daemon")
    if not reply.ok:
        raise CliError(reply.error or f"{req.op} failed")
    return dict(reply.data)


class StreamRelay(threading.Thread):
    """Carries a live save from the domain process (a pipe, `src`) to the receiver
    (`dst`), reading the record headers on the way (docs/snapshot-stream.md) for the
    progress bar: pages sent, the pre-copy round (ROUND records) and what stopping now
    would cost. Bodies are spliced pipe to pipe, not copied through Python."""

    def __init__(self, src: int, dst: int):
        super().__init__(name="stream-relay", daemon=True)
        self.src, self.dst = src, dst
        self.octets = self.pages = self.round = self.round_pages = 0
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self.finished = False  # the sender's end closed and this thread joined

    def run(self) -> None:
        try:
            self._relay()
        except (OSError, EOFError) as e:  # the receiver or the sender went away
            self.error = e
        finally:
            os.close(self.src)  # a sender still writing learns the receiver has gone

    def _relay(self) -> None:
        from xenopus import stream

        self._write(self._read(stream.IMAGE_HEADER_SIZE))
        while True:
            head = self._read(stream.RECORD_HEADER_SIZE)
            self._write(head)
            rtype, length = struct.unpack_from("<II", head)
            left = length + (-length % stream.ALIGN)
            if rtype == stream.REC_PAGE_DATA and length >= 8:
                count = struct.unpack("<I", self._read(4))[0]
                self._write(struct.pack("<I", count))
                self.pages += count
                left -= 4
            elif rtype == stream.REC_ROUND and length == stream.ROUND_BODY.size:
                body = self._read(length)
                self._write(body)
                self.round, _, self.round_pages = stream.ROUND_BODY.unpack(body)
                left = 0
            while left:
                n = os.splice(self.src, self.dst, left)
                if not n:
                    raise EOFError("the stream ended early")
                left -= n
                self.octets += n
            if rtype == stream.REC_END:
                return

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(self.src, n - len(data))
            if not chunk:
                raise EOFError("the stream ended early")
            data += chunk
        return data

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.dst, view):]
        self.octets += len(data)

    def measure(self) -> tuple[int, dict[str, object]]:
        rate = self.octets / max(time.monotonic() - self.started, 1e-3)
        # Stopping now would copy this round's pages while the guest is stopped.
        downtime = self.round_pages * PAGE_RECORD_OCTETS / rate if rate else 0.0
        return self.octets, {"round": "stop-and-copy" if self.round == 0 and self.pages
                             else self.round, "pages": self.pages,
                             "downtime": f"~{downtime * 1000:.0f}ms"}


def _config_args(path: str | None) -> dict[str, Any]:
    return {"path": path, "overrides": [], "cwd": os.getcwd()} if path else {}


def save(args: Namespace) -> int:
    """xl save [-c] [-p] DOM FILE [CFG]."""
    target = os.path.abspath(args.file)
    directory, name = os.path.split(target)
    import tempfile

    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    except OSError as e:
        raise CliError(f"cannot write {args.file}: {e.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open(2) would have made FILE
        send_file(Request("save", {"dom": args.dom, "checkpoint": args.checkpoint,
                                   "paused": args.paused, **_config_args(args.config)}),
                  fd, _file_octets(lambda: os.fstat(fd).st_size), None, f"Saving {args.dom}")
        os.rename(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    finally:
        os.close(fd)
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)  # the rename, durable
    finally:
        os.close(dirfd)
    return 0


def restore(args: Namespace) -> int:
    """xl restore [-p] [-e] [-d] [CFG] FILE."""
    if len(args.paths) > 2:
        raise CliError("restore takes [CFG] FILE")
    config, path = (None, *args.paths) if len(args.paths) == 1 else args.paths
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size or None
        done = send_file(Request("restore", {"paused": args.paused,
                                             "clone": bool(getattr(args, "clone", False)),
                                             **_config_args(config)}),
                         fd, _file_octets(lambda: os.lseek(fd, 0, os.SEEK_CUR)), size,
                         f"Restoring {os.path.basename(path)}")
    finally:
        os.close(fd)
    if args.debug:
        print(f"restored domain {done['domid']} ({done['name']}): {done['pages']} pages, "
              f"{done['octets']} octets in {done['seconds']:.3f} s{_phases(done)}{_cpu(done)}",
              file=sys.stderr)
    return 0


def _phases(done: dict[str, Any]) -> str:
    """The domain process's start-up phases as `restore -d` and `clone -d` print them:
    " (setup 1.2 ms, build ...)" in the order it went through them."""
    phases = done.get("phases") or {}
    if not isinstance(phases, dict) or not phases:
        return ""
    return " (" + ", ".join(f"{name} {float(s) * 1000:.1f} ms" for name, s in phases.items()) + ")"


def _cpu(done: dict[str, Any]) -> str:
    """The CPU time the domain process spent from its start to then (every thread's):
    on a busy host its start-up's wall time is more, waiting for a CPU."""
    cpu = done.get("cpu_since_start")
    return f", {float(cpu) * 1000:.1f} ms of CPU" if isinstance(cpu, int | float) else ""


def clone(args: Namespace) -> int:
    """xenopus clone [-p] DOM|FILE NAME...: a FILE (a path with a '/', or a file that
    exists) is handed to the daemon as a restore's; otherwise SOURCE names a domain."""
    source = args.source
    names = list(args.names)
    if "/" in source or os.path.isfile(source):
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CliError(f"cannot read {source}: {e.strerror}") from None
        try:
            done = send_file(Request("clone", {"file": True, "names": names,
                                               "paused": args.paused}), fd, None, None, "")
        finally:
            os.close(fd)
    else:
        done = request("clone", dom=source, names=names, paused=args.paused)
    if args.debug:
        for d in done["domains"]:
            print(f"cloned domain {d['domid']} ({d['name']}): {d['pages']} pages mapped in "
                  f"{d['seconds'] * 1000:.2f} ms, restored {d['since_start'] * 1000:.2f} ms "
                  f"after its process started{_phases(d)}{_cpu(d)}", file=sys.stderr)
    return 0


# -- migrate (xl migrate / xl migrate-receive) ------------------------------------------
# The sender runs `SSHCMD HOST xenopus migrate-receive` (SSHCMD: "ssh" unless -s; with
# -s "", HOST itself is the command, as xl's rune) and talks to it over its stdin and
# stdout, so any transport that carries a pipe carries a migration. On the receiver's
# stdout first BANNER, once its daemon waits for the stream (xl_migrate.c's
# migrate_receiver_banner: the sender starts the save only then, so a receiver that
# cannot start costs the source nothing, and the guest's pre-copy does not wait on a
# receiver still starting). On its stdin: the save stream, then GO. On its stdout then:
# RESTORED once the domain is built and restored (paused), RUNNING once it runs. The
# source stays paused until RUNNING and is then destroyed; anything else resumes it.
# With -p the receiver leaves it paused (RUNNING then means: it is yours).
BANNER = b"xenopus migration receiver ready, send binary domain data.\n"
# The migration's pipe is widened to this (F_SETPIPE_SZ, where it is a pipe and we may):
# the receiver's daemon builds the domain once the stream's DOMAIN_CONFIG has come, and
# meanwhile the sender's first pre-copy round goes on into the pipe instead of waiting
# on it (at ~100 MB/s, 16 MiB is the ~150 ms a build takes here).
PIPE_OCTETS = 16 << 20
GO = b"go\n"
RESTORED = b"restored\n"
RUNNING = b"running\n"


def widen_pipe(fd: int) -> None:
    """Best effort: a pipe as large as PIPE_OCTETS, or as large as this user may make it
    (/proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE); anything else as it is."""
    import fcntl
    import stat

    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return
    for size in (PIPE_OCTETS, 1 << 20):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


def _line(stream: Any) -> bytes:
    return stream.readline() if stream is not None else b""


def receiver_command(args: Namespace) -> str:
    """xl_migrate.c main_migrate's rune: `exec SSHCMD HOST xenopus migrate-receive` with
    -e, -d (--debug) and -p passed on; with an empty SSHCMD (-s ""), HOST alone."""
    import shlex

    if args.ssh == "":
        return args.host
    flags = "".join(flag for flag, on in ((" -e", getattr(args, "no_wait", False)),
                                          (" -d", args.debug),
                                          (" -p", getattr(args, "paused", False))) if on)
    ssh = "ssh" if args.ssh is None else args.ssh
    return f"exec {ssh} {shlex.quote(args.host)} xenopus migrate-receive{flags}"


def migrate(args: Namespace) -> int:
    """xl migrate [-s SSHCMD] [-e] [-C CFG] [--debug] [-p] DOM HOST."""
    import subprocess

    started = time.monotonic()
    receiver = subprocess.Popen(receiver_command(args), shell=True, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
    assert receiver.stdin is not None and receiver.stdout is not None
    widen_pipe(receiver.stdin.fileno())
    resumed = False
    away: str | None = None  # the source's name once renamed NAME--migratedaway
    try:
        banner = _line(receiver.stdout)
        ready = time.monotonic()
        if banner != BANNER:  # nothing has happened to the domain yet
            resumed = True
            raise CliError("the receiver did not start (expected its banner, got "
                           f"{banner[:80]!r}); domain {args.dom} left running here")
        relay = None
        out = receiver.stdin.fileno()
        if showing_progress():  # the stream goes through us, to be watched
            src, out = os.pipe()
            relay = StreamRelay(src, receiver.stdin.fileno())
            relay.start()

        def relayed() -> None:
            if relay is not None and not relay.finished:
                relay.finished = True
                os.close(out)  # the domain process holds its own end
                relay.join()

        try:
            sent = send_file(Request("save", {"dom": args.dom, "paused": True, "live": True,
                                              **_config_args(args.config)}),
                             out, relay.measure if relay else None, None,
                             f"Migrating {args.dom}", relayed)
        except CliError as e:
            resumed = True  # a failed save resumes the domain itself
            raise CliError(f"migration failed, domain {args.dom} resumed: {e}") from None
        finally:
            relayed()
        if relay is not None and relay.error is not None:
            raise CliError(f"the stream did not reach the receiver: {relay.error}")
        streamed = time.monotonic()
        if _line(receiver.stdout) != RESTORED:
            raise CliError("the receiver did not restore the domain")
        # xl_migrate.c: the source becomes NAME--migratedaway before the receiver is told
        # to go, so the receiver's NAME--incoming can take the name (on this same host).
        name = str(sent.get("name") or args.dom)
        request("rename", dom=args.dom, name=name + MIGRATED_AWAY)
        away = name + MIGRATED_AWAY
        try:
            receiver.stdin.write(GO)
            receiver.stdin.flush()
        except BrokenPipeError:
            raise CliError("the receiver went away before running the domain") from None
        if _line(receiver.stdout) != RUNNING:
            raise CliError("the receiver did not run the domain")
        running = time.monotonic()
        request("destroy", dom=away)  # it runs over there: the source goes
        resumed = True
        if args.debug:
            print(f"migrated {args.dom}: {sent['pages']} pages in {sent['rounds']} rounds, "
                  f"{sent['octets']} octets in {sent['seconds']:.3f} s; stopped for "
                  f"{sent['downtime'] * 1000:.1f} ms ({sent['last_round']} pages); receiver "
                  f"ready in {(ready - started) * 1000:.0f} ms, the stream and its restore "
                  f"{(streamed - ready) * 1000:.0f} ms, running there "
                  f"{(running - streamed) * 1000:.0f} ms later (the guest stopped "
                  f"{(running - sent['stopped_at']) * 1000:.1f} ms until then), source "
                  f"destroyed in {(time.monotonic() - running) * 1000:.0f} ms", file=sys.stderr)
    except BaseException:
        if not resumed:
            if away is not None:  # its name back first (xl: libxl_domain_rename back)
                request("rename", dom=away, name=away.removesuffix(MIGRATED_AWAY))
            request("unpause", dom=args.dom)
            print(f"xenopus: migration failed; domain {args.dom} resumed here", file=sys.stderr)
        raise
    finally:
        receiver.stdin.close()
        status = receiver.wait()
    return 0 if status == 0 else 1


def migrate_receive(args: Namespace) -> int:
    """xl migrate-receive: the stream on stdin, the answers on stdout (see `migrate`)."""
    out = sys.stdout.buffer
    widen_pipe(sys.stdin.fileno())

    def banner() -> None:
        out.write(BANNER)
        out.flush()

    done = send_file(Request("restore", {"paused": True, "incoming": True}), sys.stdin.fileno(),
                     None, None, "", ready=banner)
    out.write(RESTORED)
    out.flush()
    if os.read(sys.stdin.fileno(), len(GO)) != GO:  # the sender gave up
        request("destroy", dom=str(done["domid"]))
        raise CliError("the sender did not confirm the migration; domain destroyed")
    if not getattr(args, "paused", False):  # -p: it stays paused here (xl migrate -p)
        request("unpause", dom=str(done["domid"]))
    out.write(RUNNING)
    out.flush()
    # NAME--incoming becomes NAME (xl_migrate.c migrate_receive), which the sender has
    # given up by now (NAME--migratedaway). xl renames before it unpauses; here the guest
    # runs first (one request less of downtime), so a rename that fails leaves it running
    # under the temporary name rather than destroyed after it ran.
    name = str(done["name"]).removesuffix(INCOMING)
    try:
        request("rename", dom=str(done["domid"]), name=name)
    except XenopusError as e:
        print(f"xenopus: domain {done['domid']} runs here as {done['name']}: {e}", file=sys.stderr)
        return 1
    if args.debug:
        print(f"received domain {done['domid']} ({name}): {done['pages']} pages, "
              f"{done['octets']} octets in {done['seconds']:.3f} s{_phases(done)}{_cpu(done)}",
              file=sys.stderr)
    return 0
