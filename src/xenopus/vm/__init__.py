"""Layer 3: the VM and its vCPUs on KVM."""

from xenopus.vm.cpu import CpuState
from xenopus.vm.events import StopReason
from xenopus.vm.machine import Machine

__all__ = ["CpuState", "Machine", "StopReason"]
