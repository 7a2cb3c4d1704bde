"""An arm64 machine on a KVM that is not KVM/arm64 (this x86 host): refused with the
missing capabilities named, and nothing left open."""

from __future__ import annotations

import os

import pytest

from xenopus import host
from xenopus.devices.bus import Bus
from xenopus.kvm.system import KvmCapabilityError
from xenopus.memory.guest import GuestMemory, MemoryRegion
from xenopus.vm.arm64 import RAM_BASE, Arm64Machine

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(host.architecture() == "arm64",
                                                  reason="on arm64 the machine is built (tests/arm64)")]


def test_refused_with_the_missing_capabilities_named() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with GuestMemory([MemoryRegion.create(RAM_BASE, 16 << 20)]) as mem:
        with pytest.raises(KvmCapabilityError) as e:
            Arm64Machine(mem, 2, mmio=Bus("mmio"))
        assert "KVM_CAP_ARM_PSCI_0_2" in str(e.value)
        assert "KVM_CAP_IRQCHIP" not in str(e.value)  # x86 KVM has one, of its own kind
    assert set(os.listdir("/proc/self/fd")) <= before  # no VM, vCPU or device fd left


def test_vcpu_count_checked_first() -> None:
    with (GuestMemory([MemoryRegion.create(RAM_BASE, 16 << 20)]) as mem,
          pytest.raises(ValueError, match="1 to 123")):
        Arm64Machine(mem, 0, mmio=Bus("mmio"))
