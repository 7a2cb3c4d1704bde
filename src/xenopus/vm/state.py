"""Saving and restoring what KVM holds for a VM and its vCPUs (Documentation/virt/kvm/api.rst).

Per vCPU: general and special registers, FPU/XSAVE and XCRs, the MSRs that carry guest
state, the in-kernel LAPIC, pending events, debug registers, MP state and the TSC
frequency. Per VM: the PIC pair and IOAPIC, the PIT, the kvmclock. Memory and devices are
saved by their own owners; CPUID is not saved (the restoring side sets it from the same
config before restoring).

Everything here runs while the vCPUs are out of KVM_RUN (a paused or not yet started
`Machine`): api.rst §KVM_RUN, "the corresponding operations are complete (and guest
state is consistent) only after userspace has re-entered the kernel with KVM_RUN" — a
paused vCPU re-entered KVM_RUN with immediate_exit set before it parked, which completes
a pending port or MMIO access without running another instruction.

KVM's own structs (LAPIC page, irqchip, PIT, XSAVE area) are kept as their bytes: the
state is restored into the same kernel ABI, and these layouts are ABI (asm/kvm.h).
"""

from __future__ import annotations

import ctypes
import logging

from xenopus.arch.x86 import (
    MSR_AMD64_VIRT_SPEC_CTRL,
    MSR_CSTAR,
    MSR_IA32_CR_PAT,
    MSR_IA32_MCG_CTL,
    MSR_IA32_MCG_STATUS,
    MSR_IA32_MISC_ENABLE,
    MSR_IA32_SPEC_CTRL,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC,
    MSR_IA32_TSC_ADJUST,
    MSR_IA32_TSC_DEADLINE,
    MSR_KERNEL_GS_BASE,
    MSR_LSTAR,
    MSR_STAR,
    MSR_SYSCALL_MASK,
    MSR_TSC_AUX,
)
from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm, KvmError, VcpuFd, VmFd
from xenopus.stream import StateError, check_state

log = logging.getLogger("xenopus.vm")

VCPU_STATE_VERSION = 1
IRQCHIP_STATE_VERSION = 1
PIT_STATE_VERSION = 1
CLOCK_STATE_VERSION = 1

# Architectural MSRs that hold guest state KVM does not keep elsewhere (numbers in arch/x86.py).
STATE_MSRS = (
    MSR_IA32_TSC, MSR_IA32_TSC_ADJUST, MSR_IA32_SPEC_CTRL, MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL,
    MSR_IA32_MISC_ENABLE, MSR_IA32_CR_PAT, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK,
    MSR_KERNEL_GS_BASE, MSR_TSC_AUX, MSR_AMD64_VIRT_SPEC_CTRL, *u.PARAVIRT_MSRS,
)  # fmt: skip
# Set apart and last: KVM ignores a TSC deadline unless the LAPIC timer is in TSC-deadline
# mode (SDM 3A §10.5.4.1), so it is written after KVM_SET_LAPIC.
DEADLINE_MSRS = (MSR_IA32_TSC_DEADLINE,)
# The Xen hypercall-page MSR is not saved here: it is the Xen state's (its page is written
# by the hypervisor, and with the trap path KVM never sees the MSR).


def saved_msrs(kvm: Kvm) -> list[int]:
    """The MSRs a vCPU's state carries on this host: the ones above that KVM says it saves
    and restores (KVM_GET_MSR_INDEX_LIST); feature MSRs (ARCH_CAPABILITIES, PERF_CAPABILITIES,
    microcode revision...) are the host's and the CPU policy's, not the guest's."""
    have = set(kvm.msr_index_list())
    return [m for m in (*STATE_MSRS, *DEADLINE_MSRS) if m in have]


def _raw(struct: ctypes.Structure) -> bytes:
    return bytes(memoryview(struct).cast("B"))


def _load(cls: type[ctypes.Structure], data: object, what: str) -> ctypes.Structure:
    if not isinstance(data, bytes) or len(data) != ctypes.sizeof(cls):
        raise StateError(f"{what}: expected {ctypes.sizeof(cls)} octets of {cls.__name__}")
    return cls.from_buffer_copy(data)


def xsave_size(vm: VmFd) -> int:
    """KVM_CAP_XSAVE2's XSAVE buffer size for this VM, 0 where the kernel lacks it
    (api.rst, KVM_GET_XSAVE2 and KVM_CAP_XSAVE2)."""
    return vm.check_extension(u.KVM_CAP_XSAVE2)


def has_sregs2(vm: VmFd) -> bool:
    """KVM_CAP_SREGS2: KVM_GET/SET_SREGS2, the special registers with the PAE PDPTE
    registers (api.rst 4.131/4.132)."""
    return vm.check_extension(u.KVM_CAP_SREGS2) > 0


def save_vcpu(fd: VcpuFd, msrs: list[int], xsave: int, sregs2: bool = False) -> dict:
    """Everything KVM keeps for one vCPU, from `fd` out of KVM_RUN. With `sregs2`
    (`has_sregs2`) also KVM_GET_SREGS2's registers: a PAE guest's PDPTE registers are
    state of their own (SDM 3A §4.4.1: loaded by a MOV to CR3, not reread from the PDPT
    after), which KVM_SET_SREGS would reload from memory, where the guest may have
    changed them since (QEMU: kvm_get_sregs2)."""
    values = fd.read_msrs(msrs)
    missing = sorted(set(msrs) - set(values))
    if missing:
        log.info("vCPU %d: MSRs %s not readable, not saved", fd.index,
                 ", ".join(f"{m:#x}" for m in missing))
    return {
        "version": VCPU_STATE_VERSION,
        "regs": _raw(fd.get_regs()),
        "sregs": _raw(fd.get_sregs()),
        "fpu": _raw(fd.get_fpu()),
        "xsave": _raw(fd.get_xsave(xsave)),
        "xcrs": _raw(fd.get_xcrs()),
        "msrs": [[index, value] for index, value in values.items()],
        "lapic": _raw(fd.get_lapic()),
        "events": _raw(fd.get_vcpu_events()),
        "debugregs": _raw(fd.get_debugregs()),
        "mp_state": fd.get_mp_state(),
        "tsc_khz": fd.get_tsc_khz(),
        **({"sregs2": _raw(fd.get_sregs2())} if sregs2 else {}),
    }


def restore_vcpu(fd: VcpuFd, state: object, xsave: int, sregs2: bool = False) -> None:
    """Load `save_vcpu`'s state into a vCPU that has not run since it was created (same
    CPUID); `xsave` is this VM's XSAVE buffer size (`xsave_size`); `sregs2`: KVM has
    KVM_SET_SREGS2, which the saved `sregs2` go to (the PDPTE registers as saved; without
    them, KVM_SET_SREGS and the PDPTEs KVM reads from the PDPT). The order follows what
    api.rst's descriptions imply and QEMU does (target/i386/kvm/kvm.c,
    kvm_arch_put_registers, after the APIC device's state):
    - the TSC frequency first (KVM_SET_TSC_KHZ): the TSC MSR is scaled by it;
    - sregs before MSRs and the LAPIC: EFER and APIC_BASE (x2APIC or xAPIC) decide how
      both are interpreted (KVM_SET_LAPIC reads the ID register per the APIC mode);
    - the TSC deadline after KVM_SET_LAPIC (above);
    - KVM_SET_VCPU_EVENTS after the LAPIC and MSRs, KVM_SET_MP_STATE after the events
      (a pending SIPI's vector travels in them), debug registers last, as QEMU does."""
    s = check_state(state, f"vcpu{fd.index}", VCPU_STATE_VERSION)
    what = f"vcpu{fd.index}"
    khz = s["tsc_khz"]
    if khz and khz != fd.get_tsc_khz():
        try:
            fd.set_tsc_khz(khz)
        except KvmError as e:  # no TSC scaling here: the guest sees the host's rate
            log.warning("%s: TSC at %d kHz cannot be kept: %s", what, khz, e)
    msrs = {int(i): int(v) for i, v in s["msrs"]}
    if sregs2 and "sregs2" in s:
        # Its pending interrupt, which kvm_sregs's bitmap carries, is in the events too
        # (api.rst KVM_SET_VCPU_EVENTS: interrupt.injected/nr), restored below.
        fd.set_sregs2(_load(u.kvm_sregs2, s["sregs2"], what))
    else:
        fd.set_sregs(_load(u.kvm_sregs, s["sregs"], what))
    fd.set_regs(_load(u.kvm_regs, s["regs"], what))
    fd.set_xcrs(_load(u.kvm_xcrs, s["xcrs"], what))
    fd.set_fpu(_load(u.kvm_fpu, s["fpu"], what))
    area = s["xsave"]
    if not isinstance(area, bytes) or len(area) < u.KVM_XSAVE_LEGACY_SIZE:
        raise StateError(f"{what}: the saved XSAVE area is not one")
    if len(area) > max(xsave, u.KVM_XSAVE_LEGACY_SIZE):
        raise StateError(f"{what}: the saved XSAVE area of {len(area)} octets is larger than "
                         f"this host's ({xsave}): state components it cannot hold")
    fd.set_xsave(area, xsave)
    fd.set_msrs({i: v for i, v in msrs.items() if i not in DEADLINE_MSRS})
    fd.set_lapic(_load(u.kvm_lapic_state, s["lapic"], what))
    fd.set_msrs({i: v for i, v in msrs.items() if i in DEADLINE_MSRS})
    events = _load(u.kvm_vcpu_events, s["events"], what)
    # api.rst KVM_SET_VCPU_EVENTS: without these flags the NMI pending bit, the SIPI
    # vector, the interrupt shadow and SMM state are left as they are, not restored.
    events.flags |= (u.KVM_VCPUEVENT_VALID_NMI_PENDING | u.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                     | u.KVM_VCPUEVENT_VALID_SHADOW | u.KVM_VCPUEVENT_VALID_SMM)
    fd.set_vcpu_events(events)
    fd.set_mp_state(s["mp_state"])
    fd.set_debugregs(_load(u.kvm_debugregs, s["debugregs"], what))


IRQCHIPS = {"pic-master": u.KVM_IRQCHIP_PIC_MASTER, "pic-slave": u.KVM_IRQCHIP_PIC_SLAVE,
            "ioapic": u.KVM_IRQCHIP_IOAPIC}


def save_irqchip(vm: VmFd) -> dict:
    """The in-kernel PIC pair and IOAPIC (KVM_GET_IRQCHIP); the LAPICs are per vCPU."""
    chips = {name: _raw(vm.get_irqchip(chip)) for name, chip in IRQCHIPS.items()}
    return {"version": IRQCHIP_STATE_VERSION, **chips}


def restore_irqchip(vm: VmFd, state: object) -> None:
    s = check_state(state, "irqchip", IRQCHIP_STATE_VERSION)
    for name, chip_id in IRQCHIPS.items():
        chip = _load(u.kvm_irqchip, s[name], f"irqchip {name}")
        if chip.chip_id != chip_id:
            raise StateError(f"irqchip {name}: saved state is of chip {chip.chip_id}")
        vm.set_irqchip(chip)


def save_pit(vm: VmFd) -> dict:
    return {"version": PIT_STATE_VERSION, "pit": _raw(vm.get_pit2())}


def restore_pit(vm: VmFd, state: object) -> None:
    s = check_state(state, "pit", PIT_STATE_VERSION)
    vm.set_pit2(_load(u.kvm_pit_state2, s["pit"], "pit"))


def save_clock(vm: VmFd) -> dict:
    """kvmclock at the moment of the save (KVM_GET_CLOCK). The host's realtime is kept
    beside it for a later policy that advances the guest clock by the time spent saved;
    today a restored guest's clock continues from where it stopped."""
    data = vm.get_clock()
    return {"version": CLOCK_STATE_VERSION, "clock": data.clock, "flags": data.flags,
            "realtime": data.realtime}


def restore_clock(vm: VmFd, state: object) -> None:
    """KVM_SET_CLOCK, after every vCPU's state (api.rst, KVM_SET_CLOCK; QEMU sets it when the VM
    starts running): KVM then refreshes each vCPU's kvmclock page from it."""
    s = check_state(state, "clock", CLOCK_STATE_VERSION)
    vm.set_clock(u.kvm_clock_data(clock=s["clock"]))
