"""Machine and vCPU run loop against tiny hand-assembled 32-bit protected-mode guests.

The code blob below was assembled with GNU as (`as --32`, `.code32`) and disassembled with
objdump; each program starts at its own offset and is entered in flat 32-bit protected mode
(CR0.PE, paging off) with the segments of `CpuState`'s defaults.

The triple fault is raised with `ud2`, not `int3`: on the nested KVM of the build machines
KVM's ring-0 emulator refuses software interrupts (`int n`) with an emulation-failure
internal error, while exceptions are delivered (and escalate, SDM 3A §6.15) as on hardware.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from xenopus.arch.x86 import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from xenopus.kvm import Kvm, KvmCapabilityError, KvmError
from xenopus.memory.guest import GuestMemory
from xenopus.vm import CpuState, Machine, StopReason
from xenopus.vm.cpu import flat_code64
from xenopus.vm.vcpu import WAIT_FOR_SIPI

pytestmark = pytest.mark.kvm

CODE = 0x1000
TIMEOUT = 20.0  # generous: every exit costs ~20 us here and ring 0 is emulated

# fmt: off
BLOB = bytes([
    # pio (+0x00)
    0xB0, 0x41,                          # mov al, 0x41
    0xE6, 0x10,                          # out 0x10, al
    0x66, 0xB8, 0x34, 0x12,              # mov ax, 0x1234
    0x66, 0xE7, 0x12,                    # out 0x12, ax
    0xB8, 0xEF, 0xBE, 0xAD, 0xDE,        # mov eax, 0xdeadbeef
    0xE7, 0x14,                          # out 0x14, eax
    0xE5, 0x20,                          # in eax, 0x20
    0xE7, 0x22,                          # out 0x22, eax
    0x66, 0xBA, 0x22, 0x00,              # mov dx, 0x22
    0xEC,                                # in al, dx
    0xE6, 0x23,                          # out 0x23, al
    0xBE, 0x00, 0x20, 0x00, 0x00,        # mov esi, 0x2000
    0xB9, 0x05, 0x00, 0x00, 0x00,        # mov ecx, 5
    0x66, 0xBA, 0x30, 0x00,              # mov dx, 0x30
    0xFC,                                # cld
    0xF3, 0x6E,                          # rep outsb
    0xBF, 0x00, 0x30, 0x00, 0x00,        # mov edi, 0x3000
    0xB9, 0x03, 0x00, 0x00, 0x00,        # mov ecx, 3
    0x66, 0xBA, 0x31, 0x00,              # mov dx, 0x31
    0x66, 0xF3, 0x6D,                    # rep insw
    0xE6, 0xF0,                          # out 0xf0, al      ; "done"
    0xF4,                                # hlt
    0xEB, 0xFE,                          # jmp $
    # triple (+0x44)
    0x0F, 0x01, 0x1D, 0x00, 0x11, 0x00, 0x00,  # lidt [0x1100]   ; limit 0
    0x0F, 0x0B,                          # ud2: #UD -> #GP -> #DF -> triple fault
    # unbacked (+0x4d)
    0xB8, 0x00, 0x00, 0x00, 0xD0,        # mov eax, 0xd0000000
    0xFF, 0xE0,                          # jmp eax
    # counter (+0x54)
    0x31, 0xC0,                          # xor eax, eax
    0x40,                                # 1: inc eax
    0xE7, 0x50,                          # out 0x50, eax
    0xEB, 0xFB,                          # jmp 1b
    # spin (+0x5b)
    0xEB, 0xFE,                          # jmp $
    # mmio (+0x5d)
    0xA1, 0x00, 0x00, 0x00, 0xD0,        # mov eax, [0xd0000000]
    0xA3, 0x10, 0x00, 0x00, 0xD0,        # mov [0xd0000010], eax
    0x66, 0xC7, 0x05, 0x20, 0x00, 0x00, 0xD0, 0xEF, 0xBE,  # mov word [0xd0000020], 0xbeef
    0xE6, 0xF0,                          # out 0xf0, al      ; "done"
    0xEB, 0xFE,                          # jmp $
])
# fmt: on
PIO, TRIPLE, UNBACKED, COUNTER, SPIN, MMIO = 0x00, 0x44, 0x4D, 0x54, 0x5B, 0x5D
GDT = 0x800
TSS = 0x900


class StubBus:
    """Records port writes in a queue; reads come from `reads` (a value or a list per port)."""

    def __init__(self) -> None:
        self.writes: queue.Queue[tuple[int, int, int]] = queue.Queue()
        self.reads: dict[int, int | list[int]] = {}
        self.read_log: list[tuple[int, int]] = []
        self.hooks: dict[int, Callable[[int], None]] = {}

    def read(self, addr: int, size: int) -> int:
        self.read_log.append((addr, size))
        value = self.reads.get(addr, 0)
        return value.pop(0) if isinstance(value, list) else value

    def write(self, addr: int, size: int, value: int) -> None:
        hook = self.hooks.get(addr)
        if hook is not None:
            hook(value)
        self.writes.put((addr, size, value))

    def drain(self) -> list[tuple[int, int, int]]:
        out = []
        while True:
            try:
                out.append(self.writes.get_nowait())
            except queue.Empty:
                return out


class Guest:
    def __init__(self, vcpus: int = 1) -> None:
        self.memory = GuestMemory.create(16 << 20)
        self.pio = StubBus()
        self.mmio = StubBus()
        self.machine = Machine(self.memory, vcpus, pio=self.pio, mmio=self.mmio)
        self.stops: queue.Queue[StopReason] = queue.Queue()
        self.memory.write(CODE, BLOB)
        state = CpuState(rsp=0x8000, gdt_base=GDT, gdt_limit=4 * 8 - 1)
        state.tss.base = TSS
        for i, seg in enumerate((state.code, state.data, state.tss), start=1):
            self.memory.write_u64(GDT + 8 * i, seg.descriptor())
        self.state = state

    def start(self, entry: int) -> None:
        self.state.rip = CODE + entry
        self.machine.start(self.state, self.stops.put)

    def stopped(self) -> StopReason:
        return self.stops.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.machine.close()
        self.memory.close()


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


def bounded(fn: Callable[[], None]) -> None:
    """Run `fn` on a helper thread and fail (instead of hanging) if it does not return."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"{fn.__name__} did not return within {TIMEOUT}s"


def vcpu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vcpu") and t.is_alive()]


def test_port_io_reaches_the_bus(guest: Guest) -> None:
    guest.memory.write(0x2000, b"hello")
    guest.pio.reads = {0x20: 0xCAFEBABE, 0x22: 0x15A, 0x31: [0x1111, 0x2222, 0x3333]}
    guest.pio.hooks[0xF0] = lambda v: guest.machine.request_stop(StopReason("poweroff", "done"))
    guest.start(PIO)
    reason = guest.stopped()
    assert reason == StopReason("poweroff", "done")
    writes = guest.pio.drain()
    assert writes == [
        (0x10, 1, 0x41),
        (0x12, 2, 0x1234),
        (0x14, 4, 0xDEADBEEF),
        (0x22, 4, 0xCAFEBABE),  # the value `in eax, 0x20` read, written back
        (0x23, 1, 0x5A),  # a 1-byte read is truncated to the byte
        *[(0x30, 1, c) for c in b"hello"],  # rep outsb
        (0xF0, 1, 0x5A),
    ]
    assert guest.pio.read_log == [(0x20, 4), (0x22, 1), (0x31, 2), (0x31, 2), (0x31, 2)]
    assert guest.memory.read(0x3000, 6) == bytes.fromhex("1111 2222 3333")  # rep insw
    assert guest.machine.cpu_time() > 0
    guest.machine.stop()
    assert guest.stops.empty(), "on_stop must be called exactly once"


def test_mmio_reaches_the_bus(guest: Guest) -> None:
    guest.mmio.reads = {0xD0000000: 0x12345678}
    guest.pio.hooks[0xF0] = lambda v: guest.machine.request_stop(StopReason("poweroff", "done"))
    guest.start(MMIO)
    assert guest.stopped() == StopReason("poweroff", "done")
    assert guest.mmio.read_log == [(0xD0000000, 4)]
    assert guest.mmio.drain() == [(0xD0000010, 4, 0x12345678), (0xD0000020, 2, 0xBEEF)]
    assert guest.pio.drain() == [(0xF0, 1, 0x78)]


def test_triple_fault_is_a_reboot(guest: Guest) -> None:
    guest.start(TRIPLE)
    reason = guest.stopped()
    assert reason.kind == "reboot"
    assert reason.detail.startswith("triple fault")


def test_report_reads_code_through_the_guest_page_tables(guest: Guest) -> None:
    # Long mode with 2 MiB pages (SDM 3A §4.5): the code runs at 0xffffffff80000000 + its
    # physical address, so the report must walk the page tables to show the bytes.
    # (Long mode because 32-bit paging cannot be enabled on the build machines' nested KVM:
    # KVM_SET_SREGS drops CR0.PG and a guest's own mov to CR0.PG triple-faults there.)
    high = 0xFFFFFFFF80000000
    pml4, pdpt_high, pdpt_low, pd = 0x10000, 0x11000, 0x12000, 0x13000
    m = guest.memory
    m.write_u64(pml4 + 8 * 511, pdpt_high | 3)  # P | RW
    m.write_u64(pml4, pdpt_low | 3)  # identity too, for the stack
    m.write_u64(pdpt_high + 8 * 510, pd | 3)
    m.write_u64(pdpt_low, pd | 3)
    m.write_u64(pd, 0x83)  # P | RW | PS: 0..2 MiB
    state = guest.state
    state.code = flat_code64(0x08)
    state.cr0 |= CR0_PG
    state.cr3 = pml4
    state.cr4 = CR4_PAE
    state.efer = EFER_LME | EFER_LMA
    state.rip = high + CODE + TRIPLE + 7  # straight to the ud2; the IDT limit is already 0
    guest.machine.start(state, guest.stops.put)
    reason = guest.stopped()
    assert reason.kind == "reboot"
    assert f"rip={high + CODE + TRIPLE + 7:016x}" in reason.detail
    assert f"code at {high + CODE + TRIPLE + 7:#x}: 0f 0b b8 00 00 00 d0" in reason.detail


def test_fetch_from_unbacked_address_crashes(guest: Guest) -> None:
    guest.start(UNBACKED)
    reason = guest.stopped()
    assert reason.kind == "crash", reason
    # The report names the registers; eax holds the jump target.
    assert "rax=00000000d0000000" in reason.detail
    assert "rip=" in reason.detail and "cr0=" in reason.detail and "cs=0008" in reason.detail


def test_device_exception_crashes_the_domain_not_the_process(guest: Guest) -> None:
    def broken(value: int) -> None:
        raise RuntimeError("device model bug")

    guest.pio.hooks[0x10] = broken
    guest.start(PIO)
    reason = guest.stopped()
    assert reason.kind == "crash"
    assert "port 0x10" in reason.detail and "device model bug" in reason.detail


def test_pause_and_resume(guest: Guest) -> None:
    guest.start(COUNTER)
    assert guest.pio.writes.get(timeout=TIMEOUT)[:2] == (0x50, 4)
    bounded(guest.machine.pause)
    before = guest.pio.drain()
    last = before[-1][2] if before else 1
    with pytest.raises(queue.Empty):  # paused: nothing may arrive
        guest.pio.writes.get(timeout=0.5)
    guest.machine.resume()
    port, size, value = guest.pio.writes.get(timeout=TIMEOUT)
    assert (port, size) == (0x50, 4)
    assert value == last + 1  # the guest continued where it was parked
    bounded(guest.machine.stop)
    assert guest.stopped() == StopReason("poweroff", "stopped by the host")
    assert vcpu_threads() == []


def test_pause_kicks_a_vcpu_out_of_kvm_run(guest: Guest) -> None:
    # A guest that never exits: only the signal kick can get the thread out of KVM_RUN.
    guest.start(SPIN)
    bounded(guest.machine.pause)
    guest.machine.resume()
    bounded(guest.machine.stop)
    assert guest.stopped().kind == "poweroff"
    assert vcpu_threads() == []
    guest.machine.stop()  # idempotent
    assert guest.stops.empty()


def test_stop_joins_application_processors_waiting_for_sipi() -> None:
    g = Guest(vcpus=2)
    try:
        g.start(COUNTER)
        g.pio.writes.get(timeout=TIMEOUT)
        assert {t.name for t in vcpu_threads()} == {"vcpu0", "vcpu1"}
        bounded(g.machine.stop)
        assert vcpu_threads() == []
        assert g.stopped().kind == "poweroff"
    finally:
        g.close()


def test_kvmclock_counts_boottime_from_vm_creation() -> None:
    # x86.c kvm_arch_init_vm: kvmclock_offset = -CLOCK_BOOTTIME at creation, so
    # KVM_GET_CLOCK reads the boottime elapsed since the VM was created.
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    g = Guest()
    try:
        first = g.machine.clock_ns()
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        assert 0 <= first <= after - before
        assert g.machine.clock_ns() >= first
    finally:
        g.close()


def test_missing_capability_is_named() -> None:
    class NoImmediateExit(Kvm):
        def check_extension(self, cap: int) -> int:
            return 0 if cap == 136 else super().check_extension(cap)

    with (
        NoImmediateExit() as kvm,
        GuestMemory.create(1 << 20) as mem,
        pytest.raises(KvmCapabilityError, match="KVM_CAP_IMMEDIATE_EXIT"),
    ):
        Machine(mem, pio=StubBus(), mmio=StubBus(), kvm=kvm)


def test_unopenable_device_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(KvmError, match=r"cannot open .*nokvm: No such file or directory"):
        Kvm(str(tmp_path / "nokvm"))


def test_on_vcpu_thread_reaches_a_vcpu_blocked_in_kvm_run() -> None:
    # vCPU 1 waits for SIPI inside KVM_RUN, holding its vCPU mutex: an ioctl on it from
    # here would wait for as long. on_vcpu_thread runs the call on its own thread instead.
    g = Guest(vcpus=2)
    try:
        before = threading.Event()
        g.machine.on_vcpu_thread(1, before.set)  # no thread yet: at once, here
        assert before.is_set()
        g.start(COUNTER)
        g.pio.writes.get(timeout=TIMEOUT)
        ran: queue.Queue[tuple[str, int]] = queue.Queue()
        vcpu = g.machine.vcpus[1]
        g.machine.on_vcpu_thread(
            1, lambda: ran.put((threading.current_thread().name, vcpu.fd.get_mp_state())))
        name, mp_state = ran.get(timeout=TIMEOUT)
        assert name == "vcpu1" and mp_state in WAIT_FOR_SIPI
        bounded(g.machine.pause)  # parked, out of KVM_RUN: at once, on the caller's thread
        g.machine.on_vcpu_thread(1, lambda: ran.put((threading.current_thread().name, 0)))
        assert ran.get_nowait()[0] == threading.current_thread().name
        g.machine.resume()
        bounded(g.machine.stop)
    finally:
        g.close()
