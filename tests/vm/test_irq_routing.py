"""IrqRouting, MSI routes on irqfds and ioeventfds against the real KVM, with tiny
hand-assembled 32-bit protected-mode guests (GNU as `--32`, listings below).

The MSI guest software-enables its local APIC and halts with interrupts on; each vector's
handler reports itself with an `out`, EOIs and goes back to the idle loop with a fresh
stack instead of `iret` (which the nested KVM of the build machines cannot emulate for a
32-bit ring-0 guest, shared/ENVIRONMENT.md). Interrupts are raised by writing a route's
eventfd from the test thread, so they reach the guest through KVM's irqfd alone.
"""

from __future__ import annotations

import os
import queue
import select
import struct
from collections.abc import Iterator

import pytest

from xenopus.devices import platform
from xenopus.devices.pci import Msix, PciBar, PciConfig, PciDevice
from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemory
from xenopus.vm import CpuState, Machine, StopReason
from xenopus.vm.irq import FIRST_MSI_GSI, PIT_GSI, PIT_IOAPIC_PIN, IrqRouting

pytestmark = pytest.mark.kvm

TIMEOUT = 20.0
CODE, GDT, IDT, TSS = 0x1000, 0x800, 0x2000, 0x900
VEC_A, VEC_B = 0x40, 0x30  # A outranks B (SDM 3A §10.8.3.1: priority class = vector >> 4)
LAPIC_MSI = 0xFEE00000  # SDM 3A §10.11.1: MSI address, destination APIC ID 0, physical

# fmt: off
MSI_GUEST = bytes([
    0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  # movl $0x1ff, 0xfee000f0 (SVR)
    0xE6, 0xF0,                                                  # out %al, $0xf0  ; ready
    # idle (+0x0c)
    0xBC, 0x00, 0x80, 0x00, 0x00,                                # mov $0x8000, %esp
    0xFB,                                                        # sti
    0xF4,                                                        # hlt
    0xEB, 0xF7,                                                  # jmp idle
    # handler A (+0x15)
    0xE6, 0xF1,                                                  # out %al, $0xf1
    0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,  # movl $0, 0xfee000b0 (EOI)
    0xEB, 0xE9,                                                  # jmp idle
    # handler B (+0x23)
    0xE6, 0xF2,                                                  # out %al, $0xf2
    0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,  # movl $0, 0xfee000b0
    0xEB, 0xDB,                                                  # jmp idle
])
HANDLER_A, HANDLER_B = 0x15, 0x23

IOEVENT_GUEST = bytes([
    0xC7, 0x05, 0x00, 0x00, 0x00, 0xD0, 0x34, 0x12, 0x00, 0x00,  # movl $0x1234, 0xd0000000
    0x66, 0xBA, 0x10, 0x05,                                      # mov $0x510, %dx
    0xB0, 0x66,                                                  # mov $0x66, %al
    0xEE,                                                        # out %al, (%dx)  ; no match
    0xB0, 0x55,                                                  # mov $0x55, %al
    0xEE,                                                        # out %al, (%dx)  ; datamatch
    0xE6, 0xF0,                                                  # out %al, $0xf0  ; done
    0xF4,                                                        # 1: hlt
    0xEB, 0xFD,                                                  # jmp 1b
])
# fmt: on


class Recorder:
    """An IoHandler that queues writes; reads give 0."""

    def __init__(self) -> None:
        self.writes: queue.Queue[tuple[int, int, int]] = queue.Queue()

    def read(self, addr: int, size: int) -> int:
        return 0

    def write(self, addr: int, size: int, value: int) -> None:
        self.writes.put((addr, size, value))

    def next_write(self) -> tuple[int, int, int]:
        return self.writes.get(timeout=TIMEOUT)


class Guest:
    def __init__(self, code: bytes) -> None:
        self.memory = GuestMemory.create(16 << 20)
        self.pio, self.mmio = Recorder(), Recorder()
        self.machine = Machine(self.memory, 1, pio=self.pio, mmio=self.mmio)
        self.stops: queue.Queue[StopReason] = queue.Queue()
        self.memory.write(CODE, code)
        state = CpuState(rsp=0x8000, gdt_base=GDT, gdt_limit=4 * 8 - 1)
        state.idt_base, state.idt_limit = IDT, 256 * 8 - 1
        state.tss.base = TSS
        for i, seg in enumerate((state.code, state.data, state.tss), start=1):
            self.memory.write_u64(GDT + 8 * i, seg.descriptor())
        self.state = state

    def gate(self, vector: int, handler: int) -> None:
        """A 32-bit interrupt gate (SDM 3A §6.11, figure 6-2: type 0xE, present, DPL 0)."""
        off = CODE + handler
        lo = (off & 0xFFFF) | self.state.code.selector << 16
        hi = (off & 0xFFFF0000) | 0x8E00
        self.memory.write(IDT + 8 * vector, struct.pack("<II", lo, hi))

    def start(self) -> None:
        self.state.rip = CODE
        self.machine.start(self.state, self.stops.put)

    def close(self) -> None:
        self.machine.close()
        self.memory.close()


@pytest.fixture
def msi_guest() -> Iterator[Guest]:
    g = Guest(MSI_GUEST)
    g.gate(VEC_A, HANDLER_A)
    g.gate(VEC_B, HANDLER_B)
    yield g
    g.close()


def test_default_table_matches_the_platform() -> None:
    # The MADT tells the guest IRQ 0 arrives at GSI 2; the KVM table must agree.
    [pit] = [o for o in platform.ISA_OVERRIDES if o.irq == PIT_GSI]
    assert pit.gsi == PIT_IOAPIC_PIN


def test_machine_owns_a_routing_table_kvm_accepts(msi_guest: Guest) -> None:
    irq = msi_guest.machine.irq
    assert isinstance(irq, IrqRouting)
    ioapic = {e.gsi: e.u.irqchip.pin for e in irq.entries() if e.u.irqchip.irqchip == 2}
    assert ioapic[0] == 2 and 2 not in ioapic and ioapic[23] == 23
    a, b = irq.allocate_msi(), irq.allocate_msi()
    assert (a.gsi, b.gsi) == (FIRST_MSI_GSI, FIRST_MSI_GSI + 1)
    a.update(LAPIC_MSI, VEC_A)  # KVM_SET_GSI_ROUTING with the MSI entry: accepted
    msi = [e for e in irq.entries() if e.type == u.KVM_IRQ_ROUTING_MSI]
    assert [(e.gsi, e.u.msi.address_lo, e.u.msi.data) for e in msi] == [(a.gsi, LAPIC_MSI, VEC_A)]
    a.trigger()  # no guest running: KVM queues it in the LAPIC's IRR; must not error
    a.mask()
    a.trigger()
    a.unmask()
    b.release()
    c = irq.allocate_msi()
    assert c.gsi == b.gsi  # released GSIs are reused
    msi_guest.machine.close()
    assert a.released and c.released


def test_msi_reaches_the_guest_and_masking_holds_it(msi_guest: Guest) -> None:
    g = msi_guest
    irq = g.machine.irq
    assert irq is not None
    a, b = irq.allocate_msi(), irq.allocate_msi()
    a.update(LAPIC_MSI, VEC_A)
    b.update(LAPIC_MSI, VEC_B)
    g.start()
    assert g.pio.next_write() == (0xF0, 1, 0)  # APIC on, interrupts enabled
    a.trigger()
    assert g.pio.next_write()[0] == 0xF1  # vector A's handler ran
    # Masked: A's eventfd write must stay pending. B is the sync point: had A been
    # delivered, its higher priority would have put 0xF1 before B's 0xF2.
    a.mask()
    a.trigger()
    b.trigger()
    assert g.pio.next_write()[0] == 0xF2
    a.unmask()  # KVM_IRQFD polls the eventfd on assign: the held message goes out once
    assert g.pio.next_write()[0] == 0xF1
    b.trigger()
    assert g.pio.next_write()[0] == 0xF2  # and only once: B comes next
    g.machine.request_stop(StopReason("poweroff", "done"))
    assert g.stops.get(timeout=TIMEOUT).kind == "poweroff"


def test_msix_notify_reaches_the_guest(msi_guest: Guest) -> None:
    """The whole path: a function's MSI-X table programmed as a driver would (through
    the BAR handler and the capability), `notify` from a device thread, the guest's LAPIC."""
    g = msi_guest
    assert g.machine.irq is not None
    msix = Msix(2, 0, 0x0, 0x800, g.machine.irq)
    dev = PciDevice(PciConfig(0x1AF4, 0x1041, 0x020000), [PciBar(0, 0x1000, "mmio32", None)], msix)
    table = dev.bar_handler(0)
    for v, vector in enumerate((VEC_A, VEC_B)):
        table.write(0, 16 * v, 4, LAPIC_MSI)
        table.write(0, 16 * v + 8, 4, vector)
        table.write(0, 16 * v + 12, 4, 0)  # unmask
    dev.config_write(msix.cap_offset + 2, 2, 0x8000)  # MSI-X enable
    g.start()
    assert g.pio.next_write() == (0xF0, 1, 0)
    assert msix.notify(1)
    assert g.pio.next_write()[0] == 0xF2
    table.write(0, 12, 4, 1)  # mask vector 0: notify leaves it pending in the PBA
    assert msix.notify(0)
    assert table.read(0, 0x800, 8) == 1
    assert msix.notify(1)
    assert g.pio.next_write()[0] == 0xF2  # had vector 0 gone out, 0xF1 would be first
    table.write(0, 12, 4, 0)  # unmask: the pending message is delivered (§6.8.2.9)
    assert g.pio.next_write()[0] == 0xF1
    assert table.read(0, 0x800, 8) == 0
    dev.close()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], TIMEOUT)[0])


def test_ioeventfds_signal_without_exits() -> None:
    g = Guest(IOEVENT_GUEST)
    try:
        m = g.machine
        mmio_fd = m.ioeventfd(0xD0000000, 4)
        pio_fd = m.ioeventfd(0x510, 1, pio=True, datamatch=0x55)
        g.start()
        assert g.pio.next_write() == (0x510, 1, 0x66)  # the non-matching write exits
        assert g.pio.next_write() == (0xF0, 1, 0x55)  # the matching one did not
        assert g.mmio.writes.empty()  # nor did the MMIO write
        assert readable(mmio_fd) and readable(pio_fd)
        assert os.eventfd_read(mmio_fd) == 1 and os.eventfd_read(pio_fd) == 1
        m.remove_ioeventfd(pio_fd)
        with pytest.raises(KeyError):
            m.remove_ioeventfd(pio_fd)
    finally:
        g.close()
