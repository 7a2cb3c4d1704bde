"""The messages besides requests and replies on a domain process's control channel and
on the zygote's socket, typed once (`xenopus.control` has requests and replies;
`xenopus.ipc` frames them all):

    event    {"event": KIND, FIELD: VALUE, ...}          domain process → daemon, zygote → daemon
    spawn    {"op": "spawn", "domid", "config", "run_dir", "paused"[, "first"]} + fds
                                                         daemon → zygote

`Spawn` is the one place a `DomainConfig` is serialised for another process: the daemon
keeps the object, the forked domain process rebuilds (and validates) the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from xenopus.control import ProtocolError, Reply, Request, checked_fields
from xenopus.domain.config import ConfigError, DomainConfig


# -- events: a domain process (or the zygote) tells the daemon -------------------------
class Ready(NamedTuple):
    """The domain's first incarnation is built: how it boots and which console is its own."""

    pid: int
    protocol: str | None
    xen_path: str  # "trap", "kernel" or "off"
    console: str  # the console `xenopus console DOM` attaches to by default
    console_nodes: dict[str, Any]  # the PV console's XenStore nodes (ring-ref, port, ...)
    store_nodes: dict[str, Any] = {}  # the XenStore ring's (port, ring-ref); none without Xen

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class StartFailed(NamedTuple):
    """The domain could not start; `error` says why (for the CLI)."""

    error: str

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class StateChanged(NamedTuple):
    """The domain's state changed (as `xl list` shows it)."""

    state: str  # running | paused | shutdown | crashed

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class LogLine(NamedTuple):
    """A line for the host log (`xenopus dmesg`)."""

    line: str

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class Stopped(NamedTuple):
    """The guest stopped (`StopReason`) and the configured action taken for it."""

    reason: str  # poweroff | reboot | crash
    detail: str
    action: str

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


# Finished.exit_code of a process that stopped for a restart the daemon does (xl
# config-update: the next incarnation is built from a config the jailed process cannot
# open), not itself.
EXIT_REBUILD = 3


class Finished(NamedTuple):
    """The domain process's own report of its end, sent just before it exits."""

    exit_code: int
    maxrss_kib: int
    cpu: float  # seconds of host CPU

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class Spawned(NamedTuple):
    """The zygote forked the domain's process."""

    domid: int
    pid: int

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


class Exited(NamedTuple):
    """The zygote reaped a domain process (its wait4 status and resource usage)."""

    domid: int
    pid: int
    status: int
    maxrss_kib: int
    cpu: float

    def to_wire(self) -> dict[str, Any]:
        return _event_wire(self)


DomainEvent = Ready | StartFailed | StateChanged | LogLine | Stopped | Finished
ZygoteEvent = Spawned | Exited

EVENTS: dict[str, type] = {
    "ready": Ready, "error": StartFailed, "state": StateChanged, "log": LogLine,
    "stopped": Stopped, "finished": Finished, "spawned": Spawned, "exited": Exited,
}
KINDS = {cls: kind for kind, cls in EVENTS.items()}


def _event_wire(event: DomainEvent | ZygoteEvent) -> dict[str, Any]:
    return {"event": KINDS[type(event)], **event._asdict()}  # namedtuple's own API


def decode_event(msg: Mapping[str, Any]) -> DomainEvent | ZygoteEvent:
    kind = msg.get("event")
    cls = EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown event {kind!r}")
    return cls(**checked_fields(cls, msg, f"event {kind!r}"))


def decode_from_domain(msg: Mapping[str, Any]) -> Reply | DomainEvent:
    """A message on a domain process's control channel: a reply (it has `seq`) or an event."""
    if "event" not in msg:
        return Reply.from_wire(msg)
    event = decode_event(msg)
    if isinstance(event, (Spawned, Exited)):
        raise ProtocolError(f"event {msg['event']!r} is the zygote's, not a domain's")
    return event


def decode_from_zygote(msg: Mapping[str, Any]) -> ZygoteEvent:
    event = decode_event(msg)
    if not isinstance(event, (Spawned, Exited)):
        raise ProtocolError(f"event {msg['event']!r} is a domain's, not the zygote's")
    return event


# -- the daemon asks the zygote for a domain process ----------------------------------
class Spawn(NamedTuple):
    """Fork a domain process for `config`; its channels travel beside it as fds. `first`:
    a numbered control request the process answers (on its control channel) as soon as
    it is ready, as if the daemon had sent it then: a restore's, which so does not wait
    for Ready's round trip through the daemon."""

    domid: int
    config: DomainConfig
    run_dir: str
    paused: bool = False
    first: Request | None = None

    def to_wire(self) -> dict[str, Any]:
        msg = {"op": "spawn", "domid": self.domid, "config": self.config.to_dict(),
               "run_dir": self.run_dir, "paused": self.paused}
        if self.first is not None:
            msg["first"] = self.first.to_wire()
        return msg

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Spawn:
        if msg.get("op") != "spawn":
            raise ProtocolError(f"the zygote only spawns, not {msg.get('op')!r}")
        domid, config, run_dir, paused = (msg.get(k) for k in ("domid", "config", "run_dir", "paused"))
        if not isinstance(domid, int) or isinstance(domid, bool) or not isinstance(run_dir, str):
            raise ProtocolError("spawn: needs a domid and a run_dir")
        if not isinstance(config, dict):
            raise ProtocolError(f"spawn: 'config' is not an object: {config!r}")
        try:
            cfg = DomainConfig.from_dict(config)
        except ConfigError as e:
            raise ProtocolError(f"spawn: {e}") from None
        first = msg.get("first")
        if first is not None:
            if not isinstance(first, dict):
                raise ProtocolError(f"spawn: 'first' is not a request: {first!r}")
            first = Request.from_wire(first)
            if first.seq is None:
                raise ProtocolError("spawn: the first request has no seq")
        return cls(domid, cfg, run_dir, bool(paused), first)
