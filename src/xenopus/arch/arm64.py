"""AArch64 architectural bits: PSTATE, system-register encodings, MPIDR affinity, the GIC's
interrupt-ID ranges and the architected timer's PPIs, and the firmware calls (SMCCC,
PSCI) a guest makes with HVC.

Sources: Arm ARM = Arm Architecture Reference Manual for A-profile (DDI 0487), GICv3 = Arm
GIC Architecture Specification (IHI 0069), SMCCC = Arm SMC Calling Convention (DEN 0028),
PSCI = Arm Power State Coordination Interface (DEN 0022). Each group names its section.
Only what xenopus uses is defined here, and nowhere else.
"""

from __future__ import annotations

from typing import NamedTuple

# PSTATE as saved in SPSR_ELx (Arm ARM C5.2.18 "SPSR_EL1", D1.4 "Process state"): the
# exception-level/stack selector M[3:0] and the DAIF interrupt masks.
PSTATE_MODE_EL0T = 0b0000
PSTATE_MODE_EL1T = 0b0100
PSTATE_MODE_EL1H = 0b0101  # EL1 using SP_EL1
PSTATE_F = 1 << 6  # FIQ masked
PSTATE_I = 1 << 7  # IRQ masked
PSTATE_A = 1 << 8  # SError masked
PSTATE_D = 1 << 9  # debug exceptions masked
PSTATE_DAIF = PSTATE_D | PSTATE_A | PSTATE_I | PSTATE_F


class SysReg(NamedTuple):
    """A system register's MRS/MSR encoding (Arm ARM C5.3 "A64 System instruction class
    encoding space": op0, op1, CRn, CRm, op2)."""

    op0: int
    op1: int
    crn: int
    crm: int
    op2: int


# Arm ARM D23.2 "General system control registers" (encodings from each register's
# "Accessing" section).
MIDR_EL1 = SysReg(3, 0, 0, 0, 0)
MPIDR_EL1 = SysReg(3, 0, 0, 0, 5)
SCTLR_EL1 = SysReg(3, 0, 1, 0, 0)
TTBR0_EL1 = SysReg(3, 0, 2, 0, 0)
TCR_EL1 = SysReg(3, 0, 2, 0, 2)
ESR_EL1 = SysReg(3, 0, 5, 2, 0)
FAR_EL1 = SysReg(3, 0, 6, 0, 0)
VBAR_EL1 = SysReg(3, 0, 12, 0, 0)
# Arm ARM D24.8 "Generic Timer registers".
CNTFRQ_EL0 = SysReg(3, 3, 14, 0, 0)
CNTVCT_EL0 = SysReg(3, 3, 14, 0, 2)
CNTV_CTL_EL0 = SysReg(3, 3, 14, 3, 1)
CNTV_CVAL_EL0 = SysReg(3, 3, 14, 3, 2)

# SCTLR_EL1 (Arm ARM D23.2.118): the MMU and data-cache enables, off at Linux's entry
# (Documentation/arch/arm64/booting.rst §6).
SCTLR_M = 1 << 0
SCTLR_C = 1 << 2

# MPIDR_EL1 (Arm ARM D23.2.101): affinity levels Aff0 [7:0], Aff1 [15:8], Aff2 [23:16],
# Aff3 [39:32]; bit 31 is RES1.
MPIDR_AFF0_SHIFT = 0
MPIDR_AFF1_SHIFT = 8
MPIDR_AFF2_SHIFT = 16
MPIDR_AFF3_SHIFT = 32
MPIDR_AFFINITY_MASK = 0xFF_00FF_FFFF
MPIDR_RES1 = 1 << 31

# GIC interrupt IDs (GICv3 §2.2 "INTIDs"): SGIs 0-15, PPIs 16-31 (private to a PE), SPIs
# 32-1019 (shared), 1020-1023 special.
GIC_SGI_BASE = 0
GIC_PPI_BASE = 16
GIC_SPI_BASE = 32
GIC_SPI_LAST = 1019

# The architected timer's PPIs (Arm ARM D11.2.4 "Generic Timer interrupts" recommends,
# and Server Base System Architecture (DEN 0029) fixes, these INTIDs; Linux's and QEMU's
# virt use them): secure physical 29, non-secure physical 30, virtual 27, hypervisor 26.
TIMER_PPI_SECURE_PHYS = 29
TIMER_PPI_NONSECURE_PHYS = 30
TIMER_PPI_VIRT = 27
TIMER_PPI_HYP = 26

# SMCCC function identifiers (SMCCC §2.5 "Function Identifier"): bit 31 fast call, bit 30
# the SMC64/HVC64 convention, bits 29:24 the owning entity, 15:0 the function number.
SMCCC_FAST_CALL = 1 << 31
SMCCC_64 = 1 << 30
SMCCC_OWNER_SHIFT = 24
SMCCC_OWNER_MASK = 0x3F
SMCCC_OWNER_ARCH = 0
SMCCC_OWNER_STANDARD = 4  # PSCI lives here
SMCCC_OWNER_STANDARD_HYP = 5
SMCCC_OWNER_VENDOR_HYP = 6
SMCCC_RET_NOT_SUPPORTED = -1


def smccc_function_id(owner: int, number: int, *, smc64: bool = False) -> int:
    """A fast-call SMCCC function ID (SMCCC §2.5, Table 2-1)."""
    if not 0 <= owner <= SMCCC_OWNER_MASK or not 0 <= number <= 0xFFFF:
        raise ValueError(f"SMCCC owner {owner} / function {number} out of range")
    return SMCCC_FAST_CALL | (SMCCC_64 if smc64 else 0) | owner << SMCCC_OWNER_SHIFT | number


# PSCI 0.2+ functions (PSCI §5.1 "Function prototypes", Table 5-1 / §5.2 IDs).
PSCI_VERSION = smccc_function_id(SMCCC_OWNER_STANDARD, 0x0)
PSCI_CPU_OFF = smccc_function_id(SMCCC_OWNER_STANDARD, 0x2)
PSCI_CPU_ON_64 = smccc_function_id(SMCCC_OWNER_STANDARD, 0x3, smc64=True)
PSCI_SYSTEM_OFF = smccc_function_id(SMCCC_OWNER_STANDARD, 0x8)
PSCI_SYSTEM_RESET = smccc_function_id(SMCCC_OWNER_STANDARD, 0x9)
