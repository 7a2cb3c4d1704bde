"""SMP: application processors started the architectural way, per-vCPU CPUID topology,
pause/stop with APs in wait-for-SIPI, and per-vCPU host state and pinning.

The guest is hand-assembled (GNU as `--32`, linked flat with `ld --oformat binary`, listed
with objdump). The BSP runs in flat 32-bit protected mode at 0x1000: it software-enables
its local APIC, reads the vCPU count from port 0x44 (0 means "wait"), and sends each AP
INIT, SIPI, SIPI (SDM 3A §8.4.4.1) with vector 0x09. Each AP starts in real mode at
CS:IP = 0900:0000 (SDM 3A §8.4.4.2, "the SIPI vector is the page of the start-up code"),
loads the GDT, enters protected mode and reports, as the BSP then does too:
- port 0xE0: the local APIC ID register's ID field (SDM 3A §10.4.6, bits 31:24);
- port 0xE1: CPUID.1:EBX (initial APIC ID in 31:24, addressable logical processors 23:16);
- port 0xE2: CPUID.0BH.0:EDX (x2APIC ID);
- port 0xE3: CPUID.0BH.1: EBX[15:0] << 16 | EAX[4:0] (processors at the core level,
  APIC ID shift to the package level).
and halts with interrupts off. The port writes reach the test's bus on the thread of the
vCPU that made them, so each report names its vCPU independently of what it says.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.vm.test_machine import bounded
from xenopus.host import host_cpus
from xenopus.kvm import Kvm
from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemory
from xenopus.vm import CpuState, Machine, StopReason
from xenopus.vm.machine import MAX_XAPIC_VCPUS
from xenopus.vm.vcpu import cpuid_topology

pytestmark = pytest.mark.kvm

TIMEOUT = 30.0  # ring 0 and real mode are emulated on the build machines
NCPUS = 4
GDT = 0x800
TSS = 0x900
BSP_CODE = 0x1000
TRAMPOLINE = 0x9000  # SIPI vector 0x09
COUNT_PORT = 0x44
REPORT_PORTS = (0xE0, 0xE1, 0xE2, 0xE3)

# fmt: off
BSP = bytes([
    0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  # 1000: movl $0x1ff, 0xfee000f0 (SVR)
    0xE5, 0x44,                          # 100a: 1: in eax, 0x44
    0x85, 0xC0,                          # 100c: test eax, eax
    0x74, 0xFA,                          # 100e: jz 1b
    0x89, 0xC6,                          # 1010: mov esi, eax
    0xB9, 0x01, 0x00, 0x00, 0x00,        # 1012: mov ecx, 1
    0x39, 0xF1,                          # 1017: next: cmp ecx, esi
    0x73, 0x47,                          # 1019: jae done
    0x89, 0xCA,                          # 101b: mov edx, ecx
    0xC1, 0xE2, 0x18,                    # 101d: shl edx, 24            ; ICR destination
    0x89, 0x15, 0x10, 0x03, 0xE0, 0xFE,  # 1020: mov [0xfee00310], edx
    0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x00, 0x45, 0x00, 0x00,  # 1026: movl $0x4500 ICR: INIT, assert
    0xE8, 0x34, 0x00, 0x00, 0x00,        # 1030: call idle
    0x89, 0x15, 0x10, 0x03, 0xE0, 0xFE,  # 1035: mov [0xfee00310], edx
    0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x09, 0x46, 0x00, 0x00,  # 103b: movl $0x4609 ICR: SIPI 0x09
    0xE8, 0x1F, 0x00, 0x00, 0x00,        # 1045: call idle
    0x89, 0x15, 0x10, 0x03, 0xE0, 0xFE,  # 104a: mov [0xfee00310], edx
    0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x09, 0x46, 0x00, 0x00,  # 1050: movl $0x4609: second SIPI
    0xE8, 0x0A, 0x00, 0x00, 0x00,        # 105a: call idle
    0x41,                                # 105f: inc ecx
    0xEB, 0xB5,                          # 1060: jmp next
    0xB8, 0x24, 0x90, 0x00, 0x00,        # 1062: done: mov eax, 0x9024 (report)
    0xFF, 0xE0,                          # 1067: jmp eax
    0xF7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x00, 0x10, 0x00, 0x00,  # 1069: idle: test ICR delivery status
    0x75, 0xF4,                          # 1073: jnz idle
    0xC3,                                # 1075: ret
])
AP = bytes([
    # .code16, CS=0x0900 IP=0
    0xFA,                                # 9000: cli
    0x2E, 0x66, 0x0F, 0x01, 0x16, 0x60, 0x00,  # 9001: lgdtl cs:[0x60]
    0x0F, 0x20, 0xC0,                    # 9008: mov eax, cr0
    0x66, 0x83, 0xC8, 0x01,              # 900b: or eax, 1 (PE)
    0x0F, 0x22, 0xC0,                    # 900f: mov cr0, eax
    0x66, 0xEA, 0x1A, 0x90, 0x00, 0x00, 0x08, 0x00,  # 9012: ljmpl 0x08:0x901a
    # .code32
    0x66, 0xB8, 0x10, 0x00,              # 901a: mov ax, 0x10
    0x8E, 0xD8,                          # 901e: mov ds, ax
    0x8E, 0xC0,                          # 9020: mov es, ax
    0x8E, 0xD0,                          # 9022: mov ss, ax
    0xA1, 0x20, 0x00, 0xE0, 0xFE,        # 9024: report: mov eax, [0xfee00020] (APIC ID)
    0xC1, 0xE8, 0x18,                    # 9029: shr eax, 24
    0xE7, 0xE0,                          # 902c: out 0xe0, eax
    0xB8, 0x01, 0x00, 0x00, 0x00,        # 902e: mov eax, 1
    0x0F, 0xA2,                          # 9033: cpuid
    0x89, 0xD8,                          # 9035: mov eax, ebx
    0xE7, 0xE1,                          # 9037: out 0xe1, eax
    0xB8, 0x0B, 0x00, 0x00, 0x00,        # 9039: mov eax, 0xb
    0x31, 0xC9,                          # 903e: xor ecx, ecx
    0x0F, 0xA2,                          # 9040: cpuid
    0x89, 0xD0,                          # 9042: mov eax, edx
    0xE7, 0xE2,                          # 9044: out 0xe2, eax
    0xB8, 0x0B, 0x00, 0x00, 0x00,        # 9046: mov eax, 0xb
    0xB9, 0x01, 0x00, 0x00, 0x00,        # 904b: mov ecx, 1
    0x0F, 0xA2,                          # 9050: cpuid
    0xC1, 0xE3, 0x10,                    # 9052: shl ebx, 16
    0x09, 0xD8,                          # 9055: or eax, ebx
    0xE7, 0xE3,                          # 9057: out 0xe3, eax
    0xFA,                                # 9059: 1: cli
    0xF4,                                # 905a: hlt
    0xEB, 0xFC,                          # 905b: jmp 1b
    0x8D, 0x76, 0x00,                    # 905d: (padding)
    0x1F, 0x00, 0x00, 0x08, 0x00, 0x00,  # 9060: GDT pseudo-descriptor: limit 31, base 0x800
])
# fmt: on


class SmpBus:
    """Port 0x44 answers `count` (0 until the test sets it); report writes are queued with
    the name of the vCPU thread that made them."""

    def __init__(self) -> None:
        self.count = 0
        self.polled = threading.Event()
        self.reports: queue.Queue[tuple[str, int, int]] = queue.Queue()

    def read(self, addr: int, size: int) -> int:
        if addr == COUNT_PORT:
            self.polled.set()
            return self.count
        return 0

    def write(self, addr: int, size: int, value: int) -> None:
        self.reports.put((threading.current_thread().name, addr, value))

    def collect(self, n: int) -> dict[str, dict[int, int]]:
        """Wait for `n` reports: {vCPU thread name: {port: value}}."""
        out: dict[str, dict[int, int]] = {}
        for _ in range(n):
            name, port, value = self.reports.get(timeout=TIMEOUT)
            out.setdefault(name, {})[port] = value
        return out


class SmpGuest:
    def __init__(self, vcpus: int = NCPUS) -> None:
        self.memory = GuestMemory.create(16 << 20)
        self.bus = SmpBus()
        self.machine = Machine(self.memory, vcpus, pio=self.bus, mmio=self.bus)
        self.stops: queue.Queue[StopReason] = queue.Queue()
        self.memory.write(BSP_CODE, BSP)
        self.memory.write(TRAMPOLINE, AP)
        state = CpuState(rip=BSP_CODE, rsp=0x8000, gdt_base=GDT, gdt_limit=4 * 8 - 1)
        state.tss.base = TSS
        for i, seg in enumerate((state.code, state.data, state.tss), start=1):
            self.memory.write_u64(GDT + 8 * i, seg.descriptor())
        self.state = state

    def start(self) -> None:
        self.machine.start(self.state, self.stops.put)

    def close(self) -> None:
        self.machine.close()
        self.memory.close()


@pytest.fixture
def guest() -> Iterator[SmpGuest]:
    g = SmpGuest()
    yield g
    g.close()


def settled(machine: Machine, ok: Callable[[list[dict]], bool]) -> list[dict]:
    """vcpu_info once `ok` holds for it. A vCPU reports in just before it halts, so its
    state can lag the last report by a few instructions; each vcpu_info waits for every
    vCPU thread to answer its kick, and the deadline bounds the loop."""
    deadline = time.monotonic() + TIMEOUT
    while not ok(info := machine.vcpu_info()):
        assert time.monotonic() < deadline, f"vCPU state never settled: {info}"
    return info


def native_ids() -> dict[str, int]:
    return {t.name: t.native_id for t in threading.enumerate() if t.name.startswith("vcpu")}


def assert_reports(reports: dict[str, dict[int, int]], n: int = NCPUS) -> None:
    assert sorted(reports) == [f"vcpu{i}" for i in range(n)]
    bits = (n - 1).bit_length()
    for name, r in reports.items():
        index = int(name.removeprefix("vcpu"))
        assert r[0xE0] == index, f"{name}: LAPIC ID {r[0xE0]}"
        assert r[0xE1] >> 24 == index, f"{name}: CPUID.1:EBX {r[0xE1]:#x}"
        assert (r[0xE1] >> 16) & 0xFF == 1 << bits  # addressable IDs, a power of two >= n
        assert r[0xE2] == index, f"{name}: x2APIC ID {r[0xE2]:#x}"
        assert r[0xE3] == (n << 16) | bits  # n processors at the core level, shift `bits`


def test_aps_start_through_init_sipi_and_report_their_apic_ids(guest: SmpGuest) -> None:
    guest.bus.count = NCPUS
    guest.start()
    assert_reports(guest.bus.collect(NCPUS * len(REPORT_PORTS)))
    info = settled(  # cli; hlt: halted in KVM, the thread asleep in KVM_RUN
        guest.machine,
        lambda info: all(i["mp_state"] == "halted" and i["state"] == "blocked" for i in info),
    )
    ids = native_ids()
    assert [i["vcpu"] for i in info] == list(range(NCPUS))
    assert [i["tid"] for i in info] == [ids[f"vcpu{n}"] for n in range(NCPUS)]
    assert all(i["online"] for i in info)
    assert all(i["cpu"] in host_cpus() for i in info)
    assert all(i["cpu_time"] > 0 for i in info)
    bounded(guest.machine.stop)
    assert guest.stops.get(timeout=TIMEOUT).kind == "poweroff"
    assert native_ids() == {}


def test_pause_resume_stop_with_aps_waiting_for_sipi(guest: SmpGuest) -> None:
    guest.start()  # the BSP polls port 0x44; the APs sit in wait-for-SIPI
    assert guest.bus.polled.wait(TIMEOUT)
    info = guest.machine.vcpu_info()
    assert info[0]["online"] and info[0]["mp_state"] in ("runnable", "halted")
    for i in info[1:]:
        assert (i["online"], i["mp_state"]) == (False, "uninitialized")
        assert i["tid"] is not None
    # Asleep in KVM_RUN until an INIT (once the kick of the last vcpu_info has been served).
    settled(guest.machine, lambda info: all(i["state"] == "blocked" for i in info[1:]))
    bounded(guest.machine.pause)
    guest.bus.polled.clear()
    assert not guest.bus.polled.wait(0.3), "a paused BSP went on polling"
    assert [i["online"] for i in guest.machine.vcpu_info()] == [True, False, False, False]
    guest.machine.resume()
    guest.bus.count = NCPUS  # the parked APs must still come up normally
    assert_reports(guest.bus.collect(NCPUS * len(REPORT_PORTS)))
    bounded(guest.machine.pause)
    guest.machine.resume()
    bounded(guest.machine.stop)
    assert guest.stops.get(timeout=TIMEOUT) == StopReason("poweroff", "stopped by the host")
    assert native_ids() == {}


def test_stop_with_aps_never_started(guest: SmpGuest) -> None:
    guest.start()
    assert guest.bus.polled.wait(TIMEOUT)
    bounded(guest.machine.stop)
    assert guest.stops.get(timeout=TIMEOUT).kind == "poweroff"
    assert native_ids() == {}
    # Without threads the state is read straight from KVM.
    assert [i["online"] for i in guest.machine.vcpu_info()] == [True, False, False, False]
    assert {i["state"] for i in guest.machine.vcpu_info()} == {"stopped"}


def test_pin_sets_the_host_affinity_of_the_vcpu_thread(guest: SmpGuest) -> None:
    guest.bus.count = NCPUS
    guest.start()
    assert_reports(guest.bus.collect(NCPUS * len(REPORT_PORTS)))
    tid = guest.machine.vcpu_info()[1]["tid"]
    assert isinstance(tid, int)
    guest.machine.pin(1, {0})
    assert os.sched_getaffinity(tid) == {0}
    info = guest.machine.vcpu_info()
    assert info[1]["affinity"] == [0]
    assert info[2]["affinity"] == sorted(os.sched_getaffinity(0))  # the others untouched
    missing = max(host_cpus()) + 1
    with pytest.raises(ValueError, match=f"the host has no CPU {missing}"):
        guest.machine.pin(2, {0, missing})
    with pytest.raises(ValueError, match="there is no vCPU 7"):
        guest.machine.pin(7, {0})
    with pytest.raises(ValueError, match="empty set"):
        guest.machine.pin(2, set())
    assert os.sched_getaffinity(info[2]["tid"]) == os.sched_getaffinity(0)

    # A new thread for the vCPU (the machine restarted) gets the pin again; the BSP runs
    # its code again and brings the halted APs back through INIT/SIPI.
    bounded(guest.machine.stop)
    assert guest.stops.get(timeout=TIMEOUT).kind == "poweroff"
    guest.start()
    assert_reports(guest.bus.collect(NCPUS * len(REPORT_PORTS)))
    info = guest.machine.vcpu_info()
    assert info[1]["tid"] not in (None, tid)
    assert os.sched_getaffinity(info[1]["tid"]) == {0}
    assert info[1]["affinity"] == [0]


def test_more_vcpus_than_kvm_allows_are_refused() -> None:
    class TwoVcpus(Kvm):
        def check_extension(self, cap: int) -> int:
            return 2 if cap == u.KVM_CAP_MAX_VCPUS else super().check_extension(cap)

    bus = SmpBus()
    with (
        TwoVcpus() as kvm,
        GuestMemory.create(1 << 20) as mem,
        pytest.raises(ValueError, match="3 vCPUs asked for: KVM on this host allows at most 2"),
    ):
        Machine(mem, 3, pio=bus, mmio=bus, kvm=kvm)
    with Kvm() as kvm:
        limit = kvm.check_extension(u.KVM_CAP_MAX_VCPUS)
    n = min(limit, MAX_XAPIC_VCPUS) + 1
    with GuestMemory.create(1 << 20) as mem, pytest.raises(ValueError, match=f"{n} vCPUs asked for"):
        Machine(mem, n, pio=bus, mmio=bus)


def _cpuid(*entries: tuple[int, int, int, int, int, int]) -> ctypes.Structure:
    table = u.cpuid2_with(len(entries))
    for i, (function, index, eax, ebx, ecx, edx) in enumerate(entries):
        table.entries[i] = u.kvm_cpuid_entry2(function, index, 0, eax, ebx, ecx, edx)
    return table


def _leaves(table: ctypes.Structure) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    return {
        (e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx)
        for e in (table.entries[i] for i in range(table.nent))
    }


def test_cpuid_topology_of_six_cores() -> None:
    # vCPU 5 of 6: 3 APIC-ID bits for the core (SDM 2A CPUID leaves 01H, 04H, 0BH; AMD APM
    # vol. 3 CPUID 8000_0008H, 8000_001EH).
    host = _cpuid(
        (0, 0, 0x1C, 0, 0, 0),
        (1, 0, 0xA10F11, 0x00020800, 0, 0x078BFBFF),  # HTT clear, 2 logical, APIC ID 0
        (4, 0, 0x121, 0, 0, 0),  # L1 data cache (type 1, level 1)
        (4, 1, 0x163, 0, 0, 0),  # L3 unified (type 3, level 3)
        (4, 2, 0, 0, 0, 0),  # no more caches
        (0xB, 0, 0, 0, 0, 0),
        (0x80000008, 0, 0x3030, 0, 0x7001, 0),
        (0x8000001E, 0, 0, 0, 0, 0),
    )
    leaves = _leaves(cpuid_topology(host, 5, 6))
    eax, ebx, ecx, edx = leaves[(1, 0)]
    assert (ebx >> 24, (ebx >> 16) & 0xFF, ebx & 0xFFFF) == (5, 8, 0x0800)
    assert edx & (1 << 28)  # HTT: the count field is valid
    assert leaves[(4, 0)][0] == (7 << 26) | 0x121  # 8 core IDs, L1 not shared
    assert leaves[(4, 1)][0] == (7 << 26) | (7 << 14) | 0x163  # L3 shared by the package
    assert leaves[(4, 2)][0] == 0
    assert leaves[(0xB, 0)] == (0, 1, 0x100, 5)  # SMT level: 1 thread, shift 0
    assert leaves[(0xB, 1)] == (3, 6, 0x201, 5)  # core level: 6 processors, shift 3
    assert leaves[(0xB, 2)] == (0, 0, 2, 5)  # invalid level ends the list
    assert leaves[(0x80000008, 0)][2] == 0x3005  # ApicIdCoreIdSize 3, NC 5
    assert leaves[(0x8000001E, 0)][:3] == (5, 5, 0)

    single = _leaves(cpuid_topology(host, 0, 1))
    assert not single[(1, 0)][3] & (1 << 28)
    assert (single[(1, 0)][1] >> 16) & 0xFF == 1
    assert single[(0xB, 1)] == (0, 1, 0x201, 0)
