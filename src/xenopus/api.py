"""The xenopus Python API: what a script uses instead of parsing `xl list`.

    import xenopus

    with xenopus.connect() as host:             # starts the daemon if none runs
        web = host.create("/etc/xen/web.cfg", memory=256, paused=True)
        print(web.domid, web.name, web.state)   # 1 web paused
        host.unpause(web.domid)
        for dom in host.list():
            print(f"{dom.name:10} {dom.memory_mib:5} MiB {dom.cpu_time:.1f} s")
        print(host.info().xen_version)          # 4.11.0-xenopus
        host.shutdown("web", wait=True, fallback=True)

A domain is named by its domid or its name everywhere (`dom`). Every method answers with
typed objects (`Domain`, `Vcpu`, `Device`, `HostInfo`) or raises a `XenopusError`:
`NoSuchDomain`, `DomainExists`, `ConfigInvalid`, `DomainStateError`, `NoParavirt`, `DaemonUnavailable`
(`xenopus.client` defines them; `xenopus.NoSuchDomain` etc. name them too). The `xl`
command is built on the same transport (`xenopus.client.Connection`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from xenopus import client
from xenopus.client import Connection
from xenopus.control import Request

Dom = int | str


@dataclass(frozen=True)
class Domain:
    """One domain as `xl list` knows it (memory in MiB, times in seconds)."""

    domid: int
    name: str
    uuid: str
    state: str  # running | paused | shutdown | crashed | dying | starting
    memory_mib: int
    maxmem_mib: int
    vcpus: int  # available (libxl's avail_vcpus: the config's, or xl vcpu-set's)
    maxvcpus: int
    online_vcpus: int  # up in the guest now (xl list's VCPUs: libxl_dominfo.vcpu_online)
    cpu_time: float
    start_time: float  # seconds since the epoch
    reason: str | None  # why it last stopped: poweroff, reboot, crash, watchdog (None: never)
    protocol: str | None  # how it booted: pvh or linux
    xen_path: str  # the Xen interface: trap, kernel or off
    config: dict[str, Any] = field(repr=False)  # DomainConfig.to_dict(): every xl.cfg key

    @classmethod
    def from_listing(cls, d: dict[str, Any]) -> Domain:
        return cls(d["domid"], d["name"], d["uuid"], d["state"], d["memory"], d["maxmem"],
                   d["vcpus"], d["maxvcpus"], d["online_vcpus"], d["cpu_time"],
                   d["start_time"], d["reason"], d["protocol"], d["xen_path"], d["config"])


@dataclass(frozen=True)
class Vcpu:
    """One vCPU (`xl vcpu-list`): the host CPU it last ran on (None without a thread)."""

    vcpu: int
    cpu: int | None
    online: bool
    state: str  # running | blocked | stopped
    cpu_time: float
    affinity: tuple[int, ...]  # host CPUs it may run on


@dataclass(frozen=True)
class Device:
    """One stateful part of a domain (its device inventory): kind is "disk", "nic", ..."""

    kind: str
    name: str
    details: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class HostInfo:
    """`xl info`'s fields (see xenopus.toolstack.hostinfo for what each means here)."""

    host: str
    release: str
    version: str
    machine: str
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    cores_per_socket: int
    threads_per_core: int
    cpu_mhz: str
    hw_caps: str
    virt_caps: list[str]
    total_memory: int  # MiB
    free_memory: int
    sharing_freed_memory: int
    sharing_used_memory: int
    outstanding_claims: int
    free_cpus: int
    xen_major: int
    xen_minor: int
    xen_extra: str
    xen_version: str
    xen_caps: str
    xen_scheduler: str
    xen_pagesize: int
    platform_params: str
    xen_changeset: str
    xen_commandline: str
    cc_compiler: str
    cc_compile_by: str
    cc_compile_domain: str
    cc_compile_date: str
    xend_config_format: int

    @classmethod
    def from_reply(cls, data: dict[str, Any]) -> HostInfo:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def override(key: str, value: object) -> str:
    """A keyword argument as an xl.cfg `KEY=VALUE` override (strings quoted, lists
    bracketed, as xl.cfg(5) writes them)."""
    def atom(v: object) -> str:
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(atom(x) for x in v) + "]"
        text = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    return f"{key}={atom(value)}"


class Xenopus:
    """A connection to the xenopus daemon of one run directory (default: $XENOPUS_RUN_DIR
    or /run/xenopus). Use as a context manager, or `close()` it."""

    def __init__(self, run_dir: str | None = None, autostart: bool = True):
        self._conn = Connection(autostart, run_dir)

    def __enter__(self) -> Xenopus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        return self._conn.request(op, **args)

    # -- domains --------------------------------------------------------------------------
    def list(self) -> list[Domain]:
        """Every domain but Domain-0 (the host), by domid."""
        return [Domain.from_listing(d) for d in self._ask("list")["domains"]]

    def domain(self, dom: Dom) -> Domain:
        """One domain by domid or name; NoSuchDomain if there is none."""
        for d in self.list():
            if str(dom) in (str(d.domid), d.name):
                return d
        raise client.NoSuchDomain(f"domain '{dom}' does not exist")

    def create(self, config: str | os.PathLike[str], *overrides: str, paused: bool = False,
               **keys: object) -> Domain:
        """Create a domain from an xl.cfg file (found by name in /etc/xen as `xl create`
        finds it), with `KEY=VALUE` overrides and keyword ones (`memory=256`)."""
        from xenopus.toolstack import xlconf

        cwd = os.getcwd()
        path = xlconf.find_config(os.fspath(config), cwd)
        items = [*overrides, *(override(k, v) for k, v in keys.items())]
        made = self._ask("create", path=path, overrides=items, cwd=cwd, paused=paused,
                         vif_bridge=xlconf.load().vif_bridge)
        return self.domain(made["domid"])

    def destroy(self, dom: Dom) -> None:
        self._ask("destroy", dom=str(dom))

    def pause(self, dom: Dom) -> None:
        self._ask("pause", dom=str(dom))

    def unpause(self, dom: Dom) -> None:
        self._ask("unpause", dom=str(dom))

    def shutdown(self, dom: Dom, wait: bool = False, fallback: bool = False) -> None:
        """Ask the guest to shut down through its PV control interface (control/shutdown,
        as `xl shutdown`); NoParavirt if it has none, unless `fallback` (-F): then the
        ACPI power button. With `wait`, return once the domain is gone."""
        self._ask("shutdown", dom=str(dom), wait=wait, fallback=fallback)

    def reboot(self, dom: Dom, wait: bool = False, fallback: bool = False) -> None:
        """As `shutdown`, for a reboot; the fallback is the reset trigger."""
        self._ask("reboot", dom=str(dom), wait=wait, fallback=fallback)

    def suspend(self, dom: Dom) -> None:
        """`xl suspend`: the guest suspends itself (control/shutdown "suspend") and is held
        until `resume`."""
        self._ask("suspend", dom=str(dom))

    def resume(self, dom: Dom) -> None:
        """`xl resume`: a suspended guest runs on (its suspend call returns 1, cancelled)."""
        self._ask("resume", dom=str(dom))

    def sysrq(self, dom: Dom, key: str) -> None:
        """One sysrq letter into the guest's control/sysrq (`xl sysrq`)."""
        self._ask("sysrq", dom=str(dom), key=key)

    def trigger(self, dom: Dom, trigger: str, vcpu: int = 0) -> None:
        """`xl trigger`: "power", "reset", "nmi" or "init" (sleep and s3resume are refused)."""
        self._ask("trigger", dom=str(dom), trigger=trigger, vcpu=vcpu)

    def rename(self, dom: Dom, name: str) -> None:
        self._ask("rename", dom=str(dom), name=name)

    def wait(self, dom: Dom) -> dict[str, Any]:
        """Block until the domain is gone; how it ended (reason, detail, status)."""
        return self._ask("wait", dom=str(dom))

    # -- images: save, restore, core dumps -------------------------------------------------
    def _with_file(self, op: str, fd: int, **args: Any) -> dict[str, Any]:
        """A request the daemon answers by asking for a file descriptor (which it reads or
        writes itself): hand it `fd`, then the reply's data or its typed error."""
        first = self._conn.ask(Request(op, args))
        if not first.ok:
            raise client.error_for(first)
        if first.data.get("send_fds") != 1:
            raise client.XenopusError(f"the daemon did not ask for the file: {dict(first.data)}")
        self._conn.chan.send({"fds": 1}, [fd])
        reply = self._conn.next_reply()
        if reply is None:
            raise client.DaemonUnavailable("lost the connection to the daemon")
        if not reply.ok:
            raise client.error_for(reply)
        return dict(reply.data)

    def save(self, dom: Dom, path: str | os.PathLike[str], *, checkpoint: bool = False,
             paused: bool = False) -> None:
        """`xl save [-c] [-p] DOM FILE`: the domain's image into `path` (written whole or
        not at all); the domain is destroyed unless `checkpoint` (left running, or paused
        with `paused`)."""
        target = os.path.abspath(os.fspath(path))
        directory, name = os.path.split(target)
        import tempfile

        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
        try:
            self._with_file("save", fd, dom=str(dom), checkpoint=checkpoint, paused=paused)
            os.fsync(fd)
            os.rename(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
        finally:
            os.close(fd)

    def restore(self, path: str | os.PathLike[str], *, paused: bool = False) -> Domain:
        """`xl restore [-p] FILE`: a domain from a saved image; the new domain."""
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = self._with_file("restore", fd, paused=paused, clone=False)
        finally:
            os.close(fd)
        return self.domain(done["domid"])

    def dump_core(self, dom: Dom, path: str | os.PathLike[str]) -> None:
        """`xl dump-core DOM FILE`: the guest's RAM as an ELF core (QEMU's layout)."""
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     0o600)
        try:
            self._with_file("dump-core", fd, dom=str(dom))
        finally:
            os.close(fd)

    # -- resources ------------------------------------------------------------------------
    def mem_set(self, dom: Dom, kib: int) -> None:
        """`xl mem-set`: the balloon target (memory/target, or the virtio balloon), KiB."""
        self._ask("mem-set", dom=str(dom), kib=kib, size=f"{kib}k")

    def mem_max(self, dom: Dom, kib: int) -> None:
        """`xl mem-max`: the most memory the domain may hold, KiB."""
        self._ask("mem-max", dom=str(dom), kib=kib, size=f"{kib}k")

    def vcpu_set(self, dom: Dom, count: int) -> None:
        """`xl vcpu-set -i`: `count` vCPUs online (cpu/N/availability)."""
        self._ask("vcpu-set", dom=str(dom), count=count)

    def xenstore_quota(self, dom: Dom | None = None) -> dict[str, int]:
        """`xl xenstore-quota-get`: the domain's XenStore quotas, or (None) the global ones."""
        got = self._ask("xenstore-quota-get", dom=None if dom is None else str(dom),
                        **{"global": dom is None})
        return {name: int(value) for name, value in got["quota"]}

    # -- vCPUs and devices ----------------------------------------------------------------
    def vcpus(self, dom: Dom) -> list[Vcpu]:
        (entry,) = self._ask("vcpu-list", doms=[str(dom)])["domains"]
        return [Vcpu(v["vcpu"], v["cpu"], v["online"], v["state"], v["cpu_time"],
                     tuple(v["affinity"])) for v in entry["vcpus"]]

    def pin(self, dom: Dom, vcpu: int | str, cpus: list[int]) -> None:
        """Hard-pin vCPU `vcpu` ("all": every one) to host CPUs `cpus`."""
        self._ask("vcpu-pin", dom=str(dom), vcpu=vcpu, cpus=sorted(cpus))

    def devices(self, dom: Dom) -> list[Device]:
        return [Device(d.get("kind", ""), d.get("name", ""), d)
                for d in self._ask("devices", dom=str(dom))["devices"]]

    def console(self, dom: Dom, kind: str | None = None) -> socket.socket:
        """A connected socket on the domain's console ("serial", "pv" or "virtio";
        default its own): what it has printed since boot, then live; writes are input."""
        sock = client.connect_console(self._ask("console", dom=str(dom), type=kind)["path"], dom)
        return socket.socket(fileno=sock.detach())

    # -- the host -------------------------------------------------------------------------
    def info(self) -> HostInfo:
        return HostInfo.from_reply(self._ask("host-info"))

    def dmesg(self, clear: bool = False) -> list[str]:
        return list(self._ask("dmesg", clear=clear)["lines"])

    def stop_daemon(self) -> None:
        """Stop the daemon and every domain it runs; returns once it has gone."""
        self._conn.ask(Request("stop"))
        while self._conn.next_reply() is not None:  # it closes us when it has gone
            pass


def connect(run_dir: str | None = None, autostart: bool = True) -> Xenopus:
    """A client of the daemon (started on demand unless `autostart` is False)."""
    return Xenopus(run_dir, autostart)
