"""The trap path end to end on KVM: CPUID discovery at CPL0, the hypercall-page MSR write
reaching userspace, and xen_version called through the page.

The 64-bit guest below was assembled with GNU as (``as --64``) and checked with objdump; it
runs at CPL0 in long mode on an identity map of the first 2 MiB and reports through
``out %eax, $port``:

    0x10-0x13  CPUID 0x40000000 eax, ebx, ecx, edx   0x14-0x16  CPUID 0x40000004 eax, ebx, ecx
    wrmsr(0x40000000, 0x2000)                         (the hypercall page at 0x2000)
    0x20  xen_version(XENVER_version, 0)              0x21, 0x22  rbx, r11 after the call
    0x23, 0x24  xen_version(XENVER_extraversion, 0xdead0000): rax low, high
    0x25  hypercall 50 (none)                         0x26  xen_version(XENVER_extraversion, 0x3000)
    0xf0  done
"""

from __future__ import annotations

import queue

import pytest

from xenopus.arch.x86 import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from xenopus.devices.bus import Bus
from xenopus.memory.guest import GuestMemory
from xenopus.vm import CpuState, Machine, StopReason
from xenopus.vm.cpu import flat_code64
from xenopus.xen import abi
from xenopus.xen.domain import XenDomain
from xenopus.xen.hypercall import HYPERCALL_PORT, HypercallTable, TrapPath, make_cpuid_fixup

pytestmark = pytest.mark.kvm

CODE, PAGE, STACK, GDT, TSS = 0x1000, 0x2000, 0x8000, 0x800, 0x900
TIMEOUT = 30.0
DOMID = 7

# fmt: off
BLOB = bytes([
    0xb8, 0x00, 0x00, 0x00, 0x40, 0x31, 0xc9, 0x0f, 0xa2, 0xe7, 0x10, 0x89,
    0xd8, 0xe7, 0x11, 0x89, 0xc8, 0xe7, 0x12, 0x89, 0xd0, 0xe7, 0x13, 0xb8,
    0x04, 0x00, 0x00, 0x40, 0x31, 0xc9, 0x0f, 0xa2, 0xe7, 0x14, 0x89, 0xd8,
    0xe7, 0x15, 0x89, 0xc8, 0xe7, 0x16, 0xb9, 0x00, 0x00, 0x00, 0x40, 0xb8,
    0x00, 0x20, 0x00, 0x00, 0x31, 0xd2, 0x0f, 0x30, 0xbb, 0x5a, 0x5a, 0x5a,
    0x5a, 0x41, 0xbb, 0xde, 0xc0, 0xad, 0x0b, 0x31, 0xff, 0x31, 0xf6, 0x48,
    0xc7, 0xc0, 0x20, 0x22, 0x00, 0x00, 0xff, 0xd0, 0xe7, 0x20, 0x89, 0xd8,
    0xe7, 0x21, 0x44, 0x89, 0xd8, 0xe7, 0x22, 0xbf, 0x01, 0x00, 0x00, 0x00,
    0xbe, 0x00, 0x00, 0xad, 0xde, 0x48, 0xc7, 0xc0, 0x20, 0x22, 0x00, 0x00,
    0xff, 0xd0, 0xe7, 0x23, 0x48, 0xc1, 0xe8, 0x20, 0xe7, 0x24, 0x48, 0xc7,
    0xc0, 0x40, 0x26, 0x00, 0x00, 0xff, 0xd0, 0xe7, 0x25, 0xbf, 0x01, 0x00,
    0x00, 0x00, 0xbe, 0x00, 0x30, 0x00, 0x00, 0x48, 0xc7, 0xc0, 0x20, 0x22,
    0x00, 0x00, 0xff, 0xd0, 0xe7, 0x26, 0xe6, 0xf0, 0xeb, 0xfe,
])
# fmt: on


class Reports:
    """Ports 0x10-0x2f and 0xf0: the guest's results."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.done: queue.Queue[bool] = queue.Queue()

    def read(self, base: int, offset: int, size: int) -> int:
        return 0

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        if base == 0xF0:
            self.done.put(True)
        else:
            self.values[base + offset] = value


def test_xen_version_through_the_trapped_hypercall_page() -> None:
    memory = GuestMemory.create(16 << 20)
    pio, mmio = Bus("pio"), Bus("mmio")
    reports = Reports()
    pio.register(0x10, 0x20, reports, "reports")
    pio.register(0xF0, 1, reports, "done")
    table = HypercallTable()
    trap = TrapPath(table, memory)
    pio.register(HYPERCALL_PORT, 1, trap, "xen-hypercall")
    machine = Machine(memory, 1, pio=pio, mmio=mmio, cpuid_fixup=make_cpuid_fixup(DOMID),
                      msr_handler=trap, msr_filter=trap.msr_filter(),
                      port_out_handlers=trap.port_out_handlers())
    stops: queue.Queue[StopReason] = queue.Queue()
    domain = XenDomain(DOMID, machine, table, console_out=lambda line: None)
    try:
        pml4, pdpt, pd = 0x10000, 0x11000, 0x12000
        memory.write_u64(pml4, pdpt | 3)
        memory.write_u64(pdpt, pd | 3)
        memory.write_u64(pd, 0x83)  # P | RW | PS: 0..2 MiB
        memory.write(CODE, BLOB)
        state = CpuState(rsp=STACK, gdt_base=GDT, gdt_limit=4 * 8 - 1)
        state.code = flat_code64(0x08)
        state.tss.base = TSS
        for i, seg in enumerate((state.code, state.data, state.tss), start=1):
            memory.write_u64(GDT + 8 * i, seg.descriptor())
        state.cr0 |= CR0_PG
        state.cr3, state.cr4, state.efer = pml4, CR4_PAE, EFER_LME | EFER_LMA
        state.rip = CODE
        machine.start(state, stops.put)
        assert reports.done.get(timeout=TIMEOUT)
        v = reports.values
        # arch-x86/cpuid.h: leaf 1 signature "XenVMMXenVMM", max leaf; leaf 5 HVM features
        assert (v[0x11], v[0x12], v[0x13]) == (0x566E6558, 0x65584D4D, 0x4D4D566E)
        assert v[0x10] == 0x40000004
        assert v[0x14] & abi.XEN_HVM_CPUID_VCPU_ID_PRESENT
        assert v[0x14] & abi.XEN_HVM_CPUID_DOMID_PRESENT
        assert (v[0x15], v[0x16]) == (0, DOMID)
        assert trap.page_gpas == {0: PAGE}
        assert v[0x20] == 0x0004000B  # Xen 4.11
        assert (v[0x21], v[0x22]) == (0x5A5A5A5A, 0x0BADC0DE)  # no register but rax changed
        efault = (-abi.XEN_EFAULT) & (2**64 - 1)
        assert (v[0x23], v[0x24]) == (efault & 0xFFFFFFFF, efault >> 32)
        assert v[0x25] == (-abi.XEN_ENOSYS) & 0xFFFFFFFF
        assert v[0x26] == 0
        assert memory.read(0x3000, 16) == b".0-xenopus".ljust(16, b"\0")
    finally:
        machine.stop()
        domain.close()
        machine.close()
        memory.close()
