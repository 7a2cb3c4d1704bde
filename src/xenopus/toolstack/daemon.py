"""The host daemon: owns the domain table and domain IDs, and spawns domain processes.

It is single-threaded (asyncio) and never touches guest memory or a vCPU: each domain
runs in its own process, forked by the zygote, and talks to the daemon over its own
control channel. Clients (the CLI) send `xenopus.control` requests on
`$XENOPUS_RUN_DIR/xenopus.sock`. A request is handled by the daemon step of its name
(`daemon_step`) or, when there is none, forwarded to the domain it names, whose process
has the step (`xenopus.domain.process.domain_step`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from xenopus import ipc
from xenopus.control import Reply, Request
from xenopus.domain.config import ConfigError, DomainConfig, load_config
from xenopus.domain.protocol import (
    Exited,
    Finished,
    LogLine,
    Ready,
    Spawn,
    Spawned,
    StartFailed,
    StateChanged,
    Stopped,
    decode_from_domain,
    decode_from_zygote,
)
from xenopus.domain.restart import RestartBackoff
from xenopus.toolstack.broker import InterdomainBroker
from xenopus.toolstack.xenstored import XenStored

log = logging.getLogger("xenopus.daemon")

DMESG_LINES = 10000
DESTROY_GRACE = 5.0  # seconds a domain process gets to exit before SIGKILL


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


@dataclass
class DomainRecord:
    domid: int
    config: DomainConfig
    state: str = "starting"  # running | paused | shutdown | crashed | dying
    pid: int | None = None
    created: float = field(default_factory=time.time)
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    seq: int = 0
    last_stop: Stopped | None = None
    exit_info: Exited | None = None  # from the zygote, once the process has exited
    final: Finished | None = None  # the domain process's own report of its end
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    protocol: str | None = None
    xen_path: str = "off"
    console: str = "serial"  # the console `xenopus console DOM` attaches to by default
    restarts: RestartBackoff = field(default_factory=RestartBackoff)  # its process's

    @property
    def name(self) -> str:
        return self.config.name

    async def request(self, req: Request, timeout: float = 10.0) -> Reply:
        """Ask the domain process; its reply, refusals included."""
        if self.writer is None or self.writer.is_closing():
            raise RequestError(f"domain {self.domid} has no running process")
        self.seq += 1
        seq = self.seq
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        ipc.write_message(self.writer, req.numbered(seq).to_wire())
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestError(f"domain {self.domid} did not answer {req.op!r}") from None
        finally:
            self.pending.pop(seq, None)

    async def query(self, op: str, key: str | None, default: Any, timeout: float) -> Any:
        """`key` of the answer to `op` (None: the whole answer); `default` when there is no
        process or no answer (listings show every domain, answering or not)."""
        if self.writer is not None:
            with contextlib.suppress(RequestError, ConnectionError):
                data = (await self.request(Request(op), timeout)).data
                return data if key is None else data.get(key, default)
        return default


class Client(NamedTuple):
    """A client's connection, for the steps that talk on it beyond one reply (create)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


DaemonStep = Callable[["Daemon", Request, Client], Awaitable[Reply | None]]
STEPS: dict[str, DaemonStep] = {}


def daemon_step(op: str) -> Callable[[DaemonStep], DaemonStep]:
    """Register the daemon's handler for requests named `op`. It returns the reply (None:
    it has written its replies itself). A per-domain `op` with no daemon step is forwarded
    to the named domain's process."""

    def register(handler: DaemonStep) -> DaemonStep:
        STEPS[op] = handler
        return handler

    return register


class Daemon:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.domains: dict[int, DomainRecord] = {}
        self.next_domid = 1
        self._zygote: subprocess.Popen | None = None
        self._zsock: socket.socket | None = None
        self._zwriter: asyncio.StreamWriter | None = None
        self._zevents: asyncio.Task | None = None
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._stop = asyncio.Event()
        self._lock_fd = -1
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.xenstore = XenStored()
        self.interdomain = InterdomainBroker()
        # The host log `xenopus dmesg` prints (Xen's console ring): guests' console_io and
        # port-0xE9 lines, bounded like Xen's.
        self.dmesg: collections.deque[str] = collections.deque(maxlen=DMESG_LINES)

    # -- start-up -----------------------------------------------------------------------
    def acquire_lock(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.run_dir / "xenopus.pid", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RequestError(f"another xenopus daemon is running in {self.run_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "xenopus.toolstack.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._zsock = ours
        # Keep the writer: dropping a StreamWriter closes its transport.
        reader, self._zwriter = await asyncio.open_unix_connection(sock=ours)
        self._zevents = asyncio.create_task(self._zygote_events(reader))

    async def _zygote_events(self, reader: asyncio.StreamReader) -> None:
        while (msg := await ipc.read_message(reader)) is not None:
            event = decode_from_zygote(msg)
            if isinstance(event, Spawned):
                fut = self._spawned.pop(event.domid, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.pid)
            else:
                rec = self.domains.get(event.domid)
                if rec is not None and rec.pid == event.pid:
                    rec.exit_info = event
                    rec.exited.set()
        if not self._stop.is_set():
            log.error("the zygote exited; restarting it")
            await self._start_zygote()

    async def serve(self, ready_fd: int | None = None) -> None:
        await self._start_zygote()
        await self.xenstore.serve(ipc.xenstored_socket_path(self.run_dir))
        path = Path(ipc.daemon_socket_path(self.run_dir))
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._client, path=str(path))
        path.chmod(0o600)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("xenopus daemon %d listening on %s", os.getpid(), path)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        await self._stop.wait()
        server.close()
        await asyncio.gather(*(self._destroy(r) for r in list(self.domains.values())))
        path.unlink(missing_ok=True)
        # Let each client see its last reply and then end of stream, rather than cancel it.
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2)
        if self._zygote is not None:
            self._zygote.terminate()
            self._zygote.wait()
        log.info("xenopus daemon stopped")

    # -- clients ------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            while True:
                try:
                    msg = await ipc.read_message(reader)
                    if msg is None:
                        break
                    req = Request.from_wire(msg)
                except ValueError as e:  # not JSON, not an object, no op: say so, read on
                    reply: Reply | None = Reply.failure(f"malformed request: {e}")
                else:
                    reply = await self._handle(req, Client(reader, writer))
                if reply is not None:
                    ipc.write_message(writer, reply.to_wire())
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def _handle(self, req: Request, client: Client) -> Reply | None:
        try:
            return await self._dispatch(req, client)
        except RequestError as e:
            return Reply.failure(str(e))
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the daemon
            log.exception("request %r failed", req.op)
            return Reply.failure(f"internal error: {e}")

    async def _dispatch(self, req: Request, client: Client) -> Reply | None:
        step = STEPS.get(req.op)
        if step is not None:
            return await step(self, req, client)
        if "dom" not in req.args:
            raise RequestError(f"unknown operation {req.op!r}")
        return await self._forward(self.lookup(req.dom), req)

    async def _forward(self, rec: DomainRecord, req: Request) -> Reply:
        """A per-domain request the domain process answers (pause, vcpu-pin, devices, ...)."""
        args = {k: v for k, v in req.args.items() if k != "dom"}
        reply = await rec.request(Request(req.op, args))
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: {reply.error}")
        return Reply(True, reply.data)

    @daemon_step("ping")
    async def _ping(self, req: Request, client: Client) -> Reply:
        return Reply.success(pid=os.getpid())

    @daemon_step("dmesg")
    async def _dmesg(self, req: Request, client: Client) -> Reply:
        lines = list(self.dmesg)
        if req.args.get("clear"):
            self.dmesg.clear()
        return Reply.success(lines=lines)

    @daemon_step("stop")
    async def _stop_step(self, req: Request, client: Client) -> Reply:
        self._stop.set()
        return Reply.success()

    @daemon_step("console")
    async def _console(self, req: Request, client: Client) -> Reply:
        rec = self.lookup(req.dom)
        if rec.pid is None:
            raise RequestError(f"domain {rec.domid} has no console: it is not running")
        kind = req.args.get("type") or rec.console
        if kind not in ipc.CONSOLE_SOCKETS:
            raise RequestError(f"unknown console type {kind!r}")
        if kind == "virtio" and not rec.config.virtio_console:
            raise RequestError(f"domain {rec.domid} has no virtio console (virtio_console = 1)")
        return Reply.success(domid=rec.domid, path=ipc.console_socket_path(rec.domid, self.run_dir, kind))

    @daemon_step("wait")
    async def _wait(self, req: Request, client: Client) -> Reply:
        rec = self.lookup(req.dom)
        await rec.gone.wait()
        return Reply(True, self._final(rec))

    @daemon_step("destroy")
    async def _destroy_step(self, req: Request, client: Client) -> Reply:
        await self._destroy(self.lookup(req.dom))
        return Reply.success()

    @daemon_step("shutdown")
    async def _shutdown(self, req: Request, client: Client) -> Reply:
        rec = self.lookup(req.dom)
        reply = await self._forward(rec, req)
        if req.args.get("wait"):
            # Wait here, on the record we already hold: the guest may be gone before a
            # second request could name it.
            await rec.gone.wait()
        return reply

    @daemon_step("vcpu-list")
    async def _vcpu_list(self, req: Request, client: Client) -> Reply:
        """Each named domain's (default: every domain's) vCPUs, from its process."""
        doms = req.args.get("doms") or []
        if doms:
            recs = [self.lookup(str(d)) for d in doms]
        else:
            recs = sorted(self.domains.values(), key=lambda r: r.domid)

        async def entry(rec: DomainRecord) -> dict[str, Any]:
            vcpus = await rec.query("vcpu-list", "vcpus", [], timeout=5.0)
            return {"domid": rec.domid, "name": rec.name, "state": rec.state, "vcpus": vcpus}

        return Reply.success(domains=list(await asyncio.gather(*(entry(r) for r in recs))))

    def lookup(self, dom: str) -> DomainRecord:
        if dom.isdigit():
            rec = self.domains.get(int(dom))
            if rec is None:
                if int(dom) == 0:
                    raise RequestError("domain 0 is the host; it cannot be managed from here")
                raise RequestError(f"domain {dom} does not exist")
            return rec
        for rec in self.domains.values():
            if rec.name == dom:
                return rec
        raise RequestError(f"domain '{dom}' does not exist")

    # -- create -------------------------------------------------------------------------
    @daemon_step("create")
    async def _create(self, req: Request, client: Client) -> Reply | None:
        """Create a domain from a config file (+ overrides). With `attach`, it starts
        paused and the reply names its console; the client connects there, then sends any
        message (`unpause`) on this connection (xl create -c: not a byte of output is
        lost). With `wait`, a second reply comes when it is gone."""
        config, warnings = self._load_config(req)
        name = config.name
        if any(r.name == name for r in self.domains.values()):
            raise RequestError(f"domain '{name}' already exists")
        rec = DomainRecord(self.next_domid, config)
        self.next_domid += 1
        self.domains[rec.domid] = rec
        attach, paused, wait = (bool(req.args.get(k)) for k in ("attach", "paused", "wait"))
        try:
            await self._spawn(rec, paused=attach or paused)
        except Exception:  # refused, or the zygote gone: the name and domid are free again
            self.domains.pop(rec.domid, None)
            self.xenstore.remove_domain(rec.domid)
            raise
        created: dict[str, Any] = {"domid": rec.domid, "name": name, "protocol": rec.protocol,
                                   "warnings": warnings}
        if attach:
            created["console"] = ipc.console_socket_path(rec.domid, self.run_dir, rec.console)
        reply = Reply(True, created)
        if not wait and not attach:
            return reply
        ipc.write_message(client.writer, reply.to_wire())
        await client.writer.drain()
        if attach:
            # The client's console is attached (or the client is gone): whatever it says.
            with contextlib.suppress(ValueError):
                await ipc.read_message(client.reader)
            if not paused:
                await rec.request(Request("unpause"))
            if not wait:
                return Reply.success()
        await rec.gone.wait()
        return Reply(True, {"event": "gone", **self._final(rec)})

    @staticmethod
    def _load_config(req: Request) -> tuple[DomainConfig, list[str]]:
        """The config file of a create request, with its overrides, parsed."""
        path, overrides, cwd = (req.args.get(k) for k in ("path", "overrides", "cwd"))
        if not isinstance(path, str):
            raise RequestError("create needs a config file")
        try:
            return load_config(path, [str(o) for o in overrides or []],
                               cwd=cwd if isinstance(cwd, str) else None)
        except (ConfigError, OSError) as e:
            raise RequestError(str(e)) from None

    async def _spawn(self, rec: DomainRecord, paused: bool = False) -> None:
        assert self._zsock is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The domain's XenStore traffic (its guest's ring, proxied by its process) comes
        # over a socket pair of ours: the daemon, not the domain process, names the domain.
        xs_ours, xs_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await self.xenstore.add_domain(rec.domid, rec.name, rec.config, xs_ours)
        # Interdomain event channels and grant views (fds travel with SCM_RIGHTS, which
        # asyncio streams cannot carry): a datagram socket pair of their own.
        id_ours, id_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.interdomain.add(rec.domid, id_ours)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawned[rec.domid] = fut
        spawn = Spawn(rec.domid, rec.config, str(self.run_dir), paused)
        fds = [theirs.fileno(), xs_theirs.fileno(), id_theirs.fileno()]
        ipc.send_with_fds(self._zsock, spawn.to_wire(), fds)
        theirs.close()
        xs_theirs.close()
        id_theirs.close()
        try:
            rec.pid = await asyncio.wait_for(fut, 10)
        except TimeoutError:
            self._spawned.pop(rec.domid, None)
            self.interdomain.remove(rec.domid)
            ours.close()
            raise RequestError("the zygote did not start the domain process") from None
        rec.exited.clear()
        rec.exit_info = None
        rec.final = None
        reader, rec.writer = await asyncio.open_unix_connection(sock=ours)
        event: Ready | StartFailed = StartFailed("the domain process died")
        with contextlib.suppress(ConnectionError, ValueError):  # ValueError: an over-long line
            while True:
                try:
                    msg = await ipc.read_message(reader)
                    if msg is None:
                        break
                    first = decode_from_domain(msg)
                except ValueError as e:  # not JSON, or not a message a domain sends
                    first = StartFailed(f"the domain process sent a malformed message: {e}")
                if isinstance(first, (Ready, StartFailed)):
                    event = first
                    break
        if not isinstance(event, Ready):
            self.interdomain.remove(rec.domid)
            rec.writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rec.exited.wait(), 5)
            raise RequestError(event.error or "the domain failed to start")
        rec.protocol = event.protocol
        rec.xen_path = event.xen_path
        rec.console = event.console
        self.xenstore.write_nodes(rec.domid, "console", event.console_nodes)
        rec.state = "paused" if paused else "running"
        log.info("domain %d (%s) started, pid %d", rec.domid, rec.name, rec.pid)
        asyncio.create_task(self._domain_events(rec, reader))

    async def _domain_events(self, rec: DomainRecord, reader: asyncio.StreamReader) -> None:
        # A domain process may be compromised by its guest: whatever it sends, this task
        # must live on to retire the domain when the process goes.
        while True:
            try:
                msg = await ipc.read_message(reader)
                if msg is None:
                    break
                event = decode_from_domain(msg)
            except ConnectionError:
                break
            except ValueError as e:  # not a message a domain sends, or a line over the limit
                log.error("domain %d sent a malformed message: %s", rec.domid, e)
                continue
            if isinstance(event, Reply):
                fut = rec.pending.get(event.seq) if event.seq is not None else None
                if fut is not None and not fut.done():
                    fut.set_result(event)
            elif isinstance(event, StateChanged):
                rec.state = event.state
            elif isinstance(event, LogLine):
                self.dmesg.append(event.line[:4096])
            elif isinstance(event, Finished):
                rec.final = event
                self._retire(rec)
            elif isinstance(event, Stopped):
                rec.last_stop = event
                log.info("domain %d (%s) %s → %s", rec.domid, rec.name, event.reason, event.action)
        await self._process_gone(rec)

    def _retire(self, rec: DomainRecord) -> None:
        """The domain has ended (its process said so): drop it from the table."""
        self.xenstore.remove_domain(rec.domid)
        self.interdomain.remove(rec.domid)
        final = self._final(rec)
        usage = rec.final or rec.exit_info
        log.info(
            "domain %d (%s) destroyed: %s; exit status %s, max RSS %s KiB, CPU %.3f s",
            rec.domid, rec.name, final["reason"], final["status"], final["maxrss_kib"],
            usage.cpu if usage is not None else 0.0,
        )
        if self.domains.get(rec.domid) is rec:
            del self.domains[rec.domid]
        rec.gone.set()

    async def _process_gone(self, rec: DomainRecord) -> None:
        rec.writer = None
        self.interdomain.remove(rec.domid)  # its peers' ports go unbound, views drop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rec.exited.wait(), 5)
        status = rec.exit_info.status if rec.exit_info is not None else None
        if rec.final is not None:
            if status != rec.final.exit_code:
                log.warning("domain %d: process %s exited with status %s", rec.domid, rec.pid, status)
            return
        clean = rec.state == "dying" or (rec.last_stop is not None and status in (0, 1))
        if not clean:
            # The domain process itself died: treat it as a crash of the domain.
            action = rec.config.on_crash
            log.error("domain %d (%s): its process died (status %s); on_crash=%s", rec.domid, rec.name, status, action)
            rec.last_stop = Stopped("crash", f"domain process exited with status {status}", action)
            if action == "restart" and not self._stop.is_set():
                delay = rec.restarts.delay()
                if delay:
                    log.warning("domain %d: its process ran %.1f s; restarting in %.0f s",
                                rec.domid, rec.restarts.ran, delay)
                    # No process while it waits: a destroy takes it as a corpse.
                    rec.state, rec.pid = "crashed", None
                    await asyncio.sleep(delay)
                    if self.domains.get(rec.domid) is not rec or self._stop.is_set():
                        self._retire(rec)
                        return
                try:
                    await self._spawn(rec)
                    rec.restarts.started()
                    return
                except Exception as e:  # noqa: BLE001 - refused, or the zygote gone: retire it
                    log.error("domain %d: restart failed: %s", rec.domid, e)
            elif action == "preserve":
                rec.state = "crashed"
                rec.pid = None
                return
        self._retire(rec)

    @staticmethod
    def _final(rec: DomainRecord) -> dict[str, Any]:
        """How the domain ended: its last stop, and the process's own report (else the
        zygote's)."""
        stop = rec.last_stop
        status = (rec.final.exit_code if rec.final is not None
                  else rec.exit_info.status if rec.exit_info is not None else None)
        usage = rec.final or rec.exit_info
        return {
            "domid": rec.domid,
            "reason": stop.reason if stop is not None else "destroyed",
            "detail": stop.detail if stop is not None else "",
            "status": status,
            "maxrss_kib": usage.maxrss_kib if usage is not None else None,
        }

    async def _destroy(self, rec: DomainRecord) -> None:
        if rec.pid is None:  # a preserved corpse with no process
            self.domains.pop(rec.domid, None)
            rec.gone.set()
            return
        rec.state = "dying"
        with contextlib.suppress(RequestError, ConnectionError):
            await rec.request(Request("destroy"), timeout=DESTROY_GRACE)
        try:
            await asyncio.wait_for(rec.gone.wait(), DESTROY_GRACE)
        except TimeoutError:
            log.error("domain %d did not exit; killing pid %d", rec.domid, rec.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            await rec.gone.wait()

    # -- list ---------------------------------------------------------------------------
    @daemon_step("list")
    async def _list(self, req: Request, client: Client) -> Reply:
        async def entry(rec: DomainRecord) -> dict[str, Any]:
            info = await rec.query("info", None, {}, timeout=2.0)
            return {
                "domid": rec.domid,
                "name": rec.name,
                "memory": info.get("memory") or rec.config.memory,  # a balloon moves it
                "vcpus": rec.config.vcpus,
                "state": rec.state,
                "reason": rec.last_stop.reason if rec.last_stop is not None else None,
                "cpu_time": info.get("cpu_time", 0.0),
                "protocol": rec.protocol,
                "xen_path": rec.xen_path,
                "pid": rec.pid,
                "config": rec.config.to_dict(),
            }

        recs = sorted(self.domains.values(), key=lambda r: r.domid)
        return Reply.success(domains=list(await asyncio.gather(*(entry(r) for r in recs))))


def run(run_dir: Path, *, ready_fd: int | None = None, log_file: Path | None = None) -> int:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    daemon = Daemon(run_dir)
    try:
        daemon.acquire_lock()
    except RequestError as e:
        print(f"xenopus daemon: {e}", file=sys.stderr)
        return 1
    asyncio.run(daemon.serve(ready_fd))
    return 0
