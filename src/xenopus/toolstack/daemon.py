"""The host daemon: owns the domain table and domain IDs, and spawns domain processes.

It is single-threaded (asyncio) and never touches guest memory or a vCPU: each domain
runs in its own process, forked by the zygote, and talks to the daemon over its own
control channel. Clients (the CLI) speak JSON lines on `$XENOPUS_RUN_DIR/xenopus.sock`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenopus import ipc
from xenopus.toolstack.interdomain import InterdomainBroker
from xenopus.toolstack.xenstored import XenStored

log = logging.getLogger("xenopus.daemon")

DMESG_LINES = 10000
DESTROY_GRACE = 5.0  # seconds a domain process gets to exit before SIGKILL
# Seconds the zygote gets to fork a domain process. Its first fork waits for it to import
# every layer, which on a slow host (an emulated one runs Python 10-20 times slower) is
# well past a second.
SPAWN_TIMEOUT = 60.0


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


@dataclass
class DomainRecord:
    domid: int
    name: str
    config: dict[str, Any]
    state: str = "starting"  # running | paused | shutdown | crashed | dying
    pid: int | None = None
    created: float = field(default_factory=time.time)
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    seq: int = 0
    last_stop: dict[str, Any] | None = None
    exit_info: dict[str, Any] | None = None  # from the zygote, once the process has exited
    final: dict[str, Any] | None = None  # the domain process's own report of its end
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    protocol: str | None = None
    xen_path: str = "off"
    console: str = "serial"  # the console `xenopus console DOM` attaches to by default

    async def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        if self.writer is None or self.writer.is_closing():
            raise RequestError(f"domain {self.domid} has no running process")
        self.seq += 1
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = fut
        self.writer.write(ipc.encode({**msg, "seq": self.seq}))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestError(f"domain {self.domid} did not answer {msg.get('op')!r}") from None
        finally:
            self.pending.pop(self.seq, None)

    async def query(self, op: str, key: str, default: Any, timeout: float) -> Any:
        """`key` of the answer to `op`; `default` when there is no process or no answer
        (listings show every domain, answering or not)."""
        if self.writer is not None:
            with contextlib.suppress(RequestError, ConnectionError):
                return (await self.request({"op": op}, timeout)).get(key, default)
        return default


class Daemon:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.domains: dict[int, DomainRecord] = {}
        self.next_domid = 1
        self._zygote: subprocess.Popen | None = None
        self._zsock: socket.socket | None = None
        self._zwriter: asyncio.StreamWriter | None = None
        self._zevents: asyncio.Task | None = None
        self._spawned: dict[int, asyncio.Future] = {}
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
        while line := await reader.readline():
            msg = json.loads(line)
            if "spawned" in msg:
                fut = self._spawned.pop(msg["spawned"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["pid"])
            elif "exited" in msg:
                rec = self.domains.get(msg["exited"])
                if rec is not None and rec.pid == msg["pid"]:
                    rec.exit_info = msg
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
            while line := await reader.readline():
                try:
                    req = ipc.decode(line)
                    reply = await self._dispatch(req, reader, writer)
                except RequestError as e:
                    reply = {"ok": False, "error": str(e)}
                except Exception as e:  # noqa: BLE001 - one bad request must not stop the daemon
                    log.exception("request failed")
                    reply = {"ok": False, "error": f"internal error: {e}"}
                if reply is not None:
                    writer.write(ipc.encode(reply))
                    await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def _dispatch(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "create":
            return await self._create(req, reader, writer)
        if op == "dmesg":
            lines = list(self.dmesg)
            if req.get("clear"):
                self.dmesg.clear()
            return {"ok": True, "lines": lines}
        if op == "list":
            return {"ok": True, "domains": await self._list()}
        if op == "stop":
            self._stop.set()
            return {"ok": True}
        if op == "vcpu-list":
            return {"ok": True, "domains": await self._vcpu_list(req.get("doms") or [])}
        rec = self.lookup(str(req.get("dom", "")))
        if op == "console":
            if rec.pid is None:
                raise RequestError(f"domain {rec.domid} has no console: it is not running")
            kind = req.get("type") or rec.console
            if kind not in ipc.CONSOLE_SOCKETS:
                raise RequestError(f"unknown console type {kind!r}")
            if kind == "virtio" and not rec.config.get("virtio_console"):
                raise RequestError(f"domain {rec.domid} has no virtio console (virtio_console = 1)")
            path = ipc.console_socket_path(rec.domid, self.run_dir, kind)
            return {"ok": True, "domid": rec.domid, "path": path}
        if op == "wait":
            await rec.gone.wait()
            return {"ok": True, **self._final(rec)}
        if op == "destroy":
            await self._destroy(rec)
            return {"ok": True}
        if op == "devices":
            reply = await rec.request({"op": op})
            return {"ok": True, "domid": rec.domid, "name": rec.name, "devices": reply.get("devices", [])}
        if op in ("pause", "unpause", "reboot", "shutdown", "vcpu-pin"):
            cmd = {"op": op}
            if op == "vcpu-pin":
                cmd.update(vcpu=req.get("vcpu"), cpus=req.get("cpus"))
            reply = await rec.request(cmd)
            if not reply.get("ok"):
                raise RequestError(f"domain {rec.domid}: {reply.get('error')}")
            if op == "shutdown" and req.get("wait"):
                # Wait here, on the record we already hold: the guest may be gone before a
                # second request could name it.
                await rec.gone.wait()
            return {"ok": True}
        raise RequestError(f"unknown operation {op!r}")

    async def _vcpu_list(self, doms: list[Any]) -> list[dict[str, Any]]:
        """Each named domain's (default: every domain's) vCPUs, from its process."""
        if doms:
            recs = [self.lookup(str(d)) for d in doms]
        else:
            recs = sorted(self.domains.values(), key=lambda r: r.domid)

        async def entry(rec: DomainRecord) -> dict[str, Any]:
            vcpus = await rec.query("vcpu-list", "vcpus", [], timeout=5.0)
            return {"domid": rec.domid, "name": rec.name, "state": rec.state, "vcpus": vcpus}

        return list(await asyncio.gather(*(entry(r) for r in recs)))

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
    async def _create(
        self, req: dict[str, Any], reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        """Create a domain. With `attach`, it starts paused and the reply names its console;
        the client connects there, then says `unpause` on this connection (xl create -c:
        not a byte of output is lost). With `wait`, a second reply comes when it is gone."""
        config, warnings = self._load_config(req)
        name = config["name"]
        if any(r.name == name for r in self.domains.values()):
            raise RequestError(f"domain '{name}' already exists")
        rec = DomainRecord(self.next_domid, name, config)
        self.next_domid += 1
        self.domains[rec.domid] = rec
        attach = bool(req.get("attach"))
        try:
            await self._spawn(rec, paused=attach or bool(req.get("paused")))
        except Exception:  # refused, or the zygote gone: the name and domid are free again
            self.domains.pop(rec.domid, None)
            self.xenstore.remove_domain(rec.domid)
            raise
        reply = {"ok": True, "domid": rec.domid, "name": name, "protocol": rec.protocol, "warnings": warnings}
        if attach:
            reply["console"] = ipc.console_socket_path(rec.domid, self.run_dir, rec.console)
        if not req.get("wait") and not attach:
            return reply
        client.write(ipc.encode(reply))
        await client.drain()
        if attach:
            await reader.readline()  # the client's console is attached (or the client is gone)
            if not req.get("paused"):
                await rec.request({"op": "unpause"})
            if not req.get("wait"):
                return {"ok": True}
        await rec.gone.wait()
        return {"ok": True, "event": "gone", **self._final(rec)}

    @staticmethod
    def _load_config(req: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The config of a create request: a file (+ overrides) to parse, or a parsed dict."""
        from xenopus.domain.config import ConfigError, DomainConfig, load_config

        try:
            if "path" in req:
                overrides = [str(o) for o in req.get("overrides") or []]
                config, warnings = load_config(str(req["path"]), overrides, cwd=req.get("cwd"))
            elif isinstance(req.get("config"), dict):
                config, warnings = DomainConfig.from_dict(req["config"]), []
            else:
                raise RequestError("create needs a config file or a config")
        except (ConfigError, OSError) as e:
            raise RequestError(str(e)) from None
        return config.to_dict(), warnings

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
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._spawned[rec.domid] = fut
        msg = {
            "op": "spawn", "domid": rec.domid, "config": rec.config,
            "run_dir": str(self.run_dir), "paused": paused,
        }
        fds = [theirs.fileno(), xs_theirs.fileno(), id_theirs.fileno()]
        socket.send_fds(self._zsock, [ipc.encode(msg)], fds)
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
        rec.exited.clear()
        rec.exit_info = None
        rec.final = None
        reader, rec.writer = await asyncio.open_unix_connection(sock=ours)
        event: dict[str, Any] = {"event": "error", "error": "the domain process died"}
        with contextlib.suppress(ConnectionError, ValueError):  # ValueError: an over-long line
            while line := await reader.readline():
                try:
                    event = ipc.decode(line)
                except ValueError:
                    event = {"event": "error", "error": "the domain process sent a malformed message"}
                if event.get("event") in ("ready", "error"):
                    break
        if event.get("event") != "ready":
            self.interdomain.remove(rec.domid)
            rec.writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rec.exited.wait(), 5)
            raise RequestError(str(event.get("error") or "the domain failed to start"))
        rec.protocol = event.get("protocol")
        rec.xen_path = event.get("xen_path", "off")
        rec.console = event.get("console", "serial")
        self.xenstore.write_nodes(rec.domid, "console", event.get("console_nodes") or {})
        rec.state = "paused" if paused else "running"
        log.info("domain %d (%s) started, pid %d", rec.domid, rec.name, rec.pid)
        asyncio.create_task(self._domain_events(rec, reader))

    async def _domain_events(self, rec: DomainRecord, reader: asyncio.StreamReader) -> None:
        # A domain process may be compromised by its guest: whatever it sends, this task
        # must live on to retire the domain when the process goes.
        while True:
            try:
                line = await reader.readline()
                if not line:
                    break
                msg = ipc.decode(line)
            except ConnectionError:
                break
            except ValueError:  # not a JSON object, or a line over the stream's limit
                log.error("domain %d sent a malformed message", rec.domid)
                continue
            if "seq" in msg and msg.get("event") is None:
                seq = msg["seq"]
                fut = rec.pending.get(seq) if isinstance(seq, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif msg.get("event") == "state":
                if isinstance(msg.get("state"), str):
                    rec.state = msg["state"]
            elif msg.get("event") == "log":
                self.dmesg.append(str(msg.get("line", ""))[:4096])
            elif msg.get("event") == "finished":
                rec.final = msg
                self._retire(rec)
            elif msg.get("event") == "stopped":
                rec.last_stop = msg
                log.info(
                    "domain %d (%s) %s → %s", rec.domid, rec.name, msg.get("reason"), msg.get("action")
                )
        await self._process_gone(rec)

    def _retire(self, rec: DomainRecord) -> None:
        """The domain has ended (its process said so): drop it from the table."""
        self.xenstore.remove_domain(rec.domid)
        self.interdomain.remove(rec.domid)
        info = rec.final or rec.exit_info or {}
        log.info(
            "domain %d (%s) destroyed: %s; exit status %s, max RSS %s KiB, CPU %.3f s",
            rec.domid, rec.name, (rec.last_stop or {}).get("reason", "destroyed"),
            info.get("exit_code", info.get("status")), info.get("maxrss_kib"), info.get("cpu", 0.0),
        )
        if self.domains.get(rec.domid) is rec:
            del self.domains[rec.domid]
        rec.gone.set()

    async def _process_gone(self, rec: DomainRecord) -> None:
        rec.writer = None
        self.interdomain.remove(rec.domid)  # its peers' ports go unbound, views drop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rec.exited.wait(), 5)
        status = (rec.exit_info or {}).get("status")
        if rec.final is not None:
            if status != rec.final.get("exit_code"):
                log.warning("domain %d: process %s exited with status %s", rec.domid, rec.pid, status)
            return
        clean = rec.state == "dying" or (rec.last_stop is not None and status in (0, 1))
        if not clean:
            # The domain process itself died: treat it as a crash of the domain.
            action = rec.config.get("on_crash", "destroy")
            log.error("domain %d (%s): its process died (status %s); on_crash=%s", rec.domid, rec.name, status, action)
            rec.last_stop = {"reason": "crash", "detail": f"domain process exited with status {status}"}
            if action == "restart" and not self._stop.is_set():
                try:
                    await self._spawn(rec)
                    return
                except Exception as e:  # noqa: BLE001 - refused, or the zygote gone: retire it
                    log.error("domain %d: restart failed: %s", rec.domid, e)
            elif action == "preserve":
                rec.state = "crashed"
                rec.pid = None
                return
        self._retire(rec)

    def _final(self, rec: DomainRecord) -> dict[str, Any]:
        info = rec.final or rec.exit_info or {}
        stop = rec.last_stop or {}
        return {
            "domid": rec.domid,
            "reason": stop.get("reason", "destroyed"),
            "detail": stop.get("detail", ""),
            "status": info.get("exit_code", info.get("status")),
            "maxrss_kib": info.get("maxrss_kib"),
        }

    async def _destroy(self, rec: DomainRecord) -> None:
        if rec.pid is None:  # a preserved corpse with no process
            self.domains.pop(rec.domid, None)
            rec.gone.set()
            return
        rec.state = "dying"
        with contextlib.suppress(RequestError, ConnectionError):
            await rec.request({"op": "destroy"}, timeout=DESTROY_GRACE)
        try:
            await asyncio.wait_for(rec.gone.wait(), DESTROY_GRACE)
        except TimeoutError:
            log.error("domain %d did not exit; killing pid %d", rec.domid, rec.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            await rec.gone.wait()

    # -- list ---------------------------------------------------------------------------
    async def _list(self) -> list[dict[str, Any]]:
        async def entry(rec: DomainRecord) -> dict[str, Any]:
            cpu = await rec.query("info", "cpu_time", 0.0, timeout=2.0)
            return {
                "domid": rec.domid,
                "name": rec.name,
                "memory": rec.config.get("memory", 0),
                "vcpus": rec.config.get("vcpus", 1),
                "state": rec.state,
                "reason": (rec.last_stop or {}).get("reason"),
                "cpu_time": cpu,
                "protocol": rec.protocol,
                "xen_path": rec.xen_path,
                "pid": rec.pid,
                "config": rec.config,
            }

        recs = sorted(self.domains.values(), key=lambda r: r.domid)
        return list(await asyncio.gather(*(entry(r) for r in recs)))


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
