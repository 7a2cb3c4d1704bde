"""What the layers above see of a VM and its vCPUs.

A device model or the Xen core depends on these small Protocols, not on `Machine` and
`Vcpu` themselves: registers come through the run loop's accessors (the kvm_run sync-regs
fields where KVM offers them), never through a vCPU file descriptor or a kvm_run offset.
`Machine` and `Vcpu` implement them; tests can stand in with a few lines.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import CpuState
from xenopus.vm.events import StopReason
from xenopus.vm.irq import MsiRoute

ExitT = TypeVar("ExitT", bound=ctypes.Structure)


class VcpuView(Protocol):
    """One vCPU. The exit methods are for a handler running on this vCPU's own thread
    during the exit it handles; `kick_pending`, `started` and `kick` work from any
    thread."""

    @property
    def index(self) -> int: ...

    def exit_regs(self) -> tuple[u.kvm_regs, u.kvm_sregs]:
        """The general and special registers at this exit."""
        ...

    def set_exit_regs(self, regs: u.kvm_regs) -> None:
        """Give the guest `regs` (from `exit_regs`) when it resumes."""
        ...

    def exit_sregs(self) -> u.kvm_sregs:
        """The special registers at this exit (paging state for guest-virtual copies)."""
        ...

    def exit_view(self, ctype: type[ExitT]) -> ExitT:
        """kvm_run's exit data as `ctype`, written in place (for exits a layer above owns)."""
        ...

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """KVM_SET_MSRS on this vCPU (call on its own thread while it runs)."""
        ...

    @property
    def kick_pending(self) -> bool:
        """The machine asked this vCPU to leave the guest (pause, stop): a handler that
        would wait should return instead."""
        ...

    @property
    def started(self) -> bool:
        """The guest has started this vCPU (it is out of wait-for-SIPI), as last sampled."""
        ...

    def kick(self) -> None: ...


class MachineView(Protocol):
    """The VM as a layer above uses it: memory, interrupt delivery, its vCPUs, stopping."""

    @property
    def memory(self) -> GuestMemory: ...

    @property
    def vcpus(self) -> Sequence[VcpuView]: ...

    def set_irq(self, gsi: int, level: bool | int) -> None:
        """Drive an interrupt line of the in-kernel PIC/IOAPIC."""
        ...

    def allocate_msi(self) -> MsiRoute:
        """An MSI route: `update(address, data)` aims it, `trigger()` delivers it."""
        ...

    def request_stop(self, reason: StopReason) -> None: ...

    def hold_here(self, index: int) -> bool:
        """On vCPU `index`'s thread: pause the VM, this vCPU included, until resumed
        (True) or stopped (False)."""
        ...

    def clock_ns(self) -> int:
        """The VM's kvmclock now, in ns (what a guest's pvclock reads)."""
        ...

    def add_memory(self, gpa: int, size: int, *, backing: tuple[int, int] | None = None,
                   readonly: bool = False) -> None:
        """Back a range outside RAM with zeroed memory of its own, or with `backing` =
        (memfd, offset) (ValueError if it cannot be: it overlaps guest memory, or KVM
        refuses)."""
        ...

    def remove_memory(self, gpa: int) -> None:
        """Take a range `add_memory` backed away again."""
        ...

    def vcpu_down(self, index: int) -> None:
        """Stop running a vCPU (its state kept) until `vcpu_up`."""
        ...

    def vcpu_up(self, index: int, state: CpuState | None = None) -> None:
        """Run a vCPU again; with `state`, starting from it."""
        ...

    def on_vcpu_thread(self, index: int, call: Callable[[], None]) -> None:
        """Run `call` where vCPU `index`'s ioctls do not block: its own thread at its next
        exit, or at once where no KVM_RUN of it is in progress."""
        ...


__all__ = ["MachineView", "VcpuView"]
