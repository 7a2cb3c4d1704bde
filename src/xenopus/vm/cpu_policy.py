"""A domain's CPU policy: the CPUID leaves its vCPUs see and the MSRs they may touch.

Xen keeps one `cpu_policy` per domain (xen/include/xen/lib/x86/cpu-policy.h): CPUID
leaves plus the feature MSRs, derived from the host's "max" policy and the toolstack's
request, checked on migration against what the receiving host can offer. This is ours,
over KVM:

- the host's offer (`host_max`) is KVM_GET_SUPPORTED_CPUID plus the feature MSRs KVM
  reports on the system fd (api.rst 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSRS):
  IA32_ARCH_CAPABILITIES, whose bits tell the guest which speculative-execution flaws
  the hardware does not have (RDCL_NO, MDS_NO, TAA_NO, ...) and which controls it has;
- the default policy (`default_policy`) hides what a domain here cannot use (VMX/SVM:
  xenopus offers no nested virtualisation, as Xen's `nestedhvm` defaults off) and keeps
  every speculation control the host has (SPEC_CTRL's IBRS/STIBP/SSBD in CPUID 7.EDX and
  AMD's 0x80000008.EBX, MD_CLEAR, IBPB/PRED_CMD, L1D_FLUSH, ARCH_CAPABILITIES);
- xl's `cpuid=` overrides (`Override`, parsed by domain/cpuid_spec.py) and levelling to
  the policy common to several hosts (`common`) adjust it;
- `apply` writes it into each vCPU's KVM_SET_CPUID2 table (topology stays per vCPU),
  `msrs` are the feature-MSR values set on every vCPU (KVM_SET_MSRS), and
  `msr_filter_ranges` turns `allowed_msrs` into a default-deny KVM_X86_SET_MSR_FILTER:
  a guest RDMSR/WRMSR of any other MSR gets #GP, as on Xen (its guest_rdmsr/wrmsr).

A policy is plain data (`to_dict`/`from_dict`, the JSON a `cpu-policy -o FILE` saves and
the save stream carries); `missing_from` names what a receiving host cannot offer.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from xenopus.arch import x86
from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm
from xenopus.vm.vcpu import MsrHandler

Leaf = tuple[int, int]  # (function, subleaf): subleaf 0 where the leaf has none
Regs = tuple[int, int, int, int]  # eax, ebx, ecx, edx
VERSION = 1
_MASK32 = 0xFFFFFFFF
EXTENDED = 0x80000000
HYPERVISOR_LEAVES = range(0x40000000, 0x40010000)  # the hypervisor's own (vm/cpuid.py, Xen's)
# Per-vCPU topology: these leaves come from each vCPU's own table (vm/vcpu.py
# cpuid_topology), never from a policy that is the same for every vCPU.
TOPOLOGY_LEAVES = frozenset({0x4, 0xB, 0x1F, 0x8000001D, 0x8000001E})
# ... and these fields of other leaves: 1.EBX (APIC ID, logical count, CLFLUSH size,
# brand), 1.EDX.HTT, 0x80000001.ECX.CmpLegacy, 0x80000008.ECX (core count, APIC ID size).
_PER_VCPU: dict[tuple[int, int], int] = {
    (0x1, x86.EBX): _MASK32,
    (0x1, x86.EDX): 1 << 28,
    (0x80000001, x86.ECX): 1 << 1,
    (0x80000008, x86.ECX): _MASK32,
}


# Fields KVM_GET_SUPPORTED_CPUID fills from the CPU the caller runs on (its APIC IDs):
# zero in a policy, so that a host's policy is the same from any CPU (each vCPU gets its own).
_HOST_VARYING: dict[tuple[int, int], int] = {
    (0x1, x86.EBX): 0xFF000000, (0xB, x86.EDX): _MASK32, (0x1F, x86.EDX): _MASK32,
    (0x8000001E, x86.EAX): _MASK32,
}


def per_vcpu_mask(leaf: int, reg: int) -> int:
    """The bits of a register that each vCPU's topology sets, which no policy changes."""
    return _MASK32 if leaf in TOPOLOGY_LEAVES else _PER_VCPU.get((leaf, reg), 0)


# What a domain here cannot use: nested virtualisation (xl's nestedhvm, off by default).
HIDDEN = ("vmx", "svm")
# IA32_ARCH_CAPABILITIES bits that say the hardware *is* affected: a guest that may run on
# several hosts must be told if any of them has one (Xen levels them the same way).
ARCH_CAPS_BAD = (1 << x86.ARCH_CAPS_BITS["rsba"]) | (1 << x86.ARCH_CAPS_BITS["rrsba"])
# The feature MSRs a policy carries (the rest of KVM's feature list — microcode revision,
# PERF_CAPABILITIES, PLATFORM_INFO — KVM answers on its own).
POLICY_MSRS = (x86.MSR_IA32_ARCH_CAPABILITIES,)

# MSRs of every x86-64 guest that KVM serves in the kernel without listing them in
# KVM_GET_MSR_INDEX_LIST (SDM vol. 4 Table 2-2 and §2.1; APM vol. 2 appendix A;
# arch/x86/kvm/x86.c kvm_get_msr_common and svm.c/vmx.c): (first, last) inclusive.
BASE_MSRS: tuple[tuple[int, int], ...] = (
    (x86.MSR_IA32_TSC, x86.MSR_IA32_TSC),
    (0x17, 0x17),  # IA32_PLATFORM_ID
    (x86.MSR_IA32_APICBASE, x86.MSR_IA32_APICBASE),
    (0x2A, 0x2A),  # EBL_CR_POWERON
    (0x3A, 0x3A),  # IA32_FEATURE_CONTROL
    (x86.MSR_IA32_UCODE_REV, x86.MSR_IA32_UCODE_REV),
    (x86.MSR_PLATFORM_INFO, x86.MSR_PLATFORM_INFO),
    (0xFE, 0xFE),  # IA32_MTRRCAP
    (0x179, 0x17B),  # IA32_MCG_CAP, _STATUS, _CTL
    (0x198, 0x199),  # IA32_PERF_STATUS, _CTL
    (0x200, 0x20F),  # variable-range MTRRs (KVM_NR_VAR_MTRR = 8 pairs)
    (0x250, 0x250), (0x258, 0x259), (0x268, 0x26F),  # fixed-range MTRRs
    (x86.MSR_IA32_CR_PAT, x86.MSR_IA32_CR_PAT),
    (0x2FF, 0x2FF),  # IA32_MTRR_DEF_TYPE
    (0x400, 0x47F),  # MCi_CTL/STATUS/ADDR/MISC of KVM's 32 machine-check banks
    (0x800, 0x8FF),  # x2APIC (KVM never filters them; listed for completeness)
    (x86.MSR_EFER, x86.MSR_EFER),
    (x86.MSR_FS_BASE, x86.MSR_GS_BASE),
    (0xC0010010, 0xC0010010),  # AMD SYSCFG
    (0xC001001F, 0xC001001F),  # AMD NB_CFG
    (0xC0010020, 0xC0010020),  # AMD PATCH_LOADER (KVM ignores writes)
    (0xC0010058, 0xC0010058),  # AMD MMIO_CONF_BASE
    (0xC0010140, 0xC0010141),  # AMD OSVW_ID_LENGTH, OSVW_STATUS
    (0xC0011022, 0xC0011023),  # AMD DC_CFG, TW_CFG
    (0xC0011029, 0xC001102A),  # AMD DE_CFG, BU_CFG2
    (0xC001102C, 0xC001102C),  # AMD EX_CFG
)
# MSRs that exist for a guest only with the CPUID features that announce them; KVM's
# index list may carry them regardless of the guest's policy.
# KVM serves some of them to any guest: SVM's VM_CR and VM_HSAVE_PA, for one.
_GATED = (x86.MSR_IA32_SPEC_CTRL, x86.MSR_IA32_PRED_CMD, x86.MSR_IA32_FLUSH_CMD,
          x86.MSR_IA32_ARCH_CAPABILITIES, x86.MSR_AMD64_VIRT_SPEC_CTRL,
          x86.MSR_IA32_PERF_CAPABILITIES, *x86.SVM_MSRS, *x86.VMX_MSRS)


class PolicyError(ValueError):
    """A policy that cannot be built, read or offered; the message names the problem."""


class Override(NamedTuple):
    """One register of one leaf as xl's list form spells it: 32 characters, bit 31 first,
    each '1'/'0' (force), 'x' (the default policy's bit), 'k' or 's' (the host's bit)."""

    leaf: int
    subleaf: int
    reg: int
    bits: str


def feature_names() -> dict[tuple[int, int, int, int], str]:
    """(leaf, subleaf, register, bit) -> the first xl name of that single-bit feature."""
    names: dict[tuple[int, int, int, int], str] = {}
    for name, (leaf, sub, reg, bit, width) in x86.CPUID_FIELDS.items():
        if width == 1:
            names.setdefault((leaf, sub or 0, reg, bit), name)
    return names


_NAMES = feature_names()
_ARCH_CAPS_NAMES = {bit: name for name, bit in x86.ARCH_CAPS_BITS.items()}


@dataclass(frozen=True)
class CpuPolicy:
    """CPUID leaves ((function, subleaf) -> registers) and feature-MSR values; `origin`
    says where it came from (a host name, a file) for humans."""

    cpuid: Mapping[Leaf, Regs]
    msrs: Mapping[int, int] = field(default_factory=dict)
    origin: str = ""

    # -- reading --------------------------------------------------------------------------
    def regs(self, leaf: int, subleaf: int = 0) -> Regs:
        return self.cpuid.get((leaf, subleaf), (0, 0, 0, 0))

    @property
    def vendor(self) -> str:
        _, b, c, d = self.regs(0)
        return b"".join(r.to_bytes(4, "little") for r in (b, d, c)).decode("latin-1")

    @property
    def max_leaf(self) -> int:
        return self.regs(0)[x86.EAX]

    @property
    def max_ext_leaf(self) -> int:
        return self.regs(EXTENDED)[x86.EAX]

    def value(self, name: str) -> int:
        """The value of one of xl's named fields (x86.CPUID_FIELDS)."""
        leaf, sub, reg, bit, width = x86.CPUID_FIELDS[name]
        return self.regs(leaf, sub or 0)[reg] >> bit & ((1 << width) - 1)

    def has(self, name: str) -> bool:
        return bool(self.value(name))

    def features(self) -> list[str]:
        """The names of the single-bit features set, and of the ARCH_CAPABILITIES bits."""
        out = [name for (leaf, sub, reg, bit), name in _NAMES.items()
               if self.regs(leaf, sub)[reg] >> bit & 1]
        caps = self.msrs.get(x86.MSR_IA32_ARCH_CAPABILITIES, 0)
        out += [f"arch-caps:{_ARCH_CAPS_NAMES.get(b, f'bit{b}')}" for b in range(64)
                if caps >> b & 1]
        return out

    # -- building -------------------------------------------------------------------------
    def with_bits(self, leaf: int, subleaf: int, reg: int, mask: int, value: int) -> CpuPolicy:
        """A copy with the bits of `mask` in one register set from `value`."""
        regs = list(self.regs(leaf, subleaf))
        regs[reg] = (regs[reg] & ~mask | value & mask) & _MASK32
        cpuid = dict(self.cpuid)
        cpuid[(leaf, subleaf)] = (regs[0], regs[1], regs[2], regs[3])
        return replace(self, cpuid=cpuid)

    def without(self, *names: str) -> CpuPolicy:
        p = self
        for name in names:
            leaf, sub, reg, bit, width = x86.CPUID_FIELDS[name]
            p = p.with_bits(leaf, sub or 0, reg, ((1 << width) - 1) << bit, 0)
        return p

    def with_overrides(self, overrides: Iterable[Override], host: CpuPolicy) -> CpuPolicy:
        """xl's semantics (xl.cfg(5) "cpuid"; Xen's xc_cpuid_xend_policy): '1'/'0' force
        a bit, 'x' keeps this policy's, 'k' and 's' take the host's. A single-bit feature
        forced to 1 that the host cannot offer is refused, as Xen refuses a policy
        outside its max policy."""
        p = self
        for o in overrides:
            if len(o.bits) != 32 or set(o.bits) - set("01xks"):
                raise PolicyError(f"leaf {o.leaf:#x}: {x86.CPUID_REGS[o.reg]}={o.bits!r}: "
                                  "expected 32 of 0, 1, x, k, s")
            have = host.regs(o.leaf, o.subleaf)[o.reg]
            mask = value = 0
            for i, c in enumerate(o.bits):
                bit = 31 - i
                if c == "x":
                    continue
                mask |= 1 << bit
                on = c == "1" or (c in "ks" and bool(have >> bit & 1))
                value |= int(on) << bit
                name = _NAMES.get((o.leaf, o.subleaf, o.reg, bit))
                if (c == "1" and name is not None and not have >> bit & 1
                        and (o.leaf, o.subleaf, o.reg) in x86.FEATURE_WORDS):
                    raise PolicyError(f"cpuid: {name}=1, but this host cannot offer {name}")
            p = p.with_bits(o.leaf, o.subleaf, o.reg, mask, value)
        return p

    # -- levelling and checking ------------------------------------------------------------
    def missing_from(self, offer: CpuPolicy) -> list[str]:
        """What this policy gives a guest that `offer` (a host's max policy) cannot:
        features, levels, vendor, ARCH_CAPABILITIES bits; empty if it can be offered."""
        out = []
        if self.vendor != offer.vendor:
            out.append(f"vendor {self.vendor!r} (this host is {offer.vendor!r})")
        if self.max_leaf > offer.max_leaf:
            out.append(f"basic leaves up to {self.max_leaf:#x} (this host: {offer.max_leaf:#x})")
        if self.max_ext_leaf > offer.max_ext_leaf:
            out.append(f"extended leaves up to {self.max_ext_leaf:#x}"
                       f" (this host: {offer.max_ext_leaf:#x})")
        for leaf, sub, reg in x86.FEATURE_WORDS:
            extra = self.regs(leaf, sub)[reg] & ~offer.regs(leaf, sub)[reg]
            out += [_NAMES.get((leaf, sub, reg, b), f"{leaf:#x}.{sub}:{x86.CPUID_REGS[reg]}[{b}]")
                    for b in range(32) if extra >> b & 1]
        mine = self.msrs.get(x86.MSR_IA32_ARCH_CAPABILITIES, 0)
        theirs = offer.msrs.get(x86.MSR_IA32_ARCH_CAPABILITIES, 0)
        good = mine & ~theirs & ~ARCH_CAPS_BAD
        bad = theirs & ~mine & ARCH_CAPS_BAD
        out += [f"arch-caps:{_ARCH_CAPS_NAMES.get(b, f'bit{b}')}" for b in range(64)
                if good >> b & 1]
        out += [f"arch-caps:{_ARCH_CAPS_NAMES[b]} (this host is affected; the guest was"
                " told it is not)" for b in range(64) if bad >> b & 1]
        return out

    # -- the vCPUs ------------------------------------------------------------------------
    def apply(self, cpuid: ctypes.Structure) -> ctypes.Structure:
        """A copy of one vCPU's kvm_cpuid2 (topology applied) with this policy's leaves:
        leaves above the policy's levels go, the others take the policy's registers
        except the per-vCPU topology fields; the hypervisor's leaves are left alone."""
        out: list[u.kvm_cpuid_entry2] = []
        seen: set[Leaf] = set()
        for i in range(cpuid.nent):
            e = u.kvm_cpuid_entry2.from_buffer_copy(cpuid.entries[i])
            f = e.function
            if f in HYPERVISOR_LEAVES:
                out.append(e)
                continue
            top = self.max_ext_leaf if f >= EXTENDED else self.max_leaf
            if f > top:
                continue
            seen.add((f, e.index))
            if f in TOPOLOGY_LEAVES:
                out.append(e)
                continue
            want = self.cpuid.get((f, e.index))
            if want is None:
                continue
            for reg, name in enumerate(x86.CPUID_REGS):
                keep = _PER_VCPU.get((f, reg), 0)
                setattr(e, name, getattr(e, name) & keep | want[reg] & ~keep)
            out.append(e)
        for (f, sub), regs in sorted(self.cpuid.items()):  # leaves the vCPU table lacked
            top = self.max_ext_leaf if f >= EXTENDED else self.max_leaf
            if ((f, sub) not in seen and f <= top and f not in TOPOLOGY_LEAVES
                    and f not in HYPERVISOR_LEAVES):
                flags = u.KVM_CPUID_FLAG_SIGNIFCANT_INDEX if sub else 0
                out.append(u.kvm_cpuid_entry2(f, sub, flags, *regs))
        result = u.cpuid2_with(len(out))
        for i, e in enumerate(out):
            result.entries[i] = e
        return result

    def allowed_msrs(self, kvm_msrs: Iterable[int]) -> tuple[frozenset[int], frozenset[int]]:
        """The MSRs a guest may read and may write: KVM's saved ones (`kvm_msrs`, its
        KVM_GET_MSR_INDEX_LIST), the architectural base every guest touches, and each
        speculation-control MSR only when the policy announces it."""
        common = set(kvm_msrs) - set(_GATED)
        for first, last in BASE_MSRS:
            common.update(range(first, last + 1))
        read, write = set(common), set(common)
        if any(self.has(n) for n in ("ibrsb", "stibp", "ssbd", "ibrs", "amd-stibp",
                                     "amd-ssbd")):
            read.add(x86.MSR_IA32_SPEC_CTRL)
            write.add(x86.MSR_IA32_SPEC_CTRL)
        if self.has("ibrsb") or self.has("ibpb"):
            write.add(x86.MSR_IA32_PRED_CMD)  # IBRS/IBPB (7.EDX[26]) enumerates both
        if self.has("l1d-flush"):
            write.add(x86.MSR_IA32_FLUSH_CMD)
        if self.has("arch-caps"):
            read.add(x86.MSR_IA32_ARCH_CAPABILITIES)
        if self.has("virt-ssbd"):
            read.add(x86.MSR_AMD64_VIRT_SPEC_CTRL)
            write.add(x86.MSR_AMD64_VIRT_SPEC_CTRL)
        if self.has("pdcm"):
            read.add(x86.MSR_IA32_PERF_CAPABILITIES)
        for name, msrs in (("svm", x86.SVM_MSRS), ("vmx", x86.VMX_MSRS)):
            if self.has(name):
                read.update(msrs)
                write.update(msrs)
        return frozenset(read), frozenset(write)

    # -- files and streams ----------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "origin": self.origin,
            "cpuid": [[f"{leaf:#010x}", sub, *(f"{r:#010x}" for r in regs)]
                      for (leaf, sub), regs in sorted(self.cpuid.items())],
            "msrs": {f"{index:#010x}": f"{value:#018x}" for index, value in sorted(self.msrs.items())},
        }

    @classmethod
    def from_dict(cls, data: object, what: str = "CPU policy") -> CpuPolicy:
        """The policy `to_dict` wrote; a PolicyError naming `what` and the problem."""
        def bad(problem: str) -> PolicyError:
            return PolicyError(f"{what}: {problem}")

        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise bad(f"not a version-{VERSION} CPU policy")
        leaves = data.get("cpuid")
        msrs = data.get("msrs", {})
        if not isinstance(leaves, list) or not isinstance(msrs, dict):
            raise bad("'cpuid' must be a list and 'msrs' a map")
        cpuid: dict[Leaf, Regs] = {}
        for i, row in enumerate(leaves):
            try:
                leaf, sub, a, b, c, d = row
                key = (_number(leaf, 32), _number(sub, 32))
                cpuid[key] = (_number(a, 32), _number(b, 32), _number(c, 32), _number(d, 32))
            except (TypeError, ValueError):
                raise bad(f"cpuid entry {i}: expected [leaf, subleaf, eax, ebx, ecx, edx]"
                          " of 32-bit numbers") from None
        values: dict[int, int] = {}
        for index, value in msrs.items():
            try:
                values[_number(index, 32)] = _number(value, 64)
            except (TypeError, ValueError):
                raise bad(f"msr {index!r}: expected a 64-bit number") from None
        if (0, 0) not in cpuid:
            raise bad("no leaf 0")
        origin = data.get("origin", "")
        return cls(cpuid, values, origin if isinstance(origin, str) else "")

    def table(self, title: str) -> list[str]:
        """The policy as Xen's `xen-cpuid -p` prints one, then its named features."""
        lines = [f"{title}: {len(self.cpuid)} leaves, {len(self.msrs)} MSRs", " CPUID:",
                 "  leaf     subleaf  -> eax      ebx      ecx      edx"]
        for (leaf, sub), regs in sorted(self.cpuid.items()):
            shown = f"{sub:08x}" if sub or (leaf, 1) in self.cpuid else "ffffffff"
            lines.append(f"  {leaf:08x}:{shown} -> " + ":".join(f"{r:08x}" for r in regs))
        lines += [" MSRs:", "  index    -> value"]
        lines += [f"  {i:08x} -> {v:016x}" for i, v in sorted(self.msrs.items())]
        lines.append(" Features: " + " ".join(self.features()))
        return lines


def _number(value: object, bits: int) -> int:
    n = int(value, 0) if isinstance(value, str) else value
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << bits:
        raise ValueError(value)
    return n


# -- from the host ------------------------------------------------------------------------
class HostFacts(NamedTuple):
    """What KVM says about the host, the inputs of `host_max`."""

    supported: ctypes.Structure  # KVM_GET_SUPPORTED_CPUID
    feature_msrs: Mapping[int, int]  # KVM_GET_MSR_FEATURE_INDEX_LIST + KVM_GET_MSRS


def host_max(facts: HostFacts, origin: str = "") -> CpuPolicy:
    """Everything KVM can offer a guest on this host (Xen's "HVM Max" policy)."""
    cpuid: dict[Leaf, Regs] = {}
    s = facts.supported
    for i in range(s.nent):
        e = s.entries[i]
        if e.function not in HYPERVISOR_LEAVES:
            regs = [e.eax, e.ebx, e.ecx, e.edx]
            for (leaf, reg), mask in _HOST_VARYING.items():
                if leaf == e.function:
                    regs[reg] &= ~mask
            cpuid[(e.function, e.index)] = (regs[0], regs[1], regs[2], regs[3])
    policy = CpuPolicy(cpuid, {}, origin)
    if not policy.has("arch-caps"):  # KVM lists the MSR only to a guest told of it
        return policy
    return replace(policy, msrs={m: facts.feature_msrs[m] for m in POLICY_MSRS
                                 if m in facts.feature_msrs})


def host_facts(kvm: Kvm) -> HostFacts:
    return HostFacts(kvm.supported_cpuid(), kvm.feature_msrs())


def default_policy(offer: CpuPolicy) -> CpuPolicy:
    """What a domain gets unless its config says otherwise: the host's offer less what a
    domain here cannot use (`HIDDEN`); every speculation control the host has stays."""
    return offer.without(*HIDDEN)


def common(policies: Sequence[CpuPolicy], origin: str = "levelled") -> CpuPolicy:
    """The policy every one of `policies` can offer (the first one's values where no
    feature is at stake): leaves all of them have, the lowest levels, the features all
    have, ARCH_CAPABILITIES' "not affected" bits all have and "affected" bits any has."""
    if not policies:
        raise PolicyError("levelling needs at least one policy")
    first = policies[0]
    vendors = {p.vendor for p in policies}
    if len(vendors) > 1:
        raise PolicyError(f"cannot level CPU policies of different vendors: {sorted(vendors)}")
    cpuid = {k: v for k, v in first.cpuid.items()
             if k[0] in TOPOLOGY_LEAVES or all(k in p.cpuid for p in policies)}
    out = replace(first, cpuid=cpuid, origin=origin)
    for leaf, sub, reg in x86.FEATURE_WORDS:
        if (leaf, sub) in cpuid:
            value = _MASK32
            for p in policies:
                value &= p.regs(leaf, sub)[reg]
            out = out.with_bits(leaf, sub, reg, _MASK32, value)
    out = out.with_bits(0, 0, x86.EAX, _MASK32, min(p.max_leaf for p in policies))
    if (EXTENDED, 0) in cpuid:
        out = out.with_bits(EXTENDED, 0, x86.EAX, _MASK32, min(p.max_ext_leaf for p in policies))
    msrs: dict[int, int] = {}
    if all(x86.MSR_IA32_ARCH_CAPABILITIES in p.msrs for p in policies):
        good, bad = (1 << 64) - 1, 0
        for p in policies:
            caps = p.msrs[x86.MSR_IA32_ARCH_CAPABILITIES]
            good &= caps
            bad |= caps & ARCH_CAPS_BAD
        msrs[x86.MSR_IA32_ARCH_CAPABILITIES] = good & ~ARCH_CAPS_BAD | bad
    else:
        out = out.without("arch-caps")
    return replace(out, msrs=msrs)


# -- the MSR filter -------------------------------------------------------------------------
FilterRange = tuple[int, int, bytes]  # (KVM_MSR_FILTER_READ/WRITE, base MSR, bitmap)
_RANGE_MSRS = u.KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8


def msr_filter_ranges(read: Iterable[int], write: Iterable[int],
                      userspace: Iterable[FilterRange] = ()) -> list[FilterRange]:
    """Ranges for a default-deny KVM_X86_SET_MSR_FILTER (api.rst, KVM_X86_SET_MSR_FILTER:
    a set bit allows the access in the kernel; an access no range allows exits to
    userspace, where the vCPU loop injects #GP unless a handler takes it). `userspace`
    are the ranges a layer above already asks for (the Xen hypercall-page MSR: a clear bit
    sends that access to its handler): those accesses are taken out of the allowed sets."""
    allowed = {u.KVM_MSR_FILTER_READ: set(read), u.KVM_MSR_FILTER_WRITE: set(write)}
    for flags, base, bitmap in userspace:
        for i in range(len(bitmap) * 8):
            if not bitmap[i // 8] >> (i % 8) & 1:
                for kind, msrs in allowed.items():
                    if flags & kind:
                        msrs.discard(base + i)
    ranges: list[FilterRange] = []
    for kind, msrs in allowed.items():
        todo = sorted(msrs)
        while todo:
            base = todo[0]
            chunk = [m for m in todo if m - base < _RANGE_MSRS]
            todo = todo[len(chunk):]
            bitmap = bytearray((chunk[-1] - base) // 8 + 1)
            for m in chunk:
                bitmap[(m - base) // 8] |= 1 << ((m - base) % 8)
            ranges.append((kind, base, bytes(bitmap)))
    if len(ranges) > u.KVM_MSR_FILTER_MAX_RANGES:
        raise PolicyError(f"the MSR policy needs {len(ranges)} filter ranges;"
                          f" KVM takes {u.KVM_MSR_FILTER_MAX_RANGES}")
    return ranges


# -- policy files ---------------------------------------------------------------------------
MAX_POLICY_BYTES = 1 << 20  # a policy is a few KiB of JSON


def load_policy_file(path: str) -> CpuPolicy:
    """A policy `save_policy_file` wrote; a regular file of at most MAX_POLICY_BYTES (a
    FIFO or a device is refused, not read). PolicyError names the file and the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PolicyError(f"{path}: not a regular file")
            data = os.read(fd, MAX_POLICY_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: not JSON: {e}") from None
    return CpuPolicy.from_dict(obj, path)


def save_policy_file(path: str, policy: CpuPolicy) -> None:
    """Write `policy` as JSON, atomically (a temporary file beside it, then rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(policy.to_dict(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def host_policy(kvm: Kvm, origin: str = "") -> CpuPolicy:
    """The policy a domain gets on this host without `cpuid=` or levelling: what a host
    policy file (`xenopus cpu-policy --host -o FILE`) holds."""
    return default_policy(host_max(host_facts(kvm), origin))


class RelaxedMsrs:
    """xl's `msr_relaxed` (xl.cfg(5)): an MSR access outside the policy that `inner` (the
    layer above's handler, if any) does not take reads 0 and ignores writes, for guests
    that probe MSRs without expecting #GP. An `MsrHandler` (vm/vcpu.py)."""

    def __init__(self, inner: MsrHandler | None):
        self.inner = inner

    def rdmsr(self, vcpu: int, index: int) -> int | None:
        value = self.inner.rdmsr(vcpu, index) if self.inner is not None else None
        return 0 if value is None else value

    def wrmsr(self, vcpu: int, index: int, value: int) -> bool:
        if self.inner is not None:
            self.inner.wrmsr(vcpu, index, value)
        return True
