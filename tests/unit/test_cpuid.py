"""The guest CPUID policy (xenopus.vm.cpuid) against the published layouts.

Numbers come from Linux's arch/x86/include/uapi/asm/kvm_para.h and
Documentation/virt/kvm/x86/cpuid.rst, never from our own output."""

from __future__ import annotations

from xenopus.kvm import uapi as u
from xenopus.vm.cpuid import guest_cpuid

# kvm_para.h: KVM_CPUID_SIGNATURE 0x40000000, KVM_CPUID_FEATURES 0x40000001; the signature
# "KVMKVMKVM\0\0\0" as EBX, ECX, EDX ("KVMK", "VMKV", "M\0\0\0", little-endian).
SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x0000004D)
# kvm_para.h bit numbers: CLOCKSOURCE 0, NOP_IO_DELAY 1, CLOCKSOURCE2 3, PV_EOI 6,
# PV_UNHALT 7, MSI_EXT_DEST_ID 15, HC_MAP_GPA_RANGE 16, MIGRATION_CONTROL 17,
# CLOCKSOURCE_STABLE_BIT 24.
IN_KERNEL = 1 << 0 | 1 << 1 | 1 << 3 | 1 << 6 | 1 << 7 | 1 << 24
VMM_SIDE = 1 << 15 | 1 << 16 | 1 << 17
HYPERVISOR = 1 << 31  # CPUID.1:ECX[31]


def supported(*rows: tuple[int, int, int, int, int]) -> object:
    c = u.cpuid2_with(len(rows))
    for i, (f, a, b, cx, d) in enumerate(rows):
        c.entries[i] = u.kvm_cpuid_entry2(function=f, eax=a, ebx=b, ecx=cx, edx=d)
    return c


def leaves(cpuid) -> dict[int, tuple[int, int, int, int]]:
    return {e.function: (e.eax, e.ebx, e.ecx, e.edx) for e in cpuid.entries[:cpuid.nent]}


KVM = supported(
    (0, 0xD, 0x68747541, 0x444D4163, 0x69746E65),
    (1, 0x60FB1, 0x800, 0x76F83203, 0xF8BFBFD),  # ECX[31] clear, as a 6.12 KVM reports it
    (0x40000000, 0x40000001, *SIGNATURE),
    (0x40000001, IN_KERNEL | VMM_SIDE, 0, 0, 0),
)


def test_hypervisor_bit_is_set_and_the_rest_of_leaf_1_kept() -> None:
    eax, ebx, ecx, edx = leaves(guest_cpuid(KVM, 2_500_000))[1]
    assert ecx == 0x76F83203 | HYPERVISOR
    assert (eax, ebx, edx) == (0x60FB1, 0x800, 0xF8BFBFD)


def test_kvm_signature_leaf_names_kvm_and_the_timing_leaf_as_the_highest() -> None:
    got = leaves(guest_cpuid(KVM, 2_500_000))
    assert got[0x40000000] == (0x40000010, *SIGNATURE)


def test_features_are_kvms_less_those_a_vmm_must_implement() -> None:
    eax, ebx, ecx, edx = leaves(guest_cpuid(KVM, 2_500_000))[0x40000001]
    assert eax == IN_KERNEL
    assert (ebx, ecx, edx) == (0, 0, 0)  # EDX: no KVM_HINTS_REALTIME


def test_timing_leaf_has_the_tsc_and_apic_timer_rates_in_khz() -> None:
    # QEMU's vmware-cpuid-freq: 0x40000010 EAX = TSC kHz, EBX = APIC bus kHz (1 GHz in KVM).
    assert leaves(guest_cpuid(KVM, 2_500_000))[0x40000010] == (2_500_000, 1_000_000, 0, 0)


def test_without_a_tsc_rate_there_is_no_timing_leaf() -> None:
    got = leaves(guest_cpuid(KVM, None))
    assert 0x40000010 not in got
    assert got[0x40000000][0] == 0x40000001


def test_a_kvm_without_paravirtual_leaves_gets_none_added() -> None:
    bare = supported((0, 0xD, 0, 0, 0), (1, 0, 0, 0, 0))
    got = leaves(guest_cpuid(bare, 2_500_000))
    assert sorted(got) == [0, 1]
    assert got[1][2] == HYPERVISOR


def test_the_input_is_not_modified() -> None:
    guest_cpuid(KVM, 2_500_000)
    assert leaves(KVM)[1][2] == 0x76F83203
