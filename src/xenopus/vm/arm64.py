"""The arm64 machine: a KVM/arm64 VM with its RAM, an in-kernel vGICv3, vCPUs initialised
for the host's preferred target with PSCI 0.2 in KVM, and one thread per vCPU.

Documentation/virt/kvm/api.rst (KVM_ARM_VCPU_INIT, KVM_ARM_PREFERRED_TARGET,
KVM_SET_ONE_REG, KVM_EXIT_SYSTEM_EVENT) and devices/arm-vgic-v3.rst are the contract; the
guest-physical layout is QEMU virt's (hw/arm/virt.c memmap), so guests and device trees
written for `-M virt` recognise it. PSCI (CPU_ON, CPU_OFF, SYSTEM_OFF, SYSTEM_RESET) is
answered inside KVM; SYSTEM_OFF/RESET reach us as KVM_EXIT_SYSTEM_EVENT.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from xenopus.arch.arm64 import GIC_SPI_BASE, GIC_SPI_LAST, MPIDR_AFFINITY_MASK, MPIDR_EL1
from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm, KvmCapabilityError, KvmError, VcpuFd, VmFd
from xenopus.memory.guest import GuestMemory
from xenopus.vm.events import StopReason
from xenopus.vm.irq import IoEvents
from xenopus.vm.ports import IoHandler
from xenopus.vm.vcpu import KICK_SIGNAL, install_kick_handler

# QEMU virt's memory map (hw/arm/virt.c, base_memmap): the GIC below 0x0A000000, RAM at 1 GiB.
RAM_BASE = 0x4000_0000
GIC_DIST_BASE = 0x0800_0000
GIC_REDIST_BASE = 0x080A_0000
GIC_REDIST_END = 0x0900_0000  # virt's redistributor region: 123 vCPUs' frames
MAX_VCPUS = (GIC_REDIST_END - GIC_REDIST_BASE) // u.KVM_VGIC_V3_REDIST_SIZE
# 32 private INTIDs and 96 SPIs; arm-vgic-v3.rst: a multiple of 32, at most 1024.
GIC_NR_IRQS = 128

# The KVM capabilities this machine cannot do without.
REQUIRED_CAPS = (u.KVM_CAP_IRQCHIP, u.KVM_CAP_ONE_REG, u.KVM_CAP_ARM_PSCI_0_2,
                 u.KVM_CAP_DEVICE_CTRL, u.KVM_CAP_IRQFD, u.KVM_CAP_IOEVENTFD,
                 u.KVM_CAP_USER_MEMORY)

_SYSTEM_EVENTS: dict[int, str] = {
    u.KVM_SYSTEM_EVENT_SHUTDOWN: "poweroff",
    u.KVM_SYSTEM_EVENT_RESET: "reboot",
    u.KVM_SYSTEM_EVENT_CRASH: "crash",
}
_IMMEDIATE_EXIT = u.RUN_IMMEDIATE_EXIT


@dataclass(frozen=True)
class Arm64CpuState:
    """The boot vCPU's registers at entry (booting.rst §4): pc, x0-x3, PSTATE."""

    pc: int
    x0: int = 0
    x1: int = 0
    x2: int = 0
    x3: int = 0
    pstate: int = 0


class Arm64Machine:
    """`memory`'s regions become KVM memory slots; `mmio` answers every guest access KVM
    does not handle (a `Bus`). `on_stop(reason)` is called once when the guest stops.
    `hypercall(vcpu, function_id, flags)` answers the SMCCC calls `set_smccc_filter`
    forwards (KVM_EXIT_HYPERCALL); it sets the results in x0-x3 with ONE_REG."""

    def __init__(self, memory: GuestMemory, vcpus: int = 1, *, mmio: IoHandler,
                 kvm: Kvm | None = None,
                 hypercall: Callable[[VcpuFd, int, int], None] | None = None) -> None:
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"{vcpus} vCPUs: an arm64 guest has 1 to {MAX_VCPUS}")
        install_kick_handler()
        self.memory = memory
        self.mmio = mmio
        self.hypercall = hypercall
        self._own_kvm = kvm is None
        self.kvm = kvm or Kvm()
        self._threads: list[threading.Thread] = []
        self._thread_ids: dict[int, int] = {}
        self._clocks: dict[int, int] = {}  # vCPU index -> its thread's CPU-time clock
        self._cpu_done = 0.0  # CPU seconds of vCPU threads that have ended
        self.cpu_policy = None  # x86's CPUID/MSR policy; arm64 has none yet
        self._stopping = False
        self._stop_lock = threading.Lock()
        # pause(): the vCPU threads park outside KVM_RUN until resume().
        self._pause_cond = threading.Condition()
        self._paused = False
        self._parked = 0
        self._on_stop: Callable[[StopReason], None] | None = None
        self.stop_reason: StopReason | None = None
        self.vcpus: list[VcpuFd] = []
        self.gic_fd = -1
        self._irqfds: dict[int, int] = {}  # SPI INTID -> its irqfd's eventfd
        self.vm: VmFd = self.kvm.create_vm()
        self._ioevents = IoEvents(self.vm)
        try:
            self._build(vcpus)
        except BaseException:
            self.close()  # a half-built VM leaves no fd behind
            raise

    def _build(self, vcpus: int) -> None:
        # Asked of the VM: on arm64 some capabilities answer only there (EINVAL on /dev/kvm).
        missing = [c for c in REQUIRED_CAPS if self._extension(c) <= 0]
        if missing:
            raise KvmCapabilityError(missing)
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        target = self.vm.arm_preferred_target()
        for index in range(vcpus):
            fd = self.vm.create_vcpu(index)
            self.vcpus.append(fd)
            init = u.kvm_vcpu_init(target=target.target)
            # PSCI 0.2 in KVM; every vCPU but the boot one waits for PSCI CPU_ON.
            init.features[0] = 1 << u.KVM_ARM_VCPU_PSCI_0_2
            if index:
                init.features[0] |= 1 << u.KVM_ARM_VCPU_POWER_OFF
            fd.arm_vcpu_init(init)
        self._create_gic()

    def _create_gic(self) -> None:
        """arm-vgic-v3.rst: create the device, place the distributor and the
        redistributors, size its interrupts, and initialise it once the vCPUs exist."""
        self.gic_fd = self.vm.create_device(u.KVM_DEV_TYPE_ARM_VGIC_V3)
        for kind, base in ((u.KVM_VGIC_V3_ADDR_TYPE_DIST, GIC_DIST_BASE),
                           (u.KVM_VGIC_V3_ADDR_TYPE_REDIST, GIC_REDIST_BASE)):
            self.vm.set_attr(u.KVM_DEV_ARM_VGIC_GRP_ADDR, kind, ctypes.c_uint64(base),
                             fd=self.gic_fd)
        self.vm.set_attr(u.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, ctypes.c_uint32(GIC_NR_IRQS),
                         fd=self.gic_fd)
        self.vm.set_attr(u.KVM_DEV_ARM_VGIC_GRP_CTRL, u.KVM_DEV_ARM_VGIC_CTRL_INIT,
                         fd=self.gic_fd)

    def _extension(self, cap: int) -> int:
        try:
            return self.vm.check_extension(cap)
        except KvmError:
            return 0

    def set_smccc_filter(self, base: int, count: int, action: int) -> None:
        """KVM_ARM_VM_SMCCC_FILTER (Linux 6.4, api.rst "KVM_ARM_VM_SMCCC_CTRL"): SMCCC
        function IDs base..base+count-1 are handled by KVM, denied, or forwarded to
        `hypercall`. Before the first KVM_RUN; KVM refuses (EEXIST) ranges it reserves (the
        SMCCC architecture calls) and ranges already filtered."""
        flt = u.kvm_smccc_filter(base=base, nr_functions=count, action=action)
        self.vm.set_attr(u.KVM_ARM_VM_SMCCC_CTRL, u.KVM_ARM_VM_SMCCC_FILTER, flt)

    @property
    def redist_size(self) -> int:
        return len(self.vcpus) * u.KVM_VGIC_V3_REDIST_SIZE

    def mpidr(self, index: int) -> int:
        """vCPU `index`'s affinity (MPIDR_EL1 as KVM set it), what the device tree's cpu
        node `reg` and PSCI CPU_ON's target name."""
        return self.vcpus[index].get_one_reg(u.arm64_sys_reg(*MPIDR_EL1)) & MPIDR_AFFINITY_MASK

    def set_irq(self, intid: int, level: bool) -> None:
        """Drive SPI `intid` (32-1019) through KVM_IRQ_LINE (api.rst 4.25, arm64 encoding)."""
        if not GIC_SPI_BASE <= intid < min(GIC_NR_IRQS, GIC_SPI_LAST + 1):
            raise ValueError(f"INTID {intid} is not one of this GIC's SPIs")
        self.vm.irq_line(u.KVM_ARM_IRQ_TYPE_SPI << u.KVM_ARM_IRQ_TYPE_SHIFT | intid, level)

    def irqfd(self, intid: int) -> int:
        """An eventfd whose every write raises SPI `intid` as an edge (KVM_IRQFD; api.rst:
        on arm64 the GSI of an SPI is its INTID - 32, the vGIC's default routing), from any
        thread and without an ioctl. One per SPI; closed by `close`."""
        if not GIC_SPI_BASE <= intid < min(GIC_NR_IRQS, GIC_SPI_LAST + 1):
            raise ValueError(f"INTID {intid} is not one of this GIC's SPIs")
        if intid in self._irqfds:
            raise ValueError(f"SPI {intid} already has an irqfd")
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self.vm.irqfd(fd, intid - GIC_SPI_BASE)
        except BaseException:
            os.close(fd)
            raise
        self._irqfds[intid] = fd
        return fd

    def ioeventfd(self, addr: int, length: int, *, pio: bool = False,
                  datamatch: int | None = None) -> int:
        """An eventfd KVM signals on a guest write of `length` bytes at `addr` (matching
        `datamatch` if given) with no exit to userspace (KVM_IOEVENTFD; arm64 has MMIO only)."""
        if pio:
            raise ValueError("arm64 has no port I/O")
        return self._ioevents.add(addr, length, datamatch=datamatch)

    def remove_ioeventfd(self, fd: int) -> None:
        self._ioevents.remove(fd)

    # --- running ------------------------------------------------------------------------
    def start(self, boot: Arm64CpuState, on_stop: Callable[[StopReason], None]) -> None:
        cpu = self.vcpus[0]
        for field, index in (("x0", 0), ("x1", 1), ("x2", 2), ("x3", 3)):
            cpu.set_one_reg(u.arm64_core_reg("regs", index), getattr(boot, field))
        cpu.set_one_reg(u.arm64_core_reg("pstate"), boot.pstate)
        cpu.set_one_reg(u.arm64_core_reg("pc"), boot.pc)
        self._on_stop = on_stop
        for fd in self.vcpus:
            t = threading.Thread(target=self._run, args=(fd,), name=f"vcpu{fd.index}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, fd: VcpuFd) -> None:
        self._thread_ids[fd.index] = threading.get_ident()
        self._clocks[fd.index] = time.pthread_getcpuclockid(threading.get_ident())
        keep = {KICK_SIGNAL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - keep)
        run, mm = fd.kvm_run, fd.mmap
        mmio = self.mmio
        try:
            while not self._stopping:
                if self._paused:
                    self._park()
                    continue
                try:
                    fd.run()
                except InterruptedError:
                    mm[_IMMEDIATE_EXIT] = 0
                    continue
                reason = run.exit_reason
                if reason == u.KVM_EXIT_MMIO:
                    addr, data, length, is_write = u.RUN_MMIO_VIEW.unpack_from(mm)
                    if is_write:
                        mmio.write(addr, length, int.from_bytes(data[:length], "little"))
                    else:
                        value = mmio.read(addr, length)
                        mm[u.RUN_MMIO_DATA:u.RUN_MMIO_DATA + length] = value.to_bytes(
                            length, "little")
                elif reason == u.KVM_EXIT_HYPERCALL and self.hypercall is not None:
                    # api.rst: hypercall.nr is the SMCCC function ID (x0), the flags
                    # (KVM_HYPERCALL_EXIT_SMC/16BIT) sit where x86 has `longmode`.
                    self.hypercall(fd, run.exit.hypercall.nr, run.exit.hypercall.longmode)
                elif reason == u.KVM_EXIT_SYSTEM_EVENT:
                    kind = _SYSTEM_EVENTS.get(run.exit.system_event.type, "crash")
                    self.request_stop(StopReason(
                        kind, f"vCPU {fd.index}: KVM_EXIT_SYSTEM_EVENT type "
                              f"{run.exit.system_event.type}"))  # type: ignore[arg-type]
                else:
                    name = u.EXIT_NAMES.get(reason, str(reason))
                    pc = fd.get_one_reg(u.arm64_core_reg("pc"))
                    self.request_stop(StopReason("crash", f"vCPU {fd.index}: unhandled exit "
                                                 f"{name} at pc {pc:#x}"))
        except Exception as e:  # a device model's bug must stop the guest, not hang it
            self.request_stop(StopReason("crash", f"vCPU {fd.index}: {type(e).__name__}: {e}"))
        finally:
            with self._stop_lock:
                self._cpu_done += time.clock_gettime(self._clocks.pop(fd.index))
            self._thread_ids.pop(fd.index, None)

    def request_stop(self, reason: StopReason) -> None:
        """Stop every vCPU; the first reason wins and reaches on_stop once."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
            self.stop_reason = reason
        with self._pause_cond:
            self._pause_cond.notify_all()  # parked threads see the stop
        self._kick_all()
        if self._on_stop is not None:
            self._on_stop(reason)

    def _kick_all(self) -> None:
        for fd in self.vcpus:
            fd.mmap[_IMMEDIATE_EXIT] = 1
            tid = self._thread_ids.get(fd.index)
            if tid is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pthread_kill(tid, KICK_SIGNAL)

    def cpu_time(self) -> float:
        """Host CPU seconds used by the vCPU threads, ended ones included."""
        with self._stop_lock:
            return self._cpu_done + sum(time.clock_gettime(c) for c in list(self._clocks.values()))

    def vcpu_info(self) -> list[dict[str, object]]:
        """What `Machine.vcpu_info` reports, as far as arm64 knows it yet: index, thread,
        running or stopped; no affinity or MP state."""
        threads = {t.name: t for t in self._threads}
        out: list[dict[str, object]] = []
        for fd in self.vcpus:
            t = threads.get(f"vcpu{fd.index}")
            alive = t is not None and t.is_alive()
            clock = self._clocks.get(fd.index)
            out.append({"vcpu": fd.index, "tid": t.native_id if alive and t else None, "cpu": None,
                        "state": "running" if alive else "stopped", "mp_state": None,
                        "online": alive, "affinity": [],
                        "cpu_time": time.clock_gettime(clock) if clock is not None else 0.0})
        return out

    def _park(self) -> None:
        """On a vCPU thread, out of KVM_RUN: wait while the machine is paused."""
        with self._pause_cond:
            self._parked += 1
            self._pause_cond.notify_all()
            while self._paused and not self._stopping:
                self._pause_cond.wait()
            self._parked -= 1

    def pause(self) -> None:
        """Return once every running vCPU thread is out of KVM_RUN and parked."""
        with self._pause_cond:
            self._paused = True
        self._kick_all()
        with self._pause_cond:
            while self._parked < sum(t.is_alive() for t in self._threads) and not self._stopping:
                self._pause_cond.wait(0.05)  # a thread that ended meanwhile is not counted
                self._kick_all()

    def resume(self) -> None:
        with self._pause_cond:
            self._paused = False
            self._pause_cond.notify_all()

    def allocate_msi(self) -> object:
        raise NotImplementedError("arm64 guests have no MSI routes yet (no PCI)")

    def stop(self) -> None:
        """Stop and join the vCPU threads (a guest still running is stopped as poweroff)."""
        with self._stop_lock:
            self._stopping = True
        with self._pause_cond:
            self._pause_cond.notify_all()
        self._kick_all()
        me = threading.current_thread()
        for t in self._threads:
            while t is not me and t.is_alive():
                self._kick_all()  # a thread about to block again needs the kick anew
                t.join(0.05)

    def close(self) -> None:
        self.stop()
        for fd in self.vcpus:
            fd.close()
        if self.gic_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.gic_fd)
            self.gic_fd = -1
        self._ioevents.close()
        for fd in self._irqfds.values():
            os.close(fd)  # the VM going away drops the routes
        self._irqfds.clear()
        self.vm.close()
        if self._own_kvm:
            self.kvm.close()
