"""Vcpu.apply for a PAE-paging state: the special registers and the PDPTE registers go to
KVM in one KVM_SET_SREGS2, the PDPTEs read from the PDPT at CR3[31:5] (SDM 3A §4.4.1) with
the Accessed bit that AMD nested paging leaves in memory cleared, so that KVM does not
refuse them as reserved. A fake vCPU fd records what KVM would be given; the nested host's
SVM runs it for real (tests/vm/test_xen32.py paging=pae brings up its second vCPU that
way)."""

from __future__ import annotations

import errno

from xenopus.arch.x86 import CR0_PE, CR0_PG, CR4_PAE, CR4_PSE
from xenopus.kvm import uapi as u
from xenopus.kvm.system import KvmError
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import CpuState
from xenopus.vm.vcpu import Vcpu

PDPT = 0x114020  # 32-byte aligned, in the middle of a page
TABLES = [0x110000 + 0x1000 * i for i in range(4)]
ACCESSED = 1 << 5


class FakeFd:
    """The vCPU ioctls apply() makes, each recorded; `sregs2=False`: a KVM without
    KVM_CAP_SREGS2, whose KVM_SET_SREGS2 fails."""

    index = 1

    def __init__(self, sregs2: bool = True) -> None:
        self.has_sregs2 = sregs2
        self.sregs = u.kvm_sregs(apic_base=0xFEE00900)
        self.calls: list[str] = []
        self.sregs2: list[u.kvm_sregs2] = []

    def get_sregs(self) -> u.kvm_sregs:
        self.calls.append("get_sregs")
        return self.sregs

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        self.calls.append("set_sregs")
        self.sregs = sregs

    def set_sregs2(self, sregs2: u.kvm_sregs2) -> None:
        self.calls.append("set_sregs2")
        if not self.has_sregs2:
            raise KvmError("KVM_SET_SREGS2: Inappropriate ioctl for device", errno.ENOTTY)
        self.sregs2.append(sregs2)

    def set_regs(self, regs: u.kvm_regs) -> None:
        pass

    def set_mp_state(self, state: int) -> None:
        pass


def apply(state: CpuState, sregs2: bool = True) -> FakeFd:
    memory = GuestMemory.create(4 << 20)
    for i, table in enumerate(TABLES):  # as the nested host's SVM left them: Accessed set
        memory.write_u64(PDPT + 8 * i, table | 1 | ACCESSED)
    fd = FakeFd(sregs2)
    Vcpu(fd, memory, pio=None, mmio=None, control=lambda v: False).apply(state)  # type: ignore[arg-type]
    return fd


PAE = CpuState(cr0=CR0_PE | CR0_PG, cr3=PDPT, cr4=CR4_PAE, gdt_base=0x1000, gdt_limit=0x27)


def test_pae_state_gives_kvm_the_pdptes_without_the_accessed_bit_in_one_ioctl() -> None:
    fd = apply(PAE)
    assert fd.calls == ["get_sregs", "set_sregs2"]  # no KVM_SET_SREGS before it
    (s2,) = fd.sregs2
    assert s2.flags == u.KVM_SREGS2_FLAGS_PDPTRS_VALID
    assert list(s2.pdptrs) == [table | 1 for table in TABLES]
    # ... with every special register apply() sets, and those it keeps from KVM
    assert (s2.cr0, s2.cr3, s2.cr4, s2.efer) == (PAE.cr0, PDPT, CR4_PAE, 0)
    assert (s2.gdt.base, s2.gdt.limit) == (0x1000, 0x27)
    assert s2.cs.selector == PAE.code.selector and s2.tr.type == PAE.tss.type
    assert s2.ldt.unusable == 1 and s2.apic_base == 0xFEE00900


def test_without_sregs2_kvm_set_sregs_loads_the_pdptes_itself() -> None:
    fd = apply(PAE, sregs2=False)
    assert fd.calls == ["get_sregs", "set_sregs2", "set_sregs"]
    assert fd.sregs.cr3 == PDPT and fd.sregs.cr4 == CR4_PAE


def test_other_paging_modes_leave_the_pdptes_alone() -> None:
    for state in (CpuState(cr0=CR0_PE | CR0_PG, cr3=PDPT, cr4=CR4_PSE),
                  CpuState(cr0=CR0_PE, cr3=PDPT, cr4=CR4_PAE)):
        fd = apply(state)
        assert fd.calls == ["get_sregs", "set_sregs"] and fd.sregs2 == []
