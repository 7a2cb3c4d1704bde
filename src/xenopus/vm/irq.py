"""The VM's GSI routing table, MSI routes bound to irqfds, and ioeventfds.

KVM_SET_GSI_ROUTING (Documentation/virt/kvm/api.rst §4.52) replaces the whole table, so
`IrqRouting` keeps all of it: irqchip routes like those KVM installs by default when the
irqchip is created (arch/x86/kvm/irq_comm.c `default_routing`: GSI n → IOAPIC pin n for
0–23, PIC pin n%8 for 0–15) plus one MSI route per allocated vector. Two changes, as on
every PC since the 8259 cascade took IOAPIC pin 0 (and as QEMU routes it): KVM's in-kernel
PIT raises GSI 0, which reaches IOAPIC pin 2 — the MADT's interrupt source override
IRQ 0 → GSI 2 (`xenopus.devices.platform.ISA_OVERRIDES`) says so to the guest — and GSI 2
itself, the PIC cascade, has no route.

An `MsiRoute` is a GSI ≥ 24 with an eventfd bound by KVM_IRQFD (api.rst §4.75): writing
the eventfd makes KVM deliver the MSI in the kernel, so a device thread interrupts the guest
without any vCPU thread or exit taking part.

Masking deassigns the irqfd rather than removing the route: KVM_SET_GSI_ROUTING copies and
rebuilds the whole table and waits for an SRCU grace period, while a deassign touches one
irqfd. It also gives MSI-X's pending semantics (PCI 3.0 §6.8.2.9) for free: writes to the
eventfd while masked accumulate in its counter, and KVM_IRQFD on unmask polls the eventfd
and injects once if it was signalled (virt/kvm/eventfd.c `kvm_irqfd_assign`).

Thread-safety: vCPU threads program routes (MSI-X table writes), device threads trigger
them; one lock serialises table edits and irqfd (de)assignment, `trigger` takes none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

from xenopus.kvm import uapi as u
from xenopus.kvm.system import KvmError, VmFd, irqchip_route, msi_route

log = logging.getLogger("xenopus.vm.irq")

IOAPIC_PINS = 24  # the in-kernel IOAPIC (arch/x86/kvm/ioapic.h IOAPIC_NUM_PINS)
PIC_PINS = 16  # two cascaded 8259As
PIC_CASCADE = 2  # master pin 2 carries the slave (8259A datasheet)
PIT_GSI = 0  # the line KVM's in-kernel PIT raises (arch/x86/kvm/i8254.c, pit_do_work)
PIT_IOAPIC_PIN = 2  # where the MADT override says IRQ 0 arrives
FIRST_MSI_GSI = IOAPIC_PINS

_EFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK


def default_irqchip_routes() -> list[u.kvm_irq_routing_entry]:
    """The PC's ISA/IOAPIC wiring: see the module docstring."""
    routes = []
    for gsi in range(IOAPIC_PINS):
        if gsi == PIC_CASCADE:
            continue
        if gsi < PIC_PINS:
            chip = u.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else u.KVM_IRQCHIP_PIC_SLAVE
            routes.append(irqchip_route(gsi, chip, gsi % 8))
        pin = PIT_IOAPIC_PIN if gsi == PIT_GSI else gsi
        routes.append(irqchip_route(gsi, u.KVM_IRQCHIP_IOAPIC, pin))
    return routes


class IrqRouting:
    """The whole GSI routing table of `vm` and the MSI routes allocated from it."""

    def __init__(self, vm: VmFd, *, max_gsi: int | None = None):
        self.vm = vm
        # KVM_CAP_IRQ_ROUTING answers the number of GSIs (KVM_MAX_IRQ_ROUTES).
        self.max_gsi = max_gsi or vm.kvm.check_extension(u.KVM_CAP_IRQ_ROUTING) or 1024
        self._lock = threading.Lock()
        self._chip = default_irqchip_routes()
        self._msi: dict[int, MsiRoute] = {}  # gsi -> route (programmed or not)
        self._free: list[int] = []  # released GSIs, reused before new ones
        self._next = FIRST_MSI_GSI
        with self._lock:
            self._commit()

    def allocate_msi(self) -> MsiRoute:
        """A fresh GSI with its eventfd bound by KVM_IRQFD. It has no destination until
        `update()`; triggers before then are dropped (KVM finds no route)."""
        with self._lock:
            if self._free:
                gsi = self._free.pop()
            elif self._next < self.max_gsi:
                gsi, self._next = self._next, self._next + 1
            else:
                raise KvmError(f"no free GSI: all {self.max_gsi} in use")
            fd = os.eventfd(0, _EFD_FLAGS)
            try:
                self.vm.irqfd(fd, gsi)
            except BaseException:
                os.close(fd)
                self._free.append(gsi)
                raise
            route = MsiRoute(self, gsi, fd)
            self._msi[gsi] = route
            return route

    @property
    def routes(self) -> list[MsiRoute]:
        with self._lock:
            return list(self._msi.values())

    def entries(self) -> list[u.kvm_irq_routing_entry]:
        """The table as last committed (irqchip routes, then programmed MSI routes)."""
        with self._lock:
            return self._table()

    def _table(self) -> list[u.kvm_irq_routing_entry]:
        msi = [
            msi_route(r.gsi, r.address, r.data)
            for r in sorted(self._msi.values(), key=lambda r: r.gsi)
            if r.programmed
        ]
        return self._chip + msi

    def _commit(self) -> None:
        """Send the whole table to KVM; the caller holds the lock."""
        self.vm.set_gsi_routing(self._table())

    def close(self) -> None:
        """Release every MSI route (the irqfds and eventfds), keep the irqchip routes."""
        for r in self.routes:
            r.release()


@dataclass(eq=False)
class MsiRoute:
    """One MSI vector: a GSI, its KVM routing entry (address/data, Intel SDM 3A §11.11) and
    the eventfd bound to it. Created by `IrqRouting.allocate_msi`."""

    routing: IrqRouting
    gsi: int
    fd: int
    address: int = 0
    data: int = 0
    programmed: bool = False  # has a routing entry in the table
    masked: bool = False  # irqfd deassigned
    released: bool = False

    def update(self, address: int, data: int) -> None:
        """Point the vector at a new MSI address/data pair; a no-op if unchanged."""
        r = self.routing
        with r._lock:
            if self.released or (self.programmed and (address, data) == (self.address, self.data)):
                return
            old = (self.address, self.data, self.programmed)
            self.address, self.data, self.programmed = address, data, True
            try:
                r._commit()
            except KvmError:
                self.address, self.data, self.programmed = old
                raise

    def mask(self) -> None:
        """Stop delivery: eventfd writes from now on stay pending in its counter."""
        r = self.routing
        with r._lock:
            if self.released or self.masked:
                return
            r.vm.irqfd(self.fd, self.gsi, deassign=True)
            self.masked = True

    def unmask(self) -> None:
        """Resume delivery; KVM injects one message at once if the eventfd was written while
        masked (the test in tests/vm/test_irq_routing.py checks it)."""
        r = self.routing
        with r._lock:
            if self.released or not self.masked:
                return
            r.vm.irqfd(self.fd, self.gsi)
            self.masked = False

    def trigger(self) -> None:
        """Raise the interrupt (eventfd write; KVM delivers it without an exit). Devices
        must stop triggering before the machine closes: a released route ignores it."""
        if self.released:
            return
        with contextlib.suppress(BlockingIOError):  # counter saturated: one is pending
            os.eventfd_write(self.fd, 1)

    def release(self) -> None:
        """Unbind and close the eventfd, drop the routing entry and free the GSI."""
        r = self.routing
        with r._lock:
            if self.released:
                return
            self.released = True
            with contextlib.suppress(KvmError):
                if not self.masked:
                    r.vm.irqfd(self.fd, self.gsi, deassign=True)
            os.close(self.fd)
            del r._msi[self.gsi]
            r._free.append(self.gsi)
            if self.programmed:
                self.programmed = False
                with contextlib.suppress(KvmError):  # VM already gone: nothing to route
                    r._commit()


class IoEvents:
    """KVM_IOEVENTFD registrations (api.rst §4.59): guest writes to an address that signal
    an eventfd in the kernel instead of exiting to userspace."""

    def __init__(self, vm: VmFd):
        self.vm = vm
        self._lock = threading.Lock()
        self._fds: dict[int, tuple[int, int, bool, int | None]] = {}

    def add(
        self, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None
    ) -> int:
        fd = os.eventfd(0, _EFD_FLAGS)
        try:
            self.vm.ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._fds[fd] = (addr, length, pio, datamatch)
        return fd

    def remove(self, fd: int) -> None:
        with self._lock:
            reg = self._fds.pop(fd, None)
        if reg is None:
            raise KeyError(f"eventfd {fd} is not a registered ioeventfd")
        addr, length, pio, datamatch = reg
        try:
            self.vm.ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch, deassign=True)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every eventfd (the VM fd going away drops the registrations)."""
        with self._lock:
            fds, self._fds = list(self._fds), {}
        for fd in fds:
            os.close(fd)
