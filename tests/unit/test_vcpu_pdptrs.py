"""Vcpu.apply for a PAE-paging state: the PDPTE registers go to KVM through KVM_SET_SREGS2,
read from the PDPT at CR3[31:5] (SDM 3A §4.4.1) with the Accessed bit that AMD nested
paging leaves in memory cleared, so that KVM does not refuse them as reserved. A fake vCPU
fd records what KVM would be given; the nested host's SVM runs it for real
(tests/vm/test_xen32.py paging=pae brings up its second vCPU that way)."""

from __future__ import annotations

from xenopus.arch.x86 import CR0_PE, CR0_PG, CR4_PAE, CR4_PSE
from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import CpuState
from xenopus.vm.vcpu import Vcpu

PDPT = 0x114020  # 32-byte aligned, in the middle of a page
TABLES = [0x110000 + 0x1000 * i for i in range(4)]
ACCESSED = 1 << 5


class FakeFd:
    """The vCPU ioctls apply() makes; KVM_GET_SREGS2 reports the registers last set."""

    index = 1

    def __init__(self) -> None:
        self.sregs = u.kvm_sregs()
        self.sregs2: list[u.kvm_sregs2] = []

    def get_sregs(self) -> u.kvm_sregs:
        return self.sregs

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        self.sregs = sregs

    def get_sregs2(self) -> u.kvm_sregs2:
        s2 = u.kvm_sregs2()
        for name in ("cr0", "cr3", "cr4", "efer"):
            setattr(s2, name, getattr(self.sregs, name))
        return s2

    def set_sregs2(self, sregs2: u.kvm_sregs2) -> None:
        self.sregs2.append(sregs2)

    def set_regs(self, regs: u.kvm_regs) -> None:
        pass

    def set_mp_state(self, state: int) -> None:
        pass


def apply(state: CpuState) -> FakeFd:
    memory = GuestMemory.create(4 << 20)
    for i, table in enumerate(TABLES):  # as the nested host's SVM left them: Accessed set
        memory.write_u64(PDPT + 8 * i, table | 1 | ACCESSED)
    fd = FakeFd()
    Vcpu(fd, memory, pio=None, mmio=None, control=lambda v: False).apply(state)  # type: ignore[arg-type]
    return fd


def test_pae_state_gives_kvm_the_pdptes_without_the_accessed_bit() -> None:
    fd = apply(CpuState(cr0=CR0_PE | CR0_PG, cr3=PDPT, cr4=CR4_PAE))
    (s2,) = fd.sregs2
    assert s2.flags & u.KVM_SREGS2_FLAGS_PDPTRS_VALID
    assert list(s2.pdptrs) == [table | 1 for table in TABLES]


def test_other_paging_modes_leave_the_pdptes_alone() -> None:
    assert apply(CpuState(cr0=CR0_PE | CR0_PG, cr3=PDPT, cr4=CR4_PSE)).sregs2 == []
    assert apply(CpuState(cr0=CR0_PE, cr3=PDPT, cr4=CR4_PAE)).sregs2 == []
