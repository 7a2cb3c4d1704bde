"""The evidence for README's "Why the Xen interface is off on arm64": what KVM/arm64 does
with Xen's hypercall instruction `hvc #0xEA1` (guests/arm64/xenhvc.S), with function IDs
0x100-0x1FF forwarded to us by the SMCCC filter (KVM_ARM_VM_SMCCC_FILTER, Linux 6.4)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.arm64.test_hello import pytestmark as arm64_host  # the same skips
from xenopus.kvm import uapi as u
from xenopus.kvm.system import KvmError, VcpuFd
from xenopus.vm.events import StopReason

pytestmark = arm64_host
ROOT = Path(__file__).resolve().parents[2]
XENHVC = ROOT / "guests" / "out" / "arm64" / "xenhvc.Image"
HVC_XEN = 0xD4000002 | 0xEA1 << 5  # HVC #imm16 (Arm ARM C6.2.113): imm16 at bits 20:5


def test_xen_hvc_reaches_userspace_only_by_x0() -> None:
    from xenopus.domain.builder_arm64 import build_arm64_guest

    exits: list[dict[str, int]] = []
    out = bytearray()
    stopped = threading.Event()
    reasons: list[StopReason] = []

    guest = build_arm64_guest(XENHVC, console_out=out.extend, memory_mib=64)
    memory = guest.memory

    def hypercall(vcpu: VcpuFd, nr: int, flags: int) -> None:
        pc = vcpu.get_one_reg(u.arm64_core_reg("pc"))
        exits.append({"nr": nr, "flags": flags, "x16": vcpu.get_one_reg(u.arm64_core_reg("regs", 16)),
                      # the MMU is off: the guest's PC is a guest-physical address
                      "insn": memory.read_u32(pc - 4)})
        vcpu.set_one_reg(u.arm64_core_reg("regs", 0), 0x600D)

    def on_stop(reason: StopReason) -> None:
        reasons.append(reason)
        stopped.set()

    try:
        guest.machine.hypercall = hypercall
        guest.machine.set_smccc_filter(0x100, 0x100, u.KVM_SMCCC_FILTER_FWD_TO_USER)
        # KVM keeps the SMCCC architecture range (0x80000000-0x8000FFFF) to itself.
        with pytest.raises(KvmError) as refused:
            guest.machine.set_smccc_filter(0x8000_0000, 0x1_0000, u.KVM_SMCCC_FILTER_FWD_TO_USER)
        guest.machine.start(guest.boot.cpu, on_stop)
        assert stopped.wait(60), bytes(out)
    finally:
        guest.close()
    print(f"filter over the architecture range: {refused.value}")
    print(f"exits: {exits}; guest: {bytes(out)!r}")
    # 1: forwarded by x0 alone; the exit carries neither the immediate nor x16: only the
    # instruction in guest memory (here identity-mapped) tells a Xen call from an SMCCC one.
    assert exits == [{"nr": 0x100, "flags": 0, "x16": 0x12, "insn": HVC_XEN}]
    assert out.startswith(b"1: x0=000000000000600d\n")
    # 2: x0 = a kernel pointer whose low 32 bits fall in the reserved range: KVM answers it
    # as an SMCCC call (NOT_SUPPORTED, -1) and userspace never sees it.
    assert b"2: x0=ffffffffffffffff\n" in out
    assert reasons[0].kind == "poweroff"


def test_kvm_offers_no_xen_hvm_on_arm64() -> None:
    """KVM_CAP_XEN_HVM (x86's in-kernel Xen support: the hypercall page MSR, event channel
    delivery, shared_info) does not exist on KVM/arm64: the VM answers 0 for it, while it
    answers for the SMCCC filter the Xen experiment above uses."""
    from xenopus.kvm.system import Kvm

    with Kvm() as kvm:
        vm = kvm.create_vm()
        try:
            xen_hvm = vm.check_extension(u.KVM_CAP_XEN_HVM)
            filter_attr = vm.has_attr(u.KVM_ARM_VM_SMCCC_CTRL, u.KVM_ARM_VM_SMCCC_FILTER)
        finally:
            vm.close()
    print(f"KVM_CAP_XEN_HVM on an arm64 VM: {xen_hvm}; KVM_ARM_VM_SMCCC_FILTER: {filter_attr}")
    assert xen_hvm == 0
    assert filter_attr
