"""The CPU policy (vm/cpu_policy.py) and xl's `cpuid=` grammar (domain/cpuid_spec.py),
against a fake host's KVM_GET_SUPPORTED_CPUID.

Bit positions come from the SDM vol. 2A CPUID tables, the APM vol. 3 appendix E and the
SDM vol. 4 IA32_ARCH_CAPABILITIES entry; the expected register strings of xl's list form
from xl.cfg(5) (bit 31 first), never from our own output."""

from __future__ import annotations

import os
import textwrap

import pytest

from xenopus.domain.config import ConfigError, load_config
from xenopus.domain.cpuid_spec import parse_cpuid
from xenopus.kvm import uapi as u
from xenopus.vm.cpu_policy import (
    CpuPolicy,
    HostFacts,
    Override,
    PolicyError,
    common,
    default_policy,
    host_max,
    load_policy_file,
    msr_filter_ranges,
    save_policy_file,
)

EAX, EBX, ECX, EDX = range(4)
# SDM 2A / APM 3: CPUID.1:ECX SSE3 0, VMX 5, HYPERVISOR 31; CPUID.1:EDX TM 29;
# CPUID.7.0:EBX AVX512F 16, CLWB 24; CPUID.7.0:EDX MD_CLEAR 10, IBRS/IBPB 26, STIBP 27,
# L1D_FLUSH 28, ARCH_CAPABILITIES 29, SSBD 31; CPUID.8000_0001:ECX SVM 2;
# CPUID.8000_0001:EDX NX 20; CPUID.8000_0008:EBX IBPB 12.
SSE3, VMX, TM, AVX512F, CLWB = 1 << 0, 1 << 5, 1 << 29, 1 << 16, 1 << 24
MD_CLEAR, IBRSB, STIBP, L1D_FLUSH, ARCH_CAPS, SSBD = (1 << 10, 1 << 26, 1 << 27, 1 << 28,
                                                     1 << 29, 1 << 31)
SVM, NX, AMD_IBPB = 1 << 2, 1 << 20, 1 << 12
# IA32_ARCH_CAPABILITIES (MSR 10AH): RDCL_NO 0, IBRS_ALL 1, RSBA 2, MDS_NO 5, TAA_NO 8.
MSR_ARCH_CAPS, RDCL_NO, IBRS_ALL, RSBA, MDS_NO, TAA_NO = 0x10A, 1, 2, 4, 1 << 5, 1 << 8
GENUINE_INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # "Genu" "ntel" "ineI": ebx, ecx, edx


def supported(*rows: tuple[int, int, int, int, int, int]):
    """A kvm_cpuid2 as KVM_GET_SUPPORTED_CPUID returns it: (function, index, regs...)."""
    c = u.cpuid2_with(len(rows))
    for i, (f, idx, a, b, cx, d) in enumerate(rows):
        flags = u.KVM_CPUID_FLAG_SIGNIFCANT_INDEX if f in (4, 7, 0xB, 0xD) else 0
        c.entries[i] = u.kvm_cpuid_entry2(f, idx, flags, a, b, cx, d)
    return c


def intel_host(max_leaf: int = 0xD, leaf7_ebx: int = AVX512F | CLWB,
               caps: int = RDCL_NO | IBRS_ALL | MDS_NO | TAA_NO) -> HostFacts:
    b, c, d = GENUINE_INTEL
    return HostFacts(supported(
        (0, 0, max_leaf, b, c, d),
        (1, 0, 0x000906EA, 0x03100800, SSE3 | VMX | 1 << 31, TM | 1 << 28 | 1),
        (4, 0, 0x1C004121, 0x01C0003F, 0x3F, 0),
        (7, 0, 0, leaf7_ebx, 0, MD_CLEAR | IBRSB | STIBP | L1D_FLUSH | ARCH_CAPS | SSBD),
        (0xB, 0, 1, 2, 0x100, 3),
        (0xD, 0, 7, 0x340, 0x340, 0),
        (0x40000000, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
        (0x80000000, 0, 0x80000008, 0, 0, 0),
        (0x80000001, 0, 0, 0, 1 | SVM, NX | 1 << 29),
        (0x80000008, 0, 0x3027, AMD_IBPB, 0, 0),
    ), {MSR_ARCH_CAPS: caps, 0x8B: 0x100000000})


def vcpu_table(facts: HostFacts):
    """The host's table as one vCPU's (a copy)."""
    s = facts.supported
    c = u.cpuid2_with(s.nent)
    for i in range(s.nent):
        c.entries[i] = u.kvm_cpuid_entry2.from_buffer_copy(s.entries[i])
    return c


def table(cpuid) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    return {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in cpuid.entries[:cpuid.nent]}


# -- xl's grammar ---------------------------------------------------------------------------
def test_string_form_names_become_one_register_string_each() -> None:
    got = {(o.leaf, o.subleaf, o.reg): o.bits for o in parse_cpuid("host,tm=0,sse3=0,clwb=k")}
    assert got == {
        (1, 0, EDX): "xx0" + "x" * 29,  # TM is EDX bit 29: the third character
        (1, 0, ECX): "x" * 31 + "0",  # SSE3 is ECX bit 0: the last
        (7, 0, EBX): "x" * 7 + "k" + "x" * 24,  # CLWB is EBX bit 24
    }


def test_list_form_is_taken_as_written_with_subleaves() -> None:
    ecx = "x" * 31 + "0"
    got = parse_cpuid([f"0x00000001:ecx={ecx}", f"7,0:ebx={'x' * 15}0{'x' * 16},edx={'s' * 32}"])
    assert got == [Override(1, 0, ECX, ecx), Override(7, 0, EBX, "x" * 15 + "0" + "x" * 16),
                   Override(7, 0, EDX, "s" * 32)]


def test_family_and_model_use_the_extended_fields() -> None:
    # AMD family 19h model 21h stepping 0 (Zen 3 "Vermeer") reads CPUID.1:EAX = 0x00A20F10.
    base = CpuPolicy({(0, 0): (1, 0, 0, 0), (1, 0): (0xFFFFFFFF, 0, 0, 0)})
    p = base.with_overrides(parse_cpuid("host,family=0x19,model=0x21,stepping=0"), base)
    assert p.regs(1)[EAX] & 0x0FFF0FFF == 0x00A20F10
    p = base.with_overrides(parse_cpuid("host,family=6,model=0x9e,stepping=10"), base)
    assert p.regs(1)[EAX] & 0x0FFF0FFF == 0x000906EA  # Intel family 6 model 9Eh stepping A


@pytest.mark.parametrize("value, message", [
    ("host,frobnicate=1", "unknown CPUID feature 'frobnicate'"),
    ("hots,sse3=0", 'starts with "host"'),
    ("host,sse3", "expected NAME=VALUE"),
    ("host,sse3=2", "does not fit in 1 bit"),
    ("host,sse3=maybe", "expected a number or x, k, s"),
    ("host,htt=0", "follows each vCPU's topology"),
    ("host,localapicid=3", "follows each vCPU's topology"),
    ("host,maxhvleaf=2", "hypervisor leaves"),
    ("host,hypervisor=0", "hypervisor.*always set"),
    (["1:ecx=" + "x" * 31], "expected 32 characters"),
    (["1:ecx=" + "x" * 31 + "2"], "expected 32 characters"),
    (["zz:ecx=" + "x" * 32], "not a leaf[,subleaf]"),
    (["1:efx=" + "x" * 32], "expected eax=, ebx=, ecx= or edx="),
    (["1" + "x" * 32], "expected LEAF[,SUBLEAF]:eXx=BITS"),
    (["0x40000001:eax=" + "0" * 32], "hypervisor leaves"),
    (["0xb:edx=" + "0" * 32], "follows each vCPU's topology"),
])
def test_bad_values_name_the_problem(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_cpuid(value)  # type: ignore[arg-type]


# -- the host and the defaults ---------------------------------------------------------------
def test_host_max_leaves_out_the_hypervisor_leaves_and_keeps_arch_caps() -> None:
    p = host_max(intel_host())
    assert (0x40000000, 0) not in p.cpuid
    assert p.vendor == "GenuineIntel" and p.max_leaf == 0xD and p.max_ext_leaf == 0x80000008
    assert p.msrs == {MSR_ARCH_CAPS: RDCL_NO | IBRS_ALL | MDS_NO | TAA_NO}  # not UCODE_REV
    assert p.regs(1)[EBX] >> 24 == 0  # the calling CPU's APIC ID is not the host's policy


def test_default_hides_nested_virtualisation_and_keeps_every_speculation_control() -> None:
    p = default_policy(host_max(intel_host()))
    assert not p.regs(1)[ECX] & VMX and not p.regs(0x80000001)[ECX] & SVM
    assert p.regs(7)[EDX] == MD_CLEAR | IBRSB | STIBP | L1D_FLUSH | ARCH_CAPS | SSBD
    assert p.regs(0x80000008)[EBX] & AMD_IBPB
    assert {"md-clear", "ibrsb", "stibp", "ssbd", "arch-caps", "arch-caps:mds-no",
            "arch-caps:taa-no", "arch-caps:rdcl-no", "arch-caps:ibrs-all"} <= set(p.features())


def test_overrides_force_keep_and_take_the_host_bit() -> None:
    host = host_max(intel_host())
    p = default_policy(host)
    q = p.with_overrides(parse_cpuid("host,sse3=0,vmx=k,nx=x"), host)
    assert not q.regs(1)[ECX] & SSE3
    assert q.regs(1)[ECX] & VMX  # k: the host's bit, though the default hid it
    assert q.regs(0x80000001)[EDX] & NX
    with pytest.raises(PolicyError, match="avx512-vbmi=1, but this host cannot offer"):
        p.with_overrides(parse_cpuid("host,avx512-vbmi=1"), host)


def test_apply_keeps_each_vcpu_s_topology_and_drops_leaves_above_the_level() -> None:
    facts = intel_host()
    vcpu = vcpu_table(facts)
    vcpu.entries[1].ebx = 0x05100800  # this vCPU's APIC ID 5
    policy = default_policy(host_max(facts)).with_overrides(
        parse_cpuid("host,maxleaf=7,sse3=0,nx=0"), host_max(facts))
    got = table(policy.apply(vcpu))
    assert got[(0, 0)][EAX] == 7
    assert (0xD, 0) not in got and (0xB, 0) not in got  # above the new maximum leaf
    assert got[(1, 0)][EBX] == 0x05100800  # the APIC ID stays the vCPU's
    assert got[(1, 0)][ECX] == 1 << 31  # SSE3 and VMX gone; the rest as the host's
    assert got[(4, 0)] == (0x1C004121, 0x01C0003F, 0x3F, 0)  # topology leaf untouched
    assert got[(0x40000000, 0)][EAX] == 0x40000001  # the hypervisor's leaves untouched
    assert not got[(0x80000001, 0)][EDX] & NX


# -- MSRs -----------------------------------------------------------------------------------
def test_speculation_msrs_follow_the_cpuid_that_announces_them() -> None:
    p = default_policy(host_max(intel_host()))
    read, write = p.allowed_msrs([0x48, 0x10A, 0xC0010117, 0x174])
    assert {0x48, 0x10A, 0x174, 0x10} <= read  # SPEC_CTRL, ARCH_CAPS, SYSENTER_CS, TSC
    assert 0x10A not in write  # ARCH_CAPABILITIES is read-only
    assert {0x49, 0x10B} <= write and not {0x49, 0x10B} & read  # PRED_CMD, FLUSH_CMD
    assert 0xC0010117 not in read | write  # SVM's VM_HSAVE_PA: no SVM in the policy
    bare = p.without("md-clear", "ibrsb", "stibp", "l1d-flush", "arch-caps", "ssbd",
                     "ibpb")
    read, write = bare.allowed_msrs([0x48, 0x10A])
    assert not {0x48, 0x49, 0x10A, 0x10B} & (read | write)


# APM 3, CPUID Fn8000_0008_EBX: IBPB 12, IBRS 14, STIBP 15, SSBD 24, VIRT_SSBD 25, SSB_NO 26.
AMD_IBRS, AMD_STIBP, AMD_SSBD, VIRT_SSBD, SSB_NO = 1 << 14, 1 << 15, 1 << 24, 1 << 25, 1 << 26
AUTHENTIC_AMD = (0x68747541, 0x444D4163, 0x69746E65)  # "Auth" "cAMD" "enti": ebx, ecx, edx


def amd_host() -> HostFacts:
    """An AMD host (as these build machines are) announcing its speculation controls in
    0x80000008.EBX, with no ARCH_CAPABILITIES (AMD has none)."""
    b, c, d = AUTHENTIC_AMD
    return HostFacts(supported(
        (0, 0, 0xD, b, c, d),
        (1, 0, 0x00A20F10, 0x00100800, SSE3 | 1 << 31, 1 << 28 | 1),
        (7, 0, 0, CLWB, 0, 0),
        (0x80000000, 0, 0x80000008, b, c, d),
        (0x80000001, 0, 0, 0, 1 | SVM, NX | 1 << 29),
        (0x80000008, 0, 0x3030,
         AMD_IBPB | AMD_IBRS | AMD_STIBP | AMD_SSBD | VIRT_SSBD | SSB_NO, 0, 0),
    ), {})


def test_an_amd_host_s_speculation_controls_are_kept_and_their_msrs_follow() -> None:
    p = default_policy(host_max(amd_host()))
    assert not p.regs(0x80000001)[ECX] & SVM  # nested virtualisation hidden
    controls = AMD_IBPB | AMD_IBRS | AMD_STIBP | AMD_SSBD | VIRT_SSBD | SSB_NO
    assert p.regs(0x80000008)[EBX] & controls == controls
    assert {"ibpb", "ibrs", "amd-stibp", "amd-ssbd", "virt-ssbd", "ssb-no"} <= set(p.features())
    read, write = p.allowed_msrs([0x10, 0xC0000080])
    assert {0x48, 0xC001011F} <= read and {0x48, 0x49, 0xC001011F} <= write
    assert 0x49 not in read and 0x10A not in read  # PRED_CMD write-only; no ARCH_CAPS
    # Without them (cpuid="host,ibpb=0,..."), their MSRs are #GP too.
    bare = p.with_overrides(parse_cpuid("host,ibpb=0,ibrs=0,amd-stibp=0,amd-ssbd=0,virt-ssbd=0"),
                            host_max(amd_host()))
    read, write = bare.allowed_msrs([0x10])
    assert not {0x48, 0x49, 0xC001011F} & (read | write)


def decode(ranges) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {u.KVM_MSR_FILTER_READ: set(), u.KVM_MSR_FILTER_WRITE: set()}
    for flags, base, bitmap in ranges:
        for i in range(len(bitmap) * 8):
            if bitmap[i // 8] >> (i % 8) & 1:
                for kind in out:
                    if flags & kind:
                        out[kind].add(base + i)
    return out


def test_filter_ranges_allow_exactly_the_policy_less_what_a_handler_takes() -> None:
    read = {0x10, 0x48, 0x10A, 0xC0000080, 0x4B564D01}
    write = {0x10, 0x48, 0x49, 0xC0000080, 0x40000000, 0x4B564D01}
    xen = [(u.KVM_MSR_FILTER_WRITE, 0x40000000, b"\xfe")]  # Xen's hypercall-page MSR
    ranges = msr_filter_ranges(read, write, xen)
    assert len(ranges) <= u.KVM_MSR_FILTER_MAX_RANGES
    assert all(len(b) <= u.KVM_MSR_FILTER_MAX_BITMAP_SIZE for _, _, b in ranges)
    got = decode(ranges)
    assert got[u.KVM_MSR_FILTER_READ] == read
    assert got[u.KVM_MSR_FILTER_WRITE] == write - {0x40000000}


def test_the_default_policy_s_filter_fits_kvm_s_sixteen_ranges() -> None:
    p = default_policy(host_max(intel_host()))
    kvm_list = [0x174, 0x175, 0x176, 0xC0000081, 0xC0000102, 0x10, 0x277, 0x48, 0x1D9,
                0x4B564D00, 0x4B564D07, 0x3B, 0x6E0, 0x10A, 0x345, 0x1A0, 0xC001011F]
    read, write = p.allowed_msrs(kvm_list)
    ranges = msr_filter_ranges(read, write)
    assert len(ranges) <= u.KVM_MSR_FILTER_MAX_RANGES
    assert decode(ranges)[u.KVM_MSR_FILTER_READ] == read


# -- levelling and migration checks ---------------------------------------------------------
def test_common_policy_is_the_intersection_with_the_lowest_levels() -> None:
    a = default_policy(host_max(intel_host(0xD, AVX512F | CLWB, RDCL_NO | MDS_NO | TAA_NO)))
    b = default_policy(host_max(intel_host(0xB, CLWB, RDCL_NO | RSBA | MDS_NO)))
    c = common([a, b])
    assert c.max_leaf == 0xB
    assert c.regs(7)[EBX] == CLWB  # AVX512F only on a
    # "not affected" bits all hosts have; RSBA ("affected") from any host.
    assert c.msrs[MSR_ARCH_CAPS] == RDCL_NO | MDS_NO | RSBA
    assert b.missing_from(a) == []  # told of RSBA, on a host without it: safe
    assert a.missing_from(b) == [
        "basic leaves up to 0xd (this host: 0xb)", "avx512f", "arch-caps:taa-no",
        "arch-caps:rsba (this host is affected; the guest was told it is not)"]
    assert c.missing_from(a) == [] and c.missing_from(b) == []


def test_common_refuses_different_vendors() -> None:
    intel = host_max(intel_host())
    amd = intel.with_bits(0, 0, EBX, 0xFFFFFFFF, 0x68747541)  # "Auth"
    with pytest.raises(PolicyError, match="different vendors"):
        common([intel, amd])
    assert "vendor" in intel.missing_from(amd)[0]


def test_policy_files_round_trip_and_refuse_what_is_not_one(tmp_path) -> None:
    p = default_policy(host_max(intel_host(), "host a"))
    path = tmp_path / "a.policy"
    save_policy_file(str(path), p)
    assert load_policy_file(str(path)) == p
    (tmp_path / "bad.policy").write_text('{"version": 1, "cpuid": [["0x1", 0, 1, 2, 3]]}')
    with pytest.raises(PolicyError, match="cpuid entry 0: expected"):
        load_policy_file(str(tmp_path / "bad.policy"))
    (tmp_path / "json.policy").write_text("host,sse3=0")
    with pytest.raises(PolicyError, match="not JSON"):
        load_policy_file(str(tmp_path / "json.policy"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy_file(str(tmp_path / "fifo"))  # not read: it would block


# -- the config keys ------------------------------------------------------------------------
def cfg(tmp_path, body: str):
    path = tmp_path / "d.cfg"
    path.write_text('name = "d"\nkernel = "k.elf"\n' + textwrap.dedent(body))
    return load_config(path)[0]


def test_cpuid_key_takes_both_forms(tmp_path) -> None:
    assert cfg(tmp_path, 'cpuid = "host,tm=0,sse3=0"\n').cpuid == "host,tm=0,sse3=0"
    listed = cfg(tmp_path, 'cpuid = [ "0x00000001:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0" ]\n')
    assert listed.cpuid == ["0x00000001:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"]
    assert type(listed).from_dict(listed.to_dict()) == listed


def test_an_unknown_cpuid_name_is_a_config_error_naming_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"d\.cfg:3: cpuid: unknown CPUID feature 'sse5'"):
        cfg(tmp_path, 'cpuid = "host,sse3=0,sse5=1"\n')


def test_cpu_policy_hosts_reads_the_files_beside_the_config(tmp_path) -> None:
    save_policy_file(str(tmp_path / "a.policy"), host_max(intel_host(), "host a"))
    c = cfg(tmp_path, 'cpu_policy_hosts = [ "a.policy" ]\n')
    assert c.cpu_policy_hosts is not None
    assert CpuPolicy.from_dict(c.cpu_policy_hosts[0]).origin == "host a"
    with pytest.raises(ConfigError, match=r"cpu_policy_hosts: .*missing\.policy: No such file"):
        cfg(tmp_path, 'cpu_policy_hosts = [ "missing.policy" ]\n')


def test_create_dry_run_json_has_libxl_s_cpuid_list(tmp_path) -> None:
    from xenopus.toolstack.xlformat import libxl_domain_config

    c = cfg(tmp_path, 'cpuid = "host,tm=0,sse3=0,clwb=0"\nmsr_relaxed = 1\n')
    b_info = libxl_domain_config(c, "00000000-0000-0000-0000-000000000000")["b_info"]
    assert isinstance(b_info, dict)
    # libxl_cpuid_policy_list_gen_json: "subleaf" only for leaves that have one.
    assert b_info["cpuid"] == [
        {"leaf": 1, "edx": "xx0" + "x" * 29, "ecx": "x" * 31 + "0"},
        {"leaf": 7, "subleaf": 0, "ebx": "x" * 7 + "0" + "x" * 24},
    ]
    assert b_info["arch_x86"] == {"msr_relaxed": "True"}
