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
PTE_A = 1 << 5  # accessed: set by the CPU's walker
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

# Speculation controls and feature MSRs (SDM vol. 4 Table 2-2; Intel's "Speculative
# Execution Side Channel Mitigations" and "IA32_ARCH_CAPABILITIES" papers; AMD's
# "Speculative Store Bypass" and "Indirect Branch Control Extension" whitepapers).
MSR_IA32_PRED_CMD = 0x49  # write-only: bit 0 IBPB
MSR_IA32_UCODE_REV = 0x8B
MSR_PLATFORM_INFO = 0xCE
MSR_IA32_ARCH_CAPABILITIES = 0x10A  # read-only
MSR_IA32_FLUSH_CMD = 0x10B  # write-only: bit 0 L1D_FLUSH
MSR_IA32_PERF_CAPABILITIES = 0x345
MSR_IA32_APICBASE = 0x1B
MSR_EFER = 0xC0000080
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
# Nested virtualisation's MSRs: SVM's VM_CR and VM_HSAVE_PA (APM vol. 2 §15.30), VMX's
# capability MSRs IA32_VMX_BASIC .. IA32_VMX_VMFUNC (SDM vol. 4 Table 2-2, 480H-491H).
SVM_MSRS = (0xC0010114, 0xC0010117)
VMX_MSRS = tuple(range(0x480, 0x492))

# IA32_ARCH_CAPABILITIES bits (SDM vol. 4 Table 2-2, MSR 10AH; Linux msr-index.h names).
ARCH_CAPS_BITS = {
    "rdcl-no": 0, "ibrs-all": 1, "rsba": 2, "skip-l1dfl": 3, "ssb-no": 4, "mds-no": 5,
    "if-pschange-mc-no": 6, "tsx-ctrl": 7, "taa-no": 8, "mcu-ctrl": 9,
    "misc-package-ctrl": 10, "energy-filtering": 11, "doitm": 12, "sbdr-ssdp-no": 13,
    "fbsdp-no": 14, "psdp-no": 15, "fb-clear": 17, "fb-clear-ctrl": 18, "rrsba": 19,
    "bhi-no": 20, "xapic-status": 21, "ovrclk-status": 23, "pbrsb-no": 24, "gds-ctrl": 25,
    "gds-no": 26, "rfds-no": 27, "rfds-clear": 28, "ign-umonitor": 29, "mon-umon-mitg": 30,
    "its-no": 62,
}

# CPUID registers, in KVM's and xl's order.
EAX, EBX, ECX, EDX = range(4)
CPUID_REGS = ("eax", "ebx", "ecx", "edx")

# The CPUID fields xl's `cpuid=` names (xl.cfg(5) "cpuid"; the names of Xen's
# tools/libs/light/libxl_cpuid.c): name -> (leaf, subleaf or None, register, first bit,
# width). Bits from the SDM vol. 2A "CPUID" tables and the APM vol. 3 appendix E.
CPUID_FIELDS: dict[str, tuple[int, int | None, int, int, int]] = {
    "maxleaf": (0x0, None, EAX, 0, 32),
    "stepping": (0x1, None, EAX, 0, 4), "model": (0x1, None, EAX, 4, 8),
    "family": (0x1, None, EAX, 8, 8),
    "brandid": (0x1, None, EBX, 0, 8), "clflush": (0x1, None, EBX, 8, 8),
    "proccount": (0x1, None, EBX, 16, 8), "localapicid": (0x1, None, EBX, 24, 8),
    "maxhvleaf": (0x40000000, None, EAX, 0, 8),
    "procpkg": (0x4, 0, EAX, 26, 6),
    "nc": (0x80000008, None, ECX, 0, 8), "apicidsize": (0x80000008, None, ECX, 12, 4),
}
_FLAGS: tuple[tuple[int, int | None, int, tuple[tuple[int, tuple[str, ...]], ...]], ...] = (
    (0x1, None, ECX, (
        (0, ("sse3", "pni")), (1, ("pclmulqdq",)), (2, ("dtes64",)), (3, ("monitor",)),
        (4, ("dscpl",)), (5, ("vmx",)), (6, ("smx",)), (7, ("est",)), (8, ("tm2",)),
        (9, ("ssse3",)), (10, ("cntxid",)), (12, ("fma",)), (13, ("cmpxchg16",)),
        (14, ("xtpr",)), (15, ("pdcm",)), (17, ("pcid",)), (18, ("dca",)),
        (19, ("sse4_1", "sse4.1")), (20, ("sse4_2", "sse4.2")), (21, ("x2apic",)),
        (22, ("movbe",)), (23, ("popcnt",)), (24, ("tsc-deadline",)), (25, ("aes",)),
        (26, ("xsave",)), (27, ("osxsave",)), (28, ("avx",)), (29, ("f16c",)),
        (30, ("rdrand",)), (31, ("hypervisor",)))),
    (0x1, None, EDX, (
        (0, ("fpu",)), (1, ("vme",)), (2, ("de",)), (3, ("pse",)), (4, ("tsc",)),
        (5, ("msr",)), (6, ("pae",)), (7, ("mce",)), (8, ("cmpxchg8",)), (9, ("apic",)),
        (11, ("sysenter",)), (12, ("mtrr",)), (13, ("pge",)), (14, ("mca",)),
        (15, ("cmov",)), (16, ("pat",)), (17, ("pse36",)), (18, ("psn",)),
        (19, ("clfsh",)), (21, ("ds",)), (22, ("acpi",)), (23, ("mmx",)), (24, ("fxsr",)),
        (25, ("sse",)), (26, ("sse2",)), (27, ("ss",)), (28, ("htt",)), (29, ("tm",)),
        (30, ("ia64",)), (31, ("pbe",)))),
    (0x6, None, EAX, ((2, ("arat",)),)),
    (0x7, 0, EBX, (
        (0, ("fsgsbase",)), (1, ("tsc_adjust",)), (3, ("bmi1",)), (4, ("hle",)),
        (5, ("avx2",)), (7, ("smep",)), (8, ("bmi2",)), (9, ("erms",)), (10, ("invpcid",)),
        (11, ("rtm",)), (12, ("cmt",)), (14, ("mpx",)), (16, ("avx512f",)),
        (17, ("avx512dq",)), (18, ("rdseed",)), (19, ("adx",)), (20, ("smap",)),
        (21, ("avx512-ifma",)), (23, ("clflushopt",)), (24, ("clwb",)),
        (25, ("proc-trace",)), (26, ("avx512pf",)), (27, ("avx512er",)),
        (28, ("avx512cd",)), (29, ("sha",)), (30, ("avx512bw",)), (31, ("avx512vl",)))),
    (0x7, 0, ECX, (
        (0, ("prefetchwt1",)), (1, ("avx512-vbmi",)), (2, ("umip",)), (3, ("pku",)),
        (4, ("ospke",)), (5, ("waitpkg",)), (6, ("avx512-vbmi2",)), (7, ("cet-ss",)),
        (8, ("gfni",)), (9, ("vaes",)), (10, ("vpclmulqdq",)), (11, ("avx512-vnni",)),
        (12, ("avx512-bitalg",)), (14, ("avx512-vpopcntdq",)), (16, ("la57",)),
        (22, ("rdpid",)), (25, ("cldemote",)), (27, ("movdiri",)), (28, ("movdir64b",)),
        (31, ("pks",)))),
    (0x7, 0, EDX, (
        (2, ("avx512-4vnniw",)), (3, ("avx512-4fmaps",)), (4, ("fsrm",)),
        (8, ("avx512-vp2intersect",)), (9, ("srbds-ctrl",)), (10, ("md-clear",)),
        (14, ("serialize",)), (16, ("tsxldtrk",)), (20, ("cet-ibt",)),
        (23, ("avx512-fp16",)), (26, ("ibrsb",)), (27, ("stibp",)), (28, ("l1d-flush",)),
        (29, ("arch-caps",)), (30, ("core-caps",)), (31, ("ssbd",)))),
    (0x7, 1, EAX, (
        (4, ("avx-vnni",)), (5, ("avx512-bf16",)), (10, ("fzrm",)), (11, ("fsrs",)),
        (12, ("fsrcs",)), (19, ("wrmsrns",)))),
    (0x7, 2, EDX, ((0, ("intel-psfd",)), (1, ("ipred-ctrl",)), (2, ("rrsba-ctrl",)),
                   (4, ("bhi-ctrl",)), (5, ("mcdt-no",)))),
    (0x80000001, None, ECX, (
        (0, ("lahfsahf",)), (1, ("cmplegacy",)), (2, ("svm",)), (3, ("extapic",)),
        (4, ("altmovcr8",)), (5, ("abm",)), (6, ("sse4a",)), (7, ("misalignsse",)),
        (8, ("3dnowprefetch",)), (9, ("osvw",)), (10, ("ibs",)), (11, ("xop",)),
        (12, ("skinit",)), (13, ("wdt",)), (15, ("lwp",)), (16, ("fma4",)),
        (19, ("nodeid",)), (21, ("tbm",)), (22, ("topoext",)), (23, ("perfctr_core",)),
        (24, ("perfctr_nb",)))),
    (0x80000001, None, EDX, (
        (11, ("syscall",)), (20, ("nx",)), (22, ("mmxext",)), (25, ("ffxsr",)),
        (26, ("page1gb",)), (27, ("rdtscp",)), (29, ("lm",)), (30, ("3dnowext",)),
        (31, ("3dnow",)))),
    (0x80000007, None, EDX, ((8, ("invtsc",)),)),
    (0x80000008, None, EBX, (
        (0, ("clzero",)), (2, ("rstr-fp-err-ptrs",)), (9, ("wbnoinvd",)), (12, ("ibpb",)),
        (14, ("ibrs",)), (15, ("amd-stibp",)), (16, ("ibrs-always",)),
        (17, ("stibp-always",)), (18, ("ibrs-fast",)), (19, ("ibrs-same-mode",)),
        (20, ("no-lmsl",)), (23, ("ppin",)), (24, ("amd-ssbd",)), (25, ("virt-ssbd",)),
        (26, ("ssb-no",)), (28, ("psfd",)), (29, ("btc-no",)), (30, ("ibpb-ret",)))),
    (0x80000021, None, EAX, ((0, ("no-nested-data-bp",)), (2, ("lfence+",)),
                             (6, ("nscb",)), (27, ("sbpb",)), (28, ("ibpb-brtype",)),
                             (29, ("srso-no",)))),
)
for _leaf, _sub, _reg, _bits in _FLAGS:
    for _bit, _names in _bits:
        for _name in _names:
            CPUID_FIELDS[_name] = (_leaf, _sub, _reg, _bit, 1)
del _leaf, _sub, _reg, _bits, _bit, _names, _name

# The words of single-bit features above: what a CPU policy levels (ANDs) across hosts
# and checks a restoring host can offer. Keyed (leaf, subleaf, register); subleaf 0 for
# leaves without subleaves.
FEATURE_WORDS = tuple(sorted({(leaf, sub or 0, reg) for leaf, sub, reg, _ in _FLAGS}))

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
