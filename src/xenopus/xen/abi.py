"""Xen's public guest ABI: every number and struct layout of xen/include/public we use.

Layouts are the x86_64 ones (``xen_ulong_t``/``unsigned long``/``xen_pfn_t`` are 64-bit,
a ``XEN_GUEST_HANDLE`` is an 8-byte pointer). ctypes gives natural C alignment, which is
what the headers rely on. Each block cites its header; tests/unit/test_xen_abi.py checks
sizes and offsets against numbers derived from those headers.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int8, c_int16, c_int32, c_uint8, c_uint16, c_uint32, c_uint64

# ruff: noqa: N801  (struct names follow the C headers)

PAGE_SIZE = 4096
PAGE_SHIFT = 12

xen_ulong_t = c_uint64
xen_pfn_t = c_uint64
domid_t = c_uint16
evtchn_port_t = c_uint32
grant_ref_t = c_uint32
grant_handle_t = c_uint32
guest_handle_t = c_uint64  # XEN_GUEST_HANDLE(x) on x86_64: a guest-virtual pointer

# --- xen.h: hypercall numbers --------------------------------------------------------------
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6
HYPERVISOR_platform_op = 7
HYPERVISOR_set_debugreg = 8
HYPERVISOR_get_debugreg = 9
HYPERVISOR_update_descriptor = 10
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_event_channel_op_compat = 16
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_physdev_op_compat = 19
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_update_va_mapping_otherdomain = 22
HYPERVISOR_iret = 23
HYPERVISOR_vcpu_op = 24
HYPERVISOR_set_segment_base = 25
HYPERVISOR_mmuext_op = 26
HYPERVISOR_xsm_op = 27
HYPERVISOR_nmi_op = 28
HYPERVISOR_sched_op = 29
HYPERVISOR_callback_op = 30
HYPERVISOR_xenoprof_op = 31
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_kexec_op = 37
HYPERVISOR_tmem_op = 38
HYPERVISOR_argo_op = 39
HYPERVISOR_xenpmu_op = 40
HYPERVISOR_dm_op = 41
HYPERVISOR_hypfs_op = 42
NR_HYPERCALLS = 128  # one 4 KiB hypercall page holds 128 stubs of 32 bytes
HYPERCALL_STUB_SIZE = 32

# xen.h: reserved domain ids
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF

# xen.h: VIRQs (per-vCPU unless noted global)
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2  # global
VIRQ_DOM_EXC = 3  # global
VIRQ_TBUF = 4  # global
VIRQ_DEBUGGER = 6  # global
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8  # global
VIRQ_PCPU_STATE = 9  # global
VIRQ_MEM_EVENT = 10  # global
VIRQ_ARGO = 11  # global
VIRQ_ENOMEM = 12  # global
VIRQ_XENPMU = 13
NR_VIRQS = 24
GLOBAL_VIRQS = frozenset({VIRQ_CONSOLE, VIRQ_DOM_EXC, VIRQ_TBUF, VIRQ_DEBUGGER, VIRQ_CON_RING,
                          VIRQ_PCPU_STATE, VIRQ_MEM_EVENT, VIRQ_ARGO, VIRQ_ENOMEM})

# xen.h: CONSOLEIO_* (HYPERVISOR_console_io)
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# xen.h: struct multicall_entry (x86_64: 8 xen_ulong_t = 64 bytes)
MULTICALL_MAX_ENTRIES = 64  # ours: bound on a batch the guest can make us walk


class multicall_entry(ctypes.Structure):
    _fields_ = [("op", xen_ulong_t), ("result", xen_ulong_t), ("args", xen_ulong_t * 6)]


class multicall_entry_32(ctypes.Structure):
    """A 32-bit guest's multicall_entry (xen_ulong_t is 32 bits there; compat/xen.h)."""

    _fields_ = [("op", c_uint32), ("result", c_uint32), ("args", c_uint32 * 6)]


# --- errno.h: Xen error values (returned negated) ------------------------------------------
XEN_EPERM = 1
XEN_ENOENT = 2
XEN_ESRCH = 3
XEN_EINTR = 4
XEN_EIO = 5
XEN_ENXIO = 6
XEN_E2BIG = 7
XEN_ENOEXEC = 8
XEN_EBADF = 9
XEN_ECHILD = 10
XEN_EAGAIN = 11
XEN_ENOMEM = 12
XEN_EACCES = 13
XEN_EFAULT = 14
XEN_EBUSY = 16
XEN_EEXIST = 17
XEN_EXDEV = 18
XEN_ENODEV = 19
XEN_EISDIR = 21
XEN_EINVAL = 22
XEN_ENFILE = 23
XEN_EMFILE = 24
XEN_ENOSPC = 28
XEN_EROFS = 30
XEN_EMLINK = 31
XEN_EDOM = 33
XEN_ERANGE = 34
XEN_EDEADLK = 35
XEN_ENAMETOOLONG = 36
XEN_ENOLCK = 37
XEN_ENOSYS = 38
XEN_ENOTEMPTY = 39
XEN_ENODATA = 61
XEN_ETIME = 62
XEN_EBADMSG = 74
XEN_EOVERFLOW = 75
XEN_EILSEQ = 84
XEN_ERESTART = 85
XEN_ENOTSOCK = 88
XEN_EMSGSIZE = 90
XEN_EOPNOTSUPP = 95
XEN_EADDRINUSE = 98
XEN_EADDRNOTAVAIL = 99
XEN_ENOBUFS = 105
XEN_EISCONN = 106
XEN_ENOTCONN = 107
XEN_ETIMEDOUT = 110
XEN_ECONNREFUSED = 111

# --- arch-x86/cpuid.h ----------------------------------------------------------------------
XEN_CPUID_FIRST_LEAF = 0x40000000
# Guests look for the signature at XEN_CPUID_FIRST_LEAF + n * 0x100 below this (cpuid.h:
# "the first otherwise unused 0x100 aligned boundary"; Linux's hypervisor_cpuid_base).
XEN_CPUID_SEARCH_END = 0x40010000
# Leaf base+2 EBX, "Base address of Xen-specific MSRs": writing a frame number to it fills
# that frame with the hypercall page. Xen's own choice is 0x40000000 (cpuid_hypervisor_leaves
# in xen/arch/x86), and ours: the CPUID leaf, the MSR filter and KVM_XEN_HVM_CONFIG read it.
XEN_HYPERCALL_MSR = 0x40000000
XEN_CPUID_SIGNATURE = b"XenVMMXenVMM"
XEN_CPUID_SIGNATURE_EBX = 0x566E6558  # "XenV"
XEN_CPUID_SIGNATURE_ECX = 0x65584D4D  # "MMXe"
XEN_CPUID_SIGNATURE_EDX = 0x4D4D566E  # "nVMM"
XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1 << 0
XEN_HVM_CPUID_APIC_ACCESS_VIRT = 1 << 0
XEN_HVM_CPUID_X2APIC_VIRT = 1 << 1
XEN_HVM_CPUID_IOMMU_MAPPINGS = 1 << 2
XEN_HVM_CPUID_VCPU_ID_PRESENT = 1 << 3  # vCPU id in EBX
XEN_HVM_CPUID_DOMID_PRESENT = 1 << 4  # domid in ECX
XEN_HVM_CPUID_EXT_DEST_ID = 1 << 5
XEN_HVM_CPUID_UPCALL_VECTOR = 1 << 6  # HVMOP_set_evtchn_upcall_vector supported

# elfnote.h: notes of owner "Xen" in a kernel image
XEN_ELFNOTE_NAME = b"Xen"
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_GUEST_OS = 6  # a string: "linux" for Linux
XEN_ELFNOTE_PHYS32_ENTRY = 18  # PVH entry point (docs/misc/pvh.pandoc)

# --- arch-x86/hvm/start_info.h: the PVH boot ABI's start_info -------------------------------
XEN_HVM_START_MAGIC_VALUE = 0x336EC578  # "xEn3" with the 0x80 bit of "E" set
HVM_START_INFO_VERSION = 1  # the header's current version: adds memmap_paddr/memmap_entries


class hvm_start_info(ctypes.LittleEndianStructure):
    """56 bytes in version 1."""

    _fields_ = [
        ("magic", c_uint32),
        ("version", c_uint32),
        ("flags", c_uint32),
        ("nr_modules", c_uint32),
        ("modlist_paddr", c_uint64),
        ("cmdline_paddr", c_uint64),
        ("rsdp_paddr", c_uint64),
        ("memmap_paddr", c_uint64),
        ("memmap_entries", c_uint32),
        ("reserved", c_uint32),
    ]


class hvm_modlist_entry(ctypes.LittleEndianStructure):
    _fields_ = [
        ("paddr", c_uint64),
        ("size", c_uint64),
        ("cmdline_paddr", c_uint64),
        ("reserved", c_uint64),
    ]


class hvm_memmap_table_entry(ctypes.LittleEndianStructure):
    _fields_ = [
        ("addr", c_uint64),
        ("size", c_uint64),
        ("type", c_uint32),
        ("reserved", c_uint32),
    ]

# --- version.h: XENVER_* -------------------------------------------------------------------
XENVER_version = 0
XENVER_extraversion = 1
XENVER_compile_info = 2
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XENVER_guest_handle = 8
XENVER_commandline = 9
XENVER_build_id = 10

xen_extraversion_t = c_char * 16
xen_capabilities_info_t = c_char * 1024
xen_changeset_info_t = c_char * 64
xen_commandline_t = c_char * 1024
xen_domain_handle_t = c_uint8 * 16


class xen_compile_info(ctypes.Structure):
    _fields_ = [("compiler", c_char * 64), ("compile_by", c_char * 16),
                ("compile_domain", c_char * 32), ("compile_date", c_char * 32)]


class xen_platform_parameters(ctypes.Structure):
    _fields_ = [("virt_start", xen_ulong_t)]


class xen_feature_info(ctypes.Structure):
    _fields_ = [("submap_idx", c_uint32), ("submap", c_uint32)]


# features.h: XENFEAT_* bit numbers in submap 0
XENFEAT_writable_page_tables = 0
XENFEAT_writable_descriptor_tables = 1
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_highmem_assist = 6
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_hvm_pirqs = 10
XENFEAT_dom0 = 11
XENFEAT_memory_op_vnode_supported = 13
XENFEAT_ARM_SMCCC_supported = 14
XENFEAT_linux_rsdp_unrestricted = 15
XENFEAT_not_direct_mapped = 16
XENFEAT_direct_mapped = 17
XENFEAT_NR_SUBMAPS = 1

# --- memory.h: XENMEM_* --------------------------------------------------------------------
XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_machphys_mfn_list = 5
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_machine_memory_map = 10
XENMEM_exchange = 11
XENMEM_machphys_mapping = 12
XENMEM_set_memory_map = 13
XENMEM_maximum_gpfn = 14
XENMEM_remove_from_physmap = 15
XENMEM_set_pod_target = 16
XENMEM_get_pod_target = 17
XENMEM_add_to_physmap_batch = 23
XENMEM_claim_pages = 24
XENMEM_get_vnumainfo = 26
XENMEM_reserved_device_memory_map = 27
XENMEM_acquire_resource = 28
XENMEMF_populate_on_demand = 1 << 16
# memory.h: the cmd argument carries a continuation's start extent above the op
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1

XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn = 2
XENMAPSPACE_gmfn_range = 3
XENMAPSPACE_gmfn_foreign = 4
XENMAPSPACE_dev_mmio = 5
XENMAPIDX_grant_table_status = 0x80000000


class xen_memory_reservation(ctypes.Structure):
    _fields_ = [("extent_start", guest_handle_t), ("nr_extents", xen_ulong_t),
                ("extent_order", c_uint32), ("mem_flags", c_uint32), ("domid", domid_t)]


class xen_add_to_physmap(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("size", c_uint16), ("space", c_uint32),
                ("idx", xen_ulong_t), ("gpfn", xen_pfn_t)]


class xen_remove_from_physmap(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("gpfn", xen_pfn_t)]


class xen_memory_map(ctypes.Structure):
    """XENMEM_memory_map: ``buffer`` receives e820 entries (``e820entry``), up to nr_entries."""

    _fields_ = [("nr_entries", c_uint32), ("buffer", guest_handle_t)]


class e820entry(ctypes.Structure):
    """The packed 20-byte BIOS e820 entry XENMEM_memory_map fills in (arch-x86/xen.h)."""

    _pack_ = 1
    _fields_ = [("addr", c_uint64), ("size", c_uint64), ("type", c_uint32)]


# --- hvm/hvm_op.h and hvm/params.h ---------------------------------------------------------
HVMOP_set_param = 0
HVMOP_get_param = 1
HVMOP_set_pci_intx_level = 2
HVMOP_set_isa_irq_level = 3
HVMOP_set_pci_link_route = 4
HVMOP_flush_tlbs = 5
HVMOP_pagetable_dying = 9
HVMOP_get_time = 10
HVMOP_xentrace = 11
HVMOP_get_mem_type = 15
HVMOP_set_evtchn_upcall_vector = 23
HVMOP_guest_request_vm_event = 24
HVMOP_altp2m = 25


class xen_hvm_param(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("index", c_uint32), ("value", c_uint64)]


class xen_hvm_evtchn_upcall_vector(ctypes.Structure):
    _fields_ = [("vcpu", c_uint32), ("vector", c_uint8)]


class xen_hvm_get_time(ctypes.Structure):
    _fields_ = [("now", c_uint64)]


class xen_hvm_pagetable_dying(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("gpa", c_uint64)]


HVM_PARAM_CALLBACK_IRQ = 0
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_STORE_EVTCHN = 2
HVM_PARAM_PAE_ENABLED = 4
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_VIRIDIAN = 9
HVM_PARAM_TIMER_MODE = 10
HVM_PARAM_HPET_ENABLED = 11
HVM_PARAM_IDENT_PT = 12
HVM_PARAM_DM_DOMAIN = 13
HVM_PARAM_ACPI_S_STATE = 14
HVM_PARAM_VM86_TSS = 15
HVM_PARAM_VPT_ALIGN = 16
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_CONSOLE_EVTCHN = 18
HVM_PARAM_ACPI_IOPORTS_LOCATION = 19
HVM_PARAM_NESTEDHVM = 24
HVM_PARAM_BUFIOREQ_EVTCHN = 26
HVM_PARAM_PAGING_RING_PFN = 27
HVM_PARAM_MONITOR_RING_PFN = 28
HVM_PARAM_SHARING_RING_PFN = 29
HVM_PARAM_TRIPLE_FAULT_REASON = 31
HVM_PARAM_IOREQ_SERVER_PFN = 32
HVM_PARAM_NR_IOREQ_SERVER_PAGES = 33
HVM_PARAM_VM_GENERATION_ID_ADDR = 34
HVM_PARAM_ALTP2M = 35
HVM_PARAM_X87_FIP_WIDTH = 36
HVM_PARAM_VM86_TSS_SIZED = 37
HVM_PARAM_MCA_CAP = 38
HVM_NR_PARAMS = 39

# HVM_PARAM_CALLBACK_IRQ value: type in bits 63:56
HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT = 56
HVM_PARAM_CALLBACK_IRQ_TYPE_MASK = 0xFF << 56
HVM_PARAM_CALLBACK_TYPE_GSI = 0  # val[55:0] is a GSI
HVM_PARAM_CALLBACK_TYPE_PCI_INTX = 1
HVM_PARAM_CALLBACK_TYPE_VECTOR = 2  # val[7:0] is the vector (all vCPUs)
HVM_PARAM_CALLBACK_TYPE_PPI = 3

# --- vcpu.h: VCPUOP_* ----------------------------------------------------------------------
VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPUOP_register_vcpu_info = 10
VCPUOP_send_nmi = 11
VCPUOP_get_physid = 12
VCPUOP_register_vcpu_time_memory_area = 13

RUNSTATE_running = 0
RUNSTATE_runnable = 1
RUNSTATE_blocked = 2
RUNSTATE_offline = 3
XEN_RUNSTATE_UPDATE = 1 << 63  # set in state_entry_time while the area is being updated
VCPU_SSHOTTMR_future = 1 << 0


class vcpu_runstate_info(ctypes.Structure):
    _fields_ = [("state", c_int32), ("state_entry_time", c_uint64), ("time", c_uint64 * 4)]


class vcpu_register_runstate_memory_area(ctypes.Structure):
    _fields_ = [("addr", c_uint64)]  # union { handle h; struct *v; uint64 p; }


class vcpu_register_time_memory_area(ctypes.Structure):
    _fields_ = [("addr", c_uint64)]  # union { handle h; struct vcpu_time_info *v; uint64 p; }


class vcpu_set_periodic_timer(ctypes.Structure):
    _fields_ = [("period_ns", c_uint64)]


class vcpu_set_singleshot_timer(ctypes.Structure):
    _fields_ = [("timeout_abs_ns", c_uint64), ("flags", c_uint32)]


class vcpu_register_vcpu_info(ctypes.Structure):
    _fields_ = [("mfn", c_uint64), ("offset", c_uint32), ("rsvd", c_uint32)]


# hvm/hvm_vcpu.h: VCPUOP_initialise argument for HVM/PVH guests
VCPU_HVM_MODE_32B = 0
VCPU_HVM_MODE_64B = 1


class vcpu_hvm_x86_32(ctypes.Structure):
    _fields_ = [
        *[(n, c_uint32) for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                                  "eip", "eflags", "cr0", "cr3", "cr4", "pad1")],
        ("efer", c_uint64),
        *[(f"{s}_base", c_uint32) for s in ("cs", "ds", "ss", "es", "tr")],
        *[(f"{s}_limit", c_uint32) for s in ("cs", "ds", "ss", "es", "tr")],
        *[(f"{s}_ar", c_uint16) for s in ("cs", "ds", "ss", "es", "tr")],
        ("pad2", c_uint16 * 3),
    ]


class vcpu_hvm_x86_64(ctypes.Structure):
    _fields_ = [(n, c_uint64) for n in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                        "rip", "rflags", "cr0", "cr3", "cr4", "efer")]


class vcpu_hvm_regs(ctypes.Union):
    _fields_ = [("x86_32", vcpu_hvm_x86_32), ("x86_64", vcpu_hvm_x86_64)]


class vcpu_hvm_context(ctypes.Structure):
    _fields_ = [("mode", c_uint32), ("pad", c_uint32), ("cpu_regs", vcpu_hvm_regs)]


# --- sched.h: SCHEDOP_* and SHUTDOWN_* -----------------------------------------------------
SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7

SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SCHED_POLL_MAX_PORTS = 128  # ours: Xen caps nr_ports at the domain's max evtchns; we bound it


class sched_shutdown(ctypes.Structure):
    _fields_ = [("reason", c_uint32)]


class sched_poll(ctypes.Structure):
    _fields_ = [("ports", guest_handle_t), ("nr_ports", c_uint32), ("timeout", c_uint64)]


class sched_remote_shutdown(ctypes.Structure):
    _fields_ = [("domain_id", domid_t), ("reason", c_uint32)]


NR_DOMAIN_WATCHDOG_TIMERS = 2  # xen/include/xen/sched.h


class sched_watchdog(ctypes.Structure):
    _fields_ = [("id", c_uint32), ("timeout", c_uint32)]


# --- physdev.h -----------------------------------------------------------------------------
PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
PHYSDEVOP_apic_read = 8
PHYSDEVOP_apic_write = 9
PHYSDEVOP_alloc_irq_vector = 10
PHYSDEVOP_free_irq_vector = 11
PHYSDEVOP_eoi = 12
PHYSDEVOP_map_pirq = 13
PHYSDEVOP_unmap_pirq = 14
PHYSDEVOP_manage_pci_add = 15
PHYSDEVOP_manage_pci_remove = 16
PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_restore_msi = 19
PHYSDEVOP_setup_gsi = 21
PHYSDEVOP_get_free_pirq = 23
PHYSDEVOP_pci_mmcfg_reserved = 24
PHYSDEVOP_pci_device_add = 25
PHYSDEVOP_pci_device_remove = 26
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28

# --- event_channel.h -----------------------------------------------------------------------
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13

EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5

# 2-level ABI (xen.h): one bit per port in shared_info, 64 words of 64 bits on x86_64
EVTCHN_2L_NR_CHANNELS = 64 * 64


class evtchn_alloc_unbound(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("remote_dom", domid_t), ("port", evtchn_port_t)]


class evtchn_bind_interdomain(ctypes.Structure):
    _fields_ = [("remote_dom", domid_t), ("remote_port", evtchn_port_t),
                ("local_port", evtchn_port_t)]


class evtchn_bind_virq(ctypes.Structure):
    _fields_ = [("virq", c_uint32), ("vcpu", c_uint32), ("port", evtchn_port_t)]


class evtchn_bind_pirq(ctypes.Structure):
    _fields_ = [("pirq", c_uint32), ("flags", c_uint32), ("port", evtchn_port_t)]


class evtchn_bind_ipi(ctypes.Structure):
    _fields_ = [("vcpu", c_uint32), ("port", evtchn_port_t)]


class evtchn_close(ctypes.Structure):
    _fields_ = [("port", evtchn_port_t)]


class evtchn_send(ctypes.Structure):
    _fields_ = [("port", evtchn_port_t)]


class _evtchn_status_unbound(ctypes.Structure):
    _fields_ = [("dom", domid_t)]


class _evtchn_status_interdomain(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t)]


class _evtchn_status_u(ctypes.Union):
    _fields_ = [("unbound", _evtchn_status_unbound), ("interdomain", _evtchn_status_interdomain),
                ("pirq", c_uint32), ("virq", c_uint32)]


class evtchn_status(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t), ("status", c_uint32),
                ("vcpu", c_uint32), ("u", _evtchn_status_u)]


class evtchn_bind_vcpu(ctypes.Structure):
    _fields_ = [("port", evtchn_port_t), ("vcpu", c_uint32)]


class evtchn_unmask(ctypes.Structure):
    _fields_ = [("port", evtchn_port_t)]


class evtchn_reset(ctypes.Structure):
    _fields_ = [("dom", domid_t)]


class evtchn_init_control(ctypes.Structure):
    _fields_ = [("control_gfn", c_uint64), ("offset", c_uint32), ("vcpu", c_uint32),
                ("link_bits", c_uint8), ("_pad", c_uint8 * 7)]


# The FIFO ABI (event_channel.h "FIFO ABI"): one 32-bit event word per port in the guest's
# event array pages, and per vCPU a control block with a READY bit and a HEAD per queue.
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1
EVTCHN_FIFO_PENDING = 31
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS
event_word_t = c_uint32


class evtchn_fifo_control_block(ctypes.Structure):
    _fields_ = [("ready", c_uint32), ("_rsvd", c_uint32),
                ("head", event_word_t * EVTCHN_FIFO_MAX_QUEUES)]


class evtchn_expand_array(ctypes.Structure):
    _fields_ = [("array_gfn", c_uint64)]


class evtchn_set_priority(ctypes.Structure):
    _fields_ = [("port", evtchn_port_t), ("priority", c_uint32)]


EVTCHNOP_STRUCTS: dict[int, type[ctypes.Structure]] = {
    EVTCHNOP_bind_interdomain: evtchn_bind_interdomain,
    EVTCHNOP_bind_virq: evtchn_bind_virq,
    EVTCHNOP_bind_pirq: evtchn_bind_pirq,
    EVTCHNOP_close: evtchn_close,
    EVTCHNOP_send: evtchn_send,
    EVTCHNOP_status: evtchn_status,
    EVTCHNOP_alloc_unbound: evtchn_alloc_unbound,
    EVTCHNOP_bind_ipi: evtchn_bind_ipi,
    EVTCHNOP_bind_vcpu: evtchn_bind_vcpu,
    EVTCHNOP_unmask: evtchn_unmask,
    EVTCHNOP_reset: evtchn_reset,
    EVTCHNOP_init_control: evtchn_init_control,
    EVTCHNOP_expand_array: evtchn_expand_array,
    EVTCHNOP_set_priority: evtchn_set_priority,
}

# --- xen.h / arch-x86/xen.h: shared_info, vcpu_info ----------------------------------------
XEN_LEGACY_MAX_VCPUS = 32


class vcpu_time_info(ctypes.Structure):
    _fields_ = [("version", c_uint32), ("pad0", c_uint32), ("tsc_timestamp", c_uint64),
                ("system_time", c_uint64), ("tsc_to_system_mul", c_uint32),
                ("tsc_shift", c_int8), ("flags", c_uint8), ("pad1", c_uint8 * 2)]


XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0


class arch_vcpu_info(ctypes.Structure):
    """arch-x86/xen.h, x86_64: cr2 and a pad word."""

    _fields_ = [("cr2", c_uint64), ("pad", c_uint64)]


class vcpu_info(ctypes.Structure):
    """xen.h struct vcpu_info: 64 bytes; x86 has XEN_HAVE_PV_UPCALL_MASK."""

    _fields_ = [("evtchn_upcall_pending", c_uint8), ("evtchn_upcall_mask", c_uint8),
                ("evtchn_pending_sel", xen_ulong_t), ("arch", arch_vcpu_info),
                ("time", vcpu_time_info)]


class arch_shared_info(ctypes.Structure):
    """arch-x86/xen.h, x86_64."""

    _fields_ = [("max_pfn", c_uint64), ("pfn_to_mfn_frame_list_list", xen_pfn_t),
                ("nmi_reason", c_uint64), ("p2m_cr3", c_uint64), ("p2m_vaddr", c_uint64),
                ("p2m_generation", c_uint64)]


class shared_info(ctypes.Structure):
    _fields_ = [("vcpu_info", vcpu_info * XEN_LEGACY_MAX_VCPUS),
                ("evtchn_pending", xen_ulong_t * 64), ("evtchn_mask", xen_ulong_t * 64),
                ("wc_version", c_uint32), ("wc_sec", c_uint32), ("wc_nsec", c_uint32),
                ("wc_sec_hi", c_uint32), ("arch", arch_shared_info)]


# --- grant_table.h -------------------------------------------------------------------------
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12


class grant_entry_v1(ctypes.Structure):
    _fields_ = [("flags", c_uint16), ("domid", domid_t), ("frame", c_uint32)]


GRANT_ENTRIES_PER_FRAME_V1 = PAGE_SIZE // 8


class grant_entry_header(ctypes.Structure):
    _fields_ = [("flags", c_uint16), ("domid", domid_t)]


class grant_entry_v2(ctypes.Structure):
    """union grant_entry_v2 as its full_page / sub_page members lay it out: the header,
    then page_off and length (sub_page; pad0 of full_page), then the 64-bit frame."""

    _fields_ = [("hdr", grant_entry_header), ("page_off", c_uint16), ("length", c_uint16),
                ("frame", c_uint64)]


GRANT_ENTRIES_PER_FRAME_V2 = PAGE_SIZE // 16
GRANT_STATUS_PER_FRAME = PAGE_SIZE // 2  # grant_status_t: uint16_t
GNTTAB_NR_RESERVED_ENTRIES = 8  # the toolstack's (xenstore, console), kept across versions


class gnttab_setup_table(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", c_uint32), ("status", c_int16),
                ("frame_list", guest_handle_t)]


class gnttab_query_size(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", c_uint32), ("max_nr_frames", c_uint32),
                ("status", c_int16)]


class gnttab_set_version(ctypes.Structure):
    _fields_ = [("version", c_uint32)]


class gnttab_get_version(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("pad", c_uint16), ("version", c_uint32)]


class gnttab_get_status_frames(ctypes.Structure):
    _fields_ = [("nr_frames", c_uint32), ("dom", domid_t), ("status", c_int16),
                ("frame_list", guest_handle_t)]


class _gnttab_copy_u(ctypes.Union):
    _fields_ = [("ref", grant_ref_t), ("gmfn", xen_pfn_t)]


class gnttab_copy_ptr(ctypes.Structure):
    _fields_ = [("u", _gnttab_copy_u), ("domid", domid_t), ("offset", c_uint16)]


class gnttab_copy(ctypes.Structure):
    _fields_ = [("source", gnttab_copy_ptr), ("dest", gnttab_copy_ptr), ("len", c_uint16),
                ("flags", c_uint16), ("status", c_int16)]


class gnttab_map_grant_ref(ctypes.Structure):
    _fields_ = [("host_addr", c_uint64), ("flags", c_uint32), ("ref", grant_ref_t),
                ("dom", domid_t), ("status", c_int16), ("handle", grant_handle_t),
                ("dev_bus_addr", c_uint64)]


class gnttab_unmap_grant_ref(ctypes.Structure):
    _fields_ = [("host_addr", c_uint64), ("dev_bus_addr", c_uint64),
                ("handle", grant_handle_t), ("status", c_int16)]


class gnttab_dump_table(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("status", c_int16)]


# --- io/ring.h: the shared ring header -----------------------------------------------------
SRING_HEADER_SIZE = 64  # req_prod, req_event, rsp_prod, rsp_event, 48 bytes of padding


class sring_header(ctypes.Structure):
    _fields_ = [("req_prod", c_uint32), ("req_event", c_uint32), ("rsp_prod", c_uint32),
                ("rsp_event", c_uint32), ("pad", c_uint8 * 48)]


def ring_size(entry_size: int, ring_bytes: int = PAGE_SIZE) -> int:
    """io/ring.h __CONST_RING_SIZE: entries that fit after the header, rounded down to 2^n."""
    n = (ring_bytes - SRING_HEADER_SIZE) // entry_size
    return 1 << (n.bit_length() - 1) if n else 0


# --- io/protocols.h ------------------------------------------------------------------------
XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"

# --- io/blkif.h ----------------------------------------------------------------------------
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6
BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1 << 0
BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4


class blkif_request_segment(ctypes.Structure):
    _fields_ = [("gref", grant_ref_t), ("first_sect", c_uint8), ("last_sect", c_uint8)]


SEGS_PER_INDIRECT_FRAME = PAGE_SIZE // ctypes.sizeof(blkif_request_segment)


class blkif_request(ctypes.Structure):
    _fields_ = [("operation", c_uint8), ("nr_segments", c_uint8), ("handle", c_uint16),
                ("id", c_uint64), ("sector_number", c_uint64),
                ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST)]


class blkif_request_discard(ctypes.Structure):
    _fields_ = [("operation", c_uint8), ("flag", c_uint8), ("handle", c_uint16),
                ("id", c_uint64), ("sector_number", c_uint64), ("nr_sectors", c_uint64)]


class blkif_request_indirect(ctypes.Structure):
    _fields_ = [("operation", c_uint8), ("indirect_op", c_uint8), ("nr_segments", c_uint16),
                ("id", c_uint64), ("sector_number", c_uint64), ("handle", c_uint16),
                ("_pad2", c_uint16),
                ("indirect_grefs", grant_ref_t * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)]


class blkif_response(ctypes.Structure):
    _fields_ = [("id", c_uint64), ("operation", c_uint8), ("status", c_int16)]


BLKIF_RING_ENTRY_SIZE = ctypes.sizeof(blkif_request)  # the union's largest member
BLKIF_RING_SIZE = ring_size(BLKIF_RING_ENTRY_SIZE)

# The same requests as an i386 frontend lays them out (`protocol` = "x86_32-abi"): a
# uint64_t is 4-byte aligned there, so `id` follows `handle` directly and the entries are
# shorter (108 bytes, not 112). Xen's blkif_x86_32_* of xen/include/public/io/blkif.h as
# Linux's xen-blkback/common.h spells them out; the segment (8 bytes) is the same.


class blkif_x86_32_request(ctypes.Structure):
    _pack_ = 4
    _fields_ = blkif_request._fields_


class blkif_x86_32_request_discard(ctypes.Structure):
    _pack_ = 4
    _fields_ = blkif_request_discard._fields_


class blkif_x86_32_request_indirect(ctypes.Structure):
    _pack_ = 4
    _fields_ = blkif_request_indirect._fields_


class blkif_x86_32_response(ctypes.Structure):
    _pack_ = 4
    _fields_ = blkif_response._fields_


BLKIF_X86_32_RING_ENTRY_SIZE = ctypes.sizeof(blkif_x86_32_request)

# --- io/netif.h ----------------------------------------------------------------------------
NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1
XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_XDP = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2
XEN_NETIF_MAX_TX_SIZE = 0xFFFF
XEN_NETIF_NR_SLOTS_MIN = 18  # the slots per packet every backend must accept


class netif_tx_request(ctypes.Structure):
    _fields_ = [("gref", grant_ref_t), ("offset", c_uint16), ("flags", c_uint16),
                ("id", c_uint16), ("size", c_uint16)]


class netif_tx_response(ctypes.Structure):
    _fields_ = [("id", c_uint16), ("status", c_int16)]


class netif_rx_request(ctypes.Structure):
    _fields_ = [("id", c_uint16), ("pad", c_uint16), ("gref", grant_ref_t)]


class netif_rx_response(ctypes.Structure):
    _fields_ = [("id", c_uint16), ("offset", c_uint16), ("flags", c_uint16),
                ("status", c_int16)]


class _netif_extra_gso(ctypes.Structure):
    _fields_ = [("size", c_uint16), ("type", c_uint8), ("pad", c_uint8), ("features", c_uint16)]


class _netif_extra_mcast(ctypes.Structure):
    _fields_ = [("addr", c_uint8 * 6)]


class _netif_extra_u(ctypes.Union):
    _fields_ = [("gso", _netif_extra_gso), ("mcast", _netif_extra_mcast),
                ("pad", c_uint16 * 3)]


class netif_extra_info(ctypes.Structure):
    _fields_ = [("type", c_uint8), ("flags", c_uint8), ("u", _netif_extra_u)]


NETIF_TX_RING_SIZE = ring_size(ctypes.sizeof(netif_tx_request))
NETIF_RX_RING_SIZE = ring_size(ctypes.sizeof(netif_rx_response))

# --- io/console.h --------------------------------------------------------------------------
XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048


class xencons_interface(ctypes.Structure):
    _fields_ = [("in_", c_char * XENCONS_IN_SIZE), ("out", c_char * XENCONS_OUT_SIZE),
                ("in_cons", c_uint32), ("in_prod", c_uint32),
                ("out_cons", c_uint32), ("out_prod", c_uint32)]


# --- io/xs_wire.h --------------------------------------------------------------------------
XS_CONTROL = 0
XS_DEBUG = XS_CONTROL
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
# 20 was XS_RESTRICT, removed
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_GET_FEATURE = 23
XS_SET_FEATURE = 24
XS_GET_QUOTA = 25
XS_SET_QUOTA = 26
XS_TYPE_COUNT = 27
XS_INVALID = 0xFFFF

# xs_wire.h xsd_errors[]: the names a server sends in an XS_ERROR reply
XSD_ERRORS: dict[int, str] = {
    XEN_EINVAL: "EINVAL", XEN_EACCES: "EACCES", XEN_EEXIST: "EEXIST", XEN_EISDIR: "EISDIR",
    XEN_ENOENT: "ENOENT", XEN_ENOMEM: "ENOMEM", XEN_ENOSPC: "ENOSPC", XEN_EIO: "EIO",
    XEN_ENOTEMPTY: "ENOTEMPTY", XEN_ENOSYS: "ENOSYS", XEN_EROFS: "EROFS", XEN_EBUSY: "EBUSY",
    XEN_EAGAIN: "EAGAIN", XEN_EISCONN: "EISCONN", XEN_E2BIG: "E2BIG", XEN_EPERM: "EPERM",
}

XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1
XENSTORE_RING_SIZE = 1024
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


class xsd_sockmsg(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("req_id", c_uint32), ("tx_id", c_uint32),
                ("len", c_uint32)]


class xenstore_domain_interface(ctypes.Structure):
    _fields_ = [("req", c_char * XENSTORE_RING_SIZE), ("rsp", c_char * XENSTORE_RING_SIZE),
                ("req_cons", c_uint32), ("req_prod", c_uint32),
                ("rsp_cons", c_uint32), ("rsp_prod", c_uint32),
                ("server_features", c_uint32), ("connection", c_uint32),
                ("error", c_uint32)]


# --- io/xenbus.h: XenbusState --------------------------------------------------------------
XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2
XenbusStateInitialised = 3
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8


# --- the compat ABI: a 32-bit guest's structs (xen/compat.py converts) ----------------------
# Xen's compat layer (xen/include/compat: the public headers generated for i386): xen_ulong_t,
# xen_pfn_t and guest handles are 32 bits, and a uint64_t member is 4-byte aligned (the i386
# psABI, hence _pack_ = 4). Only the structs of implemented hypercalls whose layout differs
# are here; every other argument struct is the same in both modes (tests/unit/test_compat.py
# checks both kinds against the headers' i386 sizes and offsets).
compat_ulong_t = c_uint32
compat_pfn_t = c_uint32
compat_handle_t = c_uint32


class compat_xen_add_to_physmap(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("size", c_uint16), ("space", c_uint32),
                ("idx", compat_ulong_t), ("gpfn", compat_pfn_t)]


class compat_xen_remove_from_physmap(ctypes.Structure):
    _fields_ = [("domid", domid_t), ("gpfn", compat_pfn_t)]


class compat_xen_memory_map(ctypes.Structure):
    _fields_ = [("nr_entries", c_uint32), ("buffer", compat_handle_t)]


class compat_xen_memory_reservation(ctypes.Structure):
    _fields_ = [("extent_start", compat_handle_t), ("nr_extents", compat_ulong_t),
                ("extent_order", c_uint32), ("mem_flags", c_uint32), ("domid", domid_t)]


class compat_sched_poll(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("ports", compat_handle_t), ("nr_ports", c_uint32), ("timeout", c_uint64)]


class compat_vcpu_runstate_info(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("state", c_int32), ("state_entry_time", c_uint64), ("time", c_uint64 * 4)]


class compat_vcpu_set_singleshot_timer(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("timeout_abs_ns", c_uint64), ("flags", c_uint32)]


class compat_xen_platform_parameters(ctypes.Structure):
    _fields_ = [("virt_start", compat_ulong_t)]


class compat_gnttab_get_status_frames(ctypes.Structure):
    _fields_ = [("nr_frames", c_uint32), ("dom", domid_t), ("status", c_int16),
                ("frame_list", compat_handle_t)]


class compat_gnttab_setup_table(ctypes.Structure):
    _fields_ = [("dom", domid_t), ("nr_frames", c_uint32), ("status", c_int16),
                ("frame_list", compat_handle_t)]


class _compat_gnttab_copy_u(ctypes.Union):
    _fields_ = [("ref", grant_ref_t), ("gmfn", compat_pfn_t)]


class compat_gnttab_copy_ptr(ctypes.Structure):
    _fields_ = [("u", _compat_gnttab_copy_u), ("domid", domid_t), ("offset", c_uint16)]


class compat_gnttab_copy(ctypes.Structure):
    _fields_ = [("source", compat_gnttab_copy_ptr), ("dest", compat_gnttab_copy_ptr),
                ("len", c_uint16), ("flags", c_uint16), ("status", c_int16)]


class compat_arch_vcpu_info(ctypes.Structure):
    """arch-x86/xen-x86_32.h: cr2 and five pad words (vcpu_info stays 64 bytes)."""

    _fields_ = [("cr2", c_uint32), ("pad", c_uint32 * 5)]


class compat_vcpu_info(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("evtchn_upcall_pending", c_uint8), ("evtchn_upcall_mask", c_uint8),
                ("evtchn_pending_sel", compat_ulong_t), ("arch", compat_arch_vcpu_info),
                ("time", vcpu_time_info)]


class compat_arch_shared_info(ctypes.Structure):
    """arch-x86/xen.h for __i386__: wc_sec_hi lives here, at the end."""

    _fields_ = [("max_pfn", compat_ulong_t), ("pfn_to_mfn_frame_list_list", compat_pfn_t),
                ("nmi_reason", compat_ulong_t), ("p2m_cr3", compat_ulong_t),
                ("p2m_vaddr", compat_ulong_t), ("p2m_generation", compat_ulong_t),
                ("wc_sec_hi", c_uint32)]


class compat_shared_info(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("vcpu_info", compat_vcpu_info * XEN_LEGACY_MAX_VCPUS),
                ("evtchn_pending", compat_ulong_t * 32), ("evtchn_mask", compat_ulong_t * 32),
                ("wc_version", c_uint32), ("wc_sec", c_uint32), ("wc_nsec", c_uint32),
                ("arch", compat_arch_shared_info)]


# 2-level event channels of a 32-bit shared_info: 32 words of 32 bits (xen.h).
EVTCHN_2L_NR_CHANNELS_COMPAT = 32 * 32

# Native struct -> its compat layout, where they differ (GuestAccess reads a 32-bit caller's
# argument in the compat one).
COMPAT: dict[type, type] = {
    xen_add_to_physmap: compat_xen_add_to_physmap,
    xen_remove_from_physmap: compat_xen_remove_from_physmap,
    xen_memory_map: compat_xen_memory_map,
    xen_memory_reservation: compat_xen_memory_reservation,
    sched_poll: compat_sched_poll,
    vcpu_runstate_info: compat_vcpu_runstate_info,
    vcpu_set_singleshot_timer: compat_vcpu_set_singleshot_timer,
    xen_platform_parameters: compat_xen_platform_parameters,
    gnttab_setup_table: compat_gnttab_setup_table,
    gnttab_get_status_frames: compat_gnttab_get_status_frames,
    gnttab_copy: compat_gnttab_copy,
    multicall_entry: multicall_entry_32,
}
