"""Each device saves and restores itself: a device driven into a non-trivial state, saved,
sent through the stream's state encoding and restored into a fresh device, then behaves
exactly as the original does from there on."""

from __future__ import annotations

import io
import os
import time

import pytest

from tests.unit import test_i8042, test_msix, test_pci_host, test_rtc, test_serial
from tests.unit.test_virtio_pci import DRIVER_OK, EVENT_IDX, VERSION_1, FakeMachine, make
from tests.unit.test_virtqueue import VqDriver
from xenopus.devices import platform
from xenopus.devices.acpi_power import GED_EVENT, AcpiPowerDevice
from xenopus.devices.bus import Bus, NullDevice
from xenopus.devices.pci import Msix, PciBar, PciConfig, PciDevice, PciHostBridge
from xenopus.devices.pci import config as c
from xenopus.devices.virtio.console import VirtioConsole
from xenopus.devices.virtio.pci import VirtioPciDevice
from xenopus.devices.virtio.rng import VirtioRng
from xenopus.domain import snapshot
from xenopus.domain.inventory import BusPart, Inventory, NotSaveable, PvDevicePart, XenConsolePart
from xenopus.memory.guest import GuestMemory
from xenopus.stream import StateError, StreamRecordError, decode_state, encode_state

TIMEOUT = 5.0


def carried(state: object) -> object:
    """`state` as a restore sees it: encoded into a stream record and decoded again."""
    return decode_state(encode_state(state))


# --- legacy devices -------------------------------------------------------------------------
def test_serial_registers_fifo_and_interrupt_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    S = test_serial
    a = S.Guest()
    a.outb(S.LCR, 0x80)  # DLAB: divisor 0x0C03
    a.outb(S.DLL, 0x03)
    a.outb(S.DLM, 0x0C)
    a.outb(S.LCR, 0x1B)  # 8 bits, even parity
    a.outb(S.FCR, 0x81)  # FIFOs on, trigger level 8
    a.outb(S.IER, 0x05)  # received data + line status interrupts
    a.outb(S.MCR, 0x0B)
    a.outb(S.SCR, 0x5A)
    a.uart.receive(b"hello, restored world")  # more than the FIFO holds: a backlog
    assert a.inb(S.RBR) == ord("h")
    b = S.Guest()
    b.uart.restore_state(carried(a.uart.save_state()))
    assert b.irqs == [True]  # the line driven again to where the original held it

    def observe(g: S.Guest) -> list[int]:
        seen = [g.inb(r) for r in (S.IER, S.IIR, S.LCR, S.MCR, S.LSR, S.MSR, S.SCR)]
        g.outb(S.LCR, 0x9B)
        seen += [g.inb(S.DLL), g.inb(S.DLM)]
        g.outb(S.LCR, 0x1B)
        seen += [g.inb(S.RBR) for _ in range(25)]
        return seen

    assert observe(b) == observe(a)
    assert b"".join(b.out) == b""  # restoring sends nothing on the wire


def test_i8042_pending_output_and_controller_state_survive() -> None:
    a = test_i8042.Guest()
    a.command(0x60, 0x47)  # write the CTR: keyboard interrupt on, translation
    a.send(0xF2)  # keyboard identify: ACK and two ID bytes queued
    a.command(0xD1)  # controller waits for the output-port byte
    b = test_i8042.Guest()
    b.kbc.restore_state(carried(a.kbc.save_state()))
    assert b.irqs == [True]
    b.send(0xDF), a.send(0xDF)
    assert b.resets == a.resets == 0
    assert b.replies() == a.replies() == [0xFA, 0xAB, 0x83]
    b.command(0x20), a.command(0x20)
    assert b.replies() == a.replies() == [0x47]


def test_rtc_registers_and_the_guests_time_offset_survive() -> None:
    R = test_rtc
    a = R.Guest()
    a.write(R.REG_B, 0x86)  # SET, binary, 24h: the guest sets the clock
    a.write(R.HOURS, 7)
    a.write(R.MINUTES, 30)
    a.write(R.REG_B, 0x06)
    a.write(0x40, 0x99)  # a CMOS byte of the guest's own
    a.write(R.ALARM_H, 7)
    a.clock.t += 10
    b = R.Guest(a.clock.t)
    b.rtc.restore_state(carried(a.rtc.save_state()))
    b.clock.t = a.clock.t = a.clock.t + 3600  # time passed while saved: both run on
    assert b.fields() == a.fields()
    assert [b.read(r) for r in (R.REG_A, R.REG_B, R.REG_C, R.REG_D, 0x40, R.ALARM_H)] == [
        a.read(r) for r in (R.REG_A, R.REG_B, R.REG_C, R.REG_D, 0x40, R.ALARM_H)]


def test_acpi_power_button_latched_before_the_save_is_seen_after() -> None:
    levels: list[bool] = []
    a = AcpiPowerDevice(lambda level: None, lambda: None, lambda: None)
    a.press_power_button()
    b = AcpiPowerDevice(levels.append, lambda: None, lambda: None)
    b.restore_state(carried(a.save_state()))
    assert levels == [True]
    assert b.read(0, GED_EVENT, 1) == a.read(0, GED_EVENT, 1) != 0
    assert levels == [True, False]


def test_a_state_of_another_version_is_refused_by_name() -> None:
    uart = test_serial.Guest().uart
    state = uart.save_state()
    state["version"] = 99
    with pytest.raises(StateError, match="16550: saved state version 99"):
        uart.restore_state(state)


# --- PCI ------------------------------------------------------------------------------------
def test_pci_bars_where_the_guest_moved_them_and_decoding_survive() -> None:
    ecam = test_pci_host.ecam

    def rig() -> tuple[PciHostBridge, test_pci_host.Dev]:
        host = PciHostBridge(Bus("pio"), Bus("mmio"), ram_end=1 << 30)
        dev = test_pci_host.Dev()
        host.add(dev, slot=2)
        return host, dev

    host, dev = rig()
    placed = dev.bar_address(0)
    host.mmio.write(ecam(2, 0x10), 4, 0xD0000000)  # the guest moves BAR 0
    host.mmio.write(ecam(2, c.COMMAND), 2, c.CMD_MEMORY)  # and turns I/O decoding off
    test_pci_host.cf8(host, 0, 2, 0, 0x3C)  # a config address left in the latch
    io_bar = dev.bar_address(1)
    host2, dev2 = rig()
    host2.restore_state(carried(host.save_state()))
    dev2.restore_state(carried(dev.save_state()))
    assert dev2.bar_address(0) == 0xD0000000
    host2.mmio.write(0xD0000000 + 8, 4, 7)
    assert dev2.mem.writes == [(0xD0000000, 8, 4, 7)]
    assert host2.mmio.lookup(placed) is None and host2.pio.lookup(io_bar) is None
    assert host2.pio.read(0xCFC, 4) == host.pio.read(0xCFC, 4)  # same latch, same register


def test_a_pci_state_of_another_function_is_refused() -> None:
    dev = test_pci_host.Dev()
    other = PciDevice(PciConfig(0x8086, 0x1234, 0x020000))
    with pytest.raises(StateError, match="another function"):
        other.restore_state(dev.save_state())


def test_msix_table_pending_bits_and_routes_survive() -> None:
    M = test_msix

    def fresh() -> PciDevice:
        msix = Msix(M.VECTORS, 1, M.TABLE, M.PBA, M.FakeRouting())
        return PciDevice(PciConfig(0x1AF4, 0x1041, 0x020000),
                         [PciBar(0, 0x1000, "mmio32", M.Other()),
                          PciBar(1, 0x4000, "mmio32", M.Other())], msix)

    a = fresh()
    M.set_control(a, 0x8000)  # MSI-X on
    M.write_entry(a, 0, 0xFEE00000, 0x41, masked=False)
    M.write_entry(a, 2, 0xFEE01000, 0x42, masked=True)
    assert a.msix is not None and a.msix.notify(2)  # masked: left pending
    b = fresh()
    b.restore_state(carried(a.save_state()))
    live = [(r.address, r.data, r.masked) for r in M.routing(b).routes]
    assert (0xFEE00000, 0x41, False) in live  # vector 0 routed again
    assert M.pba(b) == M.pba(a) == 1 << 2
    M.write_entry(b, 2, 0xFEE01000, 0x42, masked=False)  # the driver unmasks vector 2
    assert M.pba(b) == 0
    assert [r.fired for r in M.routing(b).routes if r.data == 0x42] == [1]


# --- virtio ---------------------------------------------------------------------------------
@pytest.fixture
def mem():
    m = GuestMemory.create(16 << 20)
    yield m
    m.close()


def _driver_on(pci: VirtioPciDevice, g, d: VqDriver) -> None:
    assert g.negotiate((1 << VERSION_1) | (1 << EVENT_IDX))
    g.wr(0x10, 2, 0)  # config_msix_vector 0
    g.setup_queue(0, d, vector=1)
    cap = g.caps[0x11]["at"]
    pci.config_write(cap + 2, 2, 0x8000)  # MSI-X on
    bar = pci.bar_handler(0)
    for v in range(2):  # vector v: address 0xFEE00000, data 0x30 + v, unmasked
        bar.write(0, 0x4000 + 16 * v, 4, 0xFEE00000)
        bar.write(0, 0x4000 + 16 * v + 8, 4, 0x30 + v)
        bar.write(0, 0x4000 + 16 * v + 12, 4, 0)
    g.wr(0x14, 1, g.status() | DRIVER_OK)


def _kick(machine: FakeMachine, g, index: int) -> None:
    os.eventfd_write(machine.doorbell_at(g.doorbell(index)), 1)


def _used(d: VqDriver, n: int) -> None:
    """Wait for the device worker to have pushed `n` chains (polls guest memory, as a
    driver without interrupts does)."""
    deadline = time.monotonic() + TIMEOUT
    while d.used_idx != n:
        assert time.monotonic() < deadline, f"used idx {d.used_idx}, expected {n}"
        os.sched_yield()


def test_a_virtio_transport_resumes_its_queue_where_it_was(mem: GuestMemory) -> None:
    """The driver set up rng's queue with MSI-X; one request done before the save. The
    restored transport answers the next kick on its doorbell eventfd, at the next used
    slot, through the same MSI message."""
    pci, machine, g = make(mem, VirtioRng())
    d = VqDriver(mem, size=8)
    _driver_on(pci, g, d)
    d.post(d.chain([d.buffer(16) + (True,)]))
    _kick(machine, g, 0)
    _used(d, 1)
    assert machine.irq.fired.get(timeout=TIMEOUT) == 0x31
    pci.device.pause()
    device_state, transport_state = carried(pci.device.save_state()), carried(pci.save_state())
    pci.device.resume()
    pci.close()

    machine2 = FakeMachine(mem)
    pci2 = VirtioPciDevice(VirtioRng(), machine2)
    pci2.set_bar_address(0, 0x8_0000_0000)
    pci2.device.restore_state(device_state)
    pci2.restore_state(transport_state)
    try:
        assert pci2.device.active and pci2.msix is not None and pci2.msix.enabled
        head = d.chain([d.buffer(32) + (True,)])
        d.set_used_event(1)  # EVENT_IDX: interrupt once used idx passes 1
        d.post(head)
        _kick(machine2, g.__class__(pci2), 0)
        _used(d, 2)
        assert d.used_elem(1) == (head, 32)
        assert machine2.irq.fired.get(timeout=TIMEOUT) == 0x31
    finally:
        pci2.close()


def test_a_paused_virtio_device_does_nothing_until_resumed(mem: GuestMemory) -> None:
    pci, machine, g = make(mem, VirtioRng())
    d = VqDriver(mem, size=8)
    _driver_on(pci, g, d)
    try:
        pci.device.pause()  # returns with the worker thread joined
        d.post(d.chain([d.buffer(8) + (True,)]))
        _kick(machine, g, 0)
        assert not pci.device.active and d.used_idx == 0 and machine.irq.fired.empty()
        pci.device.resume()  # the kick that came while paused is served
        _used(d, 1)
        assert machine.irq.fired.get(timeout=TIMEOUT) == 0x31
    finally:
        pci.close()


def test_held_chains_are_given_back_to_the_ring(mem: GuestMemory) -> None:
    d = VqDriver(mem, size=8)
    q = d.queue()
    heads = [d.chain([d.buffer(8) + (True,)]) for _ in range(3)]
    for h in heads:
        d.post(h)
    popped = [q.pop(), q.pop()]
    assert [c.head for c in popped if c is not None] == heads[:2]
    q.push(popped[0], 8)  # the first is used; the second is held (net's posted rx buffer)
    state = carried(q.save_state(held=1))
    q2 = d.queue()
    q2.restore_state(state)
    assert [q2.pop().head, q2.pop().head] == heads[1:]  # type: ignore[union-attr]
    assert q2.used_idx == 1


def test_virtio_console_input_not_yet_taken_survives() -> None:
    a = VirtioConsole(lambda data: None)
    a.receive(b"typed ")
    a.receive(b"ahead")
    b = VirtioConsole(lambda data: None)
    b.restore_state(carried(a.save_state()))
    assert b.pending == a.pending == len(b"typed ahead")


def test_a_virtio_state_with_features_this_device_lacks_is_refused() -> None:
    state = VirtioRng().save_state()
    state["driver_features"] = 1 << 60
    with pytest.raises(StateError, match="offers"):
        VirtioRng().restore_state(state)


# --- the snapshot walk over an inventory ------------------------------------------------------
def _legacy(serial: test_serial.Guest) -> Inventory:
    return Inventory([BusPart("serial0", "pio", platform.COM1_PORT, 8, serial.uart),
                      BusPart("post", "pio", platform.POST_PORT, 1, NullDevice())])


def test_snapshot_walks_the_inventory_through_a_stream() -> None:
    a = test_serial.Guest()
    a.outb(test_serial.SCR, 0x42)
    a.uart.receive(b"xy")
    out = io.BytesIO()
    stats = snapshot.save(_legacy(a), out)
    assert stats.parts == 2 and stats.octets == len(out.getvalue())
    b = test_serial.Guest()
    snapshot.restore(_legacy(b), io.BytesIO(out.getvalue()))
    assert b.inb(test_serial.SCR) == 0x42 and b.inb(test_serial.RBR) == ord("x")


def test_snapshot_refuses_a_stream_for_another_guest_by_name() -> None:
    out = io.BytesIO()
    snapshot.save(_legacy(test_serial.Guest()), out)
    fewer = Inventory([_legacy(test_serial.Guest()).parts[0]])
    with pytest.raises(StreamRecordError, match=r"record 1 PART .* no legacy part 'post'"):
        snapshot.restore(fewer, io.BytesIO(out.getvalue()))
    more = _legacy(test_serial.Guest())
    more.add(BusPart("rtc", "pio", platform.RTC_PORT, 2, test_rtc.Guest().rtc))
    with pytest.raises(StateError, match="no state for legacy rtc"):
        snapshot.restore(more, io.BytesIO(out.getvalue()))


def test_a_guest_with_unsaveable_xen_pv_devices_is_refused_before_anything_is_written() -> None:
    """A PV backend that cannot save itself (`saveable` False) is refused by
    name before the first record."""

    class Unsaveable:
        kind, saveable = "vif", False

    inv = _legacy(test_serial.Guest())
    inv.add(XenConsolePart(None))  # type: ignore[arg-type]  # its ring is RAM: it saves
    inv.add(PvDevicePart("nic", "nic0", backend=Unsaveable()))  # type: ignore[arg-type]
    out = io.BytesIO()
    with pytest.raises(NotSaveable, match="Xen PV devices .*nic0"):
        snapshot.save(inv, out)
    assert out.getvalue() == b""


def test_an_image_saved_before_cpu_policies_restores_with_this_hosts_policy() -> None:
    """An image from before the cpu-policy part existed has none: the guest keeps the
    policy its config gives it here (snapshot.OPTIONAL_KINDS), rather than being refused."""

    class PolicyPart:
        kind, name = "cpu-policy", "cpu"
        restored = False

        def restore_state(self, state: object) -> None:
            self.restored = True

    out = io.BytesIO()
    snapshot.save(_legacy(test_serial.Guest()), out)  # no cpu-policy part in it
    b = _legacy(test_serial.Guest())
    policy = PolicyPart()
    b.add(policy)  # type: ignore[arg-type]
    snapshot.restore(b, io.BytesIO(out.getvalue()))
    assert not policy.restored
