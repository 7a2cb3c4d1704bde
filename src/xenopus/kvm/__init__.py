"""Layer 1: Linux KVM bindings (ioctl numbers and structs in `uapi`, fd wrappers in `system`)."""

from xenopus.kvm.system import Kvm, KvmCapabilityError, KvmError, VcpuFd, VmFd

__all__ = ["Kvm", "KvmCapabilityError", "KvmError", "VcpuFd", "VmFd"]
