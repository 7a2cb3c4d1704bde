"""A guest's XenStore ring: the domain process's side of a domain's XenStore traffic
(server.py serves the daemon's), kept apart so that a domain process does not import the
store (xenstore-ring.txt; xen/include/public/io/xs_wire.h's xenstore_domain_interface)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from xenopus.memory import shared

from . import wire

log = logging.getLogger(__name__)

_IFACE = wire.XenstoreDomainInterface
_REQ = _IFACE.req.offset
_RSP = _IFACE.rsp.offset
_SIZE = wire.XENSTORE_RING_SIZE
_MASK = 0xFFFFFFFF


class RingTransport:
    """Moves xsd_sockmsg bytes between a guest's xenstore_domain_interface page and us.

    The guest is untrusted: indexes that claim more than a ring's worth of data or a
    header whose len exceeds XENSTORE_PAYLOAD_MAX break the connection, as xenstored
    does — the `error` field says why, the ring is no longer served, one log line is
    written, and nothing raises. Whoever owns the event channel calls `read_messages`
    on a guest kick and `flush` after queueing output, and notifies the guest when
    either returns that it moved something.
    """

    def __init__(self, page: memoryview, max_pending: int = 64 * 1024,
                 on_broken: Callable[[int], None] | None = None,
                 features: int = wire.XENSTORE_SERVER_FEATURE_ERROR
                 | wire.XENSTORE_SERVER_FEATURE_RECONNECTION) -> None:
        page = page.cast("B") if page.format != "B" else page
        if len(page) < ctypes.sizeof(_IFACE):
            raise ValueError("page smaller than xenstore_domain_interface")
        self.page = page
        self.broken = False
        self.max_pending = max_pending
        self.on_broken = on_broken
        self._in = bytearray()
        self._out = bytearray()
        # Advertised before any data moves (xenstore-ring.txt): the error indicator and
        # ring reconnection, less what xl.cfg's xenstore_feature_mask takes away.
        self.features = features
        self._set(_IFACE.server_features.offset, features)

    def _get(self, off: int) -> int:
        return shared.load(self.page, off, 4)

    def _set(self, off: int, value: int) -> None:
        shared.store(self.page, off, 4, value)

    def _break(self, code: int, why: str) -> None:
        if not self.broken:
            log.warning("xenstore ring broken: %s", why)
            self.broken = True
            self._set(_IFACE.error.offset, code)
            self._in.clear()
            self._out.clear()
            if self.on_broken:
                self.on_broken(code)

    @property
    def reconnect_requested(self) -> bool:
        """The guest set the connection state to XENSTORE_RECONNECT (xenstore-ring.txt
        "The ring reconnection feature"); only it sets 1, only we set 0."""
        return self._get(_IFACE.connection.offset) == wire.XENSTORE_RECONNECT

    def reset(self) -> None:
        """Reconnect: drop partial packets both ways, empty both queues, clear a broken
        ring's error and set the state back to connected. The caller discards the
        connection's in-flight requests, watches and transactions, then signals the
        guest."""
        self._in.clear()
        self._out.clear()
        self.broken = False
        for field in ("req_cons", "req_prod", "rsp_cons", "rsp_prod"):
            self._set(getattr(_IFACE, field).offset, 0)
        self._set(_IFACE.error.offset, wire.XENSTORE_ERROR_NONE)
        # Indexes before the state: the guest reads nothing else until it sees 0.
        self._set(_IFACE.connection.offset, wire.XENSTORE_CONNECTED)

    def read_messages(self) -> list[bytes]:
        """Consume the request ring; return the complete messages (header + payload)."""
        if self.broken:
            return []
        try:
            cons = self._get(_IFACE.req_cons.offset)
            prod = self._get(_IFACE.req_prod.offset)
            avail = (prod - cons) & _MASK
            if avail > _SIZE:
                self._break(wire.XENSTORE_ERROR_RINGIDX, f"req indexes {cons}..{prod}")
                return []
            self._in += shared.ring_read(self.page, _REQ, _SIZE, cons, avail)
            self._set(_IFACE.req_cons.offset, cons + avail)
            out = []
            while len(self._in) >= wire.HEADER_SIZE:
                hdr = wire.unpack_header(self._in)
                if hdr.len > wire.XENSTORE_PAYLOAD_MAX:
                    self._break(wire.XENSTORE_ERROR_PROTO, f"message len {hdr.len}")
                    return []
                end = wire.HEADER_SIZE + hdr.len
                if len(self._in) < end:
                    break
                out.append(bytes(self._in[:end]))
                del self._in[:end]
            return out
        except Exception:  # never let a guest's page take the caller down
            log.exception("xenstore ring: unexpected failure")
            self._break(wire.XENSTORE_ERROR_COMM, "internal error")
            return []

    def write(self, data: bytes) -> None:
        """Queue reply/event bytes for the guest; `flush` moves them into the ring."""
        if self.broken:
            return
        self._out += data
        if len(self._out) > self.max_pending:
            self._break(wire.XENSTORE_ERROR_COMM, "guest is not reading its replies")

    @property
    def pending(self) -> int:
        return len(self._out)

    def flush(self) -> bool:
        """Copy queued output into the response ring; True if rsp_prod moved."""
        if self.broken or not self._out:
            return False
        try:
            cons = self._get(_IFACE.rsp_cons.offset)
            prod = self._get(_IFACE.rsp_prod.offset)
            used = (prod - cons) & _MASK
            if used > _SIZE:
                self._break(wire.XENSTORE_ERROR_RINGIDX, f"rsp indexes {cons}..{prod}")
                return False
            n = min(_SIZE - used, len(self._out))
            if not n:
                return False
            shared.ring_write(self.page, _RSP, _SIZE, prod, self._out[:n])
            # Data before index: x86 keeps stores in order, so the guest never sees the
            # new rsp_prod ahead of the bytes it covers.
            self._set(_IFACE.rsp_prod.offset, prod + n)
            del self._out[:n]
            return True
        except Exception:
            log.exception("xenstore ring: unexpected failure")
            self._break(wire.XENSTORE_ERROR_COMM, "internal error")
            return False
