"""A vCPU's saved state carries KVM_GET_SREGS2's registers where KVM has KVM_CAP_SREGS2
(vm/state.py): a PAE guest's PDPTE registers are state of their own (SDM 3A §4.4.1: a MOV
to CR3 loads them; later writes to the PDPT in memory do not), which a restore through
KVM_SET_SREGS would reload from memory. Through the stream's state encoding and back, the
restore gives KVM_SET_SREGS2 the registers as saved; without SREGS2 (either side) it is
KVM_SET_SREGS, as before. A fake vCPU fd stands for KVM: PAE guests run only in the nested
host."""

from __future__ import annotations

import ctypes

from xenopus.arch.x86 import CR0_PE, CR0_PG, CR4_PAE
from xenopus.kvm import uapi as u
from xenopus.stream import decode_state, encode_state
from xenopus.vm.state import restore_vcpu, save_vcpu

PDPTES = [0x110001, 0x111001, 0x112001, 0x113001]  # as the guest's CR3 load took them


class FakeVcpuFd:
    """The ioctls save_vcpu and restore_vcpu make: each getter answers a fixed state (the
    guest's, PAE paging with PDPTE registers); each setter records what it was given."""

    index = 0

    def __init__(self) -> None:
        self.set: dict[str, object] = {}

    def get_regs(self) -> u.kvm_regs:
        return u.kvm_regs(rip=0x100000, rsp=0x8000)

    def get_sregs(self) -> u.kvm_sregs:
        return u.kvm_sregs(cr0=CR0_PE | CR0_PG, cr3=0x114020, cr4=CR4_PAE)

    def get_sregs2(self) -> u.kvm_sregs2:
        s2 = u.kvm_sregs2(cr0=CR0_PE | CR0_PG, cr3=0x114020, cr4=CR4_PAE,
                          flags=u.KVM_SREGS2_FLAGS_PDPTRS_VALID)
        for i, pdpte in enumerate(PDPTES):
            s2.pdptrs[i] = pdpte
        return s2

    def get_fpu(self) -> u.kvm_fpu:
        return u.kvm_fpu()

    def get_xsave(self, size: int) -> ctypes.Array:
        return (ctypes.c_uint8 * u.KVM_XSAVE_LEGACY_SIZE)()

    def get_xcrs(self) -> u.kvm_xcrs:
        return u.kvm_xcrs()

    def read_msrs(self, indices: list[int]) -> dict[int, int]:
        return {}

    def get_lapic(self) -> u.kvm_lapic_state:
        return u.kvm_lapic_state()

    def get_vcpu_events(self) -> u.kvm_vcpu_events:
        return u.kvm_vcpu_events()

    def get_debugregs(self) -> u.kvm_debugregs:
        return u.kvm_debugregs()

    def get_mp_state(self) -> int:
        return u.KVM_MP_STATE_RUNNABLE

    def get_tsc_khz(self) -> int:
        return 2_000_000

    def __getattr__(self, name: str):  # every set_*: recorded
        if not name.startswith("set_"):
            raise AttributeError(name)
        return lambda value, *rest: self.set.__setitem__(name[4:], value)


def round_trip(save_with: bool, restore_with: bool) -> dict[str, object]:
    saved = save_vcpu(FakeVcpuFd(), [], 0, sregs2=save_with)  # type: ignore[arg-type]
    fd = FakeVcpuFd()
    restore_vcpu(fd, decode_state(encode_state(saved)), 0, sregs2=restore_with)  # type: ignore[arg-type]
    return fd.set


def test_the_pdpte_registers_survive_the_round_trip() -> None:
    given = round_trip(True, True)
    assert "sregs" not in given
    s2 = given["sregs2"]
    assert isinstance(s2, u.kvm_sregs2)
    assert s2.flags == u.KVM_SREGS2_FLAGS_PDPTRS_VALID and list(s2.pdptrs) == PDPTES
    assert (s2.cr0, s2.cr3, s2.cr4) == (CR0_PE | CR0_PG, 0x114020, CR4_PAE)
    assert given["mp_state"] == u.KVM_MP_STATE_RUNNABLE  # the rest as before


def test_without_sregs2_on_either_side_the_restore_is_kvm_set_sregs() -> None:
    for save_with, restore_with in ((False, True), (True, False), (False, False)):
        given = round_trip(save_with, restore_with)
        assert "sregs2" not in given and isinstance(given["sregs"], u.kvm_sregs)
        assert given["sregs"].cr3 == 0x114020  # type: ignore[attr-defined]


def test_an_image_without_sregs2_keeps_its_shape() -> None:
    """The record gains a key only where KVM has SREGS2: `sregs` is always there, so an
    image saved here restores on a host without SREGS2."""
    assert "sregs2" not in save_vcpu(FakeVcpuFd(), [], 0)  # type: ignore[arg-type]
    assert {"sregs", "sregs2"} <= set(save_vcpu(FakeVcpuFd(), [], 0, sregs2=True))  # type: ignore[arg-type]
