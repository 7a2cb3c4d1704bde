"""The daemon's XenStore: the store, its Unix socket, and each domain's nodes.

The nodes are the ones libxl writes for a PVH domain (docs/misc/xenstore-paths.pandoc):
`libxl__domain_make` (libxl_create.c) makes the home `/local/domain/N`, `/vm/UUID` and
`/libxl/N` with their permissions and the placeholders a guest fills in (`control/
feature-*`, `control/sysrq`, ...); `libxl__build_post` (libxl_dom.c) writes memory, store
and vCPU availability, `libxl__domain_build` `/vm/UUID/start_time`; `libxl__device_
console_add` (libxl_console.c, through `libxl__device_generic_add`) the primary console's
frontend and backend. Dom0's `name` and `domid` are what `xen-init-dom0` writes at boot.
Each domain's ring traffic arrives on a socket pair made at spawn time and is served as
that domain (`XenStoreServer.attach_domain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from typing import Any

from xenopus.domain.config import DomainConfig
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import DOMAIN_STREAM_LIMIT, PeerScope, Scope, XenStoreServer
from xenopus.xen.xenstore.store import FEATURES, Perm, Quota, Store, XsError

log = logging.getLogger("xenopus.xenstore")

# The per-domain quotas, in xenstored's names and `-Q` syntax (`nodes=2000,memory=4194304`);
# what is not named keeps xenstored's default.
# A PV frontend's state node, below the domain's home (io/xenbus.h; libxl's device paths).
_FRONTEND_STATE = re.compile(r"/device/[^/]+/\d+/state")
QUOTA_ENV = "XENOPUS_XENSTORE_QUOTA"

# Where libxenstore looks first (xs.c xs_open → xs_daemon_socket: XENSTORED_RUNDIR/socket).
XEN_SOCKET = "/run/xenstored/socket"
DOM0_NAME = "Domain-0"

# libxl__domain_make: the subdirectories of a domain's home, and who may write them.
# "ro" (libxl's roperm): dom0 owns the node, the domain may read it; "rw" (rwperm): the
# domain owns it. Feature placeholders are empty nodes the guest's drivers fill in.
HOME_NODES = (
    ("cpu", "ro"), ("memory", "ro"), ("device", "ro"), ("device/suspend/event-channel", "rw"),
    ("control", "ro"), ("control/shutdown", "rw"), ("control/feature-poweroff", "rw"),
    ("control/feature-reboot", "rw"), ("control/feature-suspend", "rw"),
    ("control/sysrq", "rw"), ("data", "rw"), ("drivers", "rw"), ("feature", "rw"),
    ("attr", "rw"), ("error", "rw"),
)
# libxl__domain_make writes these two "1"s: what the toolstack supports.
PLATFORM_FEATURES = ("multiprocessor-suspend", "xs_reset_watches")
# libxl_console.c: LIBXL_XENCONSOLE_PROTOCOL, LIBXL_XENCONSOLE_LIMIT; the primary console
# is a pty for xenconsoled; XenbusStateInitialising is what libxl gives its backend.
CONSOLE_PROTOCOL = "vt100"
CONSOLE_LIMIT = "1048576"
XENBUS_INITIALISING = "1"
# libxl__domain_pvcontrol: how long the guest has to acknowledge a control request.
PVCONTROL_TIMEOUT = 60.0


class PvControlTimeout(Exception):
    """The guest did not clear control/shutdown in time (libxl: "guest didn't acknowledge
    control request")."""


def start_time_text(seconds: float) -> str:
    """`/vm/UUID/start_time` for a PVH domain: "%"PRIu64".%02ld" of the seconds and
    hundredths (libxl__domain_build)."""
    whole = int(seconds)
    return "%d.%02d" % (whole, int((seconds - whole) * 100))  # noqa: UP031


class XenStored:
    def __init__(self, quota: Quota | None = None) -> None:
        self.store = Store(quota or Quota.parse(os.environ.get(QUOTA_ENV, "")))
        self.server = XenStoreServer(self.store)
        self.dom0 = self.store.connect(0, lambda path, token: None)
        self._tasks: dict[int, asyncio.Task] = {}
        self._backend_tasks: dict[int, asyncio.Task] = {}
        self._vm_paths: dict[int, str] = {}
        self._published: str | None = None
        self.path = ""  # the socket this XenStore serves on (XENSTORED_PATH)
        for key, value in (("name", DOM0_NAME), ("domid", "0")):  # xen-init-dom0
            self.store.write(self.dom0, f"/local/domain/0/{key}", value.encode())

    async def serve(self, path: str, classify: PeerScope | None = None) -> None:
        await self.server.serve_unix(path, classify)
        # With `classify`, who may do what is decided per client; the socket must be open
        # to a jailed domain process's uid (others cannot pass the 0700 run directory).
        os.chmod(path, 0o666 if classify else 0o600)
        self.path = path

    def publish(self, xen_path: str = XEN_SOCKET) -> None:
        """Make the socket reachable where Xen's tools look without XENSTORED_PATH: a
        symlink at `xen_path`. A socket or file of another xenstored there is left alone."""
        target = self.path
        if os.path.islink(xen_path) and os.readlink(xen_path) == target:
            os.unlink(xen_path)  # ours, from a daemon that did not clean up
        if os.path.lexists(xen_path):
            log.warning("xenstore: %s exists (another xenstored?); not replacing it", xen_path)
            return
        try:
            os.makedirs(os.path.dirname(xen_path), mode=0o755, exist_ok=True)
            os.symlink(target, xen_path)
        except OSError as e:
            log.warning("xenstore: cannot link %s to %s: %s", xen_path, target, e.strerror)
            return
        self._published = xen_path

    def unpublish(self) -> None:
        path, self._published = self._published, None
        if path is not None and os.path.islink(path) and os.readlink(path) == self.path:
            os.unlink(path)

    def _mknod(self, path: str, perms: list[str], value: str | None = None) -> None:
        s, c = self.store, self.dom0
        if value is None:
            s.mkdir(c, path)
        else:
            s.write(c, path, value.encode())
        s.set_perms(c, path, perms)

    def write_domain(self, domid: int, name: str, config: DomainConfig, uuid: str,
                     start_time: float) -> None:
        """The nodes libxl writes before a domain runs (libxl__domain_make,
        libxl__build_post, libxl__domain_build); `store/*` and `console/*` follow once
        the domain process has placed the rings (`store_ready`, `console_ready`)."""
        s, c = self.store, self.dom0
        home, vm, lib = f"/local/domain/{domid}", f"/vm/{uuid}", f"/libxl/{domid}"
        self._vm_paths[domid] = vm
        ro, rw, none = ["n0", f"r{domid}"], [f"n{domid}"], ["n0"]
        for path in (home, vm, lib):
            with contextlib.suppress(XsError):
                s.rm(c, path)
        self._mknod(home, ro)
        self._mknod(vm, ro)
        self._mknod(lib, none)
        self._mknod(f"{lib}/device", none)
        s.write(c, f"{lib}/type", config.type.encode())  # libxl_domain_type_to_string
        s.write(c, f"{home}/vm", vm.encode())
        for sub, kind in HOME_NODES:
            self._mknod(f"{home}/{sub}", ro if kind == "ro" else rw)
        for feature in PLATFORM_FEATURES:
            s.write(c, f"{home}/control/platform-feature-{feature}", b"1")
        self.rename(domid, name)
        s.write(c, f"{vm}/uuid", uuid.encode())
        s.write(c, f"{vm}/start_time", start_time_text(start_time).encode())
        maxvcpus = config.maxvcpus or config.vcpus
        values = {
            "memory/static-max": str((config.maxmem or config.memory) * 1024),  # KiB
            "memory/target": str(config.memory * 1024),
            "memory/videoram": "0",  # a PVH domain has no emulated video memory
            "domid": str(domid),
            **{f"cpu/{i}/availability": "online" if i < config.vcpus else "offline"
               for i in range(maxvcpus)},
        }
        for key, value in values.items():
            s.write(c, f"{home}/{key}", value.encode())

    def preserve(self, domid: int, name: str, uuid: str) -> None:
        """libxl_domain_preserve (rename-restart): the domain gets a fresh /vm/UUID (roperm,
        its `uuid`), its home's `vm` points there, and it is renamed; the old /vm stays
        for the domain that takes over the old name and UUID."""
        s, c = self.store, self.dom0
        vm = f"/vm/{uuid}"
        with contextlib.suppress(XsError):
            s.rm(c, vm)
        self._mknod(vm, ["n0", f"r{domid}"])
        s.write(c, f"/local/domain/{domid}/vm", vm.encode())
        self._vm_paths[domid] = vm
        self.rename(domid, name)
        s.write(c, f"{vm}/uuid", uuid.encode())

    def rename(self, domid: int, name: str) -> None:
        """The domain's name in its home and its /vm (libxl__domain_rename)."""
        s, c = self.store, self.dom0
        s.write(c, f"/local/domain/{domid}/name", name.encode())
        vm = self._vm_paths.get(domid)
        if vm is not None:
            s.write(c, f"{vm}/name", name.encode())

    async def add_domain(self, domid: int, name: str, config: DomainConfig, uuid: str,
                         start_time: float, sock: socket.socket) -> None:
        """Write the domain's nodes, introduce it (@introduceDomain) and serve its ring
        traffic from `sock`. A domain that is re-spawned (on_crash=restart) starts over."""
        self.remove_domain(domid)
        self.write_domain(domid, name, config, uuid, start_time)
        self.introduce(domid, config)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=DOMAIN_STREAM_LIMIT)
        self._tasks[domid] = asyncio.create_task(self._serve(domid, reader, writer))

    def introduce(self, domid: int, config: DomainConfig) -> None:
        """INTRODUCE the domain with xl.cfg's XenStore settings as libxl applies them:
        xenstore_feature_mask before (SET_FEATURE), xenstore_quota after (SET_QUOTA)."""
        features = FEATURES & config.xenstore_feature_mask
        if features != FEATURES:
            self.store.set_feature(self.dom0, domid, features)
        self.store.introduce(self.dom0, domid)
        for item in config.xenstore_quota or ():
            name, _, value = item.partition("=")
            self.store.set_quota(self.dom0, domid, name, int(value))

    async def serve_backends(self, domid: int, sock: socket.socket) -> None:
        """Serve domain `domid`'s PV backends (its process's XenStore client) on `sock`,
        scoped to that domain as a connection on the socket would be: for a domain a
        restarted daemon adopts, whose process cannot reach the new daemon's socket (its
        jail holds the old one's)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)

        async def serve() -> None:
            try:
                await self.server.serve_stream(reader, writer, Scope(domid))
            except (ConnectionError, OSError) as e:
                log.info("xenstore: domain %d's backends' connection ended: %s", domid, e)
            finally:
                writer.close()

        old = self._backend_tasks.pop(domid, None)
        if old is not None:
            old.cancel()
        self._backend_tasks[domid] = asyncio.create_task(serve())

    def store_ready(self, domid: int, port: int, ring_ref: int) -> None:
        """The XenStore ring's event channel and frame (libxl__build_post)."""
        self.write_nodes(domid, "store", {"port": str(port), "ring-ref": str(ring_ref)})

    def console_ready(self, domid: int, nodes: dict[str, str]) -> None:
        """The primary console as libxl__device_console_add writes it: the frontend
        (read-only to the guest, console 0 being special), the backend under dom0 and
        libxl's copy. `nodes` are the domain process's ring-ref, port, type, limit."""
        s, c = self.store, self.dom0
        front = f"/local/domain/{domid}/console"
        back = f"/local/domain/0/backend/console/{domid}/0"
        lib = f"/libxl/{domid}/device/console/0"
        ro, fe = ["n0", f"r{domid}"], [f"n{domid}", "r0"]
        with contextlib.suppress(XsError):
            s.rm(c, back)
        self._mknod(front, ro)
        s.write(c, f"{front}/backend", back.encode())
        self._mknod(f"{front}/backend-id", fe, "0")
        ro_front = {"limit": CONSOLE_LIMIT, "type": "xenconsoled", "output": "pty", "tty": "",
                    **{k: str(v) for k, v in nodes.items()}}
        for key, value in ro_front.items():
            self._mknod(f"{front}/{key}", ro, value)
        back_nodes = {"frontend-id": str(domid), "online": "1", "state": XENBUS_INITIALISING,
                      "protocol": CONSOLE_PROTOCOL}
        self._mknod(back, ro)
        s.write(c, f"{back}/frontend", front.encode())
        for key, value in back_nodes.items():
            s.write(c, f"{back}/{key}", value.encode())
        s.write(c, f"{lib}/frontend", front.encode())
        s.write(c, f"{lib}/backend", back.encode())
        for key, value in back_nodes.items():
            s.write(c, f"{lib}/{key}", value.encode())

    # -- the PV control protocol (docs/misc/xenstore-paths.pandoc, ~/control/*) ----------
    def _read(self, path: str) -> bytes | None:
        try:
            return self.store.read(self.dom0, path)
        except XsError:
            return None

    def channels(self, domid: int) -> list[dict[str, Any]]:
        """libxl_device_channel_list + _getinfo: the domain's consoles that have a name
        (console 0 has none), from their backend and frontend nodes; -1 for a number
        the frontend has not written."""
        back = f"/local/domain/0/backend/console/{domid}"
        try:
            devids = self.store.directory(self.dom0, back)
        except XsError:
            return []
        out = []
        for devid in sorted(devids, key=lambda d: int(d) if d.isdigit() else -1):
            name = self._read(f"{back}/{devid}/name")
            if name is None or not devid.isdigit():
                continue
            front = f"/local/domain/{domid}/device/console/{devid}"

            def number(node: str, front: str = front) -> int:
                raw = self._read(f"{front}/{node}")
                return int(raw) if raw is not None and raw.isdigit() else -1

            out.append({
                "devid": int(devid), "backend_id": 0, "name": name.decode(errors="replace"),
                "state": number("state"), "evtch": number("port"), "rref": number("ring-ref"),
                "connection": (self._read(f"{back}/{devid}/connection") or b"").decode(),
                "tty": (self._read(f"{front}/tty") or b"").decode(errors="replace"),
            })
        return out

    def pvcontrol_available(self, domid: int, cmd: str) -> bool:
        """Whether the guest's drivers listen on control/shutdown for `cmd`: they say so
        in control/feature-<cmd> ("1"), as Linux's manage.c does for poweroff and
        reboot. (libxl assumes any PVH guest listens and checks HVM_PARAM_CALLBACK_IRQ for
        HVM ones; here the Xen interface is shown to kernels that may have no Xen drivers
        at all, so the guest's own advertisement decides.)"""
        return self._read(f"/local/domain/{domid}/control/feature-{cmd}") == b"1"

    async def pvcontrol(self, domid: int, cmd: str, timeout: float = PVCONTROL_TIMEOUT) -> None:
        """libxl__domain_pvcontrol: write `cmd` to control/shutdown, then wait (libxl's
        xswait on that node) until the guest acknowledges by emptying or removing it
        (pvcontrol_acked). PvControlTimeout after `timeout` seconds."""
        path = f"/local/domain/{domid}/control/shutdown"
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        conn = self.store.connect(0, lambda p, t: loop.call_soon_threadsafe(changed.set))
        try:
            self.store.watch(conn, path, "pvcontrol")
            self.store.write(self.dom0, path, cmd.encode())
            deadline = loop.time() + timeout
            while self._read(path) not in (None, b""):
                changed.clear()
                left = deadline - loop.time()
                if left <= 0:
                    raise PvControlTimeout(f"guest didn't acknowledge control request"
                                           f" ({cmd}) within {timeout:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            self.store.disconnect(conn)

    # -- quotas, as libxl_xsquota.c asks for them (XS_GET_QUOTA/XS_SET_QUOTA as dom0) --
    def _ask(self, type_: int, *args: str) -> str:
        """One request on dom0's connection through the wire protocol's dispatcher; the
        reply's text, or XsError with the error name."""
        payload = wire.strings(*args) if args else b""
        out = self.server.dispatch(self.dom0, wire.Header(type_, 0, 0, len(payload)), payload)
        hdr = wire.unpack_header(out)
        text = out[wire.HEADER_SIZE:].rstrip(b"\0").decode("latin-1")
        if hdr.type == wire.XS_ERROR:
            raise XsError(text)
        return text

    def quota_get(self, domid: int | None) -> list[tuple[str, int]]:
        """Every quota (the names GET_QUOTA lists, then each value): the global ones
        (domid None) or domid's (libxl_xs_quota_global_get / _domain_get)."""
        scope = () if domid is None else (str(domid),)
        return [(name, int(self._ask(wire.XS_GET_QUOTA, *scope, name)))
                for name in self._ask(wire.XS_GET_QUOTA).split()]

    def quota_set(self, domid: int | None, items: list[tuple[str, int]]) -> None:
        """SET_QUOTA each (name, value) in turn, stopping at the first refusal
        (libxl_xs_quota_global_set / _domain_set)."""
        scope = () if domid is None else (str(domid),)
        for name, value in items:
            self._ask(wire.XS_SET_QUOTA, *scope, name, str(value))

    def sysrq(self, domid: int, key: str) -> None:
        """libxl_send_sysrq: the key, one character, into control/sysrq."""
        self.store.write(self.dom0, f"/local/domain/{domid}/control/sysrq", key.encode())

    def write_nodes(self, domid: int, under: str, values: dict[str, str]) -> None:
        """Toolstack nodes below the domain's home, e.g. store/ring-ref and port."""
        for key, value in values.items():
            self.store.write(self.dom0, f"/local/domain/{domid}/{under}/{key}", str(value).encode())

    # -- xl mem-set, mem-max, vcpu-set: the nodes libxl changes ---------------------------
    def read_kib(self, domid: int, node: str) -> int | None:
        """A number libxl keeps under the domain's home (memory/target, static-max,
        videoram: KiB); None when the node is missing or not a decimal number."""
        try:
            text = self.store.read(self.dom0, f"/local/domain/{domid}/{node}").decode()
        except (XsError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def set_memory_target(self, domid: int, kib: int) -> None:
        """libxl_set_memory_target: memory/target (KiB) for the guest's balloon driver,
        and /vm/UUID/memory (MiB)."""
        s, c = self.store, self.dom0
        s.write(c, f"/local/domain/{domid}/memory/target", str(kib).encode())
        vm = self._vm_paths.get(domid)
        if vm is not None:
            s.write(c, f"{vm}/memory", str(kib // 1024).encode())

    def set_static_max(self, domid: int, kib: int) -> None:
        """libxl_domain_setmaxmem: memory/static-max (KiB)."""
        self.store.write(self.dom0, f"/local/domain/{domid}/memory/static-max", str(kib).encode())

    def vcpus_available(self, domid: int) -> int | None:
        """How many vCPUs cpu/N/availability has "online" (None: no such nodes)."""
        s, c, home = self.store, self.dom0, f"/local/domain/{domid}/cpu"
        try:
            children = s.directory(c, home)
        except XsError:
            return None
        online = 0
        for child in children:
            with contextlib.suppress(XsError):
                online += s.read(c, f"{home}/{child}/availability") == b"online"
        return online or None

    def set_vcpus_online(self, domid: int, online: int, maxvcpus: int) -> None:
        """libxl__set_vcpuonline_xenstore: cpu/N/availability for every vCPU the domain
        has, the first `online` "online", the rest "offline". The daemon runs one step at
        a time, so the guest sees them as one change (libxl uses a transaction)."""
        for i in range(maxvcpus):
            self.store.write(self.dom0, f"/local/domain/{domid}/cpu/{i}/availability",
                             b"online" if i < online else b"offline")

    def export_domain(self, domid: int) -> dict[str, Any]:
        """The domain's subtree (every node below its home: path from there, value as
        latin-1 text so it travels in JSON unchanged, permissions) and its watches: what
        a save carries (docs/snapshot-stream.md)."""
        s, c = self.store, self.dom0
        home = f"/local/domain/{domid}"
        nodes: list[list[Any]] = []

        def walk(path: str) -> None:
            perms = [str(p) for p in s.get_perms(c, path)]
            nodes.append([path[len(home):], s.read(c, path).decode("latin-1"), perms])
            for child in s.directory(c, path):
                walk(f"{path}/{child}")

        walk(home)
        return {"domid": domid, "nodes": nodes, "watches": s.domain_watches(domid)}

    def import_domain(self, domid: int, saved: dict[str, Any]) -> None:
        """A restored domain's saved subtree and watches under its new domid: nodes the
        toolstack wrote for the new domain (name, domid, console, ...) stay as written
        (but for a PV frontend's `state`: the guest's, docs/snapshot-stream.md), the rest
        come back with permissions renumbered from the old domid, and watches
        on the old home move to the new one."""
        s, c = self.store, self.dom0
        old, home = int(saved["domid"]), f"/local/domain/{domid}"
        old_home = f"/local/domain/{old}"

        def renumber(perm: str) -> str:
            p = Perm.parse(perm)
            return f"{p.letter}{domid if p.domid == old else p.domid}"

        for rel, value, perms in saved["nodes"]:
            path = home + rel
            with contextlib.suppress(XsError):
                s.read(c, path)
                if not _FRONTEND_STATE.fullmatch(rel):
                    continue  # already there: the new domain's own
                # A PV frontend's state is the guest's: its new backend wrote Initialising
                # as for a new device, but the frontend is where it was (Connected).
                # Writing it fires the backend's watch, which reconnects to the saved ring.
            s.write(c, path, value.encode("latin-1"))
            s.set_perms(c, path, [renumber(p) for p in perms])
        for path, token in saved["watches"]:
            if path == old_home or path.startswith(old_home + "/"):
                path = home + path[len(old_home):]
            try:
                s.add_domain_watch(domid, path, token)
            except XsError as e:
                log.warning("xenstore: domain %d's watch %s not restored: %s", domid, path, e)

    async def _serve(self, domid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.server.attach_domain(domid, reader, writer)
        except (ConnectionError, OSError) as e:
            log.info("xenstore: domain %d's connection ended: %s", domid, e)
        finally:
            writer.close()

    def remove_domain(self, domid: int) -> None:
        """@releaseDomain, then the domain's nodes go (libxl__destroy_domid: its home,
        /vm, /libxl and its backends under dom0)."""
        for tasks in (self._tasks, self._backend_tasks):
            task = tasks.pop(domid, None)
            if task is not None:
                task.cancel()
        s, c = self.store, self.dom0
        with contextlib.suppress(XsError):
            if s.is_domain_introduced(domid):
                s.release(c, domid)
        try:  # every kind of backend: a process that died could not remove its own
            kinds = s.directory(c, "/local/domain/0/backend")
        except XsError:
            kinds = []
        paths = [f"/local/domain/{domid}", self._vm_paths.pop(domid, None), f"/libxl/{domid}",
                 *(f"/local/domain/0/backend/{kind}/{domid}" for kind in kinds)]
        for path in paths:
            if path:
                with contextlib.suppress(XsError):
                    s.rm(c, path)
