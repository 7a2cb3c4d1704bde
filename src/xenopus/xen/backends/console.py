"""The PV console backend (xen/include/public/io/console.h), xenconsoled's job.

The guest's console page is a page of its own RAM named by HVM param CONSOLE_PFN (no
grant: the domain process owns that memory), with the event channel CONSOLE_EVTCHN.
`struct xencons_interface` holds two byte rings: `out` (2048, guest → us) and `in` (1024,
us → guest); an index is free-running and MASK_XENCONS_IDX(idx, ring) = idx & (size - 1).

The guest owns out_prod and in_cons, so both are hostile: a ring whose producer is more
than its size ahead of its consumer is broken. We then consume nothing (a reset of the
indexes by the guest makes it usable again) and log it once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from xenopus.memory import shared
from xenopus.memory.guest import GuestMemory
from xenopus.memory.shared import full_barrier
from xenopus.xen import abi

log = logging.getLogger("xenopus.xen.console")

_IFACE = abi.xencons_interface
_IN = _IFACE.in_.offset
_OUT = _IFACE.out.offset
_IN_CONS = _IFACE.in_cons.offset
_IN_PROD = _IFACE.in_prod.offset
_OUT_CONS = _IFACE.out_cons.offset
_OUT_PROD = _IFACE.out_prod.offset
IN_SIZE = abi.XENCONS_IN_SIZE
OUT_SIZE = abi.XENCONS_OUT_SIZE


class PVConsole:
    """One domain's console ring. `kick` is the event-channel callback (any thread);
    `send` puts input in the guest's `in` ring; output goes to `output`."""

    def __init__(self, page: memoryview, output: Callable[[bytes], None], notify: Callable[[], None]):
        if len(page) < _IFACE.out_prod.offset + 4:
            raise ValueError("console page is smaller than struct xencons_interface")
        self.page = page
        self.output = output
        self.notify = notify
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    @classmethod
    def at_pfn(
        cls, memory: GuestMemory, pfn: int, output: Callable[[bytes], None],
        notify: Callable[[], None],
    ) -> PVConsole:
        """The console at guest frame `pfn` (HVM_PARAM_CONSOLE_PFN) of `memory`:
        GuestMemoryError when the frame is not RAM."""
        # Kept: the ring is written whenever input arrives (a live save resends it).
        return cls(memory.view(pfn * abi.PAGE_SIZE, abi.PAGE_SIZE, kept=True), output, notify)

    def _get(self, off: int) -> int:
        return shared.load(self.page, off, 4)

    def _set(self, off: int, value: int) -> None:
        shared.store(self.page, off, 4, value)

    def _log_once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("pv console: %s", reason)

    def kick(self) -> None:
        """The guest signalled: drain `out` (and it may have consumed input)."""
        with self._lock:
            data = self._drain()
        if data:
            try:
                self.output(data)
            except Exception:
                log.exception("pv console: output sink failed")
            self.notify()  # room in `out` for a guest waiting on it

    def _drain(self) -> bytes:
        cons = self._get(_OUT_CONS)
        prod = self._get(_OUT_PROD)  # one snapshot: the guest may move it meanwhile
        n = (prod - cons) & 0xFFFFFFFF
        if n > OUT_SIZE:
            self._log_once(f"out ring broken: out_prod {prod} - out_cons {cons} > {OUT_SIZE}")
            return b""
        if not n:
            return b""
        data = shared.ring_read(self.page, _OUT, OUT_SIZE, cons, n)
        full_barrier()  # the copies are done before the guest may reuse the space
        self._set(_OUT_CONS, cons + n)
        return data

    def send(self, data: bytes) -> int:
        """Put as much of `data` as fits in the `in` ring; returns how much did (0 when
        it is full or broken). The caller keeps the rest for later."""
        with self._lock:
            cons = self._get(_IN_CONS)
            prod = self._get(_IN_PROD)
            used = (prod - cons) & 0xFFFFFFFF
            if used > IN_SIZE:
                self._log_once(f"in ring broken: in_prod {prod} - in_cons {cons} > {IN_SIZE}")
                return 0
            n = min(len(data), IN_SIZE - used)
            shared.ring_write(self.page, _IN, IN_SIZE, prod, data[:n])
            if n:
                full_barrier()  # the bytes land before the index that publishes them
                self._set(_IN_PROD, prod + n)
        if n:
            self.notify()
        return n
