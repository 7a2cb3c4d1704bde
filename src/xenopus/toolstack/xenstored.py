"""The daemon's XenStore: the store, its Unix socket, and each domain's nodes.

The nodes are the ones libxl writes when it makes a domain (libxl_create.c,
libxl__domain_make and libxl__build_post): a read-only home `/local/domain/N` owned by
dom0 and readable by the domain, the writable subdirectories a guest uses (`control/
shutdown`, `data`, `drivers`, `feature`, `attr`, `error`), its name, domid, memory target
and vCPU availability, and `/vm/<uuid>`. Each domain's ring traffic arrives on a socket
pair made at spawn time and is served as that domain (`XenStoreServer.attach_domain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from xenopus.domain.config import DomainConfig
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Perm, Store, XsError

log = logging.getLogger("xenopus.xenstore")

RW_DIRS = ("control/shutdown", "data", "drivers", "feature", "attr", "error")
RO_DIRS = ("device", "control", "console")


class XenStored:
    def __init__(self) -> None:
        self.store = Store()
        self.server = XenStoreServer(self.store)
        self.dom0 = self.store.connect(0, lambda path, token: None)
        self._tasks: dict[int, asyncio.Task] = {}
        self._vm_paths: dict[int, str] = {}

    async def serve(self, path: str) -> None:
        await self.server.serve_unix(path)
        os.chmod(path, 0o600)

    async def add_domain(self, domid: int, name: str, config: DomainConfig, sock: socket.socket) -> None:
        """Write the domain's nodes, introduce it (@introduceDomain) and serve its ring
        traffic from `sock`. A domain that is re-spawned (on_crash=restart) starts over."""
        self.remove_domain(domid)
        s, c = self.store, self.dom0
        home = f"/local/domain/{domid}"
        vm = f"/vm/{uuid.uuid4()}"
        self._vm_paths[domid] = vm
        ro = ["n0", f"r{domid}"]  # libxl's roperm: dom0 owns it, the domain may read it
        rw = [f"n{domid}"]  # libxl's rwperm: the domain owns it
        s.mkdir(c, home)
        s.set_perms(c, home, ro)
        for sub in RO_DIRS:
            s.mkdir(c, f"{home}/{sub}")
            s.set_perms(c, f"{home}/{sub}", ro)
        for sub in RW_DIRS:
            s.mkdir(c, f"{home}/{sub}")
            s.set_perms(c, f"{home}/{sub}", rw)
        values = {
            "name": name,
            "domid": str(domid),
            "vm": vm,
            "memory/target": str(config.memory * 1024),  # KiB, as libxl
            "memory/static-max": str((config.maxmem or config.memory) * 1024),
        }
        for i in range(config.vcpus):
            values[f"cpu/{i}/availability"] = "online"
        for key, value in values.items():
            s.write(c, f"{home}/{key}", value.encode())
        s.write(c, f"{vm}/name", name.encode())
        s.write(c, f"{vm}/uuid", vm.rsplit("/", 1)[1].encode())
        s.set_perms(c, vm, ro)
        s.introduce(c, domid)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._tasks[domid] = asyncio.create_task(self._serve(domid, reader, writer))

    def write_nodes(self, domid: int, under: str, values: dict[str, str]) -> None:
        """Toolstack nodes below the domain's home, e.g. console/ring-ref and port."""
        for key, value in values.items():
            self.store.write(self.dom0, f"/local/domain/{domid}/{under}/{key}", str(value).encode())

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
        toolstack wrote for the new domain (name, domid, console, ...) stay as written,
        the rest come back with permissions renumbered from the old domid, and watches
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
                continue  # already there: the new domain's own
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
        """@releaseDomain, then the domain's nodes go."""
        task = self._tasks.pop(domid, None)
        if task is not None:
            task.cancel()
        s, c = self.store, self.dom0
        with contextlib.suppress(XsError):
            if s.is_domain_introduced(domid):
                s.release(c, domid)
        for path in (f"/local/domain/{domid}", self._vm_paths.pop(domid, None)):
            if path:
                with contextlib.suppress(XsError):
                    s.rm(c, path)
