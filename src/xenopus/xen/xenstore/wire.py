"""The XenStore wire protocol: `xsd_sockmsg` framing, request arguments, replies.

Spec: xen/include/public/io/xs_wire.h and docs/misc/xenstore.txt ("Wire protocol").
The numbers and struct layouts are xen/abi.py's.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

# Every number and layout comes from xen/abi.py (io/xs_wire.h); re-exported here so the
# protocol code reads as `wire.XS_READ`.
from xenopus.xen.abi import (  # noqa: F401
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_COMM,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_RECONNECT,
    XENSTORE_REL_PATH_MAX,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_FEATURE,
    XS_GET_PERMS,
    XS_GET_QUOTA,
    XS_INTRODUCE,
    XS_INVALID,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WATCH_PATH,
    XS_WATCH_TOKEN,
    XS_WRITE,
)
from xenopus.xen.abi import XSD_ERRORS as _XSD_ERRORS
from xenopus.xen.abi import xenstore_domain_interface as XenstoreDomainInterface  # noqa: F401
from xenopus.xen.abi import xsd_sockmsg as XsdSockmsg

# xsd_errors[]: the only error names that travel on the wire; anything else is sent
# as EINVAL, as xenstored's send_error() does.
XSD_ERRORS = frozenset(_XSD_ERRORS.values())

HEADER_SIZE = ctypes.sizeof(XsdSockmsg)


class XsError(Exception):
    """A XenStore error, carrying the errno name xenstored would answer (e.g. "ENOENT")."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name


class Header(NamedTuple):
    type: int
    req_id: int
    tx_id: int
    len: int


def unpack_header(data: bytes) -> Header:
    h = XsdSockmsg.from_buffer_copy(data[:HEADER_SIZE])
    return Header(h.type, h.req_id, h.tx_id, h.len)


def pack(type_: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One whole message: header then payload."""
    return bytes(XsdSockmsg(type_, req_id, tx_id, len(payload))) + payload


def strings(*items: str | bytes) -> bytes:
    """Nul-terminated strings back to back, the payload format of most messages."""
    return b"".join((s.encode("latin-1") if isinstance(s, str) else s) + b"\0" for s in items)


def error_reply(req_id: int, tx_id: int, name: str) -> bytes:
    if name not in XSD_ERRORS:
        name = "EINVAL"
    return pack(XS_ERROR, req_id, tx_id, strings(name))


def watch_event(path: str, token: str) -> bytes:
    return pack(XS_WATCH_EVENT, 0, 0, strings(path, token))


# Argument shapes of each request (xenstored's onearg/get_strings and xenstore.txt).
ONE_ARG = frozenset({
    XS_READ, XS_DIRECTORY, XS_GET_PERMS, XS_MKDIR, XS_RM, XS_GET_DOMAIN_PATH,
    XS_IS_DOMAIN_INTRODUCED, XS_RELEASE, XS_RESUME, XS_TRANSACTION_START,
    XS_TRANSACTION_END,
})
ARG_COUNT = {XS_WATCH: 2, XS_UNWATCH: 2, XS_INTRODUCE: 3, XS_SET_TARGET: 2,
             XS_SET_FEATURE: 2, XS_SET_QUOTA: 2, XS_CONTROL: 1,
             XS_DIRECTORY_PART: 2}


def is_number(text: str) -> bool:
    """ASCII decimal digits only, as xenstored's strtoul/sscanf read them. str.isdigit()
    also takes "²" (latin-1 0xb2), which int() then refuses with a ValueError."""
    return text.isascii() and text.isdigit()


def split(payload: bytes) -> list[str]:
    """The nul-terminated strings of a payload; a missing final nul is an error."""
    if not payload or payload[-1] != 0:
        raise XsError("EINVAL", "payload not nul-terminated")
    return [s.decode("latin-1") for s in payload[:-1].split(b"\0")]


def parse_request(type_: int, payload: bytes) -> list[str] | tuple[str, bytes]:
    """The arguments of a request; `(path, value)` for XS_WRITE (its value is raw bytes)."""
    if type_ == XS_WRITE:
        path, sep, value = payload.partition(b"\0")
        if not sep:
            raise XsError("EINVAL", "write without a path")
        return path.decode("latin-1"), value
    if type_ == XS_RESET_WATCHES:
        return []
    if type_ in (XS_GET_FEATURE, XS_GET_QUOTA) and not payload:
        return []  # their arguments are optional (xenstored's get_strings of nothing)
    args = split(payload)
    if type_ in ONE_ARG:
        if len(args) != 1:
            raise XsError("EINVAL", "expected one string")
    elif type_ in ARG_COUNT:
        if len(args) < ARG_COUNT[type_]:  # XS_WATCH may carry a trailing depth
            raise XsError("EINVAL", "too few strings")
    elif type_ == XS_SET_PERMS and len(args) < 2:
        raise XsError("EINVAL", "set_perms needs a path and a permission")
    return args
