"""Layouts and ioctl numbers of xenopus.kvm.uapi against the C headers.

Every literal here was taken from the Linux 6.1 UAPI headers (include/uapi/linux/kvm.h,
arch/x86/include/uapi/asm/kvm.h, include/uapi/asm-generic/ioctl.h), compiled with gcc on
x86_64 (`sizeof`/`offsetof`, and the `_IO*` macros expanded), not from our own output.
"""

from __future__ import annotations

import ctypes
import struct

import pytest

from xenopus.kvm import uapi as u
from xenopus.kvm.ioctl import _IO, _IOR, _IOW, _IOWR

# sizeof(struct ...) on x86_64
SIZES = {
    "kvm_regs": 144,
    "kvm_sregs": 312,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_run": 2352,
    "kvm_cpuid2": 8,
    "kvm_cpuid_entry2": 40,
    "kvm_userspace_memory_region": 32,
    "kvm_msr_filter": 392,
    "kvm_msr_filter_range": 24,
    "kvm_msrs": 8,
    "kvm_msr_entry": 16,
    "kvm_msr_list": 4,
    "kvm_irq_routing": 8,
    "kvm_irq_routing_entry": 48,
    "kvm_irqfd": 32,
    "kvm_ioeventfd": 64,
    "kvm_dirty_log": 16,
    "kvm_pit_config": 64,
    "kvm_enable_cap": 104,
    "kvm_irq_level": 8,
    "kvm_mp_state": 4,
    "kvm_xen_hvm_config": 56,
    "kvm_xen_hvm_attr": 72,
    "kvm_xen_vcpu_attr": 72,
    "kvm_irq_routing_xen_evtchn": 12,
    "kvm_fpu": 416,
    "kvm_xsave": 4096,
    "kvm_xcrs": 392,
    "kvm_xcr": 16,
    "kvm_lapic_state": 1024,
    "kvm_vcpu_events": 64,
    "kvm_debugregs": 128,
    "kvm_irqchip": 520,
    "kvm_pit_state2": 112,
    "kvm_pit_channel_state": 24,
    "kvm_clock_data": 48,
}

# offsetof(struct ..., field) of the save/restore structs
STATE_OFFSETS = {
    ("kvm_fpu", "fcw"): 128,
    ("kvm_fpu", "ftwx"): 132,
    ("kvm_fpu", "last_opcode"): 134,
    ("kvm_fpu", "last_ip"): 136,
    ("kvm_fpu", "xmm"): 152,
    ("kvm_fpu", "mxcsr"): 408,
    ("kvm_xcrs", "xcrs"): 8,
    ("kvm_xcrs", "padding"): 264,
    ("kvm_vcpu_events", "interrupt"): 8,
    ("kvm_vcpu_events", "nmi"): 12,
    ("kvm_vcpu_events", "sipi_vector"): 16,
    ("kvm_vcpu_events", "flags"): 20,
    ("kvm_vcpu_events", "smi"): 24,
    ("kvm_vcpu_events", "reserved"): 29,
    ("kvm_vcpu_events", "exception_has_payload"): 55,
    ("kvm_vcpu_events", "exception_payload"): 56,
    ("kvm_debugregs", "dr6"): 32,
    ("kvm_debugregs", "dr7"): 40,
    ("kvm_debugregs", "flags"): 48,
    ("kvm_irqchip", "chip"): 8,
    ("kvm_pit_state2", "flags"): 72,
    ("kvm_pit_channel_state", "gate"): 15,
    ("kvm_pit_channel_state", "count_load_time"): 16,
    ("kvm_clock_data", "flags"): 8,
    ("kvm_clock_data", "realtime"): 16,
    ("kvm_clock_data", "host_tsc"): 24,
}

# offsetof(struct kvm_run, ...): the exit union starts at 32 on x86
RUN_OFFSETS = {
    ("exit_reason",): 8,
    ("cr8",): 16,
    ("apic_base",): 24,
    ("exit",): 32,
    ("exit", "io", "data_offset"): 40,
    ("exit", "mmio", "data"): 40,
    ("exit", "mmio", "len"): 48,
    ("exit", "mmio", "is_write"): 52,
    ("exit", "internal", "data"): 40,
    ("exit", "emulation_failure", "insn_bytes"): 49,
    ("exit", "system_event", "data"): 40,
    ("exit", "msr", "reason"): 40,
    ("exit", "msr", "index"): 44,
    ("exit", "msr", "data"): 48,
    ("exit", "fail_entry", "cpu"): 40,
    ("kvm_valid_regs",): 288,
    ("s",): 304,
}

SREGS_OFFSETS = {
    "tr": 144,
    "gdt": 192,
    "cr0": 224,
    "efer": 264,
    "apic_base": 272,
    "interrupt_bitmap": 280,
}

IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_SET_GSI_ROUTING": 0x4008AE6A,
    "KVM_IRQFD": 0x4020AE76,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_XEN_HVM_CONFIG": 0x4038AE7A,
    "KVM_XEN_HVM_GET_ATTR": 0xC048AEC8,
    "KVM_XEN_HVM_SET_ATTR": 0x4048AEC9,
    "KVM_XEN_VCPU_GET_ATTR": 0xC048AECA,
    "KVM_XEN_VCPU_SET_ATTR": 0x4048AECB,
    "KVM_XEN_HVM_EVTCHN_SEND": 0x400CAED0,
    "KVM_GET_CLOCK": 0x8030AE7C,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_X86_SET_MSR_FILTER": 0x4188AEC6,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
    "KVM_GET_FPU": 0x81A0AE8C,
    "KVM_SET_FPU": 0x41A0AE8D,
    "KVM_GET_XSAVE": 0x9000AEA4,
    "KVM_SET_XSAVE": 0x5000AEA5,
    "KVM_GET_XSAVE2": 0x9000AECF,
    "KVM_GET_XCRS": 0x8188AEA6,
    "KVM_SET_XCRS": 0x4188AEA7,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
    "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_GET_DEBUGREGS": 0x8080AEA1,
    "KVM_SET_DEBUGREGS": 0x4080AEA2,
    "KVM_GET_TSC_KHZ": 0xAEA3,
    "KVM_SET_TSC_KHZ": 0xAEA2,
    "KVM_GET_IRQCHIP": 0xC208AE62,
    "KVM_SET_IRQCHIP": 0x8208AE63,
    "KVM_GET_PIT2": 0x8070AE9F,
    "KVM_SET_PIT2": 0x4070AEA0,
    "KVM_SET_CLOCK": 0x4030AE7B,
}

# Constants as #defined in linux/kvm.h and asm/kvm.h.
CONSTANTS = {
    "KVM_CAP_IRQCHIP": 0,
    "KVM_CAP_USER_MEMORY": 3,
    "KVM_CAP_SET_TSS_ADDR": 4,
    "KVM_CAP_EXT_CPUID": 7,
    "KVM_CAP_IRQ_ROUTING": 25,
    "KVM_CAP_IRQFD": 32,
    "KVM_CAP_PIT2": 33,
    "KVM_CAP_IOEVENTFD": 36,
    "KVM_CAP_SET_IDENTITY_MAP_ADDR": 37,
    "KVM_CAP_XEN_HVM": 38,
    "KVM_CAP_IMMEDIATE_EXIT": 136,
    "KVM_CAP_X86_USER_SPACE_MSR": 188,
    "KVM_CAP_X86_MSR_FILTER": 189,
    "KVM_EXIT_IO": 2,
    "KVM_EXIT_HLT": 5,
    "KVM_EXIT_MMIO": 6,
    "KVM_EXIT_SHUTDOWN": 8,
    "KVM_EXIT_FAIL_ENTRY": 9,
    "KVM_EXIT_INTR": 10,
    "KVM_EXIT_INTERNAL_ERROR": 17,
    "KVM_EXIT_SYSTEM_EVENT": 24,
    "KVM_EXIT_X86_RDMSR": 29,
    "KVM_EXIT_X86_WRMSR": 30,
    "KVM_EXIT_XEN": 34,
    "KVM_INTERNAL_ERROR_EMULATION": 1,
    "KVM_SYSTEM_EVENT_SHUTDOWN": 1,
    "KVM_SYSTEM_EVENT_RESET": 2,
    "KVM_SYSTEM_EVENT_CRASH": 3,
    "KVM_MSR_EXIT_REASON_FILTER": 4,
    "KVM_MSR_FILTER_MAX_RANGES": 16,
    "KVM_MSR_FILTER_DEFAULT_DENY": 1,
    "KVM_IOEVENTFD_FLAG_PIO": 2,
    "KVM_IOEVENTFD_FLAG_DEASSIGN": 4,
    "KVM_IRQ_ROUTING_MSI": 2,
    "KVM_CAP_XSAVE2": 208,
    "KVM_CAP_XCRS": 56,
    "KVM_CAP_DEBUGREGS": 50,
    "KVM_CAP_TSC_CONTROL": 60,
    "KVM_CAP_GET_TSC_KHZ": 61,
    "KVM_CAP_ADJUST_CLOCK": 39,
    "KVM_CAP_VCPU_EVENTS": 41,
    "KVM_CAP_XSAVE": 55,
    "KVM_MAX_XCRS": 16,
    "KVM_APIC_REG_SIZE": 1024,
    "KVM_IOAPIC_NUM_PINS": 24,
    "KVM_VCPUEVENT_VALID_NMI_PENDING": 1,
    "KVM_VCPUEVENT_VALID_SIPI_VECTOR": 2,
    "KVM_VCPUEVENT_VALID_SHADOW": 4,
    "KVM_VCPUEVENT_VALID_SMM": 8,
    "KVM_VCPUEVENT_VALID_PAYLOAD": 16,
    "KVM_VCPUEVENT_VALID_TRIPLE_FAULT": 32,
    "KVM_CLOCK_TSC_STABLE": 2,
    "KVM_CLOCK_REALTIME": 4,
    "KVM_CLOCK_HOST_TSC": 8,
}


@pytest.mark.parametrize(("name", "size"), sorted(SIZES.items()))
def test_struct_size(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(u, name)) == size


def _offset(cls: type, path: tuple[str, ...]) -> int:
    off = 0
    for field in path:
        off += getattr(cls, field).offset
        cls = dict(cls._fields_)[field]
    return off


@pytest.mark.parametrize(("path", "offset"), sorted(RUN_OFFSETS.items()))
def test_kvm_run_offsets(path: tuple[str, ...], offset: int) -> None:
    assert _offset(u.kvm_run, path) == offset


def test_kvm_run_exit_union_is_256_bytes() -> None:
    assert ctypes.sizeof(u._exit_union) == 256
    assert u.KVM_RUN_EXIT_OFFSET == 32


@pytest.mark.parametrize(("path", "offset"), sorted(STATE_OFFSETS.items()))
def test_state_struct_offsets(path: tuple[str, str], offset: int) -> None:
    struct_name, field = path
    assert getattr(getattr(u, struct_name), field).offset == offset


def test_xsave2_buffer_is_at_least_the_legacy_area() -> None:
    assert ctypes.sizeof(u.xsave_with(0)) == 4096
    assert ctypes.sizeof(u.xsave_with(8192)) == 8192


@pytest.mark.parametrize(("name", "offset"), sorted(SREGS_OFFSETS.items()))
def test_kvm_sregs_offsets(name: str, offset: int) -> None:
    assert getattr(u.kvm_sregs, name).offset == offset


@pytest.mark.parametrize(("name", "number"), sorted(IOCTLS.items()))
def test_ioctl_number(name: str, number: int) -> None:
    assert getattr(u, name) == number


@pytest.mark.parametrize(("name", "value"), sorted(CONSTANTS.items()))
def test_constant(name: str, value: int) -> None:
    assert getattr(u, name) == value


def test_ioc_encoding() -> None:
    # asm-generic/ioctl.h: dir in bits 31:30 (write=1, read=2), size 29:16, type 15:8, nr 7:0
    assert _IO(0xAE, 0x80) == 0xAE80
    assert _IOR(0xAE, 0x81, ctypes.c_uint32) == 0x8004AE81
    assert _IOW(0xAE, 0x81, ctypes.c_uint64) == 0x4008AE81
    assert _IOWR(0xAE, 0x02, ctypes.c_uint16) == 0xC002AE02
    with pytest.raises(ValueError):
        _IOW(0xAE, 1, ctypes.c_uint8 * (1 << 14))


def test_variable_length_helpers() -> None:
    cpuid = u.cpuid2_with(3)
    assert cpuid.nent == 3 and ctypes.sizeof(cpuid) == 8 + 3 * 40
    msrs = u.msrs_with(2)
    assert msrs.nmsrs == 2 and ctypes.sizeof(msrs) == 8 + 2 * 16
    routing = u.irq_routing_with(4)
    assert routing.nr == 4 and ctypes.sizeof(routing) == 8 + 4 * 48


def test_cap_names_are_reversible() -> None:
    assert u.CAP_NAMES[136] == "KVM_CAP_IMMEDIATE_EXIT"
    assert u.EXIT_NAMES[17] == "KVM_EXIT_INTERNAL_ERROR"


def test_run_loop_views_match_the_header() -> None:
    """The vCPU loop's struct views read kvm_run at linux/kvm.h's offsets: exit_reason at
    8, the exit union at 32; io = {u8 direction, u8 size, u16 port, u32 count, u64
    data_offset}, mmio = {u64 phys_addr, u8 data[8], u32 len, u8 is_write}, msr =
    {u8 error, u8 pad[7], u32 reason, u32 index, u64 data}."""
    page = bytearray(4096)
    struct.pack_into("<I", page, 8, 2)  # KVM_EXIT_IO
    struct.pack_into("<BBHIQ", page, 32, 1, 4, 0x3F8, 3, 0x1000)
    assert u.RUN_IO_VIEW.unpack_from(page) == (2, 1, 4, 0x3F8, 3, 0x1000)
    struct.pack_into("<Q8sIB", page, 32, 0xFEB00000, b"\x34" + bytes(7), 1, 1)
    assert u.RUN_MMIO_VIEW.unpack_from(page) == (0xFEB00000, b"\x34" + bytes(7), 1, 1)
    assert u.RUN_MMIO_DATA == 40
    struct.pack_into("<B7xIIQ", page, 32, 0, 1, 0x40000000, 0x1234000)
    assert u.RUN_MSR_VIEW.unpack_from(page) == (1, 0x40000000, 0x1234000)
    assert (u.RUN_MSR_ERROR, u.RUN_MSR_DATA, u.RUN_IMMEDIATE_EXIT) == (32, 48, 1)


# offsetof() of the Xen attribute structs' nested members (gcc, linux/kvm.h of 6.1)
XEN_ATTR_OFFSETS = [
    (u.kvm_xen_hvm_attr, ("u",), 8),
    (u.kvm_xen_hvm_attr, ("u", "evtchn", "flags"), 16),
    (u.kvm_xen_hvm_attr, ("u", "evtchn", "deliver"), 20),
    (u.kvm_xen_hvm_attr, ("u", "evtchn", "deliver", "eventfd", "fd"), 24),
    (u.kvm_xen_vcpu_attr, ("u", "timer", "expires_ns"), 16),
    (u.kvm_xen_vcpu_attr, ("u", "runstate", "time_offline"), 48),
]


@pytest.mark.parametrize(("struct_type", "path", "offset"), XEN_ATTR_OFFSETS)
def test_xen_attr_offsets(struct_type: type, path: tuple[str, ...], offset: int) -> None:
    t, total = struct_type, 0
    for name in path:
        total += getattr(t, name).offset
        t = dict(t._fields_)[name]
    assert total == offset
