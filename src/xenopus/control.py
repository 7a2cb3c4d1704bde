"""Requests and replies: what the CLI asks the daemon and the daemon a domain process.
`xenopus.ipc` frames them (JSON objects); this module says what they mean and refuses,
with a `ProtocolError` naming the problem, what does not fit. (The domain process's
events and the zygote's messages, which only the daemon's side reads, are
`xenopus.domain.protocol`.)

    request  {"op": OP, ARG: VALUE, ...[, "seq": N]}    CLI → daemon, daemon → domain process
    reply    {"ok": true, KEY: VALUE, ...[, "seq": N]}   ({"ok": false, "error": TEXT} refused)

A request's `op` names a daemon step (`xenopus.toolstack.daemon`) or, when the daemon has
none, a domain step (`xenopus.domain.process`) the daemon forwards unchanged to the
named domain's process. `seq` pairs a domain process's reply with the daemon's request.

The CLI imports this module on every command, so it stays cheap: `collections.namedtuple`
subclasses (defining a `typing.NamedTuple` costs several times more), and `typing` (with
`re`, milliseconds of a command) imported only by the daemon's side, to check fields.
"""

from __future__ import annotations

import types
from collections import namedtuple
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NO_ARGS: Mapping[str, Any] = types.MappingProxyType({})

# The kinds of part in a `devices` reply (a domain's inventory) that `block-list` and
# `network-list` show: disks and NICs, virtio and Xen PV alike.
DISK = "disk"
NIC = "nic"
# xl_migrate.c: a migrating domain's names while both incarnations exist (on one host, a
# migration to localhost): the receiver's until the sender says go, the sender's from then.
INCOMING = "--incoming"
MIGRATED_AWAY = "--migratedaway"


class ProtocolError(ValueError):
    """A message that is not what its kind must be (unknown kind, missing or mistyped field)."""


def _fits(value: object, hint: object) -> bool:
    """Whether a decoded JSON value fits a field's type (bool is not an int here)."""
    import typing  # not at the top: see the module's docstring

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is typing.Any:
        return True
    if isinstance(value, bool) and hint is not bool:
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, typing.get_origin(hint) or hint)  # type: ignore[arg-type]


_HINTS: dict[type, dict[str, object]] = {}  # not functools.cache: functools costs the CLI


def _hints(cls: type) -> dict[str, object]:
    hints = _HINTS.get(cls)
    if hints is None:
        import typing  # not at the top: see the module's docstring

        # The fields' annotations name `Any`, which this module imports for the checker only.
        hints = _HINTS[cls] = typing.get_type_hints(cls, localns={"Any": typing.Any})
    return hints


def checked_fields(cls: type, msg: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A named tuple `cls`'s fields from `msg`: each present (or defaulted) and of its
    annotated type; else a ProtocolError that says which and why."""
    values: dict[str, Any] = {}
    defaults = cls._field_defaults  # type: ignore[attr-defined] # namedtuple's own API
    for name, hint in _hints(cls).items():
        if name in msg:
            value = msg[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise ProtocolError(f"{what}: missing {name!r}")
        if not _fits(value, hint):
            raise ProtocolError(f"{what}: {name!r} is not {hint}: {value!r}")
        values[name] = value
    return values


def _seq(msg: Mapping[str, Any], what: str) -> int | None:
    seq = msg.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise ProtocolError(f"{what}: 'seq' is not a number: {seq!r}")
    return seq


# -- requests and replies -------------------------------------------------------------
class Request(namedtuple("Request", "op args seq", defaults=(NO_ARGS, None))):
    """An operation and its arguments (`dom` names the domain of a per-domain one)."""

    __slots__ = ()

    op: str
    args: Mapping[str, Any]
    seq: int | None

    @property
    def dom(self) -> str:
        return str(self.args.get("dom", ""))

    def numbered(self, seq: int) -> Request:
        return self._replace(seq=seq)

    def to_wire(self) -> dict[str, Any]:
        msg = {"op": self.op, **self.args}
        if self.seq is not None:
            msg["seq"] = self.seq
        return msg

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Request:
        op = msg.get("op")
        if not isinstance(op, str) or not op:
            raise ProtocolError(f"a request needs an operation name ('op'), got {op!r}")
        args = {k: v for k, v in msg.items() if k not in ("op", "seq")}
        return cls(op, args, _seq(msg, "request"))


class Reply(namedtuple("Reply", "ok data error seq", defaults=(NO_ARGS, None, None))):
    """The answer to a request: `data` when `ok`, else `error` (for a human)."""

    __slots__ = ()

    ok: bool
    data: Mapping[str, Any]
    error: str | None
    seq: int | None

    @classmethod
    def success(cls, **data: Any) -> Reply:
        return cls(True, data)

    @classmethod
    def failure(cls, error: str) -> Reply:
        return cls(False, error=error)

    def numbered(self, seq: int | None) -> Reply:
        """The answer to request `seq` (None: to a request too malformed to have one)."""
        return self._replace(seq=seq)

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"ok": self.ok, **self.data}
        if self.error is not None:
            msg["error"] = self.error
        if self.seq is not None:
            msg["seq"] = self.seq
        return msg

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Reply:
        ok, error = msg.get("ok"), msg.get("error")
        if not isinstance(ok, bool):
            raise ProtocolError(f"a reply needs 'ok' true or false, got {ok!r}")
        if error is not None and not isinstance(error, str):
            raise ProtocolError(f"reply: 'error' is not text: {error!r}")
        data = {k: v for k, v in msg.items() if k not in ("ok", "error", "seq")}
        return cls(ok, data, error, _seq(msg, "reply"))
