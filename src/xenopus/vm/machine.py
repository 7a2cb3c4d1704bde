"""A KVM virtual machine: its memory slots, in-kernel irqchip and PIT, and vCPU threads.

Thread model: one thread per vCPU runs `Vcpu.run`. Every other request (pause, stop) is a
flag under `self._cond` plus a kick (`Vcpu.kick`) that gets the vCPU out of KVM_RUN to look
at it. The last vCPU thread to leave calls `on_stop`, so `on_stop` sees a quiescent machine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TypedDict

from xenopus.host import host_cpus
from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm, KvmError, VmFd
from xenopus.memory.guest import PAGE_SIZE, GuestMemory, MemoryRegion
from xenopus.vm.cpu import CpuState
from xenopus.vm.cpu_policy import CpuPolicy, msr_filter_ranges
from xenopus.vm.cpuid import guest_cpuid
from xenopus.vm.events import StopReason
from xenopus.vm.irq import IoEvents, IrqRouting, MsiRoute
from xenopus.vm.ports import IoHandler
from xenopus.vm.vcpu import (
    MP_STATE_NAMES,
    MsrHandler,
    Vcpu,
    cpuid_topology,
    install_kick_handler,
    thread_stat,
)

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


class MachineHooks(TypedDict, total=False):
    """The optional hooks of `Machine(...)` (see its docstring), for a layer above that
    supplies them as one set (`XenGuest.machine_hooks`)."""

    msr_handler: MsrHandler
    exit_handlers: Mapping[int, Callable[[Vcpu], None]]
    msr_filter: list[tuple[int, int, bytes]]
    cpuid_fixup: CpuidFixup
    port_out_handlers: Mapping[int, Callable[[Vcpu], None]]
    cpu_policy: CpuPolicy


# xAPIC IDs are 8 bits and 0xFF is the broadcast ID (SDM 3A §10.4.6, §10.6.2.1); more
# vCPUs would need x2APIC IDs in the MADT and CPUID leaf 1.
MAX_XAPIC_VCPUS = 255
VCPU_INFO_TIMEOUT = 1.0  # seconds vcpu_info waits for a vCPU thread to answer its kick


class Machine:
    """A VM with `vcpus` vCPUs over `memory`, dispatching port I/O to `pio` and MMIO to
    `mmio`. Optional: `msr_handler` for userspace MSR exits, `cpuid_fixup(index, cpuid2)`
    to adjust each vCPU's CPUID before it is set (e.g. hypervisor leaves), `exit_handlers`
    for exit reasons a layer above serves (KVM_EXIT_XEN), `msr_filter` ranges ((flags,
    base, bitmap) as for KVM_X86_SET_MSR_FILTER) whose denied MSRs go to `msr_handler`,
    `port_out_handlers` for ports whose single OUTs a layer above serves with the vCPU in
    hand (the Xen hypercall port), `cpu_policy` the domain's CPUID and MSR policy
    (vm/cpu_policy.py): with one, the MSR filter denies by default and `msr_filter`'s
    denied MSRs are carved out of what the policy allows."""

    def __init__(
        self,
        memory: GuestMemory,
        vcpus: int = 1,
        *,
        pio: IoHandler,
        mmio: IoHandler,
        kvm: Kvm | None = None,
        msr_handler: MsrHandler | None = None,
        exit_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
        msr_filter: list[tuple[int, int, bytes]] | None = None,
        cpuid_fixup: CpuidFixup | None = None,
        port_out_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
        cpu_policy: CpuPolicy | None = None,
        pit: bool = True,
    ):
        if vcpus < 1:
            raise ValueError(f"a machine needs at least one vCPU, not {vcpus}")
        install_kick_handler()
        self.memory = memory
        self._own_kvm = kvm is None
        self.kvm = kvm if kvm is not None else Kvm()
        self.vm: VmFd | None = None
        self.irq: IrqRouting | None = None  # set once the irqchip exists (see _build)
        self._ioevents: IoEvents | None = None
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
        self._tids: dict[int, int] = {}  # vCPU index -> native thread id of its live thread
        self._vcpu_cpu: dict[int, float] = {}  # vCPU index -> CPU seconds of ended threads
        self._affinity: dict[int, frozenset[int]] = {}  # vCPU index -> pinned host CPUs
        self._probe = 0  # vcpu_info's kick generation ...
        self._probed: dict[int, int] = {}  # ... and the last one each vCPU thread answered
        self._extra_slots: dict[int, int] = {}  # gpa of a page added outside RAM -> its slot
        self._down: set[int] = set()  # vCPUs a layer above took down (parked until up)
        self._load: dict[int, CpuState] = {}  # vCPU -> state to load on its thread, then run
        self._soon: dict[int, list[Callable[[], None]]] = {}  # vCPU -> calls for its thread
        self._parked_at: set[int] = set()  # vCPUs parked in _control (out of KVM_RUN)
        self._slot_lock = threading.Lock()
        self.cpu_policy = cpu_policy
        self._cpuid_fixup = cpuid_fixup
        self._userspace_msrs = list(msr_filter or ())
        self.has_pit = pit  # the in-kernel i8254 (Xen's PVH platform has none)
        self._manual_dirty_log = False  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled (log_dirty)
        try:
            self._build(vcpus, pio, mmio, msr_handler, cpuid_fixup, exit_handlers, msr_filter,
                        port_out_handlers)
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
        exit_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
        msr_filter: list[tuple[int, int, bytes]] | None = None,
        port_out_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
    ) -> None:
        self.kvm.require(*REQUIRED_CAPS)
        # api.rst, KVM_CREATE_VCPU: KVM_CAP_MAX_VCPUS is the hard limit (KVM_CAP_NR_VCPUS,
        # the recommended one, stands in for it on kernels without the former).
        recommended = self.kvm.check_extension(u.KVM_CAP_NR_VCPUS)
        max_vcpus = self.kvm.check_extension(u.KVM_CAP_MAX_VCPUS) or recommended
        if n > max_vcpus:
            raise ValueError(f"{n} vCPUs asked for: KVM on this host allows at most {max_vcpus}")
        if n > MAX_XAPIC_VCPUS:
            raise ValueError(
                f"{n} vCPUs asked for: at most {MAX_XAPIC_VCPUS} (xAPIC IDs are 8 bits)"
            )
        if n > recommended:
            log.info("%d vCPUs is more than KVM recommends here (%d)", n, recommended)
        vm = self.vm = self.kvm.create_vm()
        if msr_filter or self.cpu_policy is not None:
            # MSR accesses the filter denies exit to `msr_handler` (KVM_CAP_X86_USER_SPACE_MSR).
            # Set first: once the irqchip and PIT exist, a filter update waits for an SRCU
            # grace period (measured here: 15 ms, against 0.1 ms now).
            vm.enable_cap(u.KVM_CAP_X86_USER_SPACE_MSR, u.KVM_MSR_EXIT_REASON_FILTER)
            self._set_msr_filter()
        # VMX needs these pages for real-mode and unpaged guests; api.rst says to set them
        # before creating vCPUs. They sit in the MMIO hole below the 4 GiB BIOS area.
        vm.set_tss_addr()
        vm.set_identity_map_addr()
        # Memory slots before the irqchip and PIT: once those exist, each slot change waits
        # for an SRCU grace period in the kernel (measured: 7 ms for one slot, vs 0.2 ms).
        for slot, region in enumerate(self.memory.regions):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        vm.create_irqchip()  # PIC + IOAPIC + per-vCPU LAPICs
        self.irq = IrqRouting(vm)  # owns the GSI table from here on (MSI routes, irqfds)
        self._ioevents = IoEvents(vm)
        if self.has_pit:
            # The dummy speaker keeps port 0x61 in the kernel, tied to PIT channel 2 as
            # Linux's PIT calibration expects.
            vm.create_pit2(u.KVM_PIT_SPEAKER_DUMMY)
        self._nvcpus = n
        self._supported = self.kvm.supported_cpuid()
        self._tsc_khz_known = self.kvm.check_extension(u.KVM_CAP_GET_TSC_KHZ) > 0
        want = u.KVM_SYNC_X86_REGS | u.KVM_SYNC_X86_SREGS
        sync = self.kvm.check_extension(u.KVM_CAP_SYNC_REGS) & want == want
        for index in range(n):
            vcpu = Vcpu(vm.create_vcpu(index), self.memory, pio, mmio, self._control,
                        msr_handler, exit_handlers, sync, port_out_handlers)
            self.vcpus.append(vcpu)
            self._set_cpuid(vcpu)

    def _set_cpuid(self, vcpu: Vcpu) -> None:
        """This vCPU's CPUID (its topology, the policy, the hypervisor's leaves) and the
        feature-MSR values the policy gives it."""
        fd, n = vcpu.fd, self._nvcpus
        cpuid = cpuid_topology(self._supported, vcpu.index, n)  # a copy, this vCPU's own
        if self.cpu_policy is not None:
            cpuid = self.cpu_policy.apply(cpuid)
        cpuid = guest_cpuid(cpuid, fd.get_tsc_khz() if self._tsc_khz_known else None)
        if self._cpuid_fixup is not None:
            cpuid = self._cpuid_fixup(vcpu.index, cpuid)
        fd.set_cpuid2(cpuid)
        policy = self.cpu_policy
        if policy is not None and policy.msrs:
            try:
                fd.set_msrs(policy.msrs)  # after the CPUID that announces them
            except KvmError as e:
                # A KVM that reports ARCH_CAPABILITIES among its feature MSRs yet takes no
                # value for a vCPU (measured on the build machines' nested 6.18 KVM): the
                # guest cannot be told, so the domain's policy hides the MSR altogether.
                log.warning("KVM refuses the policy's feature MSRs (%s): hiding"
                            " ARCH_CAPABILITIES from the guest", e)
                # The MSR filter stays: KVM refuses the MSR to a guest whose CPUID does not
                # announce it, and a filter update now would wait for an SRCU grace period.
                self.cpu_policy = replace(policy.without("arch-caps"), msrs={})
                for done in self.vcpus:
                    self._set_cpuid(done)

    def _set_msr_filter(self) -> None:
        assert self.vm is not None
        if self.cpu_policy is None:
            self.vm.set_msr_filter(self._userspace_msrs)
            return
        read, write = self.cpu_policy.allowed_msrs(self.kvm.msr_index_list())
        self.vm.set_msr_filter(msr_filter_ranges(read, write, self._userspace_msrs),
                               default=u.KVM_MSR_FILTER_DEFAULT_DENY)

    def set_cpu_policy(self, policy: CpuPolicy) -> None:
        """Give every vCPU `policy` instead (a restored domain keeps the policy it was
        saved with); only before the vCPUs first run (KVM then freezes CPUID)."""
        with self._cond:
            if self._live:
                raise RuntimeError("the CPU policy cannot change while the vCPUs run")
        self.cpu_policy = policy
        if self._userspace_msrs or policy is not None:
            self._set_msr_filter()
        for vcpu in self.vcpus:
            self._set_cpuid(vcpu)

    # --- interrupts -----------------------------------------------------------------------
    def set_irq(self, gsi: int, level: bool | int) -> None:
        """Drive an interrupt line of the in-kernel PIC/IOAPIC (KVM_IRQ_LINE)."""
        assert self.vm is not None
        self.vm.irq_line(gsi, level)

    def allocate_msi(self) -> MsiRoute:
        """An MSI route of this VM's GSI table (`IrqRouting.allocate_msi`)."""
        assert self.irq is not None
        return self.irq.allocate_msi()

    def clock_ns(self) -> int:
        """The VM's kvmclock now, in ns (KVM_GET_CLOCK)."""
        assert self.vm is not None
        return int(self.vm.get_clock().clock)

    def log_dirty(self, on: bool) -> None:
        """Have KVM log the pages the guest writes, slot by slot (KVM_MEM_LOG_DIRTY_PAGES,
        for live migration), or stop. Writes by this process (devices, Xen) are not in it:
        `GuestMemory.log_writes` keeps those. Where KVM has it, the log is cleared by hand
        (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): `dirty_pages` then re-protects only the pages
        it reports, and no KVM_GET_DIRTY_LOG write-protects the whole slot under KVM's
        MMU lock (api.rst 7.18)."""
        assert self.vm is not None
        if on and not self._manual_dirty_log:
            supported = self.vm.check_extension(u.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
            if supported & u.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE:
                self.vm.enable_cap(u.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                   u.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
                self._manual_dirty_log = True
        flags = u.KVM_MEM_LOG_DIRTY_PAGES if on else 0
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address,
                                           flags)

    def dirty_pages(self) -> list[int]:
        """Guest-physical addresses of the pages the guest wrote since the last call (or
        since `log_dirty(True)`), in order; each is write-protected again before this
        returns, so a write after it is in the next call's answer."""
        assert self.vm is not None
        pages = []
        for slot, region in enumerate(self.memory.regions):
            bitmap = self.vm.get_dirty_log(slot, region.size // PAGE_SIZE)
            words = memoryview(bitmap).cast("Q")  # little-endian longs: bit b of word i
            found = False
            for i, word in enumerate(words):
                if word:
                    found = True
                    base = region.gpa + 64 * i * PAGE_SIZE
                    while word:
                        low = word & -word
                        pages.append(base + (low.bit_length() - 1) * PAGE_SIZE)
                        word ^= low
            words.release()
            if found and self._manual_dirty_log:
                self.vm.clear_dirty_log(slot, bitmap, 0, region.size // PAGE_SIZE)
        return pages

    def ioeventfd(
        self, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None
    ) -> int:
        """An eventfd KVM signals on a guest write of `length` bytes at `addr` (matching
        `datamatch` if given), with no exit to userspace (KVM_IOEVENTFD). Closed by
        `remove_ioeventfd` or `close`."""
        assert self._ioevents is not None
        return self._ioevents.add(addr, length, pio=pio, datamatch=datamatch)

    def remove_ioeventfd(self, fd: int) -> None:
        assert self._ioevents is not None
        self._ioevents.remove(fd)

    # --- memory added while the guest runs ------------------------------------------------
    def add_memory(self, gpa: int, size: int, *, backing: tuple[int, int] | None = None,
                   readonly: bool = False) -> None:
        """Back `size` bytes at `gpa`, outside RAM, with a memory region of their own (a
        memfd, zeroed) in a new KVM memory slot; with `backing` = (memfd, offset), with
        that file's pages instead (a grant mapping: another domain's memory), read-only
        for the guest with `readonly` (KVM_MEM_READONLY: its writes exit as MMIO). Raises
        ValueError if the range overlaps guest memory or KVM refuses the slot (e.g. over
        one of its private pages)."""
        assert self.vm is not None
        with self._slot_lock:
            if self.memory.overlaps(gpa, size):
                raise ValueError(f"{gpa:#x}+{size:#x} overlaps guest memory")
            used = set(self._extra_slots.values())
            slot = next(s for s in range(len(self.memory.regions), 1 << 15) if s not in used)
            if backing is None:
                region = MemoryRegion.create(gpa, size, "xenopus-extra")
            else:
                region = MemoryRegion.map_file(gpa, size, *backing, readonly=readonly)
            flags = u.KVM_MEM_READONLY if readonly else 0
            try:
                self.vm.set_user_memory_region(slot, gpa, size, region.host_address, flags)
            except KvmError as e:
                region.close()
                raise ValueError(f"no memory slot at {gpa:#x}+{size:#x}: {e}") from None
            self.memory.attach(region)
            self._extra_slots[gpa] = slot

    def remove_memory(self, gpa: int) -> None:
        """Undo `add_memory(gpa, ...)`: the slot goes, then the region."""
        assert self.vm is not None
        with self._slot_lock:
            slot = self._extra_slots.pop(gpa)
            # api.rst, KVM_SET_USER_MEMORY_REGION: a memory_size of 0 deletes the slot.
            self.vm.set_user_memory_region(slot, gpa, 0, 0)
            self.memory.detach(gpa).close()

    # --- running --------------------------------------------------------------------------
    def start(self, boot_state: CpuState | None, on_stop: Callable[[StopReason], None]) -> None:
        """Load `boot_state` into vCPU 0 and start every vCPU thread. The others stay in
        wait-for-SIPI (the in-kernel LAPIC creates them so) until the guest starts them.
        None starts the vCPUs as they are (their state restored from a save)."""
        with self._cond:
            if self._live:
                raise RuntimeError("machine is already running")
        self._join()  # threads of a previous run
        with self._cond:
            self._stop_reason = None
            self._paused = False
            self._on_stop = on_stop
            if boot_state is not None:  # a restored machine keeps the vCPUs its restore
                self._down.clear()      # parked (vcpu_down before start: VCPUOP_down)
                self._load.clear()
        if boot_state is not None:
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
            self._tids[vcpu.index] = threading.get_native_id()
            cpus = self._affinity.get(vcpu.index)
            if cpus is not None:  # a pin outlives the thread it was made on
                try:
                    os.sched_setaffinity(0, cpus)
                except OSError as e:
                    log.error("vCPU %d: cannot re-pin to CPUs %s: %s", vcpu.index, sorted(cpus), e)
        try:
            reason = vcpu.run()
        except Exception as e:  # a bug in the loop itself: stop the domain, keep the process
            log.exception("vCPU %d run loop failed", vcpu.index)
            reason = StopReason("crash", f"vCPU {vcpu.index} run loop failed: {e!r}")
        if reason is not None:
            log.info("vCPU %d stops the domain: %s", vcpu.index, reason.kind)
            self.request_stop(reason)
        with self._cond:
            spent = time.thread_time()
            self._cpu_done += spent
            self._vcpu_cpu[vcpu.index] = self._vcpu_cpu.get(vcpu.index, 0.0) + spent
            del self._clocks[vcpu.index]
            del self._tids[vcpu.index]
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
        """Called by a kicked vCPU thread: load a state `vcpu_up` gave it, park while
        paused or down; True once it must stop."""
        self._run_soon(vcpu.index)
        with self._cond:
            state = self._load.pop(vcpu.index, None)
        if state is not None:  # out of KVM_RUN on its own thread: its registers are ours
            try:
                vcpu.apply(state)
            except KvmError as e:  # a state KVM refuses: the guest asked for it
                self.request_stop(StopReason("crash", f"vCPU {vcpu.index}: cannot load the "
                                                      f"state it was brought up in: {e}"))
        # Out of KVM_RUN on its own thread: the one moment KVM_GET_MP_STATE cannot block.
        try:
            vcpu.sample_mp_state()
        except KvmError as e:  # only vcpu_info's `online` depends on it
            log.warning("vCPU %d: KVM_GET_MP_STATE failed: %s", vcpu.index, e)
        with self._cond:
            while True:
                # vcpu_info's probe, answered also by a vCPU parked here (down or paused).
                if self._probed.get(vcpu.index, 0) < self._probe:
                    self._probed[vcpu.index] = self._probe
                    self._cond.notify_all()
                if self._stop_reason is not None:
                    return True
                if not self._paused and vcpu.index not in self._down:
                    return False
                self._parked += 1
                self._parked_at.add(vcpu.index)
                self._cond.notify_all()
                self._cond.wait()
                self._parked_at.discard(vcpu.index)
                self._parked -= 1

    def on_vcpu_thread(self, index: int, call: Callable[[], None]) -> None:
        """Run `call` where vCPU `index`'s ioctls cannot block: on its own thread at its
        next exit (kicked now), or here at once if that is the caller's thread, or no
        thread runs it, or it is parked out of KVM_RUN. A vCPU ioctl from another thread
        waits for the vCPU mutex KVM_RUN holds, which a halted vCPU keeps indefinitely."""
        vcpu = self.vcpus[index]
        with self._cond:
            tid = vcpu.thread_id
            if tid is not None and tid != threading.get_ident() and index not in self._parked_at:
                self._soon.setdefault(index, []).append(call)
                queued = True
            else:
                queued = False
        if queued:
            vcpu.kick()
            if vcpu.thread_id is None:  # its thread ended meanwhile: nobody else will run it
                self._run_soon(index)
            return
        call()

    def _run_soon(self, index: int) -> None:
        with self._cond:
            calls = self._soon.pop(index, [])
        for call in calls:
            try:
                call()
            except Exception:  # a layer above's bug: the vCPU runs on
                log.exception("vCPU %d: deferred call failed", index)

    def vcpu_down(self, index: int) -> None:
        """vCPU `index` stops running at its next exit (the caller's own as the exit it
        handles ends) and stays parked, its state kept, until `vcpu_up`."""
        with self._cond:
            self._down.add(index)
        self.vcpus[index].kick()

    def vcpu_up(self, index: int, state: CpuState | None = None) -> None:
        """vCPU `index` runs again; given `state`, it first loads it on its own thread and
        leaves wait-for-SIPI (a vCPU started without INIT/SIPI)."""
        with self._cond:
            self._down.discard(index)
            if state is not None:
                self._load[index] = state
            self._cond.notify_all()
        self.vcpus[index].kick()

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

    def hold_here(self, index: int) -> bool:
        """Called on vCPU `index`'s own thread by an exit handler: pause the machine
        (the other vCPUs park at their next exit) and park this thread where it is, in
        the handler, until `resume()` (True) or a stop (False). For an exit whose result
        only the toolstack decides (SCHEDOP_shutdown with SHUTDOWN_suspend)."""
        with self._cond:
            self._paused = True
        for v in self.vcpus:
            if v.index != index:
                v.kick()
        with self._cond:
            self._parked += 1
            self._parked_at.add(index)  # out of KVM_RUN: on_vcpu_thread may call directly
            self._cond.notify_all()
            while self._paused and self._stop_reason is None:
                self._cond.wait()
            self._parked_at.discard(index)
            self._parked -= 1
            return self._stop_reason is None

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

    # --- SMP: per-vCPU state and host affinity ----------------------------------------------
    def vcpu_info(self) -> list[dict[str, object]]:
        """One dict per vCPU: `vcpu` (index), `tid` (native id of its host thread, None
        without one), `cpu` (host CPU it last ran on, None without a thread), `state`
        ("running" when the thread is on or waiting for a host CPU, "blocked" when it sleeps
        (halted, in wait-for-SIPI, parked by pause), "stopped" without a thread),
        `mp_state` (KVM's, by name), `online`, `cpu_time` (host CPU seconds, earlier
        threads of the vCPU included) and `affinity` (the thread's hard affinity, sorted).

        `online` means the vCPU's last KVM_GET_MP_STATE showed it out of wait-for-SIPI: the
        guest has started it (SDM 3A §8.4.4) and not sent it back with INIT. KVM_RUN holds
        the vCPU mutex that ioctl takes, so on a running machine each vCPU thread is kicked
        and samples its own state between two runs (one signal per vCPU); a paused
        machine's vCPUs sampled it as they parked; without threads it is read directly.
        The threads' states are read before that kick, which wakes them."""
        with self._cond:
            stats = {i: thread_stat(tid) for i, tid in self._tids.items()}
            if not self._live:
                for v in self.vcpus:
                    v.sample_mp_state()
            elif not self._paused and self._stop_reason is None:
                self._probe += 1
                gen = self._probe
                self._cond.notify_all()  # a vCPU that is down answers from where it parks
                for v in self.vcpus:
                    v.kick()
                answered = self._cond.wait_for(
                    lambda: not self._live
                    or all(self._probed.get(v.index, 0) >= gen for v in self.vcpus),
                    VCPU_INFO_TIMEOUT,
                )
                if not answered:  # e.g. a thread stuck in a slow device handler
                    log.warning("vcpu_info: a vCPU did not answer its kick; state may be stale")
            return [self._info(v, stats.get(v.index)) for v in self.vcpus]

    def _info(self, v: Vcpu, stat: tuple[str, int] | None) -> dict[str, object]:
        """`vcpu_info`'s row for `v`; called with `self._cond` held."""
        i = v.index
        tid = self._tids.get(i)
        cpu_time = self._vcpu_cpu.get(i, 0.0)
        if i in self._clocks:
            cpu_time += time.clock_gettime(self._clocks[i])
        if tid is not None and stat is not None:
            affinity = os.sched_getaffinity(tid)
            state = "running" if stat[0] == "R" else "blocked"
        else:
            affinity = self._affinity.get(i) or os.sched_getaffinity(os.getpid())
            state = "stopped"
        return {
            "vcpu": i,
            "tid": tid,
            "cpu": stat[1] if stat is not None else None,
            "state": state,
            "mp_state": MP_STATE_NAMES.get(v.mp_state) if v.mp_state is not None else None,
            "online": v.started and i not in self._down,  # VCPUOP_down: Xen's VPF_down
            "cpu_time": cpu_time,
            "affinity": sorted(affinity),
        }

    def pin(self, vcpu: int, cpus: Iterable[int]) -> None:
        """Hard-pin vCPU `vcpu`: its host thread runs only on host CPUs `cpus`
        (sched_setaffinity(2)). Remembered and applied to each later thread of the vCPU."""
        if not 0 <= vcpu < len(self.vcpus):
            raise ValueError(f"there is no vCPU {vcpu}: the machine has {len(self.vcpus)}")
        want = frozenset(cpus)
        if not want:
            raise ValueError(f"vCPU {vcpu} cannot be pinned to an empty set of CPUs")
        host = host_cpus()
        if not want <= host:
            raise ValueError(
                f"the host has no CPU {', '.join(map(str, sorted(want - host)))} "
                f"(its CPUs: {', '.join(map(str, sorted(host)))})"
            )
        with self._cond:
            tid = self._tids.get(vcpu)
            if tid is not None:
                try:
                    os.sched_setaffinity(tid, want)
                except OSError as e:  # EINVAL: none of them is allowed (cpuset cgroup)
                    raise ValueError(
                        f"cannot pin vCPU {vcpu} to CPUs {sorted(want)}: {e.strerror}"
                    ) from None
            self._affinity[vcpu] = want

    def close(self) -> None:
        """Stop, then release the vCPU and VM fds (and /dev/kvm if this machine opened it)."""
        self.stop()
        for v in self.vcpus:
            v.fd.close()
        self.vcpus = []
        if self.irq is not None:
            self.irq.close()
            self.irq = None
        if self._ioevents is not None:
            self._ioevents.close()
            self._ioevents = None
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self._own_kvm:
            self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
