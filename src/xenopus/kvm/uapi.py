"""The KVM userspace ABI we use: ioctl numbers, constants and structs.

Mirrors include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h and, in its own
section at the end, arch/arm64/include/uapi/asm/kvm.h (Linux 6.1, and 6.4 for the SMCCC
filter; the ABI only grows). Names of the arm64 structs whose C name x86 also uses
(`struct kvm_regs`) carry an `_arm64` suffix. This is the one module in xenopus that holds such numbers. Every layout
is checked against the C headers' sizes and offsets in tests/unit/test_kvm_uapi.py.
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import c_char, c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from xenopus.kvm.ioctl import _IO, _IOR, _IOW, _IOWR

KVM_API_VERSION = 12
KVMIO = 0xAE

# --- capabilities (linux/kvm.h "extension capability list") -------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_PIT = 11
KVM_CAP_NOP_IO_DELAY = 12
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_XEN_HVM = 38
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ONE_REG = 70
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SYNC_REGS = 74
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_ARM_PSCI = 87
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_ARM_PSCI_0_2 = 102
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_ARM_VM_IPA_SIZE = 165
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_SREGS2 = 200
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_XSAVE2 = 208
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225

# --- paravirtual CPUID leaves (arch/x86/include/uapi/asm/kvm_para.h) ----------------------
KVM_CPUID_SIGNATURE = 0x40000000  # EAX: the highest KVM leaf; EBX, ECX, EDX: the signature
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_CPUID_FEATURES = 0x40000001  # EAX: 1 << KVM_FEATURE_*; EDX: 1 << KVM_HINTS_*
KVM_FEATURE_CLOCKSOURCE = 0
KVM_FEATURE_NOP_IO_DELAY = 1
KVM_FEATURE_MMU_OP = 2
KVM_FEATURE_CLOCKSOURCE2 = 3
KVM_FEATURE_ASYNC_PF = 4
KVM_FEATURE_STEAL_TIME = 5
KVM_FEATURE_PV_EOI = 6
KVM_FEATURE_PV_UNHALT = 7
KVM_FEATURE_PV_TLB_FLUSH = 9
KVM_FEATURE_ASYNC_PF_VMEXIT = 10
KVM_FEATURE_PV_SEND_IPI = 11
KVM_FEATURE_POLL_CONTROL = 12
KVM_FEATURE_PV_SCHED_YIELD = 13
KVM_FEATURE_ASYNC_PF_INT = 14
KVM_FEATURE_MSI_EXT_DEST_ID = 15
KVM_FEATURE_HC_MAP_GPA_RANGE = 16
KVM_FEATURE_MIGRATION_CONTROL = 17
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24

# --- exit reasons (kvm_run.exit_reason) -----------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_NOTIFY = 37

EXIT_NAMES: dict[int, str] = {
    v: k for k, v in list(globals().items()) if k.startswith("KVM_EXIT_") and isinstance(v, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# KVM_EXIT_INTERNAL_ERROR suberrors
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

# KVM_EXIT_SYSTEM_EVENT types
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

# KVM_EXIT_X86_RDMSR/WRMSR reasons, and what KVM_CAP_X86_USER_SPACE_MSR is enabled with
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

# KVM_X86_SET_MSR_FILTER (asm/kvm.h)
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_DEFAULT_ALLOW = 0 << 0
KVM_MSR_FILTER_DEFAULT_DENY = 1 << 0

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
# api.rst 7.18 KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's args[0]: KVM_GET_DIRTY_LOG no longer
# clears and write-protects what it reports; KVM_CLEAR_DIRTY_LOG does, for the pages named.
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1
KVM_MEM_READONLY = 1 << 1

# kvm_mp_state.mp_state
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

# irqchips (asm/kvm.h) and GSI routing entry types
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

# enum kvm_ioeventfd_flag_nr: datamatch, pio, deassign
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

KVM_PIT_SPEAKER_DUMMY = 1

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic, the header's spelling

KVM_X86_DISABLE_EXITS_MWAIT = 1 << 0
KVM_X86_DISABLE_EXITS_HLT = 1 << 1
KVM_X86_DISABLE_EXITS_PAUSE = 1 << 2

KVM_XEN_HVM_CONFIG_HYPERCALL_MSR = 1 << 0
KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL = 1 << 1
KVM_XEN_HVM_CONFIG_SHARED_INFO = 1 << 2
KVM_XEN_HVM_CONFIG_RUNSTATE = 1 << 3
KVM_XEN_HVM_CONFIG_EVTCHN_2LEVEL = 1 << 4
KVM_XEN_HVM_CONFIG_EVTCHN_SEND = 1 << 5
KVM_EXIT_XEN_HCALL = 1  # struct kvm_xen_exit.type
# api.rst 4.127 KVM_XEN_HVM_SET_ATTR: the per-VM attribute types (kvm_xen_hvm_attr.type).
KVM_XEN_ATTR_TYPE_LONG_MODE = 0x0
KVM_XEN_ATTR_TYPE_SHARED_INFO = 0x1
KVM_XEN_ATTR_TYPE_UPCALL_VECTOR = 0x2
KVM_XEN_ATTR_TYPE_EVTCHN = 0x3  # with KVM_XEN_HVM_CONFIG_EVTCHN_SEND
KVM_XEN_ATTR_TYPE_XEN_VERSION = 0x4  # with KVM_XEN_HVM_CONFIG_EVTCHN_SEND
KVM_XEN_EVTCHN_DEASSIGN = 1 << 0  # kvm_xen_hvm_attr.u.evtchn.flags
KVM_XEN_EVTCHN_UPDATE = 1 << 1
KVM_XEN_EVTCHN_RESET = 1 << 2
KVM_XEN_INVALID_GFN = (1 << 64) - 1  # shared_info.gfn: none
# api.rst 4.129 KVM_XEN_VCPU_SET_ATTR: the per-vCPU attribute types (kvm_xen_vcpu_attr.type).
KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO = 0x0
KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO = 0x1
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR = 0x2
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_CURRENT = 0x3
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA = 0x4
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADJUST = 0x5
KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID = 0x6  # with KVM_XEN_HVM_CONFIG_EVTCHN_SEND
KVM_XEN_VCPU_ATTR_TYPE_TIMER = 0x7
KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR = 0x8
KVM_XEN_INVALID_GPA = (1 << 64) - 1  # kvm_xen_vcpu_attr.u.gpa: none
KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL = 0xFFFFFFFF  # the only priority KVM delivers
# asm/kvm_para.h: KVM's paravirtual MSRs. kvmclock's pvclock_vcpu_time_info is Xen's
# vcpu_time_info; the first two are the pre-"NEW" numbers older guests use.
MSR_KVM_WALL_CLOCK = 0x11
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
MSR_KVM_ASYNC_PF_EN = 0x4B564D02
MSR_KVM_STEAL_TIME = 0x4B564D03
MSR_KVM_PV_EOI_EN = 0x4B564D04
MSR_KVM_POLL_CONTROL = 0x4B564D05
MSR_KVM_ASYNC_PF_INT = 0x4B564D06
PARAVIRT_MSRS = (
    MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME, MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_ASYNC_PF_EN, MSR_KVM_STEAL_TIME, MSR_KVM_PV_EOI_EN, MSR_KVM_POLL_CONTROL,
    MSR_KVM_ASYNC_PF_INT,
)  # fmt: skip

# struct kvm_vcpu_events.flags: which optional parts KVM_SET_VCPU_EVENTS applies
KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1
KVM_VCPUEVENT_VALID_SHADOW = 1 << 2
KVM_VCPUEVENT_VALID_SMM = 1 << 3
KVM_VCPUEVENT_VALID_PAYLOAD = 1 << 4
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 1 << 5

# struct kvm_clock_data.flags
KVM_CLOCK_TSC_STABLE = 1 << 1
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3

KVM_MAX_XCRS = 16
KVM_APIC_REG_SIZE = 0x400
KVM_IOAPIC_NUM_PINS = 24
KVM_IRQCHIP_STATE_SIZE = 512  # the union in struct kvm_irqchip (PIC or IOAPIC state)
KVM_XSAVE_LEGACY_SIZE = 4096  # struct kvm_xsave without KVM_CAP_XSAVE2

KVM_NR_INTERRUPTS = 256


# kvm_regs field order
GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)  # fmt: skip


# --- structs (asm/kvm.h) --------------------------------------------------------------------
class kvm_regs(ctypes.Structure):  # noqa: N801 - C names kept so the headers can be grepped
    _fields_ = [(name, c_uint64) for name in GPR_NAMES]


class kvm_segment(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):  # noqa: N801
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        *((name, kvm_segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((name, c_uint64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_sregs2(ctypes.Structure):  # noqa: N801
    """KVM_GET/SET_SREGS2 (api.rst 4.131/4.132): kvm_sregs without the interrupt bitmap,
    with the PAE PDPTE registers (valid with KVM_SREGS2_FLAGS_PDPTRS_VALID)."""

    _fields_ = [
        *((name, kvm_segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((name, c_uint64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("flags", c_uint64),
        ("pdptrs", c_uint64 * 4),
    ]


KVM_SREGS2_FLAGS_PDPTRS_VALID = 1


class kvm_fpu(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),  # in fxsave format
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_xcr(ctypes.Structure):  # noqa: N801
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", c_uint64 * 16),
    ]


class kvm_xsave(ctypes.Structure):  # noqa: N801
    """The legacy 4 KiB XSAVE area; KVM_GET_XSAVE2 fills a larger one (see `xsave_with`)."""

    _fields_ = [("region", c_uint32 * (KVM_XSAVE_LEGACY_SIZE // 4))]


class kvm_lapic_state(ctypes.Structure):  # noqa: N801
    _fields_ = [("regs", c_char * KVM_APIC_REG_SIZE)]


class _events_exception(ctypes.Structure):  # noqa: N801
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8),
                ("pending", c_uint8), ("error_code", c_uint32)]


class _events_interrupt(ctypes.Structure):  # noqa: N801
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _events_nmi(ctypes.Structure):  # noqa: N801
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _events_smi(ctypes.Structure):  # noqa: N801
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8),
                ("latched_init", c_uint8)]


class kvm_vcpu_events(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _events_smi),
        ("triple_fault_pending", c_uint8),  # struct { __u8 pending; } triple_fault
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class kvm_debugregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    ]


class kvm_irqchip(ctypes.Structure):  # noqa: N801
    """`chip` is struct kvm_pic_state or kvm_ioapic_state as `chip_id` says; xenopus
    saves it as opaque bytes of the same kernel ABI."""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_char * KVM_IRQCHIP_STATE_SIZE)]


class kvm_pit_channel_state(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("count", c_uint32),  # can be 65536
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", ctypes.c_int64),
    ]


class kvm_pit_state2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    ]


class kvm_msr_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.Structure):  # noqa: N801
    """Header only; the entries follow it (see `msrs_with`)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(ctypes.Structure):  # noqa: N801
    _fields_ = [("nmsrs", c_uint32)]


class kvm_cpuid_entry2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):  # noqa: N801
    """Header only; the entries follow it (see `cpuid2_with`)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class kvm_msr_filter_range(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("flags", c_uint32),
        ("nmsrs", c_uint32),
        ("base", c_uint32),
        ("bitmap", ctypes.c_void_p),  # __u8 *: 1 bit per MSR, set = allowed
    ]


class kvm_msr_filter(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", c_uint32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


# --- structs (linux/kvm.h) ------------------------------------------------------------------
class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_irq_level(ctypes.Structure):  # noqa: N801
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]  # irq is a union with __s32 status


class kvm_pit_config(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


class kvm_mp_state(ctypes.Structure):  # noqa: N801
    _fields_ = [("mp_state", c_uint32)]


class kvm_irqfd(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


class kvm_ioeventfd(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class kvm_dirty_log(ctypes.Structure):  # noqa: N801
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", ctypes.c_void_p)]


class kvm_clear_dirty_log(ctypes.Structure):  # noqa: N801
    """api.rst 4.117 KVM_CLEAR_DIRTY_LOG: `num_pages` pages from `first_page` (a multiple
    of 64) of `slot`, a set bit of the bitmap clearing (and write-protecting) that page."""

    _fields_ = [("slot", c_uint32), ("num_pages", c_uint32), ("first_page", c_uint64),
                ("dirty_bitmap", ctypes.c_void_p)]


class kvm_clock_data(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("clock", c_uint64),  # kvmclock nanoseconds
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),  # with KVM_CLOCK_REALTIME: CLOCK_REALTIME when read
        ("host_tsc", c_uint64),  # with KVM_CLOCK_HOST_TSC: the host TSC when read
        ("pad", c_uint32 * 4),
    ]


class kvm_irq_routing_irqchip(ctypes.Structure):  # noqa: N801
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("devid", c_uint32),  # a union with pad
    ]


class _routing_u(ctypes.Union):  # noqa: N801
    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", c_uint32 * 8),
    ]


class kvm_irq_routing_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", _routing_u),
    ]


class kvm_irq_routing(ctypes.Structure):  # noqa: N801
    """Header only; the entries follow it (see `irq_routing_with`)."""

    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_xen_hcall(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("longmode", c_uint32),
        ("cpl", c_uint32),
        ("input", c_uint64),
        ("result", c_uint64),
        ("params", c_uint64 * 6),
    ]


class kvm_xen_exit(ctypes.Structure):  # noqa: N801
    """KVM_EXIT_XEN: `type` then a union whose only member is `hcall`."""

    _fields_ = [("type", c_uint32), ("hcall", kvm_xen_hcall)]


class kvm_xen_hvm_config(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("flags", c_uint32),
        ("msr", c_uint32),
        ("blob_addr_32", c_uint64),
        ("blob_addr_64", c_uint64),
        ("blob_size_32", c_uint8),
        ("blob_size_64", c_uint8),
        ("pad2", c_uint8 * 30),
    ]


class _xen_evtchn_port(ctypes.Structure):  # noqa: N801
    _fields_ = [("port", c_uint32), ("vcpu", c_uint32), ("priority", c_uint32)]


class _xen_evtchn_eventfd(ctypes.Structure):  # noqa: N801
    _fields_ = [("port", c_uint32), ("fd", c_int32)]  # port 0: signal the eventfd


class _xen_evtchn_deliver(ctypes.Union):  # noqa: N801
    _fields_ = [("port", _xen_evtchn_port), ("eventfd", _xen_evtchn_eventfd),
                ("padding", c_uint32 * 4)]


class _xen_attr_evtchn(ctypes.Structure):  # noqa: N801
    _fields_ = [("send_port", c_uint32), ("type", c_uint32), ("flags", c_uint32),
                ("deliver", _xen_evtchn_deliver)]


class _xen_attr_shared_info(ctypes.Structure):  # noqa: N801
    _fields_ = [("gfn", c_uint64)]


class _xen_hvm_attr_u(ctypes.Union):  # noqa: N801
    _fields_ = [("long_mode", c_uint8), ("vector", c_uint8),
                ("shared_info", _xen_attr_shared_info), ("evtchn", _xen_attr_evtchn),
                ("xen_version", c_uint32), ("pad", c_uint64 * 8)]


class kvm_xen_hvm_attr(ctypes.Structure):  # noqa: N801
    """KVM_XEN_HVM_SET_ATTR / _GET_ATTR (api.rst 4.127, 4.128): `type` picks the member."""

    _fields_ = [("type", c_uint16), ("pad", c_uint16 * 3), ("u", _xen_hvm_attr_u)]


class _xen_runstate(ctypes.Structure):  # noqa: N801
    _fields_ = [("state", c_uint64), ("state_entry_time", c_uint64),
                ("time_running", c_uint64), ("time_runnable", c_uint64),
                ("time_blocked", c_uint64), ("time_offline", c_uint64)]


class _xen_timer(ctypes.Structure):  # noqa: N801
    _fields_ = [("port", c_uint32), ("priority", c_uint32), ("expires_ns", c_uint64)]


class _xen_vcpu_attr_u(ctypes.Union):  # noqa: N801
    _fields_ = [("gpa", c_uint64), ("pad", c_uint64 * 8), ("runstate", _xen_runstate),
                ("vcpu_id", c_uint32), ("timer", _xen_timer), ("vector", c_uint8)]


class kvm_xen_vcpu_attr(ctypes.Structure):  # noqa: N801
    """KVM_XEN_VCPU_SET_ATTR / _GET_ATTR (api.rst 4.129, 4.130)."""

    _fields_ = [("type", c_uint16), ("pad", c_uint16 * 3), ("u", _xen_vcpu_attr_u)]


class kvm_irq_routing_xen_evtchn(ctypes.Structure):  # noqa: N801
    """KVM_XEN_HVM_EVTCHN_SEND's argument (api.rst 4.132), also a GSI route's target."""

    _fields_ = [("port", c_uint32), ("vcpu", c_uint32), ("priority", c_uint32)]


# --- struct kvm_run and its exit union ------------------------------------------------------
class _exit_fail_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _exit_io(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),  # relative to the start of kvm_run
    ]


class _exit_mmio(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class _exit_hypercall(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret", c_uint64),
        ("longmode", c_uint32),
        ("pad", c_uint32),
    ]


class _exit_internal(ctypes.Structure):  # noqa: N801
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _exit_emulation_failure(ctypes.Structure):  # noqa: N801
    """Overlay of `internal` for KVM_INTERNAL_ERROR_EMULATION."""

    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("insn_size", c_uint8),
        ("insn_bytes", c_uint8 * 15),
    ]


class _exit_system_event(ctypes.Structure):  # noqa: N801
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _exit_msr(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("error", c_uint8),  # user -> kernel: 1 injects #GP
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]


class _exit_union(ctypes.Union):  # noqa: N801
    _fields_ = [
        ("hardware_exit_reason", c_uint64),
        ("fail_entry", _exit_fail_entry),
        ("io", _exit_io),
        ("mmio", _exit_mmio),
        ("hypercall", _exit_hypercall),
        ("internal", _exit_internal),
        ("emulation_failure", _exit_emulation_failure),
        ("system_event", _exit_system_event),
        ("msr", _exit_msr),
        ("xen", c_uint8 * 256),  # struct kvm_xen_exit, decoded by whoever needs it
        ("padding", c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", _exit_union),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", c_uint8 * SYNC_REGS_SIZE_BYTES),
    ]


# Fast-path views of struct kvm_run for the vCPU loop: one struct.unpack per exit instead
# of walking ctypes attributes. Built from the ctypes offsets above, so the layout stays
# defined in one place.
def _view(*fields: tuple[int, str]) -> struct.Struct:
    """A little-endian struct.Struct reading (offset, format) fields in ascending order."""
    fmt, pos = "<", 0
    for offset, code in fields:
        if offset < pos:
            raise ValueError(f"field at {offset} overlaps the previous one")
        fmt += f"{offset - pos}x" * (offset > pos) + code
        pos = offset + struct.calcsize("<" + code)
    return struct.Struct(fmt)


RUN_EXIT = kvm_run.exit.offset
RUN_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
# exit_reason, then io.{direction, size, port, count, data_offset}
RUN_IO_VIEW = _view(
    (kvm_run.exit_reason.offset, "I"),
    (RUN_EXIT + _exit_io.direction.offset, "B"),
    (RUN_EXIT + _exit_io.size.offset, "B"),
    (RUN_EXIT + _exit_io.port.offset, "H"),
    (RUN_EXIT + _exit_io.count.offset, "I"),
    (RUN_EXIT + _exit_io.data_offset.offset, "Q"),
)
# mmio.{phys_addr, data, len, is_write}
RUN_MMIO_VIEW = _view(
    (RUN_EXIT + _exit_mmio.phys_addr.offset, "Q"),
    (RUN_EXIT + _exit_mmio.data.offset, "8s"),
    (RUN_EXIT + _exit_mmio.len.offset, "I"),
    (RUN_EXIT + _exit_mmio.is_write.offset, "B"),
)
RUN_MMIO_DATA = RUN_EXIT + _exit_mmio.data.offset
# msr.{reason, index, data}
RUN_MSR_VIEW = _view(
    (RUN_EXIT + _exit_msr.reason.offset, "I"),
    (RUN_EXIT + _exit_msr.index.offset, "I"),
    (RUN_EXIT + _exit_msr.data.offset, "Q"),
)
RUN_MSR_ERROR = RUN_EXIT + _exit_msr.error.offset
RUN_MSR_DATA = RUN_EXIT + _exit_msr.data.offset
# kvm_run.s (struct kvm_sync_regs, asm/kvm.h): regs, then sregs, then events; which of
# them KVM fills on exit and applies on entry is chosen by kvm_valid_regs/kvm_dirty_regs.
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2
RUN_SYNC_REGS = kvm_run.s.offset
RUN_SYNC_SREGS = RUN_SYNC_REGS + ctypes.sizeof(kvm_regs)


KVM_RUN_EXIT_OFFSET = kvm_run.exit.offset  # 32 on x86 (no s390 psw fields)


# --- variable-length helpers ----------------------------------------------------------------
def cpuid2_with(n: int) -> ctypes.Structure:
    """A zeroed kvm_cpuid2 with room for `n` entries (`.entries`), `nent` set to `n`."""

    class kvm_cpuid2_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * n)]

    buf = kvm_cpuid2_n()
    buf.nent = n
    return buf


def msrs_with(n: int) -> ctypes.Structure:
    """A zeroed kvm_msrs with room for `n` entries, `nmsrs` set to `n`."""

    class kvm_msrs_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * n)]

    buf = kvm_msrs_n()
    buf.nmsrs = n
    return buf


def msr_list_with(n: int) -> ctypes.Structure:
    class kvm_msr_list_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nmsrs", c_uint32), ("indices", c_uint32 * n)]

    buf = kvm_msr_list_n()
    buf.nmsrs = n
    return buf


def xsave_with(size: int) -> ctypes.Structure:
    """A zeroed XSAVE buffer of `size` octets (KVM_CAP_XSAVE2's answer, at least 4 KiB)."""

    class kvm_xsave_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("region", c_uint8 * max(size, KVM_XSAVE_LEGACY_SIZE))]

    return kvm_xsave_n()


def irq_routing_with(n: int) -> ctypes.Structure:
    """A zeroed kvm_irq_routing with room for `n` entries, `nr` set to `n`."""

    class kvm_irq_routing_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nr", c_uint32), ("flags", c_uint32), ("entries", kvm_irq_routing_entry * n)]

    buf = kvm_irq_routing_n()
    buf.nr = n
    return buf


# --- ioctls ---------------------------------------------------------------------------------
# system (/dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# api.rst 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST (KVM_CAP_GET_MSR_FEATURES): the feature MSRs
# (ARCH_CAPABILITIES, ...) whose host values KVM_GET_MSRS on the system fd answers.
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)
# VM
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xC0, kvm_clear_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)  # sic: _IOR in linux/kvm.h
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_XEN_HVM_CONFIG = _IOW(KVMIO, 0x7A, kvm_xen_hvm_config)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xC6, kvm_msr_filter)
KVM_XEN_HVM_GET_ATTR = _IOWR(KVMIO, 0xC8, kvm_xen_hvm_attr)
KVM_XEN_HVM_SET_ATTR = _IOW(KVMIO, 0xC9, kvm_xen_hvm_attr)
KVM_XEN_HVM_EVTCHN_SEND = _IOW(KVMIO, 0xD0, kvm_irq_routing_xen_evtchn)
# vCPU
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_GET_SREGS2 = _IOR(KVMIO, 0xCC, kvm_sregs2)
KVM_SET_SREGS2 = _IOW(KVMIO, 0xCD, kvm_sregs2)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_XEN_VCPU_GET_ATTR = _IOWR(KVMIO, 0xCA, kvm_xen_vcpu_attr)
KVM_XEN_VCPU_SET_ATTR = _IOW(KVMIO, 0xCB, kvm_xen_vcpu_attr)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)  # the buffer is KVM_CAP_XSAVE2 octets

# --- arm64 (arch/arm64/include/uapi/asm/kvm.h; Documentation/virt/kvm/api.rst) ---------
# Device control (api.rst 4.80-4.82, generic but used here by arm64 alone).
class kvm_create_device(ctypes.Structure):  # noqa: N801
    _fields_ = [("type", c_uint32), ("fd", c_uint32), ("flags", c_uint32)]


class kvm_device_attr(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", c_uint32), ("group", c_uint32), ("attr", c_uint64), ("addr", c_uint64)]


class kvm_one_reg(ctypes.Structure):  # noqa: N801
    """KVM_GET/SET_ONE_REG (api.rst 4.68): `addr` points at the value, sized by `id`."""

    _fields_ = [("id", c_uint64), ("addr", c_uint64)]


class kvm_vcpu_init(ctypes.Structure):  # noqa: N801
    _fields_ = [("target", c_uint32), ("features", c_uint32 * 7)]


class user_pt_regs(ctypes.Structure):  # noqa: N801 - arch/arm64/include/uapi/asm/ptrace.h
    _fields_ = [("regs", c_uint64 * 31), ("sp", c_uint64), ("pc", c_uint64), ("pstate", c_uint64)]


class user_fpsimd_state(ctypes.Structure):  # noqa: N801 - __uint128_t vregs[32], 16-aligned
    _fields_ = [("vregs", c_uint64 * 64), ("fpsr", c_uint32), ("fpcr", c_uint32),
                ("reserved", c_uint32 * 2)]


KVM_NR_SPSR = 5


class kvm_regs_arm64(ctypes.Structure):  # noqa: N801 - struct kvm_regs on arm64
    _fields_ = [
        ("regs", user_pt_regs),  # sp = SP_EL0
        ("sp_el1", c_uint64),
        ("elr_el1", c_uint64),
        ("spsr", c_uint64 * KVM_NR_SPSR),
        ("pad", c_uint64),  # fp_regs is 16-byte aligned (its __uint128_t)
        ("fp_regs", user_fpsimd_state),
    ]


class kvm_smccc_filter(ctypes.Structure):  # noqa: N801 - Linux 6.4, api.rst 4.2 (vm attrs)
    _fields_ = [("base", c_uint32), ("nr_functions", c_uint32), ("action", c_uint8),
                ("pad", c_uint8 * 15)]


# KVM_{GET,SET}_ONE_REG ids (linux/kvm.h "KVM_REG_*", asm/kvm.h "KVM_REG_ARM_*"): the
# architecture, the value's size (log2 of bytes at bit 52), a coprocessor group, an index.
KVM_REG_ARCH_MASK = 0xFF00_0000_0000_0000
KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00F0_0000_0000_0000
KVM_REG_SIZE_U32 = 0x0020_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
KVM_REG_SIZE_U128 = 0x0040_0000_0000_0000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_FW = 0x0014 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG_OP0_SHIFT = 14
KVM_REG_ARM64_SYSREG_OP1_SHIFT = 11
KVM_REG_ARM64_SYSREG_CRN_SHIFT = 7
KVM_REG_ARM64_SYSREG_CRM_SHIFT = 3
KVM_REG_ARM64_SYSREG_OP2_SHIFT = 0


def arm64_core_reg(field: str, index: int = 0, size: int = KVM_REG_SIZE_U64) -> int:
    """KVM_REG_ARM_CORE_REG(name): the id of a `struct kvm_regs` field, whose index is its
    offset in 32-bit words. `field` is a kvm_regs_arm64 or user_pt_regs field name (`pc`,
    `regs` with `index` n for xn, `sp_el1`, ...); `index` steps through an array field."""
    if field in dict(user_pt_regs._fields_):
        base = kvm_regs_arm64.regs.offset + getattr(user_pt_regs, field).offset
        ctype = dict(user_pt_regs._fields_)[field]
    else:
        base = getattr(kvm_regs_arm64, field).offset
        ctype = dict(kvm_regs_arm64._fields_)[field]
    length = getattr(ctype, "_length_", 1)
    if not 0 <= index < length:
        raise ValueError(f"kvm_regs.{field}[{index}] is out of range (0..{length - 1})")
    offset = base + index * 8
    return KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | offset // ctypes.sizeof(c_uint32)


def arm64_sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """ARM64_SYS_REG(op0, op1, crn, crm, op2): a 64-bit system register's ONE_REG id."""
    return (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG
            | (op0 & 0x3) << KVM_REG_ARM64_SYSREG_OP0_SHIFT
            | (op1 & 0x7) << KVM_REG_ARM64_SYSREG_OP1_SHIFT
            | (crn & 0xF) << KVM_REG_ARM64_SYSREG_CRN_SHIFT
            | (crm & 0xF) << KVM_REG_ARM64_SYSREG_CRM_SHIFT
            | (op2 & 0x7) << KVM_REG_ARM64_SYSREG_OP2_SHIFT)


# The virtual timer's registers. asm/kvm.h: "KVM_REG_ARM_TIMER_CVAL and KVM_REG_ARM_TIMER_CNT
# are not defined with the appropriate register encodings. Their values have been
# accidentally swapped. As this is set API, the definitions here must be used."
KVM_REG_ARM_TIMER_CTL = arm64_sys_reg(3, 3, 14, 3, 1)
KVM_REG_ARM_TIMER_CVAL = arm64_sys_reg(3, 3, 14, 0, 2)
KVM_REG_ARM_TIMER_CNT = arm64_sys_reg(3, 3, 14, 3, 2)
KVM_REG_ARM_PSCI_VERSION = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW | 0

# kvm_vcpu_init.features bits
KVM_ARM_VCPU_POWER_OFF = 0  # starts powered off, until PSCI CPU_ON
KVM_ARM_VCPU_EL1_32BIT = 1
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_PMU_V3 = 3
KVM_ARM_VCPU_SVE = 4

# KVM_CREATE_VM's type on arm64: the guest's IPA size in bits (0: the default 40)
KVM_VM_TYPE_ARM_IPA_SIZE_MASK = 0xFF

# enum kvm_device_type, and the vGICv3's attributes (Documentation/virt/kvm/devices/
# arm-vgic-v3.rst)
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3
KVM_VGIC_V3_DIST_SIZE = 0x10000
KVM_VGIC_V3_REDIST_SIZE = 2 * 0x10000  # per vCPU: RD_base and SGI_base frames

# KVM_IRQ_LINE's irq field on arm64 (api.rst 4.25): type [27:24], vcpu [23:16], number
# [15:0]; with an in-kernel GIC an SPI's number is its INTID (32-1019), a PPI's 16-31.
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_NUM_SHIFT = 0
KVM_ARM_IRQ_TYPE_CPU = 0
KVM_ARM_IRQ_TYPE_SPI = 1
KVM_ARM_IRQ_TYPE_PPI = 2

# The SMCCC filter (Linux 6.4; api.rst "4.2 ATTRIBUTES on a VM fd", KVM_ARM_VM_SMCCC_CTRL):
# which SMCCC function-ID ranges KVM handles, denies, or forwards to userspace as
# KVM_EXIT_HYPERCALL (hypercall.nr = the function ID in x0; flags below).
KVM_ARM_VM_SMCCC_CTRL = 0
KVM_ARM_VM_SMCCC_FILTER = 0
KVM_SMCCC_FILTER_HANDLE = 0
KVM_SMCCC_FILTER_DENY = 1
KVM_SMCCC_FILTER_FWD_TO_USER = 2
KVM_HYPERCALL_EXIT_SMC = 1 << 0
KVM_HYPERCALL_EXIT_16BIT = 1 << 1

KVM_GET_ONE_REG = _IOW(KVMIO, 0xAB, kvm_one_reg)
KVM_SET_ONE_REG = _IOW(KVMIO, 0xAC, kvm_one_reg)
KVM_ARM_VCPU_INIT = _IOW(KVMIO, 0xAE, kvm_vcpu_init)
KVM_ARM_PREFERRED_TARGET = _IOR(KVMIO, 0xAF, kvm_vcpu_init)
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, kvm_create_device)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, kvm_device_attr)

CAP_NAMES: dict[int, str] = {
    v: k for k, v in list(globals().items()) if k.startswith("KVM_CAP_") and isinstance(v, int)
}
