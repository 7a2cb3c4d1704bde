"""HYPERVISOR_hvm_op (hvm/hvm_op.h, hvm/params.h; Xen's arch/x86/hvm/hvm.c): the guest's
side of its HVM params, its upcall vectors, the time and TLB flushes."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain

# hvm.c hvm_allow_{set,get}_param: what a guest may do to its own params.
GUEST_SETTABLE = frozenset({
    abi.HVM_PARAM_CALLBACK_IRQ, abi.HVM_PARAM_VM86_TSS, abi.HVM_PARAM_VM86_TSS_SIZED,
    abi.HVM_PARAM_ACPI_IOPORTS_LOCATION, abi.HVM_PARAM_VM_GENERATION_ID_ADDR,
    abi.HVM_PARAM_STORE_EVTCHN, abi.HVM_PARAM_CONSOLE_EVTCHN, abi.HVM_PARAM_X87_FIP_WIDTH,
})
GUEST_READABLE = GUEST_SETTABLE | {
    abi.HVM_PARAM_STORE_PFN, abi.HVM_PARAM_CONSOLE_PFN, abi.HVM_PARAM_ALTP2M,
}
UPCALL_VECTOR_MIN = 0x10  # HVMOP_set_evtchn_upcall_vector: vectors below are exceptions


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_hvm_op, partial(hvm_op, domain))


def hvm_op(domain: XenDomain, call: Call) -> int:
    op, arg = call.args[0], call.args[1]
    a = call.access
    if op in (abi.HVMOP_set_param, abi.HVMOP_get_param):
        p = a.read(arg, abi.xen_hvm_param)
        domain.check_self(p.domid)
        if p.index >= abi.HVM_NR_PARAMS:
            return -abi.XEN_EINVAL
        if op == abi.HVMOP_set_param:
            if p.index not in GUEST_SETTABLE:
                return -abi.XEN_EPERM
            if p.index == abi.HVM_PARAM_CALLBACK_IRQ:
                kind = p.value >> abi.HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT
                if kind == abi.HVM_PARAM_CALLBACK_TYPE_VECTOR and (
                        p.value & 0xFF) < UPCALL_VECTOR_MIN:
                    return -abi.XEN_EINVAL
            domain.set_param(p.index, p.value)
            if p.index == abi.HVM_PARAM_CALLBACK_IRQ:
                domain.latch_shinfo_size(call.long_mode)  # hvm.c hvm_set_param
            return 0
        if p.index not in GUEST_READABLE:
            return -abi.XEN_EPERM
        p.value = domain.params.get(p.index, 0)
        a.write(arg, p)
        return 0
    if op == abi.HVMOP_set_evtchn_upcall_vector:
        uv = a.read(arg, abi.xen_hvm_evtchn_upcall_vector)
        if uv.vcpu >= domain.nr_vcpus:
            return -abi.XEN_ENOENT
        if uv.vector < UPCALL_VECTOR_MIN:
            return -abi.XEN_EINVAL
        domain.set_upcall_vector(uv.vcpu, uv.vector)
        return 0
    if op == abi.HVMOP_get_time:
        a.write(arg, abi.xen_hvm_get_time(domain.system_time()))
        return 0
    if op == abi.HVMOP_flush_tlbs:
        return 0 if arg == 0 else -abi.XEN_EINVAL  # KVM keeps the guest's TLBs right
    if op == abi.HVMOP_pagetable_dying:
        # A hint for shadow paging only: with hardware-assisted paging (KVM's EPT/NPT is
        # Xen's HAP) Xen answers -EINVAL for the domain itself, -EOPNOTSUPP for another
        # (hvm.c); Linux's is_pagetable_dying_supported() then stops asking.
        ptd = a.read(arg, abi.xen_hvm_pagetable_dying)
        if ptd.domid in (abi.DOMID_SELF, domain.domid):
            return -abi.XEN_EINVAL
        if ptd.domid >= abi.DOMID_FIRST_RESERVED:
            return -abi.XEN_ESRCH  # rcu_lock_domain_by_any_id knows only DOMID_SELF
        return -abi.XEN_EOPNOTSUPP
    return -abi.XEN_ENOSYS  # altp2m, the device-model ops, ...
