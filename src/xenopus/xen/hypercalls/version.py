"""HYPERVISOR_xen_version (version.h; Xen's common/kernel.c)."""

from __future__ import annotations

import ctypes
from functools import partial
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import XEN_VERSION, Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

EXTRAVERSION = b".0-xenopus"
CHANGESET = b"xenopus"
CAPABILITIES = b"xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
FEATURES = (
    1 << abi.XENFEAT_writable_page_tables
    | 1 << abi.XENFEAT_auto_translated_physmap
    | 1 << abi.XENFEAT_supervisor_mode_kernel
    | 1 << abi.XENFEAT_hvm_callback_vector
    | 1 << abi.XENFEAT_hvm_safe_pvclock
    | 1 << abi.XENFEAT_linux_rsdp_unrestricted
)
STRINGS = {
    abi.XENVER_extraversion: (EXTRAVERSION, abi.xen_extraversion_t),
    abi.XENVER_capabilities: (CAPABILITIES, abi.xen_capabilities_info_t),
    abi.XENVER_changeset: (CHANGESET, abi.xen_changeset_info_t),
}


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_xen_version, partial(xen_version, domain))


def xen_version(domain: XenDomain, call: Call) -> int:
    cmd, arg = call.args[0], call.args[1]
    a = call.access
    if cmd == abi.XENVER_version:
        major, minor = XEN_VERSION
        return major << 16 | minor
    if cmd in STRINGS:
        text, ctype = STRINGS[cmd]
        a.write(arg, text.ljust(ctypes.sizeof(ctype), b"\0"))
        return 0
    if cmd == abi.XENVER_compile_info:
        a.write(arg, abi.xen_compile_info(b"python", b"xenopus", b"", b""))
        return 0
    if cmd == abi.XENVER_platform_parameters:
        a.write(arg, abi.xen_platform_parameters(virt_start=0))  # 0 for HVM vCPUs
        return 0
    if cmd == abi.XENVER_get_features:
        fi = a.read(arg, abi.xen_feature_info)
        if fi.submap_idx >= abi.XENFEAT_NR_SUBMAPS:
            return -abi.XEN_EINVAL
        fi.submap = FEATURES
        a.write(arg, fi)
        return 0
    if cmd == abi.XENVER_pagesize:
        return abi.PAGE_SIZE
    if cmd == abi.XENVER_guest_handle:
        a.write(arg, domain.handle)
        return 0
    if cmd in (abi.XENVER_commandline, abi.XENVER_build_id):
        return -abi.XEN_EPERM  # XSM: privileged domains only
    return -abi.XEN_ENOSYS
