"""The CLI's side of `xenopus save`, `restore`, `migrate` and `migrate-receive` (xl's).

The CLI opens the file the user named, as that user, and hands the open file to the
daemon (which passes it on to the domain process: SCM_RIGHTS both ways); neither the
daemon nor the domain process opens a user-named path. A save goes to a temporary file
beside the target, which the domain process fsyncs and the CLI renames into place once
the save has succeeded: FILE is the whole image or untouched.

On a terminal, a progress bar (tqdm, imported only then) follows the file: the open
file's size for a save, its offset (shared with the domain process, which reads through
the same open file description) for a restore.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from types import SimpleNamespace as Namespace
from typing import Any

from xenopus.control import Request
from xenopus.toolstack.cli import CliError, connect, request

PAGE_RECORD_OCTETS = 4096 + 8  # a page and its frame number in PAGE_DATA: pages ≈ octets / this
PROGRESS_INTERVAL = 0.2  # seconds between two updates of the bar


class Progress:
    """A tqdm bar in MiB with MiB/s and the pages moved so far, following `measure()`."""

    def __init__(self, measure: Callable[[], int], total: int | None, what: str):
        from tqdm import tqdm  # only on a terminal: the CLI starts without it

        self.measure = measure
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=what, dynamic_ncols=True, leave=False)

    def update(self) -> None:
        done = self.measure()
        self.bar.set_postfix(pages=done // PAGE_RECORD_OCTETS, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def send_file(req: Request, fd: int, measure: Callable[[], int] | None, total: int | None,
              what: str) -> dict[str, Any]:
    """Ask the daemon `req`, hand it `fd` when it asks, and wait for the answer (with a
    progress bar on a terminal, following `measure()` octets); the answer's data, or
    CliError."""
    conn = connect()
    chan = conn.chan
    try:
        first = conn.ask(req)
        if not first.ok:
            raise CliError(first.error or f"{req.op} refused")
        if first.data.get("send_fds") != 1:
            raise CliError(f"the daemon did not ask for the file: {dict(first.data)}")
        chan.send({"fds": 1}, [fd])
        bar = Progress(measure, total, what) if measure and sys.stdout.isatty() else None
        try:
            while bar is not None and not select.select([chan.sock], [], [], PROGRESS_INTERVAL)[0]:
                bar.update()
            reply = conn.next_reply()
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
                  fd, lambda: os.fstat(fd).st_size, None, f"Saving {args.dom}")
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
        done = send_file(Request("restore", {"paused": args.paused, **_config_args(config)}),
                         fd, lambda: os.lseek(fd, 0, os.SEEK_CUR), size, f"Restoring {path}")
    finally:
        os.close(fd)
    if args.debug:
        print(f"restored domain {done['domid']} ({done['name']}): {done['pages']} pages, "
              f"{done['octets']} octets in {done['seconds']:.3f} s", file=sys.stderr)
    return 0


# -- migrate (xl migrate / xl migrate-receive) ------------------------------------------
# The sender runs `SSHCMD HOST xenopus migrate-receive` (SSHCMD: "ssh" unless -s) and
# talks to it over its stdin and stdout, so any transport that carries a pipe carries a
# migration. On the receiver's stdin: the save stream, then GO. On its stdout: RESTORED
# once the domain is built and restored (paused), RUNNING once it runs. The source stays
# paused until RUNNING and is then destroyed; anything else resumes it.
GO = b"go\n"
RESTORED = b"restored\n"
RUNNING = b"running\n"


def _line(stream: Any) -> bytes:
    return stream.readline() if stream is not None else b""


def migrate(args: Namespace) -> int:
    """xl migrate [-s SSHCMD] [-e] [-C CFG] [--debug] DOM HOST."""
    import shlex
    import subprocess

    command = f"{args.ssh or 'ssh'} {shlex.quote(args.host)} xenopus migrate-receive"
    receiver = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
    assert receiver.stdin is not None and receiver.stdout is not None
    resumed = False
    try:
        try:
            sent = send_file(Request("save", {"dom": args.dom, "paused": True, "live": True,
                                              **_config_args(args.config)}),
                             receiver.stdin.fileno(), None, None, "")
        except CliError as e:
            resumed = True  # a failed save resumes the domain itself
            raise CliError(f"migration failed, domain {args.dom} resumed: {e}") from None
        if _line(receiver.stdout) != RESTORED:
            raise CliError("the receiver did not restore the domain")
        try:
            receiver.stdin.write(GO)
            receiver.stdin.flush()
        except BrokenPipeError:
            raise CliError("the receiver went away before running the domain") from None
        if _line(receiver.stdout) != RUNNING:
            raise CliError("the receiver did not run the domain")
        request("destroy", dom=args.dom)  # it runs over there: the source goes
        resumed = True
        if args.debug:
            print(f"migrated {args.dom}: {sent['pages']} pages in {sent['rounds']} rounds, "
                  f"{sent['octets']} octets in {sent['seconds']:.3f} s; stopped for "
                  f"{sent['downtime'] * 1000:.1f} ms ({sent['last_round']} pages)",
                  file=sys.stderr)
    except BaseException:
        if not resumed:
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
    done = send_file(Request("restore", {"paused": True}), sys.stdin.fileno(), None, None, "")
    out.write(RESTORED)
    out.flush()
    if os.read(sys.stdin.fileno(), len(GO)) != GO:  # the sender gave up
        request("destroy", dom=str(done["domid"]))
        raise CliError("the sender did not confirm the migration; domain destroyed")
    request("unpause", dom=str(done["domid"]))
    out.write(RUNNING)
    out.flush()
    if args.debug:
        print(f"received domain {done['domid']} ({done['name']}): {done['pages']} pages, "
              f"{done['octets']} octets in {done['seconds']:.3f} s", file=sys.stderr)
    return 0
