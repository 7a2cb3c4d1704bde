"""The guest's CPUID policy: what a vCPU is told about the hypervisor under it.

KVM_GET_SUPPORTED_CPUID lists what KVM can offer, not what a guest should see. Like every
production VMM, a guest here is told that it runs on a hypervisor and which paravirtual
interfaces KVM serves, so that Linux takes its clock from kvmclock and its TSC rate from
the hypervisor instead of calibrating against the PIT — which, with port I/O trapping to
userspace, fails (no TSC rate, no TSC-deadline timer, no tick: a hang in calibrate_delay).

- CPUID.1:ECX[31], the bit reserved for hypervisors (AMD APM 3, "CPUID Fn0000_0001_ECX";
  Intel SDM 2A, CPUID: "Not Used"): Linux looks for hypervisor leaves only when it is set
  (`hypervisor_cpuid_base()`, arch/x86/include/asm/processor.h).
- 0x40000000 (`KVM_CPUID_SIGNATURE`): "KVMKVMKVM\\0\\0\\0" and the highest leaf;
  0x40000001 (`KVM_CPUID_FEATURES`): the KVM_FEATURE_* bits this KVM supports whose host
  side lives in the kernel (Documentation/virt/kvm/x86/cpuid.rst).
- 0x40000010, the generic timing leaf (VMware's hypervisor CPUID proposal, which QEMU's
  `vmware-cpuid-freq` gives with KVM's leaves): EAX the TSC frequency in kHz, EBX the
  local APIC timer's in kHz.

CPUID 0x15/0x16 are not added: Linux reads the TSC rate from them only on Intel CPUs
(`native_calibrate_tsc()`, arch/x86/kernel/tsc.c), and kvmclock covers every vendor.
A Xen guest gets Xen's leaves at 0x40000000 instead (`xenopus.xen.hypercall`).
"""

from __future__ import annotations

import ctypes

from xenopus.kvm import uapi as u

HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX
HYPERVISOR_LEAVES = range(0x40000000, 0x40010000)  # what KVM and Xen scan, in 0x100 steps
TIMING_LEAF = 0x40000010
# KVM's local APIC timer runs at 1 GHz (arch/x86/kvm/lapic.h, APIC_BUS_CYCLE_NS_DEFAULT = 1).
APIC_TIMER_KHZ = 1_000_000
# Features whose host side is the VMM's, which xenopus does not implement: the extended
# MSI destination ID (a split irqchip's MSI decoding), KVM_HC_MAP_GPA_RANGE exits and
# the migration-control MSR.
VMM_FEATURES = (
    1 << u.KVM_FEATURE_MSI_EXT_DEST_ID
    | 1 << u.KVM_FEATURE_HC_MAP_GPA_RANGE
    | 1 << u.KVM_FEATURE_MIGRATION_CONTROL
)


def _signature_words(signature: bytes) -> tuple[int, int, int]:
    """EBX, ECX, EDX of a 12-byte signature leaf (little-endian words)."""
    ebx, ecx, edx = (int.from_bytes(signature[i:i + 4], "little") for i in (0, 4, 8))
    return ebx, ecx, edx


def kvm_leaves(features: int, tsc_khz: int | None) -> list[u.kvm_cpuid_entry2]:
    """KVM's paravirtual leaves at 0x40000000: the signature, `features` (EAX of
    KVM_CPUID_FEATURES, masked to what xenopus serves) and, when the TSC rate is known,
    the timing leaf."""
    top = TIMING_LEAF if tsc_khz else u.KVM_CPUID_FEATURES
    ebx, ecx, edx = _signature_words(u.KVM_SIGNATURE)
    leaves = [
        u.kvm_cpuid_entry2(function=u.KVM_CPUID_SIGNATURE, eax=top, ebx=ebx, ecx=ecx, edx=edx),
        u.kvm_cpuid_entry2(function=u.KVM_CPUID_FEATURES, eax=features & ~VMM_FEATURES),
    ]
    if tsc_khz:
        leaves.append(u.kvm_cpuid_entry2(function=TIMING_LEAF, eax=tsc_khz, ebx=APIC_TIMER_KHZ))
    return leaves


def guest_cpuid(cpuid: ctypes.Structure, tsc_khz: int | None) -> ctypes.Structure:
    """A copy of `cpuid` (a kvm_cpuid2 from KVM_GET_SUPPORTED_CPUID, any topology applied)
    with the hypervisor bit set and KVM's leaves as above in place of whatever KVM listed
    in the hypervisor range. With no KVM leaves in `cpuid`, KVM offers none: none are added."""
    entries = [u.kvm_cpuid_entry2.from_buffer_copy(cpuid.entries[i]) for i in range(cpuid.nent)]
    features = next((e.eax for e in entries if e.function == u.KVM_CPUID_FEATURES), None)
    out = [e for e in entries if e.function not in HYPERVISOR_LEAVES]
    for e in out:
        if e.function == 1:
            e.ecx |= HYPERVISOR_BIT
    if features is not None:
        out += kvm_leaves(features, tsc_khz)
    result = u.cpuid2_with(len(out))
    for i, e in enumerate(out):
        result.entries[i] = e
    return result
