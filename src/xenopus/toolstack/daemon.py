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
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from uuid import uuid4

from xenopus import ipc, stream
from xenopus.control import INCOMING, Reply, Request
from xenopus.devices.mac import format_mac
from xenopus.domain import jail
from xenopus.domain.channel import SocketId, remove_sockets, socket_ids
from xenopus.domain.config import ConfigError, DomainConfig, load_config
from xenopus.domain.devspec import parse_disk, parse_vif, vif_devids, without_vif
from xenopus.domain.jail import uid_range
from xenopus.domain.protocol import (
    EXIT_REBUILD,
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
from xenopus.domain.vif import open_vif
from xenopus.toolstack import hostinfo, xlformat, zygote
from xenopus.toolstack.broker import InterdomainBroker
from xenopus.toolstack.xenstored import PVCONTROL_TIMEOUT, PvControlTimeout, XenStored
from xenopus.trace import mark
from xenopus.xen.xenstore.server import UNSCOPED, Peer, Scope, domain_stream_pair, peer_of
from xenopus.xen.xenstore.wire import XsError

log = logging.getLogger("xenopus.daemon")

DMESG_LINES = 10000
# Where on_* = coredump-* writes NAME's core: xl's XEN_DUMP_DIR (configure's default).
XEN_DUMP_DIR = "/var/lib/xen/dump"
DUMP_DIR_ENV = "XENOPUS_DUMP_DIR"  # another directory (tests)
DOM0_NAMES = ("Domain-0",)  # the host's name in every listing
# How `xl dmesg` words a domain's stop, by StopReason.kind.
STOP_WORDS = {"poweroff": "shut down", "reboot": "rebooted", "crash": "crashed",
              "watchdog": "stopped by its watchdog"}
DESTROY_GRACE = 5.0  # seconds a domain process gets to exit before SIGKILL
# Seconds a domain process gets from its fork to Ready (the guest built) before it is
# killed: building reads the kernel and lays out memory, seconds even for a large guest
# (but Python in a TCG-emulated nested test host shared by several runs is 50-100 times
# slower: minutes there).
START_TIMEOUT = 180.0
START_TIMEOUT_ENV = "XENOPUS_START_TIMEOUT"  # seconds, instead of START_TIMEOUT


def start_timeout() -> float:
    """$XENOPUS_START_TIMEOUT, else START_TIMEOUT; ValueError naming the variable."""
    text = os.environ.get(START_TIMEOUT_ENV)
    if text is None:
        return START_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise ValueError(f"{START_TIMEOUT_ENV} must be a number of seconds, not {text!r}")
    return value
FILES_TIMEOUT = 10.0  # seconds a client gets to send the files it was asked for
# Seconds the zygote gets to fork a domain process. Its first fork waits for it to import
# every layer, which on a slow host (an emulated one runs Python 10-20 times slower) is
# well past a second; past a minute in the nested test host at a load of 15-20 (three or
# four TCG L1s on two cores): "the zygote did not start the domain process".
SPAWN_TIMEOUT = 180.0
HOTPLUG_TIMEOUT = 30.0  # seconds a domain gets to add or remove a device (a detach waits 10)
LIBXL_MAXMEM_CONSTANT = 1024  # KiB libxl adds to every max_pages on x86 (libxl_internal.h)


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client, with `code`
    (the kind of refusal, `xenopus.client.ERRORS`) when it has one."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass
class DomainRecord:
    domid: int
    config: DomainConfig
    state: str = "starting"  # running | paused | shutdown | crashed | dying
    pid: int | None = None
    created: float = field(default_factory=time.time)
    uuid: str = field(default_factory=lambda: str(uuid4()))  # libxl_domain_create_info
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
    console_nodes: dict[str, Any] = field(default_factory=dict)  # the PV console's XenStore nodes
    adopted: bool = False  # a process a previous daemon started: not the zygote's child
    stop_log: list[Stopped] = field(default_factory=list)  # every stop, in order
    # Pulsed (set, then cleared) when it stops or goes: what `wait` loops on.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # The credit schedulers' share set by xl sched-credit (None: the config's cpu_weight
    # and cap, or the defaults), and where it was applied.
    sched_weight: int | None = None
    sched_cap: int | None = None
    cpu_layer: str = "default"
    # xl config-update: the config its next incarnation is built from (by the daemon)
    next_config: DomainConfig | None = None
    # The sockets its channels listen on (`socket_ids`, once its process is ready): the
    # ones its cleanup removes, not another's at the same path (a migration to this host).
    channel_sockets: dict[str, SocketId] = field(default_factory=dict)
    # The reply to come to the request its spawn carried (`Daemon._spawn`'s `first`)
    first_reply: asyncio.Future[Reply] | None = None

    def pulse(self) -> None:
        self.changed.set()
        self.changed.clear()

    @property
    def weight(self) -> int:
        if self.sched_weight is not None:
            return self.sched_weight
        return jail.CREDIT_WEIGHT if self.config.cpu_weight is None else self.config.cpu_weight

    @property
    def cap(self) -> int:
        if self.sched_cap is not None:
            return self.sched_cap
        return 0 if self.config.cap is None else self.config.cap

    def to_table(self) -> dict[str, Any]:
        """Its entry in the persisted domain table."""
        return {"domid": self.domid, "name": self.name, "pid": self.pid, "created": self.created,
                "config": self.config.to_dict(), "protocol": self.protocol,
                "xen_path": self.xen_path, "console": self.console,
                "console_nodes": self.console_nodes, "uuid": self.uuid,
                "next_config": self.next_config.to_dict() if self.next_config else None}

    def expect(self, req: Request) -> tuple[Request, asyncio.Future[Reply]]:
        """`req` numbered, and the future its reply resolves (in `pending` until the
        caller pops it): for a request sent some other way than `request` (a Spawn's)."""
        self.seq += 1
        seq = self.seq
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        fut.add_done_callback(lambda _: self.pending.pop(seq, None))  # answered or given up
        return req.numbered(seq), fut

    async def request(self, req: Request, timeout: float | None = 10.0) -> Reply:
        """Ask the domain process; its reply, refusals included."""
        if self.writer is None or self.writer.is_closing():
            raise RequestError(f"domain {self.domid} has no running process", "state")
        req, fut = self.expect(req)
        seq = req.seq
        ipc.write_message(self.writer, req.to_wire())
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestError(f"domain {self.domid} did not answer {req.op!r}") from None
        finally:
            self.pending.pop(seq, None)

    async def query(self, op: str, key: str | None, default: Any, timeout: float,
                    args: dict[str, Any] | None = None) -> Any:
        """`key` of the answer to `op` (with `args`; None: all of it); `default` when
        there is no process or no answer (listings show every domain, answering or not)."""
        if self.writer is not None:
            with contextlib.suppress(RequestError, ConnectionError):
                data = (await self.request(Request(op, args or {}), timeout)).data
                return dict(data) if key is None else data.get(key, default)
        return default


class Client(NamedTuple):
    """A client's connection, for the steps that talk on it beyond one reply (create)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


DaemonStep = Callable[["Daemon", Request, Client], Awaitable[Reply | None]]
# The request a domain's spawn carries, made once the daemon knows the domain (Daemon._spawn)
FirstRequest = Callable[[DomainRecord], Request]
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
    def __init__(self, run_dir: Path, *, spares: int = zygote.DEFAULT_SPARES,
                 started_zygote: tuple[subprocess.Popen, socket.socket] | None = None,
                 start_timeout: float = START_TIMEOUT):
        """`started_zygote`: one `zygote.start` made before this process imported the
        daemon (and its socket), used first."""
        self.run_dir = run_dir
        self.start_timeout = start_timeout  # seconds from fork to Ready
        self.spares = spares  # exec'd spare domain processes the zygote keeps warm
        self.domains: dict[int, DomainRecord] = {}
        self.next_domid = 1
        self._started_zygote = started_zygote
        self._zygote: subprocess.Popen | None = None
        self._zsock: socket.socket | None = None
        self._zwriter: asyncio.StreamWriter | None = None
        self._zevents: asyncio.Task | None = None
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._processes: dict[int, DomainRecord] = {}  # pid -> its domain, until reaped
        self._stop = asyncio.Event()
        self._lock_fd = -1
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.xenstore = XenStored()
        self.interdomain = InterdomainBroker()
        # The host log `xenopus dmesg` prints (Xen's console ring): guests' console_io and
        # port-0xE9 lines, bounded like Xen's.
        self.dmesg: collections.deque[str] = collections.deque(maxlen=DMESG_LINES)

    def hv_log(self, text: str) -> None:
        """A line of xenopus's own in the host log, prefixed "(XEN) " as the hypervisor's
        lines are in Xen's console ring (guests' lines carry "(dN) ")."""
        self.dmesg.append(f"(XEN) {text}")

    # -- start-up -----------------------------------------------------------------------
    def acquire_lock(self) -> None:
        ipc.ensure_run_dir(str(self.run_dir))
        fd = ipc.open_private(self.run_dir / "xenopus.pid")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RequestError(f"another xenopus daemon is running in {self.run_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _start_zygote(self) -> None:
        if self._started_zygote is not None:
            self._zygote, ours = self._started_zygote
            self._started_zygote = None
        else:
            self._zygote, ours = zygote.start(self.spares)
        self._zsock = ours
        # Keep the writer: dropping a StreamWriter closes its transport.
        reader, self._zwriter = await asyncio.open_unix_connection(sock=ours)
        self._zevents = asyncio.create_task(self._zygote_events(reader))

    async def _zygote_events(self, reader: asyncio.StreamReader) -> None:
        while (msg := await ipc.read_message(reader)) is not None:
            event = decode_from_zygote(msg)
            if isinstance(event, Spawned):
                # Known by pid at once: its XenStore client may connect before _spawn runs.
                rec = self.domains.get(event.domid)
                if rec is not None and event.domid in self._spawned:
                    rec.pid = event.pid
                    self._processes[event.pid] = rec
                fut = self._spawned.pop(event.domid, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.pid)
            else:
                # By pid: the domain may have left the table already (it said Finished).
                rec = self._processes.pop(event.pid, None)
                jail.remove_cpu_share(event.pid)  # its v1 cpu cgroup, if sched-credit made one
                if event.domid not in self.domains:  # (a rebuild's new process may be in it)
                    jail.remove_cgroup(event.domid)
                if rec is not None:
                    rec.exit_info = event
                    rec.exited.set()
        if not self._stop.is_set():
            log.error("the zygote exited; restarting it")
            await self._start_zygote()

    def xenstore_scope(self, peer: Peer) -> Scope | None:
        """A XenStore client: a domain process (by pid, or by its jail uid) reaches only
        its own domain's paths; root (host tools) the whole store; anyone else nothing."""
        for rec in self.domains.values():
            if rec.pid == peer.pid:
                return Scope(rec.domid)
        base, count = uid_range()
        if base <= peer.uid < base + count:
            return Scope(peer.uid - base)
        return UNSCOPED if peer.uid == os.geteuid() else None

    async def serve(self, ready_fd: int | None = None) -> None:
        await self._start_zygote()
        await self.xenstore.serve(ipc.xenstored_socket_path(self.run_dir), self.xenstore_scope)
        await self._adopt_all()
        if self.run_dir == Path(ipc.DEFAULT_RUN_DIR):  # the system's daemon, not a test's
            self.xenstore.publish()
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
        self.xenstore.unpublish()
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
            return Reply(False, {"code": e.code} if e.code else {}, str(e))
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
            raise RequestError(f"domain {rec.domid} has no console: it is not running", "state")
        kind = req.args.get("type") or rec.console
        if kind not in ipc.CONSOLE_SOCKETS:
            raise RequestError(f"unknown console type {kind!r}")
        if kind == "virtio" and not rec.config.virtio_console:
            raise RequestError(f"domain {rec.domid} has no virtio console (virtio_console = 1)")
        return Reply.success(domid=rec.domid, path=ipc.console_socket_path(rec.domid, self.run_dir, kind))

    @daemon_step("wait")
    async def _wait(self, req: Request, client: Client) -> Reply:
        """Until the domain is gone: how it ended. With `until` ("shutdown" or "death")
        and `after` (a count of stops, from shutdown or reboot), the xl -w event instead."""
        rec = self.lookup(req.dom)
        until = req.args.get("until")
        if until is None:
            await rec.gone.wait()
            return Reply(True, self._final(rec))
        after = req.args.get("after", 0)
        if until not in ("shutdown", "death") or not isinstance(after, int) or after < 0:
            raise RequestError(f"wait: bad until {until!r} or after {after!r}")
        return Reply(True, await self._wait_until(rec, until, after))

    @daemon_step("destroy")
    async def _destroy_step(self, req: Request, client: Client) -> Reply:
        await self._destroy(self.lookup(req.dom))
        return Reply.success()

    @daemon_step("shutdown")
    async def _shutdown(self, req: Request, client: Client) -> Reply:
        return await self._pv_control(req, "poweroff")

    @daemon_step("reboot")
    async def _reboot(self, req: Request, client: Client) -> Reply:
        return await self._pv_control(req, "reboot")

    async def _pv_control(self, req: Request, cmd: str) -> Reply:
        """xl shutdown / reboot (xl_vmcontrol.c shutdown_domain, reboot_domain): the
        request through the guest's PV control interface (libxl_domain_shutdown /
        _reboot: control/shutdown, acknowledged by the guest); where the guest has none,
        with `fallback` (-F) the ACPI power button (shutdown) or reset (reboot) trigger,
        else a "noparavirt" refusal. With `wait`, the reply comes once the domain is gone.
        The reply names the way taken (`method`: pv, acpi) and the stops seen so far
        (`stops`, for a later `wait` with `after`)."""
        rec = self.lookup(req.dom)
        if rec.state in ("shutdown", "crashed", "dying", "starting"):
            raise RequestError(f"domain {rec.domid} is {rec.state}", "state")
        stops = len(rec.stop_log)
        if self.xenstore.pvcontrol_available(rec.domid, cmd):
            try:
                await self.xenstore.pvcontrol(rec.domid, cmd)
            except PvControlTimeout as e:
                raise RequestError(f"domain {rec.domid}: {e}", "state") from None
            method = "pv"
        elif req.args.get("fallback"):
            trigger = "power" if cmd == "poweroff" else "reset"
            await self._forward(rec, Request("trigger", {"trigger": trigger}))
            method = "acpi"
        else:
            raise RequestError(f"domain {rec.domid}: PV control interface not available"
                               f" (the guest does not advertise control/feature-{cmd})",
                               "noparavirt")
        if req.args.get("wait"):
            # On the record we already hold: the guest may be gone before a second
            # request could name it.
            await rec.gone.wait()
        return Reply.success(domid=rec.domid, method=method, stops=stops)

    @daemon_step("channel-list")
    async def _channel_list(self, req: Request, client: Client) -> Reply:
        """xl channel-list DOM...: each named domain's channels (xl_console.c)."""
        doms = req.args.get("doms") or []
        if not isinstance(doms, list):
            raise RequestError("channel-list needs a list of domains")
        recs = [self.lookup(str(d)) for d in doms]
        return Reply.success(domains=[{"domid": r.domid, "channels": self.xenstore.channels(r.domid)}
                                      for r in recs])

    @daemon_step("suspend")
    async def _suspend(self, req: Request, client: Client) -> Reply:
        """xl suspend (libxl_domain_suspend_only): "suspend" through control/shutdown,
        acknowledged, then the guest's SCHEDOP_shutdown(SHUTDOWN_suspend) within
        libxl's 60 s (domain_suspend_common_wait_guest); it stays suspended until
        `resume` or a destroy."""
        rec = self.lookup(req.dom)
        if rec.state != "running":
            raise RequestError(f"domain {rec.domid} is {rec.state}", "state")
        if not self.xenstore.pvcontrol_available(rec.domid, "suspend"):
            raise RequestError(f"domain {rec.domid}: PV control interface not available"
                               " (the guest does not advertise control/feature-suspend)",
                               "noparavirt")
        stops = len(rec.stop_log)
        try:
            await self.xenstore.pvcontrol(rec.domid, "suspend")
            stop = await asyncio.wait_for(self._wait_until(rec, "shutdown", stops),
                                          PVCONTROL_TIMEOUT)
        except (PvControlTimeout, TimeoutError):
            raise RequestError(f"domain {rec.domid}: guest did not suspend", "state") from None
        if stop.get("reason_code") != xlformat.SHUTDOWN_CODES["suspend"]:
            raise RequestError(f"domain {rec.domid}: it stopped instead of suspending", "state")
        return Reply.success(domid=rec.domid)

    async def _rename_restart(self, rec: DomainRecord) -> None:
        """on_* = "rename-restart" (xl_vmcontrol.c handle_domain_death, preserve_domain):
        the stopped domain stays, renamed NAME-YYYYmmddTHHMMZ with a fresh UUID, and a
        new domain is created from the configuration under the old name and UUID."""
        suffix = time.strftime("-%Y%m%dT%H%MZ", time.gmtime())
        config = rec.config
        kept = f"{config.name}{suffix}"
        log.info("Preserving domain %d %s with suffix%s", rec.domid, config.name, suffix)
        if kept in DOM0_NAMES or any(r.name == kept for r in self.domains.values()):
            # libxl_domain_preserve fails; xl leaves the old domain in place
            log.error("domain %d: cannot preserve as %s: the name is taken", rec.domid, kept)
            return
        try:
            rec.config = dataclasses.replace(config, name=kept, uuid=str(uuid4()))
        except ConfigError as e:  # the suffix made the name too long
            log.error("domain %d: cannot preserve as %s: %s", rec.domid, kept, e)
            return
        rec.uuid = str(rec.config.uuid)
        self.xenstore.preserve(rec.domid, kept, rec.uuid)
        self._save_table()
        self.hv_log(f"d{rec.domid}: domain '{config.name}' preserved as '{kept}'")
        try:
            new = await self._new_domain(config, paused=False)
        except (RequestError, ConfigError) as e:
            log.error("domain %s: rename-restart could not create its successor: %s",
                      config.name, e)
            return
        self.hv_log(f"d{new.domid}: domain '{config.name}' restarted (rename-restart of d{rec.domid})")

    async def _coredump_then(self, rec: DomainRecord, action: str) -> None:
        """on_* = "coredump-destroy" / "coredump-restart" (handle_domain_death): the core
        goes to XEN_DUMP_DIR/NAME, then the domain is destroyed or restarted. A failed
        dump is logged and the action goes on ("no point crying over spilled milk")."""
        path = os.path.join(os.environ.get(DUMP_DIR_ENV, XEN_DUMP_DIR), rec.name)
        log.info("dumping core to %s", path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            token = await self._hand_over(rec, fd)
            reply = await self._until_answered(rec, Request("dump-core", {"files": token}))
            if not reply.ok:
                raise RequestError(str(reply.error))
            self.hv_log(f"d{rec.domid}: core dumped to {path}")
        except (OSError, RequestError) as e:
            log.error("domain %d: core dump failed: %s", rec.domid, e)
        if action == "coredump-destroy" or self._stop.is_set():
            await self._destroy(rec)
            return
        with contextlib.suppress(RequestError, ConnectionError):
            reply = await rec.request(Request("restart"))
            if reply.ok:
                return
        await self._destroy(rec)

    @daemon_step("dump-core")
    async def _dump_core(self, req: Request, client: Client) -> Reply:
        """xl dump-core DOM FILE: the domain's memory as an ELF core into the file the CLI
        opened (domain/coredump.py says which format)."""
        rec = self.lookup(req.dom)
        token = await self._hand_over(rec, await self._client_file(client))
        reply = await self._until_answered(rec, Request("dump-core", {"files": token}))
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: core dump failed: {reply.error}")
        return Reply(True, reply.data)

    @daemon_step("sysrq")
    async def _sysrq(self, req: Request, client: Client) -> Reply:
        """xl sysrq DOM KEY (libxl_send_sysrq): the key into the guest's control/sysrq,
        which its drivers watch (Linux's manage.c sysrq_handler)."""
        rec = self.lookup(req.dom)
        key = req.args.get("key")
        if not isinstance(key, str) or len(key) != 1:
            raise RequestError("Invalid sysrq.")
        self.xenstore.sysrq(rec.domid, key)
        return Reply.success()

    async def _wait_until(self, rec: DomainRecord, until: str, after: int) -> dict[str, Any]:
        """xl's wait_for_domain_deaths for one domain: "shutdown" ends at its first stop
        after the `after` stops already seen, or its death; "death" when it is gone or a
        stop ended its incarnation with a restart (Xen destroys that domain and builds a
        new one, with a new domid)."""
        while True:
            since = rec.stop_log[after:]
            if rec.gone.is_set() or (until == "death" and any(
                    s.action.endswith("restart") for s in since)):
                return {"event": "death", "domid": rec.domid}
            if until == "shutdown" and since:
                return {"event": "shutdown", "domid": rec.domid,
                        "reason_code": xlformat.SHUTDOWN_CODES.get(since[0].reason, 0)}
            await rec.changed.wait()

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
            if rec.state == "paused" and vcpus and vcpus[0]["cpu"] is None and vcpus[0]["affinity"]:
                # Created paused, no vCPU has run yet; but Xen's domain builder has
                # brought vCPU0 up (only the others wait for the guest), placed on the
                # first CPU of its affinity: so it is listed.
                vcpus[0] = {**vcpus[0], "online": True, "cpu": min(vcpus[0]["affinity"])}
            soft = rec.config.cpus_soft or []  # xl.cfg cpus_soft, as configured
            vcpus = [{**v, "soft": soft[i] if i < len(soft) and soft[i] is not None else "all"}
                     for i, v in enumerate(vcpus)]
            return {"domid": rec.domid, "name": rec.name, "state": rec.state, "vcpus": vcpus}

        return Reply.success(domains=list(await asyncio.gather(*(entry(r) for r in recs))))

    @daemon_step("rename")
    async def _rename(self, req: Request, client: Client) -> Reply:
        """xl rename: the name in the domain table, the config and XenStore (its home's
        and /vm's `name`, libxl__domain_rename)."""
        rec = self.lookup(req.dom)
        new = req.args.get("name")
        if not isinstance(new, str):
            raise RequestError("rename needs a new name")
        if new == rec.name:
            return Reply.success()
        if new in DOM0_NAMES or any(r.name == new for r in self.domains.values()):
            raise RequestError(f"domain with name '{new}' already exists", "domain-exists")
        try:
            config = dataclasses.replace(rec.config, name=new)
        except ConfigError as e:
            raise RequestError(str(e), "config") from None
        old, rec.config = rec.name, config
        self.xenstore.rename(rec.domid, new)
        self.hv_log(f"d{rec.domid}: domain '{old}' renamed '{new}'")
        return Reply.success()

    @daemon_step("host-info")
    async def _host_info(self, req: Request, client: Client) -> Reply:
        """`xl info`'s values (xl_info.c print_info) for this host."""
        info = hostinfo.gather()
        if req.args.get("numa"):
            info.update(hostinfo.topology())
        return Reply.success(**info)

    def lookup(self, dom: str) -> DomainRecord:
        if dom.isdigit():
            rec = self.domains.get(int(dom))
            if rec is None:
                if int(dom) == 0:
                    raise RequestError("domain 0 is the host; it cannot be managed from here")
                raise RequestError(f"domain {dom} does not exist", "no-such-domain")
            return rec
        for rec in self.domains.values():
            if rec.name == dom:
                return rec
        raise RequestError(f"domain '{dom}' does not exist", "no-such-domain")

    # -- create -------------------------------------------------------------------------
    @daemon_step("create")
    async def _create(self, req: Request, client: Client) -> Reply | None:
        """Create a domain from a config file (+ overrides). With `attach`, it starts
        paused and the reply names its console; the client connects there, then sends any
        message (`unpause`) on this connection (xl create -c: not a byte of output is
        lost). With `wait`, a second reply comes when it is gone."""
        mark("daemon: create request")
        # In a worker: a config on a slow or hung filesystem must not stall every client.
        config, warnings = await asyncio.to_thread(self._load_config, req)
        mark("daemon: config parsed")
        if req.args.get("dryrun"):  # xl create -n: the configuration, as libxl's JSON
            libxl = xlformat.libxl_domain_config(config, config.uuid or str(uuid4()))
            return Reply.success(libxl=libxl, warnings=warnings)
        attach, paused, wait = (bool(req.args.get(k)) for k in ("attach", "paused", "wait"))
        rec = await self._new_domain(config, paused=attach or paused)
        created: dict[str, Any] = {"domid": rec.domid, "name": rec.name, "protocol": rec.protocol,
                                   "warnings": warnings}
        if attach:
            created["console"] = ipc.console_socket_path(rec.domid, self.run_dir, rec.console)
        reply = Reply(True, created)
        if not wait and not attach:
            return reply
        ipc.write_message(client.writer, reply.to_wire())
        await client.writer.drain()
        mark("daemon: created reply sent")
        if attach:
            # The client's console is attached (or the client is gone): whatever it says.
            with contextlib.suppress(ValueError):
                await ipc.read_message(client.reader)
            mark("daemon: client attached")
            if not paused:
                await rec.request(Request("unpause"))
                mark("daemon: unpaused")
            if not wait:
                return Reply.success()
        await rec.gone.wait()
        mark("daemon: domain gone")
        return Reply(True, {"event": "gone", **self._final(rec)})

    async def _new_domain(self, config: DomainConfig, paused: bool,
                          first: FirstRequest | None = None) -> DomainRecord:
        """A new domain of `config` with the next domid, its process started; `first`
        (see `_spawn`) makes its first request."""
        if any(r.name == config.name for r in self.domains.values()):
            raise RequestError(f"domain '{config.name}' already exists", "domain-exists")
        if config.uuid is None:  # xl_parse.c: libxl_uuid_generate when the config has none
            config = dataclasses.replace(config, uuid=str(uuid4()))
        rec = DomainRecord(self.next_domid, config, uuid=config.uuid)
        self.next_domid += 1
        self.domains[rec.domid] = rec
        try:
            await self._spawn(rec, paused=paused, first=first)
        except Exception:  # refused, or the zygote gone: the name and domid are free again
            self._forget(rec)
            raise
        return rec

    @staticmethod
    def _load_config(req: Request) -> tuple[DomainConfig, list[str]]:
        """The config file of a create request, with its overrides, parsed."""
        path, overrides, cwd = (req.args.get(k) for k in ("path", "overrides", "cwd"))
        if not isinstance(path, str):
            raise RequestError("create needs a config file")
        bridge = req.args.get("vif_bridge")  # xl.conf's vif.default.bridge, read by the CLI
        try:
            config, warnings = load_config(path, [str(o) for o in overrides or []],
                                           cwd=cwd if isinstance(cwd, str) else None)
            if isinstance(bridge, str) and any(v.bridge is None for v in config.vifs):
                vifs = [v if v.bridge is not None else dataclasses.replace(v, bridge=bridge)
                        for v in config.vifs]
                config = dataclasses.replace(config, vifs=vifs)
        except (ConfigError, OSError, ValueError) as e:
            raise RequestError(str(e), "config") from None
        return config, warnings

    async def _spawn(self, rec: DomainRecord, paused: bool = False,
                     first: FirstRequest | None = None) -> None:
        """Start the domain's process and wait for it to be ready. `first(rec)`, called
        once the interdomain broker knows the domain (files can be handed over), gives
        a request that travels with the spawn (`Spawn.first`): the process answers it as
        soon as it is ready, and `rec.first_reply` is its reply to come."""
        assert self._zsock is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The domain's XenStore traffic (its guest's ring, proxied by its process) comes
        # over a socket pair of ours: the daemon, not the domain process, names the domain.
        xs_ours, xs_theirs = domain_stream_pair()
        await self.xenstore.add_domain(rec.domid, rec.name, rec.config, rec.uuid, rec.created,
                                       xs_ours)
        # Interdomain event channels and grant views (fds travel with SCM_RIGHTS, which
        # asyncio streams cannot carry): a datagram socket pair of their own.
        id_ours, id_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.interdomain.add(rec.domid, id_ours)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawned[rec.domid] = fut
        rec.exited.clear()
        rec.exit_info = None
        rec.final = None
        first_req = None
        if first is not None:
            try:
                first_req, rec.first_reply = rec.expect(first(rec))
            except BaseException:
                self.interdomain.remove(rec.domid)
                for sock in (ours, theirs, xs_theirs, id_theirs):
                    sock.close()
                raise
        spawn = Spawn(rec.domid, rec.config, str(self.run_dir), paused, first_req)
        fds = [theirs.fileno(), xs_theirs.fileno(), id_theirs.fileno()]
        mark("daemon: xenstore ready, spawn sent")
        ipc.send_with_fds(self._zsock, spawn.to_wire(), fds)
        theirs.close()
        xs_theirs.close()
        id_theirs.close()
        try:
            rec.pid = await asyncio.wait_for(fut, SPAWN_TIMEOUT)
        except TimeoutError:
            self._spawned.pop(rec.domid, None)
            self.interdomain.remove(rec.domid)
            ours.close()
            raise RequestError("the zygote did not start the domain process") from None
        if rec.state == "dying":  # destroyed while the zygote forked it
            self._kill(rec)
        mark("daemon: spawned")
        reader, rec.writer = await asyncio.open_unix_connection(sock=ours)
        try:
            event = await asyncio.wait_for(self._first_event(reader), self.start_timeout)
            mark("daemon: ready")
        except TimeoutError:
            log.error("domain %d (%s) was not ready after %.0f s; killing it", rec.domid,
                      rec.name, self.start_timeout)
            self._kill(rec)
            event = StartFailed(f"the domain did not start within {self.start_timeout:g} s")
        if not isinstance(event, Ready):
            self.interdomain.remove(rec.domid)
            rec.writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rec.exited.wait(), 5)
            if rec.state == "dying":
                raise RequestError(f"domain {rec.domid} was destroyed while it started")
            raise RequestError(event.error or self._death(rec) or "the domain failed to start")
        rec.channel_sockets = socket_ids(rec.config.channels)
        rec.protocol = event.protocol
        rec.xen_path = event.xen_path
        rec.console = event.console
        rec.console_nodes = event.console_nodes
        self.xenstore.console_ready(rec.domid, event.console_nodes)
        if event.store_nodes:
            self.xenstore.write_nodes(rec.domid, "store", event.store_nodes)
        rec.state = "paused" if paused else "running"
        if rec.cpu_layer != "default" or rec.config.cpu_weight is not None or rec.config.cap is not None:
            self._apply_cpu_share(rec)  # cpu_weight, cap (xl.cfg), or a new process's
        log.info("domain %d (%s) started, pid %d", rec.domid, rec.name, rec.pid)
        self.hv_log(f"d{rec.domid}: domain '{rec.name}' created ({rec.protocol} boot, Xen"
                    f" interface {rec.xen_path}, {rec.config.vcpus} vCPU(s),"
                    f" {rec.config.memory} MiB){' paused' if paused else ''}")
        self._save_table()
        asyncio.create_task(self._domain_events(rec, reader))

    @staticmethod
    async def _first_event(reader: asyncio.StreamReader) -> Ready | StartFailed:
        """The domain process's Ready or StartFailed (events before them are skipped)."""
        with contextlib.suppress(ConnectionError, ValueError):  # ValueError: an over-long line
            while True:
                try:
                    msg = await ipc.read_message(reader)
                    if msg is None:
                        break
                    first = decode_from_domain(msg)
                except ValueError as e:  # not JSON, or not a message a domain sends
                    return StartFailed(f"the domain process sent a malformed message: {e}")
                if isinstance(first, (Ready, StartFailed)):
                    return first
        return StartFailed("")

    @staticmethod
    def _kill(rec: DomainRecord) -> None:
        if rec.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)

    @staticmethod
    def _death(rec: DomainRecord) -> str:
        """How the domain process died, from its wait status ("" if it has not)."""
        if rec.exit_info is None:
            return ""
        status = rec.exit_info.status
        if status == -signal.SIGSYS:
            # The kernel's seccomp kill (SCMP_ACT_KILL_PROCESS); which call it was is in the
            # host's audit log (type=1326), not visible to a parent.
            return "domain process killed by seccomp (SIGSYS): a system call outside its allow-list"
        if status < 0:
            return f"domain process killed by {signal.Signals(-status).name}"
        return f"domain process exited with status {status}"

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
                mark("daemon: finished")
                # Retired now: the domain process closed its taps and channels before
                # it reported (xl destroy returns with the vifs removed); its VM's
                # memory goes as it exits, which nobody needs to wait for.
                rec.final = event
                if event.exit_code != EXIT_REBUILD:
                    self._retire(rec)
            elif isinstance(event, Stopped):
                rec.last_stop = event
                rec.stop_log.append(event)
                rec.pulse()
                if event.action == "rename-restart":
                    asyncio.create_task(self._rename_restart(rec))
                elif event.action.startswith("coredump-"):
                    asyncio.create_task(self._coredump_then(rec, event.action))
                log.info("domain %d (%s) %s → %s", rec.domid, rec.name, event.reason, event.action)
                self.hv_log(f"d{rec.domid}: domain '{rec.name}' {STOP_WORDS.get(event.reason, event.reason)};"
                            f" on_{event.reason}={event.action}")
        await self._process_gone(rec)

    def _forget(self, rec: DomainRecord) -> None:
        """Everything the host keeps for a domain goes: its XenStore nodes, interdomain
        channels, run-directory entries and table entry. Every path out ends here."""
        self.xenstore.remove_domain(rec.domid)
        self.interdomain.remove(rec.domid)
        shutil.rmtree(ipc.domain_dir(rec.domid, self.run_dir), ignore_errors=True)
        remove_sockets(rec.config.channels, rec.channel_sockets)  # its jailed process could not
        if self.domains.get(rec.domid) is rec:
            del self.domains[rec.domid]
            self._save_table()
        # Its cgroup v2 directory, if its process has left it (else when the zygote
        # reports the exit, or the next daemon's start sweeps it).
        jail.remove_cgroup(rec.domid)
        rec.gone.set()
        rec.pulse()

    def _retire(self, rec: DomainRecord) -> None:
        """The domain has ended (its process said so): drop it from the table."""
        final = self._final(rec)
        usage = rec.final or rec.exit_info
        log.info(
            "domain %d (%s) destroyed: %s; exit status %s, max RSS %s KiB, CPU %.3f s",
            rec.domid, rec.name, final["reason"], final["status"], final["maxrss_kib"],
            usage.cpu if usage is not None else 0.0,
        )
        self.hv_log(f"d{rec.domid}: domain '{rec.name}' destroyed")
        self._forget(rec)

    async def _process_gone(self, rec: DomainRecord) -> None:
        rec.writer = None
        self.interdomain.remove(rec.domid)  # its peers' ports go unbound, views drop
        await self._wait_exit(rec)
        status = rec.exit_info.status if rec.exit_info is not None else None
        if rec.adopted:  # not our zygote's child: its own report is all there is
            status = rec.final.exit_code if rec.final is not None else None
        if rec.final is not None and rec.final.exit_code == EXIT_REBUILD:
            await self._rebuild(rec)
            return
        if rec.final is not None:
            if status != rec.final.exit_code:
                log.warning("domain %d: process %s exited with status %s, not %s as it said",
                            rec.domid, rec.pid, status, rec.final.exit_code)
            return  # retired at its Finished report
        clean = rec.state == "dying" or (rec.last_stop is not None and status in (0, 1))
        if not clean:
            # The domain process itself died: treat it as a crash of the domain.
            action = rec.config.on_crash
            death = self._death(rec) or "domain process gone (no exit status)"
            log.error("domain %d (%s) crashed: %s; on_crash=%s", rec.domid, rec.name, death, action)
            rec.last_stop = Stopped("crash", death, action)
            rec.stop_log.append(rec.last_stop)
            rec.pulse()
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

    async def _wait_exit(self, rec: DomainRecord, bound: float = 5.0) -> None:
        """Until the domain's process has exited (at most `bound` seconds): the zygote's
        report of our own child, a pidfd's for one adopted from an earlier daemon. An
        exited process has closed its files: its taps are gone from the host
        (tun_chr_close unregisters a non-persistent tap on its last close)."""
        if not rec.adopted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rec.exited.wait(), bound)
            return
        if rec.pid is None:
            return
        try:
            pidfd = os.pidfd_open(rec.pid)
        except OSError:
            return  # already gone
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        try:
            loop.add_reader(pidfd, gone.set)  # a pidfd reads ready once the process exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), bound)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _rebuild(self, rec: DomainRecord) -> None:
        """The next incarnation of a domain whose process handed its restart back
        (xl config-update): a new process from the updated config, same domid."""
        if rec.next_config is not None:
            rec.config, rec.next_config = rec.next_config, None
            self._save_table()
        rec.final = rec.exit_info = None
        try:
            await self._spawn(rec)
        except Exception as e:  # noqa: BLE001 - refused, or the zygote gone: retire it
            log.error("domain %d: rebuild from the updated config failed: %s", rec.domid, e)
            self._retire(rec)

    @daemon_step("config-update")
    async def _config_update(self, req: Request, client: Client) -> Reply:
        """xl config-update DOM CFG (xl_misc.c main_config_update): the config the domain
        is built from when it next restarts (on_reboot/on_crash = "restart"); the running
        incarnation is unchanged. Checked now, as xl parses it before storing it."""
        rec = self.lookup(req.dom)
        config = (await asyncio.to_thread(self._load_config, req))[0]
        if config.name != rec.name:
            raise RequestError(f"the config names domain '{config.name}', not '{rec.name}'"
                               " (xenopus rename it first)", "config")
        reply = await rec.request(Request("rebuild-by-daemon"))
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: {reply.error}")
        rec.next_config = dataclasses.replace(config, uuid=rec.uuid)
        self._save_table()
        self.hv_log(f"d{rec.domid}: configuration updated for its next restart")
        return Reply.success(domid=rec.domid)

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
        if rec.state == "starting" or rec.state == "dying" and rec.writer is None:
            # Still starting: it answers nothing yet. Create's own failure path forgets it.
            rec.state = "dying"
            self._kill(rec)
            await rec.gone.wait()
            return
        if rec.pid is None:  # a preserved corpse with no process
            self._forget(rec)
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

    # -- crash recovery: the persisted table, adoption ------------------------------------
    def _save_table(self) -> None:
        """Write the domain table atomically (a new file renamed over the old): a daemon
        killed at any point leaves the old table or the new one, never half of one. No
        fsync: the table must outlive the daemon, not the host (whose crash ends every
        domain anyway), and creation rate matters."""
        path = ipc.domain_table_path(self.run_dir)
        table = {"next_domid": self.next_domid,
                 "domains": [r.to_table() for r in self.domains.values() if r.pid is not None]}
        tmp = path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = ipc.open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        with open(fd, "wb") as f:
            f.write(json.dumps(table).encode())
        os.replace(tmp, path)

    def _load_table(self) -> dict[str, Any]:
        try:
            fd = os.open(ipc.domain_table_path(self.run_dir), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        with open(fd, "rb") as f:
            try:
                table = json.loads(f.read(ipc.MAX_LINE * 16))
            except ValueError as e:
                log.error("the domain table is malformed (%s); adopting nothing", e)
                return {}
        return table if isinstance(table, dict) else {}

    async def _adopt_all(self) -> None:
        """Adopt every domain process a previous daemon left running: same domid, its
        control and XenStore streams anew, its XenStore nodes written again."""
        table = self._load_table()
        next_domid = table.get("next_domid", 1)
        self.interdomain.hold()  # binds wait until every adopted domain has rejoined
        lost: dict[int, int] = {}  # domid -> the pid the table names, of those not adopted
        try:
            for entry in table.get("domains", []):
                try:
                    rec = await self._adopt(entry)
                except (OSError, ValueError, KeyError, TypeError, ConfigError, TimeoutError) as e:
                    log.error("domain %s (%s) was lost while no daemon ran: %s",
                              entry.get("domid"), entry.get("name"), e)
                    if isinstance(entry.get("domid"), int) and isinstance(entry.get("pid"), int):
                        lost[entry["domid"]] = entry["pid"]
                    continue  # its process, if it lives on, is swept below
                log.info("domain %d (%s) adopted, pid %d, %s", rec.domid, rec.name, rec.pid,
                         rec.state)
        finally:
            self.interdomain.release()
        swept = await self._sweep_orphans(lost)
        ids = [next_domid if isinstance(next_domid, int) else 1, *(d + 1 for d in self.domains),
               *(d + 1 for d in swept)]
        self.next_domid = max(ids)
        self._save_table()
        for domid in jail.stale_cgroups(self.domains):  # of domains lost while no daemon ran
            jail.remove_cgroup(domid)

    async def _sweep_orphans(self, lost: dict[int, int]) -> list[int]:
        """End every domain process this daemon did not adopt, and remove what is left of
        its domain: one a daemon killed while it started (it was not in the table yet),
        or one that refused adoption. Its domain was never reported created, or is lost
        to the toolstack; left running it would hold its memory, its taps and a domid a
        new domain would then collide with. Found by its control.sock in the run
        directory, or for a domain the table names that was not adopted (`lost`), by
        the table's pid. Returns the domids of the directories removed."""
        base = os.path.join(self.run_dir, "domains")
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        swept = []
        for name in names:
            if not name.isdigit() or int(name) in self.domains:
                continue
            domid = int(name)
            pid = await self._kill_control_peer(ipc.control_socket_path(domid, self.run_dir),
                                                domid)
            if pid is None and domid in lost:  # its socket gone or replaced: the table's pid
                pid = await self._kill_domain_process(lost[domid], domid)
            if pid is not None:
                log.warning("domain %d: its process (pid %d) was not in the domain table or"
                            " refused adoption; killed it", domid, pid)
            shutil.rmtree(ipc.domain_dir(domid, self.run_dir), ignore_errors=True)
            jail.remove_cgroup(domid)
            swept.append(domid)
        return swept

    async def _kill_control_peer(self, path: str, domid: int) -> int | None:
        """SIGKILL the process listening on domain `domid`'s control.sock and wait until it
        has gone (its taps and memory with it); its pid, or None if nothing (of that
        domain's) listens there. The directory is writable by that domain's process, which
        may have planted a symlink to another socket: only a process with that domain's
        jail uid, or one of ours titled as that domain (not jailed yet), and no adopted
        domain's, is killed."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, path), 5)
            peer = peer_of(sock)
        except (OSError, TimeoutError):
            return None
        finally:
            sock.close()
        return await self._kill_domain_process(peer.pid, domid, peer.uid)

    async def _kill_domain_process(self, pid: int, domid: int, uid: int | None = None
                                   ) -> int | None:
        """SIGKILL `pid` if it is domain `domid`'s process and not an adopted one, and wait
        until it has gone; its pid, or None if it is not (or no longer there)."""
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        try:  # read after the pidfd is open: of the process it names
            with open(f"/proc/{pid}/status") as f:
                real_uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read(256)
        except (OSError, StopIteration, ValueError):
            os.close(pidfd)
            return None
        uid = real_uid if uid is None else uid
        base, count = uid_range()
        ours = (uid == base + domid and domid < count) or (
            uid == os.geteuid() and title.startswith(f"xenopus: domain {domid} (".encode()))
        if not ours or any(r.pid == pid for r in self.domains.values()):
            log.error("domain %d: pid %d (uid %d) is not its process; left alone", domid, pid, uid)
            os.close(pidfd)
            return None
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            gone = asyncio.Event()
            loop.add_reader(pidfd, gone.set)  # a pidfd reads ready once the process exits
            try:
                await asyncio.wait_for(gone.wait(), 10)
            except TimeoutError:
                log.error("pid %d did not end within 10 s of SIGKILL", pid)
            finally:
                loop.remove_reader(pidfd)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
        return pid

    async def _adopt(self, entry: dict[str, Any]) -> DomainRecord:
        domid, name, pid = int(entry["domid"]), str(entry["name"]), int(entry["pid"])
        config = DomainConfig.from_dict(entry["config"])
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, ipc.control_socket_path(domid, self.run_dir))
            # The process that listens there must be the one the table names.
            if peer_of(sock).pid != pid:
                raise ValueError(f"control.sock is held by pid {peer_of(sock).pid}, not {pid}")
            xs_ours, xs_theirs = domain_stream_pair()
            be_ours, be_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            id_ours, id_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            rec = DomainRecord(domid, config, state="running", pid=pid,
                               uuid=str(entry.get("uuid") or uuid4()),
                               created=float(entry.get("created", time.time())), adopted=True,
                               protocol=entry.get("protocol"), xen_path=str(entry.get("xen_path", "off")),
                               console=str(entry.get("console", "serial")),
                               console_nodes=dict(entry.get("console_nodes") or {}))
            if entry.get("next_config"):
                rec.next_config = DomainConfig.from_dict(entry["next_config"])
            await self.xenstore.add_domain(domid, name, config, rec.uuid, rec.created, xs_ours)
            self.xenstore.console_ready(domid, rec.console_nodes)
            # Its PV backends' connection too: the one they had went with the old daemon.
            await self.xenstore.serve_backends(domid, be_ours)
            # Its interdomain channels too: it says which links and views it holds.
            self.interdomain.add(domid, id_ours)
            ipc.send_with_fds(sock, Request("adopt", {}, 1).to_wire(),
                              [xs_theirs.fileno(), be_theirs.fileno(), id_theirs.fileno()])
            xs_theirs.close()
            be_theirs.close()
            id_theirs.close()
            reader, rec.writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            self.xenstore.remove_domain(domid)
            self.interdomain.remove(domid)
            raise
        try:
            msg = await asyncio.wait_for(ipc.read_message(reader), 10)
            reply = decode_from_domain(msg or {})
            if not isinstance(reply, Reply) or not reply.ok:
                raise ValueError(f"the domain process refused: {reply}")
        except BaseException:
            rec.writer.close()
            self.xenstore.remove_domain(domid)
            self.interdomain.remove(domid)
            raise
        rec.state = str(reply.data.get("state", "running"))
        rec.seq = 1
        self.domains[domid] = rec
        asyncio.create_task(self._domain_events(rec, reader))
        return rec

    # -- save and restore (xl save / xl restore; docs/snapshot-stream.md) ----------------
    @staticmethod
    async def _client_file(client: Client) -> int:
        """The one open file the client sends when asked (`ipc.receive_fds`): a path
        the user named is opened by the CLI, as that user, never by the daemon."""
        ipc.write_message(client.writer, Reply.success(send_fds=1).to_wire())
        await client.writer.drain()
        try:
            fds = await ipc.receive_fds(client.writer, 1, FILES_TIMEOUT)
        except (TimeoutError, ConnectionError, ValueError, OSError) as e:
            raise RequestError(f"the file did not come: {e or 'timed out'}") from None
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RequestError("expected one open file")
        return fds[0]

    async def _hand_over(self, rec: DomainRecord, fd: int) -> int:
        try:
            return self.interdomain.hand_over(rec.domid, [fd])
        except ConnectionError as e:
            raise RequestError(str(e)) from None
        finally:
            os.close(fd)

    @staticmethod
    async def _until_answered(rec: DomainRecord, req: Request) -> Reply:
        """The domain's answer to a request that takes as long as it takes (a save of
        gigabytes); a failure if its process ends first."""
        return await Daemon._answer_of(rec, rec.request(req, timeout=None), req.op)

    @staticmethod
    async def _answer_of(rec: DomainRecord, reply: Awaitable[Reply], op: str) -> Reply:
        """`reply` (to a request `op` that takes as long as it takes), or a failure if
        the domain's process ends first."""
        answer = asyncio.ensure_future(reply)
        ended = asyncio.ensure_future(rec.exited.wait())
        try:
            await asyncio.wait({answer, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not answer.done():
            answer.cancel()
            raise RequestError(f"domain {rec.domid}: its process ended during {op}")
        return answer.result()

    @daemon_step("save")
    async def _save(self, req: Request, client: Client) -> Reply:
        """xl save [-c] [-p] DOM FILE [CFG]: the domain writes its image (DOMAIN_CONFIG
        first: CFG's if given, else its own) into the file the CLI opened; then it goes
        on (-c), stays paused (-p) or is destroyed. A failed save leaves it running."""
        rec = self.lookup(req.dom)
        config = self._load_config(req)[0] if req.args.get("path") else rec.config
        online = self.xenstore.vcpus_available(rec.domid)
        if not req.args.get("path") and online and online != config.vcpus:
            # libxl_retrieve_domain_configuration: the image's config has the vCPUs online
            # now (xl vcpu-set), so the restored XenStore does not take others down.
            config = dataclasses.replace(config, vcpus=online)
        then = "pause" if req.args.get("paused") else "run" if req.args.get("checkpoint") else "stop"
        token = await self._hand_over(rec, await self._client_file(client))
        reply = await self._until_answered(rec, Request("save", {
            "files": token, "then": then, "config": config.to_dict(),
            "live": bool(req.args.get("live")),
            "xenstore": self.xenstore.export_domain(rec.domid)}))
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: save failed: {reply.error}")
        if then == "stop":
            await self._destroy(rec)
        return Reply(True, {**reply.data, "name": rec.name})

    @daemon_step("restore")
    async def _restore(self, req: Request, client: Client) -> Reply:
        """xl restore [-p] [CFG] FILE: a new domain (next domid) built from the image's
        DOMAIN_CONFIG (or CFG), its every part restored, then run (or left paused). A
        damaged image is refused by record and the half-built domain destroyed. With
        `clone` (restore --clone), its RAM is mapped copy-on-write from the image."""
        fd = await self._client_file(client)
        try:
            config = self._load_config(req)[0] if req.args.get("path") else None
        except BaseException:
            os.close(fd)
            raise
        paused = bool(req.args.get("paused"))
        if req.args.get("clone"):
            try:
                image, checked = await self._private_copy(fd)
            finally:
                os.close(fd)
            try:
                rec, data = await self._restore_from(image, config, None, paused, clone=True,
                                                     checked=checked)
            finally:
                await self._settled(checked)
                os.close(image)
        else:
            rec, data = await self._restore_from(fd, config, None, paused, clone=False,
                                                 incoming=bool(req.args.get("incoming")))
        return Reply.success(domid=rec.domid, name=rec.name, **data)

    async def _restore_from(self, fd: int, config: DomainConfig | None, name: str | None,
                            paused: bool, *, clone: bool, incoming: bool = False,
                            checked: asyncio.Future[None] | None = None
                            ) -> tuple[DomainRecord, dict]:
        """A new domain restored from the image open at `fd` (closed here, unless a
        clone's: a clone reads its own read-only open file of the image, so that many
        clones read one image at once and none can write it), built from `config` or
        else the image's DOMAIN_CONFIG, renamed `name` if given. `incoming` (a
        migration's receiver): named NAME--incoming until the sender says go, as xl's
        create_domain names a domain it receives, so that a migration to this same host
        does not collide with its source. `checked`: the check of a clone's image
        (`_private_copy`), still under way: the domain is started meanwhile, and given
        the image once it has passed."""
        if clone:
            fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(fd, "rb", buffering=0, closefd=False) as inp:
                saved, reader = await asyncio.to_thread(stream.read_domain_config, inp)
                position = reader.position()
            if config is None:
                if not isinstance(saved, dict):
                    raise RequestError("the image's DOMAIN_CONFIG is not a configuration")
                config = DomainConfig.from_dict({**saved, "name": name} if name else saved)
                if clone:  # each clone a domain of its own: a fresh UUID (_new_domain)
                    config = dataclasses.replace(config, uuid=None)
            elif name:
                config = dataclasses.replace(config, name=name)
            if name and clone:
                self._check_clonable(config)
            if incoming:
                # Refused now, before the stream, if NAME is another domain's here: the
                # rename after the go would fail. The source itself (a migration to this
                # same host: the same UUID) gives its name up before the go.
                if any(r.name == config.name and r.uuid != config.uuid
                       for r in self.domains.values()):
                    raise RequestError(f"domain '{config.name}' already exists", "domain-exists")
                config = dataclasses.replace(config, name=f"{config.name}{INCOMING}")
        except (stream.StreamError, ConfigError) as e:
            os.close(fd)
            raise RequestError(f"cannot restore: {e}") from None
        except BaseException:
            os.close(fd)
            raise

        handing: asyncio.Task[None] | None = None

        def restore(rec: DomainRecord) -> Request:
            """The restore request, the image handed over (or to be, once checked): it
            travels with the spawn."""
            nonlocal handing
            if checked is not None and not (checked.done() and checked.exception() is None):
                token = self.interdomain.reserve()
                handing = asyncio.create_task(self._hand_over_checked(rec, fd, token, checked))
            else:
                try:
                    token = self.interdomain.hand_over(rec.domid, [fd])
                except ConnectionError as e:
                    raise RequestError(str(e)) from None
                mark("daemon: image handed over")
            return Request("restore", {
                "files": token, "position": dataclasses.asdict(position), "paused": True,
                # A guest without Xen never reads the XenStore subtree imported below:
                # it runs at once (no unpause round trip); a Xen guest waits for it.
                "run_unless_xen": not paused,
                # A clone's image is the daemon's own: checked whole when copied in, or
                # written just now by the source's process; its pages' CRCs are not
                # checked again by every clone.
                "clone": clone, "verified": clone})

        try:
            rec = await self._new_domain(config, paused=True, first=restore)
        except BaseException:
            if handing is not None:
                handing.cancel()  # it hands nothing over from here on
            os.close(fd)
            raise
        try:
            if handing is not None:
                await handing  # the image failed its check: this raises why
        except BaseException:
            await self._destroy(rec)
            raise
        finally:
            os.close(fd)  # the domain has its own (SCM_RIGHTS), or no need of it
        try:
            assert rec.first_reply is not None
            reply = await self._answer_of(rec, rec.first_reply, "restore")
            mark("daemon: restored")
            if not reply.ok:
                raise RequestError(f"cannot restore: {reply.error}")
            data = dict(reply.data)
            saved_store = data.pop("xenstore", None)
            if isinstance(saved_store, dict):  # before the guest runs and looks
                self.xenstore.import_domain(rec.domid, saved_store)
            if not paused and not data.pop("running", False):
                started = await rec.request(Request("unpause"))
                mark("daemon: restored domain unpaused")
                if not started.ok:
                    raise RequestError(f"cannot run the restored domain: {started.error}")
        except BaseException:
            await self._destroy(rec)  # nothing half-built stays: the domid and name go
            raise
        return rec, data

    # -- clone (docs/snapshot-stream.md, "Clones") ---------------------------------------
    def _image_file(self) -> int:
        """A new file in the run directory with no name (O_TMPFILE): a clone image that
        no one else can open or change, gone with its last mapping."""
        return os.open(self.run_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)

    async def _private_copy(self, src: int) -> tuple[int, asyncio.Future[None]]:
        """The image the user handed over, copied into `_image_file`, and its check
        under way (`_check_image`): the clones map it, so it must not change or shrink
        under them (a user's file could). The first clone's process starts meanwhile;
        each clone's restore waits for the check (`_restore_from`)."""
        image = self._image_file()
        try:
            await asyncio.to_thread(self._copy_in, src, image)
        except BaseException:
            os.close(image)
            raise
        return image, asyncio.ensure_future(asyncio.to_thread(self._check_image, image))

    @staticmethod
    def _copy_in(src: int, image: int) -> None:
        try:
            offset = 0
            while n := os.sendfile(image, src, offset, 1 << 30):
                offset += n
        except OSError as e:
            raise RequestError(f"cannot read the image: {e.strerror}") from None

    @staticmethod
    def _check_image(image: int) -> None:
        """Every record's CRC of a clone image, once rather than once per clone."""
        try:
            with open(os.open(f"/proc/self/fd/{image}", os.O_RDONLY | os.O_CLOEXEC), "rb",
                      buffering=1 << 20) as inp:
                reader = stream.StreamReader(inp)
                while reader.next_record().type != stream.REC_END:
                    pass  # each call reads the record before to its end, checking its CRC
        except OSError as e:
            raise RequestError(f"cannot read the image: {e.strerror}") from None
        except stream.StreamError as e:
            raise RequestError(f"cannot restore: {e}") from None

    @staticmethod
    async def _settled(checked: asyncio.Future[None]) -> None:
        """Wait for the check of an image (its thread reads the file) before the image
        is closed; its outcome is the restore's business."""
        with contextlib.suppress(Exception):
            await asyncio.shield(checked)

    async def _hand_over_checked(self, rec: DomainRecord, fd: int, token: int,
                                 checked: asyncio.Future[None]) -> None:
        """Hand the image `fd` over as `token` once `checked` has passed (what it raises
        otherwise: the domain waiting for it is then destroyed)."""
        try:
            await asyncio.shield(checked)  # shared by the clones of one image
        except Exception:
            # Nothing, as `token`: the domain's restore ends now (no file was handed
            # over), rather than wait for the image until its destroy kills it.
            with contextlib.suppress(ConnectionError):
                self.interdomain.hand_over(rec.domid, [], token)
            raise
        mark("daemon: image checked")
        try:
            self.interdomain.hand_over(rec.domid, [fd], token)
        except ConnectionError as e:
            raise RequestError(str(e)) from None
        mark("daemon: image handed over")

    @staticmethod
    def _check_clonable(config: DomainConfig) -> None:
        """Clones of one image share its config: a writable disk would be written by
        every clone, a fixed MAC would be on the bridge several times, a channel's socket
        path bound several times."""
        writable = [d.vdev for d in config.disks if not d.read_only]
        if writable:
            raise RequestError(f"cannot clone: disk {writable[0]} is writable, and every "
                               "clone would write the same image (restore --clone CFG FILE "
                               "with a disk of its own)")
        fixed = [i for i, v in enumerate(config.vifs) if v.mac]
        if fixed:
            raise RequestError(f"cannot clone: vif {fixed[0]} has a fixed mac=, which "
                               "every clone would share (restore --clone CFG FILE with a "
                               "mac of its own, or none: then it comes from the name)")
        sockets = [c.name for c in config.channels if c.connection == "socket"]
        if sockets:
            raise RequestError(f"cannot clone: channel {sockets[0]} listens on a socket "
                               "path, which every clone would share (restore --clone CFG "
                               "FILE with a path of its own, or connection=pty)")

    @daemon_step("clone")
    async def _clone(self, req: Request, client: Client) -> Reply:
        """xenopus clone [-p] DOM|FILE NAME...: DOM saved (and left running) into an
        image in the run directory, or FILE copied there; then one domain per NAME
        restored from it with its RAM mapped copy-on-write from the image. All or none:
        a clone that fails destroys those this request made."""
        names = req.args.get("names")
        if (not isinstance(names, list) or not names
                or not all(isinstance(n, str) and n for n in names)):
            raise RequestError("clone needs one or more names")
        if len(set(names)) != len(names):
            raise RequestError("clone: a name is given twice")
        taken = [n for n in names if any(r.name == n for r in self.domains.values())]
        if taken:
            raise RequestError(f"domain '{taken[0]}' already exists", "domain-exists")
        checked: asyncio.Future[None] | None = None
        if req.args.get("file"):
            fd = await self._client_file(client)
            try:
                image, checked = await self._private_copy(fd)
            finally:
                os.close(fd)
        else:
            source = self.lookup(req.dom)
            image = self._image_file()
            try:
                token = await self._hand_over(source, os.dup(image))
                reply = await self._until_answered(source, Request("save", {
                    "files": token, "then": "run", "config": source.config.to_dict(),
                    "live": False, "durable": False,
                    "xenstore": self.xenstore.export_domain(source.domid)}))
                if not reply.ok:
                    raise RequestError(f"domain {source.domid}: save failed: {reply.error}")
            except BaseException:
                os.close(image)
                raise
        made: list[DomainRecord] = []
        report = []
        try:
            for name in names:
                rec, data = await self._restore_from(image, None, name,
                                                     bool(req.args.get("paused")), clone=True,
                                                     checked=checked)
                made.append(rec)
                report.append({"domid": rec.domid, "name": rec.name, "pages": data.get("pages"),
                               "seconds": data.get("seconds"),
                               "since_start": data.get("since_start"),
                               "cpu_since_start": data.get("cpu_since_start"),
                               "phases": data.get("phases", {})})
        except BaseException:
            for rec in made:
                await self._destroy(rec)
            raise
        finally:
            if checked is not None:
                await self._settled(checked)
            os.close(image)
        mark("daemon: cloned")
        return Reply.success(domains=report)

    # -- list ---------------------------------------------------------------------------
    @daemon_step("list")
    async def _list(self, req: Request, client: Client) -> Reply:
        """Every domain; with `long`, its configuration as libxl_domain_config too."""
        long = bool(req.args.get("long"))

        async def entry(rec: DomainRecord) -> dict[str, Any]:
            info = await rec.query("info", None, {}, timeout=2.0, args={"vcpus": True})
            # libxl's avail_vcpus: the vCPUs cpu/N/availability has online (xl vcpu-set)
            avail = self.xenstore.vcpus_available(rec.domid) or rec.config.vcpus
            out = {
                "domid": rec.domid,
                "name": rec.name,
                "uuid": rec.uuid,
                "start_time": rec.created,
                "memory": info.get("memory") or rec.config.memory,  # a balloon moves it
                # memory/static-max (xl mem-max moves it), in MiB
                "maxmem": (self.xenstore.read_kib(rec.domid, "memory/static-max")
                           or (rec.config.maxmem or rec.config.memory) * 1024) // 1024,
                "vcpus": avail,
                # libxl_dominfo.vcpu_online: the vCPUs the guest has up now (a process
                # that did not answer in time: what it was asked for)
                "online_vcpus": info.get("online_vcpus", avail if rec.pid is not None else 0),
                "maxvcpus": rec.config.maxvcpus,
                "state": rec.state,
                "reason": rec.last_stop.reason if rec.last_stop is not None else None,
                "cpu_time": info.get("cpu_time", 0.0),
                "jail": info.get("jail", {}),  # each jail layer: "on" or "missing: why"
                "protocol": rec.protocol,
                "xen_path": rec.xen_path,
                "pid": rec.pid,
                "config": rec.config.to_dict(),
            }
            if long:
                out["libxl"] = xlformat.libxl_domain_config(rec.config, rec.uuid, avail)
            return out

        recs = sorted(self.domains.values(), key=lambda r: r.domid)
        return Reply.success(domains=list(await asyncio.gather(*(entry(r) for r in recs))))


    # -- resources: xl mem-set, mem-max, vcpu-set, sched-credit(2) ------------------------
    def _xen_domain(self, req: Request, what: str) -> DomainRecord:
        """The named domain, which must see Xen: `what` only works through XenStore."""
        rec = self.lookup(req.dom)
        if rec.xen_path == "off":
            raise RequestError(f"domain {rec.domid} has no Xen interface (xen_platform = 0,"
                               f" or no Xen path here): {what}", "state")
        return rec

    def _memory_node(self, rec: DomainRecord, node: str) -> int:
        kib = self.xenstore.read_kib(rec.domid, node)
        if kib is None:  # libxl_mem.c's words
            raise RequestError(f"Cannot get memory info from /local/domain/{rec.domid}/{node}")
        return kib

    async def _set_maxmem(self, rec: DomainRecord, kib: int) -> None:
        """xc_domain_setmaxmem: the domain's max_pages (Xen's accounting, in its process)."""
        reply = await rec.request(Request("set-maxmem", {"kib": kib}))
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: {reply.error}")

    @staticmethod
    def _kib(req: Request) -> tuple[int, str]:
        kib, text = req.args.get("kib"), req.args.get("size")
        if not isinstance(kib, int) or isinstance(kib, bool) or kib < 0:
            raise RequestError(f"invalid memory size: {text}")
        return kib, str(text)

    # -- xl xenstore-quota-get / xenstore-quota-set (xl_xsquota.c) -------------------------
    def _quota_domid(self, req: Request) -> int | None:
        """None for the global values (-g), else the named domain's id (0: dom0's)."""
        if req.args.get("global"):
            return None
        if req.dom in ("0", "Domain-0"):
            return 0
        return self.lookup(req.dom).domid

    @daemon_step("xenstore-quota-get")
    async def _xs_quota_get(self, req: Request, client: Client) -> Reply:
        domid = self._quota_domid(req)
        try:
            quota = self.xenstore.quota_get(domid)
        except XsError as e:
            raise RequestError(f"Quota could not be obtained. ({e})") from e
        return Reply.success(quota=[[name, value] for name, value in quota])

    @daemon_step("xenstore-quota-set")
    async def _xs_quota_set(self, req: Request, client: Client) -> Reply:
        domid = self._quota_domid(req)
        items = req.args.get("quota")
        if not isinstance(items, list) or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], str)
                and isinstance(i[1], int) and not isinstance(i[1], bool) for i in items):
            raise RequestError("xenstore-quota-set wants [name, value] pairs")
        try:
            self.xenstore.quota_set(domid, [(n, v) for n, v in items])
        except XsError as e:
            raise RequestError(f"Quota could not be set. ({e})") from e
        return Reply.success()

    @daemon_step("mem-set")
    async def _mem_set(self, req: Request, client: Client) -> Reply:
        """xl mem-set DOM SIZE: libxl_set_memory_target(enforce=1) — the new target (less
        videoram) at most static-max; max_pages to it plus LIBXL_MAXMEM_CONSTANT; then
        memory/target, which the guest's balloon driver follows, and /vm/UUID/memory. A
        domain without Xen gets the target through its virtio balloon instead."""
        rec = self.lookup(req.dom)
        kib, text = self._kib(req)
        failed = f"cannot set domid {rec.domid} dynamic max memory to : {text}"
        self._memory_node(rec, "memory/target")
        static_max = self._memory_node(rec, "memory/static-max")
        videoram = self.xenstore.read_kib(rec.domid, "memory/videoram") or 0
        target = kib - videoram
        if not 0 <= target <= static_max:
            raise RequestError("memory_dynamic_max must be less than or equal to"
                               f" memory_static_max\n{failed}")
        if rec.xen_path == "off":  # no Xen balloon driver: the virtio balloon, if any
            reply = await rec.request(Request("balloon-target", {"kib": target}))
            if not reply.ok:
                raise RequestError(f"domain {rec.domid}: {reply.error}\n{failed}")
        else:
            await self._set_maxmem(rec, target + videoram + LIBXL_MAXMEM_CONSTANT)
        self.xenstore.set_memory_target(rec.domid, target)
        self.hv_log(f"d{rec.domid}: memory target {target} KiB")
        return Reply.success(target_kib=target)

    @daemon_step("mem-max")
    async def _mem_max(self, req: Request, client: Client) -> Reply:
        """xl mem-max DOM SIZE: libxl_domain_setmaxmem — at least the current target;
        max_pages to it plus LIBXL_MAXMEM_CONSTANT, then memory/static-max."""
        rec = self._xen_domain(req, "its maximum is Xen's max_pages and memory/static-max")
        kib, text = self._kib(req)
        target = self._memory_node(rec, "memory/target")
        if kib < target:  # libxl_mem.c's words, its "or or" included
            raise RequestError("memory_static_max must be greater than or or equal to"
                               f" memory_dynamic_max\ncannot set domid {rec.domid} static"
                               f" max memory to : {text}")
        await self._set_maxmem(rec, kib + LIBXL_MAXMEM_CONSTANT)
        self.xenstore.set_static_max(rec.domid, kib)
        return Reply.success(max_kib=kib)

    @daemon_step("vcpu-set")
    async def _vcpu_set(self, req: Request, client: Client) -> Reply:
        """xl vcpu-set DOM N: libxl_set_vcpuonline — vCPUs 0..N-1 "online", the rest
        "offline" in cpu/N/availability, which a Xen guest's own hotplug driver follows
        (VCPUOP_up/down or INIT/SIPI); a guest without Xen gets the change by ACPI CPU
        hotplug (its domain process inserts vCPUs and asks it to eject the others, as
        libxl has QEMU do for an HVM guest), and the nodes say what was asked."""
        rec = self.lookup(req.dom)
        count = req.args.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RequestError("Error: Invalid argument.")
        maxvcpus = rec.config.maxvcpus or rec.config.vcpus
        # xl_vcpu.c vcpuset's line after libxl's (rc ERROR_FAIL, -3)
        failed = f"libxl_set_vcpuonline failed domid={rec.domid} max_vcpus={count}, rc: -3"
        if count == 0:
            raise RequestError(f"Requested 0 VCPUs!\n{failed}")
        if count > maxvcpus:
            raise RequestError(f"Requested {count} VCPUs, however maxcpus is {maxvcpus}!\n{failed}")
        if rec.xen_path == "off":
            reply = await rec.request(Request("cpu-hotplug", {"count": count}))
            if not reply.ok:
                raise RequestError(f"domain {rec.domid}: {reply.error}\n{failed}")
        self.xenstore.set_vcpus_online(rec.domid, count, maxvcpus)
        self.hv_log(f"d{rec.domid}: vCPUs 0-{count - 1} of {maxvcpus} available")
        return Reply.success()

    @daemon_step("sched")
    async def _sched(self, req: Request, client: Client) -> Reply:
        """xl sched-credit / sched-credit2: each domain's weight and cap (default: every
        domain's); with `weight` or `cap`, set them on the named domain's cgroup first
        (`jail.set_cpu_share`). A host without a cpu controller keeps the values and
        says so in `layer`."""
        weight, cap = req.args.get("weight"), req.args.get("cap")
        recs = ([self.lookup(req.dom)] if "dom" in req.args
                else sorted(self.domains.values(), key=lambda r: r.domid))
        if weight is not None or cap is not None:
            rec = recs[0]
            maxvcpus = rec.config.maxvcpus or rec.config.vcpus
            if weight is not None and not (isinstance(weight, int) and 1 <= weight <= 65535):
                raise RequestError("Cpu weight out of range, valid values are within range"
                                   " from 1 to 65535\nlibxl_domain_sched_params_set failed.")
            if cap is not None and not (isinstance(cap, int) and 0 <= cap <= 100 * maxvcpus):
                raise RequestError("Cpu cap out of range, valid range is from 0 to"
                                   f" {100 * maxvcpus} for specified number of vcpus"
                                   "\nlibxl_domain_sched_params_set failed.")
            rec.sched_weight = weight if weight is not None else rec.weight
            rec.sched_cap = cap if cap is not None else rec.cap
            self._apply_cpu_share(rec)
        return Reply.success(domains=[
            {"domid": r.domid, "name": r.name, "weight": r.weight, "cap": r.cap,
             "layer": r.cpu_layer} for r in recs])

    def _apply_cpu_share(self, rec: DomainRecord) -> None:
        if rec.pid is None:
            rec.cpu_layer = "recorded: the domain has no process"
            return
        try:
            rec.cpu_layer = jail.set_cpu_share(rec.domid, rec.pid, rec.weight, rec.cap,
                                               rec.config.maxvcpus or rec.config.vcpus)
        except OSError as e:
            rec.cpu_layer = f"missing: {e.strerror or e}"
            log.warning("domain %d: weight %d cap %d recorded only: %s", rec.domid,
                        rec.weight, rec.cap, rec.cpu_layer)


    # -- devices: xl block-attach, block-detach (Xen PV, through xenbus) -----------------
    @daemon_step("block-attach")
    async def _block_attach(self, req: Request, client: Client) -> Reply:
        """xl block-attach DOM DISKSPEC: the spec parsed as xl parses it, the image the
        CLI opened handed to the domain, whose process adds the backend (libxl's nodes)."""
        rec = self._xen_domain(req, "its disks are virtio-blk, and PCI hotplug is not"
                               " implemented")
        try:
            disk = parse_disk(str(req.args.get("spec")))
        except ValueError as e:
            raise RequestError(str(e), "config") from None
        if disk.kind_for(True) != "xen":
            raise RequestError(f"{disk.vdev}: only Xen PV disks can be attached to a running"
                               " domain; a vd* vdev or specification=virtio asks for virtio-blk,"
                               " which needs PCI hotplug (not implemented)")
        # The path as the CLI resolved it: a receiver or a later restore has no cwd.
        target = req.args.get("target")
        if isinstance(target, str) and os.path.isabs(target):
            disk = dataclasses.replace(disk, target=target)
        token = await self._hand_over(rec, await self._client_file(client))
        reply = await rec.request(Request("block-attach", {"files": token, "disk": disk.to_dict()}),
                                  timeout=HOTPLUG_TIMEOUT)
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: {reply.error}\nlibxl_device_disk_add failed.")
        # libxl__device_disk_add: the disk goes into the domain's stored config too, so
        # `list -l`, a save image's DOMAIN_CONFIG and a migration's receiver have it
        # (the restored domain is built with it and its backend takes the saved ring);
        # the domain process recorded it for its next incarnation (a restart).
        rec.config = dataclasses.replace(rec.config, disks=[*rec.config.disks, disk])
        self._save_table()
        self.hv_log(f"d{rec.domid}: disk {disk.vdev} attached ({disk.target})")
        return Reply(True, reply.data)

    @daemon_step("block-detach")
    async def _block_detach(self, req: Request, client: Client) -> Reply:
        """xl block-detach [-f] DOM DEV: the domain's process closes and removes it."""
        rec = self.lookup(req.dom)
        reply = await rec.request(Request("block-detach", {"dev": req.args.get("dev"),
                                                           "force": bool(req.args.get("force"))}),
                                  timeout=HOTPLUG_TIMEOUT)
        if not reply.ok:
            raise RequestError(str(reply.error))
        gone = reply.data.get("vdev")  # libxl__device_disk_remove: out of the config too
        if isinstance(gone, str):
            rec.config = dataclasses.replace(
                rec.config, disks=[d for d in rec.config.disks if d.vdev != gone])
            self._save_table()
        self.hv_log(f"d{rec.domid}: disk {req.args.get('dev')} detached")
        return Reply(True, reply.data)


    # -- devices: xl network-attach, network-detach (Xen PV, through xenbus) -------------
    @daemon_step("network-attach")
    async def _network_attach(self, req: Request, client: Client) -> Reply:
        """xl network-attach DOM VIFSPEC: libxl_device_nic_add for a PVH domain — a Xen PV
        vif (virtio only when the spec says model=virtio, which needs PCI hotplug), devid
        the next free one (libxl__device_nextid), the default bridge from xl.conf. The
        daemon makes the tap (xl's name, MTU, bridge): a jailed domain cannot."""
        rec = self._xen_domain(req, "its NICs are virtio-net, and PCI hotplug is not"
                               " implemented")
        spec = str(req.args.get("spec"))
        try:
            vif = parse_vif(spec)
        except ValueError as e:
            raise RequestError(str(e), "config") from None
        if any(part.strip().startswith("model=") for part in spec.split(",")) and vif.model != "xen":
            raise RequestError(f"model={vif.model}: only Xen PV vifs can be attached to a"
                               " running domain (virtio needs PCI hotplug, not implemented)")
        bridge = req.args.get("vif_bridge")
        vif = dataclasses.replace(vif, model="xen", bridge=vif.bridge if vif.bridge is not None
                                  else bridge if isinstance(bridge, str) else None)
        listed = await rec.request(Request("devices"))
        taken = {d.get("devid") for d in listed.data.get("devices", []) if d.get("kind") == "nic"}
        devid = max({i for i in taken if isinstance(i, int)} | set(vif_devids(rec.config.vifs)),
                    default=-1) + 1
        try:
            end = await asyncio.to_thread(open_vif, rec.name, vif, rec.domid, devid)
        except (OSError, ValueError) as e:
            raise RequestError(f"cannot make vif {devid}'s tap: {e}") from None
        # What libxl stores (device_add_domain_config): the nic with its devid and the
        # defaults filled in (libxl__device_nic_setdefault: the MAC it generated).
        vif = dataclasses.replace(vif, devid=devid, mac=format_mac(end.mac))
        try:
            config = dataclasses.replace(rec.config, vifs=[*rec.config.vifs, vif])
            token = self.interdomain.hand_over(rec.domid, [end.tap.fd])
        except ConfigError as e:  # a mac the domain's other vifs have
            raise RequestError(str(e), "config") from None
        except ConnectionError as e:
            raise RequestError(str(e)) from None
        finally:
            end.tap.close()  # the domain has its own descriptor now
        reply = await rec.request(Request("network-attach", {
            "files": token, "devid": devid, "name": end.tap.name,
            "vnet_hdr_len": end.tap.vnet_hdr_len, "mac": format_mac(end.mac),
            "bridge": vif.bridge or "", "vif": vif.to_dict()}), timeout=HOTPLUG_TIMEOUT)
        if not reply.ok:
            raise RequestError(f"domain {rec.domid}: {reply.error}\nlibxl_device_nic_add failed.")
        # libxl__device_nic_add: in the domain's stored config from now on (`list -l`, a
        # save image's DOMAIN_CONFIG, a migration's receiver); the domain process
        # recorded it for its next incarnation (a restart).
        rec.config = config
        self._save_table()
        self.hv_log(f"d{rec.domid}: vif {devid} attached ({end.tap.name})")
        return Reply(True, reply.data)

    @daemon_step("network-detach")
    async def _network_detach(self, req: Request, client: Client) -> Reply:
        """xl network-detach DOM DEVID|MAC: closed by the frontend, or after the timeout
        removed anyway (libxl_device_nic_remove)."""
        rec = self.lookup(req.dom)
        reply = await rec.request(Request("network-detach", {"dev": req.args.get("dev")}),
                                  timeout=HOTPLUG_TIMEOUT)
        if not reply.ok:
            raise RequestError(str(reply.error))
        gone = reply.data.get("devid")  # libxl_device_nic_remove: out of the config too
        if isinstance(gone, int) and not isinstance(gone, bool):
            rec.config = dataclasses.replace(rec.config, vifs=without_vif(rec.config.vifs, gone))
            self._save_table()
        self.hv_log(f"d{rec.domid}: vif {req.args.get('dev')} detached")
        return Reply(True, reply.data)


def run(run_dir: Path, *, ready_fd: int | None = None, log_file: Path | None = None,
        spares: int | None = None,
        started_zygote: tuple[subprocess.Popen, socket.socket] | None = None) -> int:
    """The daemon in this process until it is stopped; `started_zygote` (with `spares`
    resolved) if the caller started the zygote before importing this module."""

    def refuse(problem: object) -> int:
        print(f"xenopus daemon: {problem}", file=sys.stderr)
        if started_zygote is not None:
            started_zygote[0].terminate()
            started_zygote[0].wait()
        return 1

    try:
        ipc.ensure_run_dir(str(run_dir))
        handler = logging.StreamHandler(ipc.open_log(log_file) if log_file else sys.stderr)
    except OSError as e:
        return refuse(e)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        spares = zygote.spares_wanted(spares)
        timeout = start_timeout()
    except ValueError as e:
        return refuse(e)
    daemon = Daemon(run_dir, spares=spares, started_zygote=started_zygote, start_timeout=timeout)
    try:
        daemon.acquire_lock()
    except (RequestError, OSError) as e:
        return refuse(e)
    asyncio.run(daemon.serve(ready_fd))
    return 0
