"""MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and the PBA.

Each vector the guest programs gets its own KVM MSI route (`xenopus.vm.irq.MsiRoute`):
`notify(vector)` writes that route's eventfd and KVM delivers the message in the kernel.
A vector is deliverable when MSI-X is enabled, the function is not masked and the entry's
mask bit is clear; otherwise `notify` sets its pending bit, and the message goes out when
the vector becomes deliverable again (§6.8.2.9).

Thread-safety: vCPU threads access the table and the capability, device threads call
`notify`; one lock covers the table, the PBA and the routes.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Protocol

from xenopus.devices.pci.config import CAP_MSIX, PciConfig
from xenopus.stream import StateError

log = logging.getLogger("xenopus.devices.pci")

MAX_VECTORS = 2048  # table size is an 11-bit N-1 field

# Capability body after the ID/next bytes (§6.8.2.1–6.8.2.4): message control, then
# table offset/BIR and PBA offset/BIR (offset in bits 31:3, BIR in bits 2:0).
CAP_BODY = struct.Struct("<HII")
CTRL = 2  # message control, relative to the capability
CTRL_TABLE_SIZE = 0x07FF
CTRL_FUNCTION_MASK = 1 << 14
CTRL_ENABLE = 1 << 15

# Table entry (§6.8.2.6–6.8.2.9): message address lo/hi, message data, vector control.
ENTRY = struct.Struct("<IIII")
ENTRY_SIZE = ENTRY.size
ENTRY_CTRL = 12
ENTRY_MASKED = 1  # vector control bit 0


class Route(Protocol):
    """What Msix needs of `xenopus.vm.irq.MsiRoute`."""

    def update(self, address: int, data: int) -> None: ...
    def mask(self) -> None: ...
    def unmask(self) -> None: ...
    def trigger(self) -> None: ...
    def release(self) -> None: ...


class Routing(Protocol):
    """What Msix needs of `xenopus.vm.irq.IrqRouting`."""

    def allocate_msi(self) -> Route: ...


class Msix:
    """The MSI-X state of one function with `vectors` vectors whose table and PBA live in
    BAR `bar_index` at `table_offset` and `pba_offset` (both 8-byte aligned, §6.8.2.4).

    `attach(config)` adds the capability (PciDevice does it); `read`/`write` are the
    BusDevice for the table and PBA, offsets relative to the BAR.
    """

    def __init__(
        self, vectors: int, bar_index: int, table_offset: int, pba_offset: int, routing: Routing
    ):
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X supports 1-{MAX_VECTORS} vectors, not {vectors}")
        if table_offset % 8 or pba_offset % 8 or not 0 <= bar_index <= 5:
            raise ValueError("MSI-X table/PBA offsets must be 8-byte aligned in BAR 0-5")
        self.vectors = vectors
        self.bar_index = bar_index
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.routing = routing
        table_end, pba_end = table_offset + self.table_size, pba_offset + self.pba_size
        if table_offset < pba_end and pba_offset < table_end:
            raise ValueError("MSI-X table and PBA overlap")
        self.config: PciConfig | None = None
        self.cap_offset = 0
        self._lock = threading.Lock()
        self._table = bytearray(self.table_size)
        self._pending = bytearray(self.pba_size)
        self._routes: list[Route | None] = [None] * vectors
        self._live = [False] * vectors  # route unmasked in KVM
        self._enabled = False
        self._function_masked = False
        self._reset_table()

    @property
    def table_size(self) -> int:
        return self.vectors * ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        return ((self.vectors + 63) // 64) * 8  # QWORD granularity (§6.8.2.10)

    def attach(self, config: PciConfig) -> int:
        """Add the MSI-X capability to `config`; returns its offset."""
        body = CAP_BODY.pack(
            self.vectors - 1,
            self.table_offset | self.bar_index,
            self.pba_offset | self.bar_index,
        )
        self.config = config
        self.cap_offset = config.add_capability(CAP_MSIX, body)
        config.set_wmask(self.cap_offset + CTRL, 2, CTRL_ENABLE | CTRL_FUNCTION_MASK)
        return self.cap_offset

    def covers(self, offset: int) -> bool:
        """Whether a BAR offset falls in the table or the PBA."""
        return (
            self.table_offset <= offset < self.table_offset + self.table_size
            or self.pba_offset <= offset < self.pba_offset + self.pba_size
        )

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def function_masked(self) -> bool:
        return self._function_masked

    def masked(self, vector: int) -> bool:
        off = vector * ENTRY_SIZE + ENTRY_CTRL
        return bool(self._table[off] & ENTRY_MASKED)

    def pending(self, vector: int) -> bool:
        return bool(self._pending[vector // 8] >> (vector % 8) & 1)

    # --- the capability -------------------------------------------------------------------
    def control_written(self) -> None:
        """PciDevice calls this after a guest write touched the message control register."""
        assert self.config is not None
        ctrl = self.config.get(self.cap_offset + CTRL, 2)
        with self._lock:
            self._enabled = bool(ctrl & CTRL_ENABLE)
            self._function_masked = bool(ctrl & CTRL_FUNCTION_MASK)
            for v in range(self.vectors):
                self._sync(v)

    # --- the table and PBA (BusDevice, offsets relative to the BAR) -----------------------
    def read(self, base: int, offset: int, size: int) -> int:
        with self._lock:
            region, off = self._locate(offset, size)
            if region is None:
                return (1 << (8 * size)) - 1
            return int.from_bytes(region[off : off + size], "little")

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            region, off = self._locate(offset, size)
            if region is not self._table:
                return  # the PBA is read-only (§6.8.2.10); outside: ignored
            region[off : off + size] = value.to_bytes(size, "little")
            first, last = off // ENTRY_SIZE, (off + size - 1) // ENTRY_SIZE
            for v in range(first, last + 1):
                self._sync(v)

    def _locate(self, offset: int, size: int) -> tuple[bytearray | None, int]:
        # §6.8.2: software uses aligned DWORD (or QWORD) accesses; we accept any access
        # that stays inside one structure and ignore the rest.
        for region, start in ((self._table, self.table_offset), (self._pending, self.pba_offset)):
            off = offset - start
            if off >= 0 and off + size <= len(region):
                return region, off
        return None, 0

    # --- delivery -------------------------------------------------------------------------
    def notify(self, vector: int) -> bool:
        """Signal `vector`. Returns False if MSI-X is disabled (the caller may fall back to
        INTx); a masked vector is left pending instead."""
        if not 0 <= vector < self.vectors:
            return False
        with self._lock:
            if not self._enabled:
                return False
            if self._live[vector]:
                route = self._routes[vector]
                assert route is not None
            else:
                self._pending[vector // 8] |= 1 << (vector % 8)
                return True
        route.trigger()
        return True

    def _sync(self, v: int) -> None:
        """Bring vector `v`'s KVM route in line with the table and control bits; deliver
        its pending message if it just became deliverable. Holds the lock.

        A route is only reprogrammed while deliverable: drivers rewrite entries while
        masked (§6.8.2.9), a dword at a time, and each reprogram is a whole-table ioctl."""
        route = self._routes[v]
        if not (self._enabled and not self._function_masked and not self.masked(v)):
            if self._live[v] and route is not None:
                self._live[v] = False
                route.mask()
            return
        lo, hi, data, _ = ENTRY.unpack_from(self._table, v * ENTRY_SIZE)
        try:
            if route is None:
                route = self._routes[v] = self.routing.allocate_msi()
            route.update(hi << 32 | lo, data)
            route.unmask()
        except Exception as e:  # KVM refused (e.g. out of GSIs): log, leave it pending
            log.warning("MSI-X vector %d: cannot route %#x/%#x: %s", v, hi << 32 | lo, data, e)
            return
        self._live[v] = True
        if self.pending(v):
            self._pending[v // 8] &= ~(1 << (v % 8)) & 0xFF
            route.trigger()

    # --- save/restore ---------------------------------------------------------------------
    def save_state(self) -> dict:
        """The table, the PBA and the control bits (also in config space, which the
        function saves; kept here so the routes can be rebuilt without re-reading it)."""
        with self._lock:
            return {"table": bytes(self._table), "pba": bytes(self._pending),
                    "enabled": self._enabled, "function_masked": self._function_masked}

    def restore_state(self, state: dict) -> None:
        """Take the saved table and PBA and give every deliverable vector its KVM route
        again (a pending one is delivered once it is)."""
        table, pba = state["table"], state["pba"]
        if len(table) != self.table_size or len(pba) != self.pba_size:
            raise StateError(f"MSI-X: saved table/PBA of {len(table)}/{len(pba)} octets, "
                             f"this function has {self.table_size}/{self.pba_size}")
        with self._lock:
            self._table[:] = table
            self._pending[:] = pba
            self._enabled = bool(state["enabled"])
            self._function_masked = bool(state["function_masked"])
            for v in range(self.vectors):
                self._sync(v)

    def _reset_table(self) -> None:
        self._table[:] = bytes(self.table_size)
        for v in range(self.vectors):
            self._table[v * ENTRY_SIZE + ENTRY_CTRL] = ENTRY_MASKED  # masked at reset
        self._pending[:] = bytes(self.pba_size)

    def reset(self) -> None:
        """Function reset: table masked, nothing pending, MSI-X disabled, routes kept."""
        with self._lock:
            self._reset_table()
            self._enabled = self._function_masked = False
            if self.config is not None:
                self.config.set(self.cap_offset + CTRL, 2, self.vectors - 1)
            for v, route in enumerate(self._routes):
                if route is not None and self._live[v]:
                    route.mask()
                    self._live[v] = False

    def close(self) -> None:
        """Release every KVM route."""
        with self._lock:
            routes, self._routes = self._routes, [None] * self.vectors
            self._live = [False] * self.vectors
        for r in routes:
            if r is not None:
                r.release()
