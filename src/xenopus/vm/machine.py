"""A KVM virtual machine: its memory slots, in-kernel irqchip and PIT, and vCPU threads.

Thread model: one thread per vCPU runs `Vcpu.run`. Every other request (pause, stop) is a
flag under `self._cond` plus a kick (`Vcpu.kick`) that gets the vCPU out of KVM_RUN to look
at it. The last vCPU thread to leave calls `on_stop`, so `on_stop` sees a quiescent machine.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm, VmFd
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import CpuState
from xenopus.vm.events import StopReason
from xenopus.vm.ports import IoHandler
from xenopus.vm.vcpu import MsrHandler, Vcpu, install_kick_handler

log = logging.getLogger("xenopus.vm")

# What Machine relies on; checked up front so a host that lacks one fails with its name.
REQUIRED_CAPS = (
    u.KVM_CAP_IRQCHIP,
    u.KVM_CAP_PIT2,
    u.KVM_CAP_USER_MEMORY,
    u.KVM_CAP_SET_TSS_ADDR,
    u.KVM_CAP_SET_IDENTITY_MAP_ADDR,
    u.KVM_CAP_EXT_CPUID,
    u.KVM_CAP_IMMEDIATE_EXIT,
    u.KVM_CAP_MP_STATE,
    u.KVM_CAP_IRQ_ROUTING,
    u.KVM_CAP_IRQFD,
    u.KVM_CAP_IOEVENTFD,
)

CpuidFixup = Callable[[int, ctypes.Structure], ctypes.Structure]


def _set_apic_id(cpuid: ctypes.Structure, apic_id: int) -> None:
    """SDM 2A CPUID: leaf 1 EBX[31:24] is the initial APIC ID; leaves 0xB and 0x1F report
    the x2APIC ID in EDX at every sub-leaf."""
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (apic_id << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = apic_id


class Machine:
    """A VM with `vcpus` vCPUs over `memory`, dispatching port I/O to `pio` and MMIO to
    `mmio`. Optional: `msr_handler` for userspace MSR exits, `cpuid_fixup(index, cpuid2)`
    to adjust each vCPU's CPUID before it is set (e.g. hypervisor leaves)."""

    def __init__(
        self,
        memory: GuestMemory,
        vcpus: int = 1,
        *,
        pio: IoHandler,
        mmio: IoHandler,
        kvm: Kvm | None = None,
        msr_handler: MsrHandler | None = None,
        cpuid_fixup: CpuidFixup | None = None,
    ):
        if vcpus < 1:
            raise ValueError(f"a machine needs at least one vCPU, not {vcpus}")
        install_kick_handler()
        self.memory = memory
        self._own_kvm = kvm is None
        self.kvm = kvm if kvm is not None else Kvm()
        self.vm: VmFd | None = None
        self.vcpus: list[Vcpu] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stop_reason: StopReason | None = None
        self._on_stop: Callable[[StopReason], None] | None = None
        self._paused = False
        self._parked = 0
        self._live = 0
        self._cpu_done = 0.0  # CPU seconds of vCPU threads that have ended
        self._clocks: dict[int, int] = {}  # vCPU index -> CPU-time clock of its live thread
        try:
            self._build(vcpus, pio, mmio, msr_handler, cpuid_fixup)
        except BaseException:
            self.close()
            raise

    def _build(
        self,
        n: int,
        pio: IoHandler,
        mmio: IoHandler,
        msr_handler: MsrHandler | None,
        cpuid_fixup: CpuidFixup | None,
    ) -> None:
        self.kvm.require(*REQUIRED_CAPS)
        max_vcpus = self.kvm.check_extension(u.KVM_CAP_MAX_VCPUS) or self.kvm.check_extension(
            u.KVM_CAP_NR_VCPUS
        )
        if n > max_vcpus:
            raise ValueError(f"{n} vCPUs asked for, KVM allows {max_vcpus}")
        vm = self.vm = self.kvm.create_vm()
        # VMX needs these pages for real-mode and unpaged guests; api.rst says to set them
        # before creating vCPUs. They sit in the MMIO hole below the 4 GiB BIOS area.
        vm.set_tss_addr()
        vm.set_identity_map_addr()
        vm.create_irqchip()  # PIC + IOAPIC + per-vCPU LAPICs
        # The dummy speaker keeps port 0x61 in the kernel, tied to PIT channel 2 as
        # Linux's PIT calibration expects.
        vm.create_pit2(u.KVM_PIT_SPEAKER_DUMMY)
        for slot, region in enumerate(self.memory.regions):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        supported = self.kvm.supported_cpuid()
        for index in range(n):
            fd = vm.create_vcpu(index)
            cpuid = u.cpuid2_with(supported.nent)
            ctypes.memmove(
                ctypes.addressof(cpuid), ctypes.addressof(supported), ctypes.sizeof(cpuid)
            )
            _set_apic_id(cpuid, index)
            if cpuid_fixup is not None:
                cpuid = cpuid_fixup(index, cpuid)
            fd.set_cpuid2(cpuid)
            self.vcpus.append(Vcpu(fd, self.memory, pio, mmio, self._control, msr_handler))

    # --- interrupts -----------------------------------------------------------------------
    def set_irq(self, gsi: int, level: bool | int) -> None:
        """Drive an interrupt line of the in-kernel PIC/IOAPIC (KVM_IRQ_LINE)."""
        assert self.vm is not None
        self.vm.irq_line(gsi, level)

    # --- running --------------------------------------------------------------------------
    def start(self, boot_state: CpuState, on_stop: Callable[[StopReason], None]) -> None:
        """Load `boot_state` into vCPU 0 and start every vCPU thread. The others stay in
        wait-for-SIPI (the in-kernel LAPIC creates them so) until the guest starts them."""
        with self._cond:
            if self._live:
                raise RuntimeError("machine is already running")
        self._join()  # threads of a previous run
        with self._cond:
            self._stop_reason = None
            self._paused = False
            self._on_stop = on_stop
        self.vcpus[0].apply(boot_state)
        threads = [
            threading.Thread(target=self._vcpu_main, args=(v,), name=f"vcpu{v.index}", daemon=True)
            for v in self.vcpus
        ]
        with self._cond:
            self._threads = threads
            self._live = len(threads)
        for t in threads:
            t.start()

    def _vcpu_main(self, vcpu: Vcpu) -> None:
        with self._cond:
            self._clocks[vcpu.index] = time.pthread_getcpuclockid(threading.get_ident())
        try:
            reason = vcpu.run()
        except Exception as e:  # a bug in the loop itself: stop the domain, keep the process
            log.exception("vCPU %d run loop failed", vcpu.index)
            reason = StopReason("crash", f"vCPU {vcpu.index} run loop failed: {e!r}")
        if reason is not None:
            log.info("vCPU %d stops the domain: %s", vcpu.index, reason.kind)
            self.request_stop(reason)
        with self._cond:
            self._cpu_done += time.thread_time()
            del self._clocks[vcpu.index]
            self._live -= 1
            last = self._live == 0
            self._cond.notify_all()
            on_stop, final = self._on_stop, self._stop_reason
            if last:
                self._on_stop = None
        if last and on_stop is not None and final is not None:
            try:
                on_stop(final)
            except Exception:
                log.exception("on_stop callback failed")

    def _control(self, vcpu: Vcpu) -> bool:
        """Called by a kicked vCPU thread: park while paused; True once it must stop."""
        with self._cond:
            while True:
                if self._stop_reason is not None:
                    return True
                if not self._paused:
                    return False
                self._parked += 1
                self._cond.notify_all()
                self._cond.wait()
                self._parked -= 1

    def request_stop(self, reason: StopReason) -> None:
        """Stop the guest for `reason` (the first request wins). Thread-safe; callable from a
        device handler on a vCPU thread. Returns at once; `on_stop` follows."""
        with self._cond:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._cond.notify_all()
        self._kick_all()

    def pause(self) -> None:
        """Return once every vCPU is out of KVM_RUN and parked."""
        with self._cond:
            self._paused = True
        self._kick_all()
        with self._cond:
            self._cond.wait_for(lambda: self._parked >= self._live)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self, reason: StopReason | None = None) -> None:
        """Stop and join every vCPU thread; idempotent. `on_stop` gets `reason` unless the
        guest had already stopped for one of its own."""
        with self._cond:
            running = self._live > 0
        if running:
            self.request_stop(reason or StopReason("poweroff", "stopped by the host"))
        self._join()

    def _join(self) -> None:
        """Join the vCPU threads (but not the caller's own, e.g. from `on_stop`)."""
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()

    def _kick_all(self) -> None:
        for v in self.vcpus:
            v.kick()

    @property
    def running(self) -> bool:
        with self._cond:
            return self._live > 0

    def cpu_time(self) -> float:
        """Host CPU seconds used by the vCPU threads, ended ones included."""
        with self._cond:
            # A thread moves its time from its clock to _cpu_done under this lock.
            return self._cpu_done + sum(time.clock_gettime(c) for c in self._clocks.values())

    def close(self) -> None:
        """Stop, then release the vCPU and VM fds (and /dev/kvm if this machine opened it)."""
        self.stop()
        for v in self.vcpus:
            v.fd.close()
        self.vcpus = []
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self._own_kvm:
            self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
