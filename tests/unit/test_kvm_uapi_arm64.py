"""The arm64 part of xenopus.kvm.uapi against the C headers.

Every literal here was taken from the Linux 6.1 arm64 UAPI headers (Debian's
linux-libc-dev-arm64-cross 6.1.4: linux/kvm.h, asm/kvm.h, asm/ptrace.h), compiled with
aarch64-linux-gnu-gcc 12 (`sizeof`/`offsetof`, the `_IO*` macros and KVM_REG_ARM_CORE_REG /
ARM64_SYS_REG expanded), not from our own output.
"""

from __future__ import annotations

import ctypes

import pytest

from xenopus.arch import arm64
from xenopus.kvm import uapi as u

# ioctl numbers as the arm64 headers expand them
IOCTLS = {
    "KVM_ARM_VCPU_INIT": 1075883694,
    "KVM_ARM_PREFERRED_TARGET": 2149625519,
    "KVM_SET_ONE_REG": 1074835116,
    "KVM_GET_ONE_REG": 1074835115,
    "KVM_CREATE_DEVICE": 3222056672,
    "KVM_SET_DEVICE_ATTR": 1075359457,
    "KVM_GET_DEVICE_ATTR": 1075359458,
    "KVM_HAS_DEVICE_ATTR": 1075359459,
}


@pytest.mark.parametrize("name", sorted(IOCTLS))
def test_ioctl_numbers(name: str) -> None:
    assert getattr(u, name) == IOCTLS[name]


def test_struct_layouts() -> None:
    assert ctypes.sizeof(u.kvm_regs_arm64) == 864
    assert ctypes.sizeof(u.kvm_vcpu_init) == 32
    assert ctypes.sizeof(u.kvm_one_reg) == 16
    assert ctypes.sizeof(u.kvm_create_device) == 12
    assert ctypes.sizeof(u.kvm_device_attr) == 24
    # offsetof(struct kvm_regs, ...)
    assert u.kvm_regs_arm64.regs.offset + u.user_pt_regs.sp.offset == 248
    assert u.kvm_regs_arm64.regs.offset + u.user_pt_regs.pc.offset == 256
    assert u.kvm_regs_arm64.regs.offset + u.user_pt_regs.pstate.offset == 264
    assert u.kvm_regs_arm64.sp_el1.offset == 272
    assert u.kvm_regs_arm64.elr_el1.offset == 280
    assert u.kvm_regs_arm64.spsr.offset == 288
    assert u.kvm_regs_arm64.fp_regs.offset == 336


def test_one_reg_ids() -> None:
    # KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pc)...
    assert u.arm64_core_reg("pc") == 6931039826524241984
    assert u.arm64_core_reg("pstate") == 6931039826524241986
    assert u.arm64_core_reg("regs", 0) == 6931039826524241920
    assert u.arm64_core_reg("regs", 1) == 6931039826524241920 + 2
    # ARM64_SYS_REG(3, 0, 0, 0, 5): MPIDR_EL1
    assert u.arm64_sys_reg(*arm64.MPIDR_EL1) == 6931039826524487685
    assert u.KVM_REG_ARM_TIMER_CNT == 6931039826524495642
    assert u.KVM_REG_ARM_PSCI_VERSION == 6931039826524504064
    assert u.KVM_REG_SIZE_U64 == 13510798882111488
    assert u.KVM_REG_ARM64 == 6917529027641081856


def test_core_reg_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="regs\\[31\\]"):
        u.arm64_core_reg("regs", 31)


def test_constants() -> None:
    assert u.KVM_DEV_TYPE_ARM_VGIC_V3 == 7
    assert (u.KVM_CAP_ARM_PSCI_0_2, u.KVM_CAP_ARM_VM_IPA_SIZE) == (102, 165)
    assert (u.KVM_CAP_DEVICE_CTRL, u.KVM_CAP_ONE_REG) == (89, 70)
    assert (u.KVM_ARM_IRQ_TYPE_SHIFT, u.KVM_ARM_IRQ_VCPU_SHIFT) == (24, 16)
    assert (u.KVM_ARM_IRQ_TYPE_SPI, u.KVM_ARM_IRQ_TYPE_PPI) == (1, 2)


def test_psci_function_ids() -> None:
    # PSCI (DEN 0022) Table 5-1 / Linux include/uapi/linux/psci.h
    assert arm64.PSCI_VERSION == 0x8400_0000
    assert arm64.PSCI_CPU_ON_64 == 0xC400_0003
    assert arm64.PSCI_SYSTEM_OFF == 0x8400_0008
    assert arm64.PSCI_SYSTEM_RESET == 0x8400_0009
