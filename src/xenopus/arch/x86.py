"""x86-64 architectural bits: control registers, IA32_EFER, RFLAGS, segment descriptor
types, paging-structure entries, the page-fault error code and exception vectors.

Sources: Intel SDM (Intel 64 and IA-32 Architectures Software Developer's Manual) and AMD
APM (AMD64 Architecture Programmer's Manual); each group names its volume and section.
Only what xenopus uses is defined here, and nowhere else.
"""

from __future__ import annotations

# CR0 (SDM vol. 3A §2.5 "Control Registers", Figure 2-7; APM vol. 2 §3.1.1).
CR0_PE = 1 << 0  # protection enable
CR0_ET = 1 << 4  # extension type (reserved, reads as 1 on modern processors)
CR0_WP = 1 << 16  # write protect: supervisor writes honour read-only pages
CR0_PG = 1 << 31  # paging

# CR4 (SDM vol. 3A §2.5, Figure 2-7; APM vol. 2 §3.1.3).
CR4_PSE = 1 << 4  # 4 MiB pages in 32-bit paging
CR4_PAE = 1 << 5  # physical address extension (required for long mode)
CR4_LA57 = 1 << 12  # 5-level paging
CR4_SMEP = 1 << 20  # supervisor-mode execution prevention

# IA32_EFER, MSR 0xC0000080 (SDM vol. 3A §2.2.1, Table 2-1; APM vol. 2 §3.1.7).
EFER_LME = 1 << 8  # long mode enable
EFER_LMA = 1 << 10  # long mode active
EFER_NXE = 1 << 11  # execute-disable bit in paging entries

# RFLAGS (SDM vol. 1 §3.4.3 "EFLAGS Register", Figure 3-8): bit 1 is reserved and
# always 1.
RFLAGS_RESERVED = 1 << 1

# Segment descriptor types (SDM vol. 3A §3.4.5.1, Tables 3-1 and 3-2; APM vol. 2 §4.7).
SEG_TYPE_DATA_RWA = 0x3  # data, read/write, accessed
SEG_TYPE_CODE_XRA = 0xB  # code, execute/read, accessed
SEG_TYPE_TSS_BUSY = 0xB  # system: 32-bit (or, in long mode, 64-bit) TSS, busy

# Paging-structure entry bits common to all modes (SDM vol. 3A §4.3-4.5, Tables 4-4 to
# 4-20; APM vol. 2 §5.4).
PTE_P = 1 << 0  # present
PTE_RW = 1 << 1  # writable
PTE_US = 1 << 2  # user accessible
PTE_PS = 1 << 7  # page size: this entry maps a page, not a table (PDE, PDPTE)
PTE_XD = 1 << 63  # execute disable (with EFER.NXE)

# Page-fault error code (SDM vol. 3A §4.7, Figure 4-12; APM vol. 2 §8.4.2).
PF_P = 1 << 0  # 0: not present; 1: protection violation (or reserved bit)
PF_W = 1 << 1  # the access was a write
PF_U = 1 << 2  # the access was a user-mode (CPL 3) access
PF_RSVD = 1 << 3  # a reserved bit was set in a paging-structure entry
PF_I = 1 << 4  # the access was an instruction fetch

# Exception vectors (SDM vol. 3A §6.3.1, Table 6-1; APM vol. 2 §8.2).
GP_VECTOR = 13  # #GP, e.g. a non-canonical address (SDM vol. 3A §6.15 "Interrupt 13")
PF_VECTOR = 14  # #PF

# Model-specific registers that hold guest state (SDM vol. 4 "Model-Specific Registers",
# Table 2-2; APM vol. 2 appendix A). EFER (0xC0000080) and the FS/GS bases travel in
# KVM's sregs, not as MSRs.
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_ADJUST = 0x3B
MSR_IA32_SPEC_CTRL = 0x48
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MCG_STATUS = 0x17A
MSR_IA32_MCG_CTL = 0x17B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_CR_PAT = 0x277
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103
MSR_AMD64_VIRT_SPEC_CTRL = 0xC001011F

# MSI message address (SDM vol. 3A §10.11.1, Figure 10-24): bits 31:20 are 0xFEE, bits
# 19:12 the destination APIC ID; with bits 3:2 clear the destination is physical and
# there is no redirection hint. A data word of just the vector is fixed delivery, edge
# triggered (§10.11.2).
MSI_ADDRESS_BASE = 0xFEE00000
MSI_ADDRESS_DEST_SHIFT = 12
# MSI data bits 10:8, the delivery mode (SDM vol. 3A §11.11.2, Figure 11-25): NMI (100b)
# and INIT (101b) ignore the vector.
MSI_DATA_DELIVERY_SHIFT = 8
MSI_DELIVERY_NMI = 0b100
MSI_DELIVERY_INIT = 0b101
