"""One vCPU: loading a `CpuState`, the KVM_RUN loop and exit dispatch.

The loop is the hot path of every emulated device, so it reads `struct kvm_run` straight
out of the shared mmap with precompiled `struct.Struct`s (one C call for the exit reason and
all the port-I/O fields) instead of walking ctypes attributes. Field offsets are those of
linux/kvm.h, checked in tests/unit/test_kvm_uapi.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import signal
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from xenopus.arch.x86 import EFER_LMA, PTE_A
from xenopus.kvm import uapi as u
from xenopus.kvm.system import KvmError, VcpuFd
from xenopus.memory import paging
from xenopus.memory.guest import GuestMemory, GuestMemoryError
from xenopus.vm.cpu import CpuState, Segment
from xenopus.vm.events import StopReason
from xenopus.vm.ports import IoHandler

log = logging.getLogger("xenopus.vm")

ExitT = TypeVar("ExitT", bound=ctypes.Structure)

# The signal that kicks a vCPU thread out of KVM_RUN. Any installed handler makes the ioctl
# fail with EINTR (api.rst, KVM_RUN: "-EINTR: an unmasked signal is pending").
KICK_SIGNAL = signal.SIGRTMIN


def _ignore_kick(signum: int, frame: object) -> None:
    """The kick only has to interrupt the ioctl; the vCPU thread then reads its flags."""


def install_kick_handler() -> None:
    """Give KICK_SIGNAL a handler (its default action kills the process). Must run in the
    main thread once, before vCPU threads start (Python installs handlers only there)."""
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        return
    try:
        signal.signal(KICK_SIGNAL, _ignore_kick)
    except ValueError as e:
        raise RuntimeError(
            "the first Machine must be created in the main thread (it installs the "
            f"vCPU kick signal handler for signal {int(KICK_SIGNAL)})"
        ) from e


# --- SMP topology -------------------------------------------------------------------------
# N vCPUs are N cores of one package, one thread per core: the APIC ID is the vCPU index,
# its low `core_bits` bits are the core ID and there are no SMT bits.
_HTT = 1 << 28  # CPUID.1:EDX.HTT (SDM 2A, CPUID, table 3-11)
_CMP_LEGACY = 1 << 1  # CPUID.8000_0001:ECX.CmpLegacy (AMD APM 3, appendix E.4.2)
_LEVEL_SMT, _LEVEL_CORE = 1, 2  # CPUID.0BH:ECX[15:8] level types (SDM 2A, CPUID leaf 0BH)


def _core_bits(count: int) -> int:
    return (count - 1).bit_length()


def _ext_topology(function: int, apic_id: int, count: int) -> list[u.kvm_cpuid_entry2]:
    """Leaf 0BH / 1FH (SDM 2A, "Extended Topology Enumeration"): sub-leaf 0 the SMT level
    (one thread, shift 0), sub-leaf 1 the core level (`count` processors, shift to the
    package ID), sub-leaf 2 the terminating invalid level. EDX is the x2APIC ID throughout."""
    flag = u.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    rows = [(0, 1, _LEVEL_SMT), (_core_bits(count), count, _LEVEL_CORE), (0, 0, 0)]
    return [
        u.kvm_cpuid_entry2(function, i, flag, shift, n, (level << 8) | i, apic_id)
        for i, (shift, n, level) in enumerate(rows)
    ]


def cpuid_topology(cpuid: ctypes.Structure, apic_id: int, count: int) -> ctypes.Structure:
    """A copy of `cpuid` (a kvm_cpuid2) describing vCPU `apic_id` of `count` cores in one
    package, consistently across the Intel and AMD leaves a guest may read."""
    bits = _core_bits(count)
    entries = [cpuid.entries[i] for i in range(cpuid.nent)]
    max_basic = next((e.eax for e in entries if e.function == 0), 0)
    out: list[u.kvm_cpuid_entry2] = []
    for entry in entries:
        f = entry.function
        if f in (0xB, 0x1F):  # regenerated whole, once, if the guest can see the leaf
            if entry.index == 0 and f <= max_basic:
                out += _ext_topology(f, apic_id, count)
            continue
        e = u.kvm_cpuid_entry2.from_buffer_copy(entry)
        if f == 1:
            # EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processor IDs in
            # the package (a power of two, as the APIC ID bit fields are), valid with HTT.
            e.ebx = (e.ebx & 0xFFFF) | (apic_id << 24) | (min(1 << bits, 0xFF) << 16)
            e.edx = e.edx | _HTT if count > 1 else e.edx & ~_HTT
        elif f == 4 and e.eax & 0x1F:  # a cache level (SDM 2A, CPUID leaf 04H)
            # EAX[31:26] addressable core IDs - 1; EAX[25:14] logical processors sharing
            # the cache - 1: L1/L2 are per core, L3 is the package's.
            sharing = (1 << bits) - 1 if (e.eax >> 5) & 7 >= 3 else 0
            e.eax = (e.eax & 0x3FFF) | (sharing << 14) | (((1 << bits) - 1) << 26)
        elif f == 0x80000001:
            e.ecx = e.ecx | _CMP_LEGACY if count > 1 else e.ecx & ~_CMP_LEGACY
        elif f == 0x80000008:  # ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdCoreIdSize
            e.ecx = (e.ecx & ~0xF0FF) | (bits << 12) | (count - 1)
        elif f == 0x8000001E:  # extended APIC ID; compute unit = core, 1 thread; node 0
            e.eax, e.ebx, e.ecx = apic_id, apic_id & 0xFF, 0
        out.append(e)
    result = u.cpuid2_with(len(out))
    for i, e in enumerate(out):
        result.entries[i] = e
    return result


# --- host thread state ----------------------------------------------------------------------
MP_STATE_NAMES = {
    u.KVM_MP_STATE_RUNNABLE: "runnable",
    u.KVM_MP_STATE_UNINITIALIZED: "uninitialized",  # an AP waiting for INIT
    u.KVM_MP_STATE_INIT_RECEIVED: "init-received",  # an AP waiting for SIPI
    u.KVM_MP_STATE_HALTED: "halted",
    u.KVM_MP_STATE_SIPI_RECEIVED: "sipi-received",
}
# States of a vCPU that has not been started (or has been put back by INIT).
WAIT_FOR_SIPI = (u.KVM_MP_STATE_UNINITIALIZED, u.KVM_MP_STATE_INIT_RECEIVED)


def thread_stat(tid: int) -> tuple[str, int] | None:
    """(state letter, host CPU it last ran on) of a thread of this process, from
    /proc/self/task/TID/stat fields 3 and 39 (proc(5)); None once the thread is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # comm may hold spaces and parentheses
    return fields[0].decode(), int(fields[39 - 3])


class MsrHandler(Protocol):
    """Userspace MSR accesses (KVM_EXIT_X86_RDMSR/WRMSR). None / False inject #GP."""

    def rdmsr(self, vcpu: int, index: int) -> int | None: ...

    def wrmsr(self, vcpu: int, index: int, value: int) -> bool: ...


# struct kvm_run fast-path views (layouts from xenopus.kvm.uapi, checked in
# tests/unit/test_kvm_uapi.py).
_HEAD = u.RUN_IO_VIEW  # exit_reason; io.{direction,size,port,count,data_offset}
_MMIO = u.RUN_MMIO_VIEW  # mmio.{phys_addr,data,len,is_write}
_MSR = u.RUN_MSR_VIEW  # msr.{reason,index,data}
_MSR_ERROR = u.RUN_MSR_ERROR
_MSR_DATA = u.RUN_MSR_DATA
_MMIO_DATA = u.RUN_MMIO_DATA
_IMMEDIATE_EXIT = u.RUN_IMMEDIATE_EXIT
_INT = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
_UNPACK = {size: s.unpack_from for size, s in _INT.items()}
_PACK = {size: s.pack_into for size, s in _INT.items()}
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: (1 << 64) - 1}

_IO_OUT = u.KVM_EXIT_IO_OUT
_EXIT_IO = u.KVM_EXIT_IO
_EXIT_MMIO = u.KVM_EXIT_MMIO
_EXIT_INTR = u.KVM_EXIT_INTR
_KVM_RUN = u.KVM_RUN


def _segment(seg: Segment) -> u.kvm_segment:
    return u.kvm_segment(
        base=seg.base,
        limit=seg.limit,  # KVM takes the byte-granular (expanded) limit
        selector=seg.selector,
        type=seg.type,
        present=int(seg.present),
        dpl=seg.dpl,
        db=int(seg.db),
        s=int(seg.s),
        l=int(seg.l),
        g=int(seg.g),
        unusable=int(not seg.present),
    )


class Vcpu:
    """A vCPU fd plus the thread that runs it. The owner (`Machine`) supplies `control`,
    called whenever the vCPU was kicked; it returns True when the vCPU must stop."""

    def __init__(
        self,
        fd: VcpuFd,
        memory: GuestMemory,
        pio: IoHandler,
        mmio: IoHandler,
        control: Callable[[Vcpu], bool],
        msr_handler: MsrHandler | None = None,
        exit_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
        sync_regs: bool = False,
        port_out_handlers: Mapping[int, Callable[[Vcpu], None]] | None = None,
    ):
        self.fd = fd
        self.index = fd.index
        self.memory = memory
        self.pio = pio
        self.mmio = mmio
        self.control = control
        self.msr_handler = msr_handler
        # Exits a layer above owns (e.g. KVM_EXIT_XEN for the in-kernel Xen path); each
        # runs on this vCPU's thread and reads the exit through `exit_view`.
        self.exit_handlers = dict(exit_handlers or {})
        # Single OUTs to these ports go to the handler with this vCPU in hand (the Xen
        # hypercall port, whose handler reads the registers), not to `pio`.
        self.port_out_handlers = dict(port_out_handlers or {})
        # KVM_CAP_SYNC_REGS: KVM copies regs/sregs into kvm_run at every exit, so a handler
        # that needs them (a hypercall) reads memory instead of paying two ioctls.
        self.sync_regs = sync_regs
        self.thread_id: int | None = None  # pthread id while the run loop is live
        self.exits = 0
        self.mp_state: int | None = None  # as last sampled by `sample_mp_state`

    # --- registers during an exit -------------------------------------------------------
    def exit_regs(self) -> tuple[u.kvm_regs, u.kvm_sregs]:
        """The registers of the exit being handled (call on this vCPU's thread). With sync
        regs they are views of kvm_run: change them only through `set_exit_regs`."""
        if self.sync_regs:
            mm = self.fd.mmap
            return (
                u.kvm_regs.from_buffer(mm, u.RUN_SYNC_REGS),
                u.kvm_sregs.from_buffer(mm, u.RUN_SYNC_SREGS),
            )
        return self.fd.get_regs(), self.fd.get_sregs()

    def set_exit_regs(self, regs: u.kvm_regs) -> None:
        """Give the guest `regs` (from `exit_regs`) when it resumes."""
        if self.sync_regs:
            self.fd.kvm_run.kvm_dirty_regs |= u.KVM_SYNC_X86_REGS  # KVM applies them on entry
        else:
            self.fd.set_regs(regs)

    def exit_sregs(self) -> u.kvm_sregs:
        """The special registers of the exit being handled (read-only use)."""
        if self.sync_regs:
            return u.kvm_sregs.from_buffer(self.fd.mmap, u.RUN_SYNC_SREGS)
        return self.fd.get_sregs()

    def exit_view(self, ctype: type[ExitT]) -> ExitT:
        """kvm_run's exit union as `ctype`, a view: what the handler writes, KVM reads at
        the next KVM_RUN (e.g. a KVM_EXIT_XEN hypercall's result)."""
        return ctype.from_buffer(self.fd.mmap, u.RUN_EXIT)

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """KVM_SET_MSRS (takes the vCPU mutex: on this vCPU's thread, or while it is out
        of KVM_RUN)."""
        self.fd.set_msrs(values)

    @property
    def kick_pending(self) -> bool:
        """`kick` was called and the run loop has not yet looked at it."""
        return bool(self.fd.mmap[_IMMEDIATE_EXIT])

    @property
    def started(self) -> bool:
        """The last sampled MP state shows the guest started this vCPU (SDM 3A §8.4.4)."""
        return self.mp_state is not None and self.mp_state not in WAIT_FOR_SIPI

    # --- state -------------------------------------------------------------------------
    def apply(self, state: CpuState) -> None:
        """Load `state` (SDM 3A §9.1 for what reset leaves elsewhere; KVM keeps the rest)."""
        regs = u.kvm_regs()
        for name, value in state.gprs.items():
            if name not in u.GPR_NAMES:
                raise ValueError(f"unknown general register {name!r}")
            setattr(regs, name, value)
        regs.rip = state.rip
        regs.rsp = state.rsp
        regs.rflags = state.rflags
        sregs = self.fd.get_sregs()  # keeps apic_base and the like
        sregs.cs = _segment(state.code)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, _segment(state.data))
        # VMX refuses entry with an unusable TR (SDM 3B §26.3.1.2): a busy TSS it is.
        sregs.tr = _segment(state.tss)
        # LDTR unusable: no LDT until the guest loads one.
        sregs.ldt = u.kvm_segment(type=2, present=0, unusable=1)
        sregs.gdt = u.kvm_dtable(base=state.gdt_base, limit=state.gdt_limit)
        sregs.idt = u.kvm_dtable(base=state.idt_base, limit=state.idt_limit)
        sregs.cr0 = state.cr0
        sregs.cr3 = state.cr3
        sregs.cr4 = state.cr4
        sregs.efer = state.efer
        sregs.cr2 = 0
        for i in range(len(sregs.interrupt_bitmap)):
            sregs.interrupt_bitmap[i] = 0
        pdptes = None
        if paging.paging_mode(state.cr0, state.cr4, state.efer) is paging.PagingMode.PAE:
            pdptes = self._pdptes(state.cr3)
        if pdptes is None or not self._set_sregs2(sregs, pdptes):
            self.fd.set_sregs(sregs)
        self.fd.set_regs(regs)
        self.fd.set_mp_state(u.KVM_MP_STATE_RUNNABLE)

    def _pdptes(self, cr3: int) -> list[int] | None:
        """The PDPTE registers a MOV to CR3 loads in PAE paging (SDM 3A §4.4.1), from the
        PDPT at CR3[31:5], to give KVM with the other special registers (KVM_SET_SREGS2).
        KVM_SET_SREGS loads them itself but refuses a PDPTE with a reserved bit, leaving
        the registers empty: and the Accessed bit (5) is one that AMD nested paging sets in
        memory as it walks (QEMU's SVM model does), after the first vCPU loaded them clean.
        KVM would then walk this vCPU's page tables (to emulate an instruction, or skip one
        where the CPU gives no next RIP) through empty PDPTEs: the xen32 PAE guest's second
        vCPU ended its domain as soon as it ran. Bit 5 is cleared here, as the vCPU that
        set the PDPT up found it. None: a PDPT outside RAM, left to KVM."""
        base = cr3 & 0xFFFFFFE0  # Table 4-7
        try:
            return [self.memory.read_int(base + 8 * i, 8) & ~PTE_A for i in range(4)]
        except GuestMemoryError as e:
            log.debug("vCPU %d: PDPTEs left to KVM: %s", self.index, e)
            return None

    def _set_sregs2(self, sregs: u.kvm_sregs, pdptes: list[int]) -> bool:
        """`sregs` and the PDPTE registers in one KVM_SET_SREGS2 (api.rst 4.132); False
        where KVM lacks it (KVM_CAP_SREGS2), whose KVM_SET_SREGS then loads them itself."""
        sregs2 = u.kvm_sregs2(flags=u.KVM_SREGS2_FLAGS_PDPTRS_VALID)
        for name, _ in u.kvm_sregs2._fields_:
            if hasattr(sregs, name):  # every field but flags and pdptrs
                setattr(sregs2, name, getattr(sregs, name))
        for i, pdpte in enumerate(pdptes):
            sregs2.pdptrs[i] = pdpte
        try:
            self.fd.set_sregs2(sregs2)
        except KvmError as e:
            log.debug("vCPU %d: PDPTEs left to KVM: %s", self.index, e)
            return False
        return True

    def sample_mp_state(self) -> int:
        """KVM_GET_MP_STATE into `mp_state`. The ioctl takes the vCPU mutex, which KVM_RUN
        holds: call it on the vCPU's own thread between runs, or while no thread runs it."""
        self.mp_state = self.fd.get_mp_state()
        return self.mp_state

    # --- kicking -----------------------------------------------------------------------
    def kick(self) -> None:
        """Make the run loop call `control` soon: immediate_exit covers a thread that is
        about to enter KVM_RUN, the signal one that is inside it (api.rst, immediate_exit)."""
        self.fd.mmap[_IMMEDIATE_EXIT] = 1
        tid = self.thread_id
        if tid is not None:
            with contextlib.suppress(ProcessLookupError):  # the thread has just ended
                signal.pthread_kill(tid, KICK_SIGNAL)

    # --- the run loop ------------------------------------------------------------------
    def run(self) -> StopReason | None:
        """Run until the guest stops (returns why) or `control` says stop (returns None).
        Call on the thread that owns this vCPU."""
        self.thread_id = threading.get_ident()
        if self.sync_regs:
            self.fd.kvm_run.kvm_valid_regs = u.KVM_SYNC_X86_REGS | u.KVM_SYNC_X86_SREGS
        # Other signals go to the main thread, where Python handles them anyway.
        keep = {KICK_SIGNAL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - keep)
        try:
            return self._loop()
        finally:
            self.thread_id = None

    def _loop(self) -> StopReason | None:
        mm = self.fd.mmap
        fd = self.fd.fd
        ioctl = fcntl.ioctl
        head = _HEAD.unpack_from
        unpack = _UNPACK
        pack = _PACK
        mask = _MASK
        pio_read = self.pio.read
        pio_write = self.pio.write
        mmio_read = self.mmio.read
        mmio_write = self.mmio.write
        mmio_fields = _MMIO.unpack_from
        own_ports = frozenset(self.port_out_handlers)
        own_port = self.port_out_handlers
        exits = 0
        try:
            while True:
                try:
                    ioctl(fd, _KVM_RUN, 0)
                except InterruptedError:
                    # Clear before looking at the flags so that a kick from now on is kept.
                    mm[_IMMEDIATE_EXIT] = 0
                    if self.control(self):
                        return None
                    continue
                except BlockingIOError:
                    # EAGAIN: an AP in wait-for-INIT (KVM_MP_STATE_UNINITIALIZED) was woken
                    # by an INIT; KVM wants the run re-entered (x86.c, kvm_arch_vcpu_ioctl_run).
                    continue
                except OSError as e:  # e.g. EFAULT: a memory slot KVM cannot use
                    return StopReason("crash", self.report(f"KVM_RUN failed: {e}"))
                exits += 1
                reason, direction, size, port, count, off = head(mm)
                if reason == _EXIT_IO:
                    if count == 1:
                        if direction == _IO_OUT:
                            if port in own_ports:
                                own_port[port](self)
                            else:
                                pio_write(port, size, unpack[size](mm, off)[0])
                        else:
                            pack[size](mm, off, pio_read(port, size) & mask[size])
                    else:  # string I/O (INS/OUTS, REP): count items back to back
                        self._string_io(direction, port, size, count, off)
                elif reason == _EXIT_MMIO:
                    addr, data, length, is_write = mmio_fields(mm)
                    if is_write:
                        mmio_write(addr, length, int.from_bytes(data[:length], "little"))
                    else:
                        value = mmio_read(addr, length) & mask.get(length, (1 << 64) - 1)
                        mm[_MMIO_DATA : _MMIO_DATA + length] = value.to_bytes(length, "little")
                elif reason == _EXIT_INTR:
                    mm[_IMMEDIATE_EXIT] = 0
                    if self.control(self):
                        return None
                else:
                    stop = self._other_exit(reason)
                    if stop is not None:
                        return stop
        except Exception as e:  # a device model bug must not take the process down
            where = self._device_address()
            log.exception("vCPU %d: handler for %s raised", self.index, where)
            return StopReason(
                "crash", f"device emulation error at {where}: {e!r}\n" + self.report("")
            )
        finally:
            self.exits += exits

    def _string_io(self, direction: int, port: int, size: int, count: int, off: int) -> None:
        mm = self.fd.mmap
        if direction == _IO_OUT:
            unpack = _UNPACK[size]
            for i in range(count):
                self.pio.write(port, size, unpack(mm, off + i * size)[0])
        else:
            pack = _PACK[size]
            m = _MASK[size]
            for i in range(count):
                pack(mm, off + i * size, self.pio.read(port, size) & m)

    def _device_address(self) -> str:
        reason, direction, size, port, _, _ = _HEAD.unpack_from(self.fd.mmap)
        if reason == _EXIT_IO:
            return f"port {port:#x} ({'out' if direction == _IO_OUT else 'in'}, size {size})"
        if reason == _EXIT_MMIO:
            addr, _, length, is_write = _MMIO.unpack_from(self.fd.mmap)
            return f"MMIO {addr:#x} ({'write' if is_write else 'read'}, size {length})"
        return u.EXIT_NAMES.get(reason, f"exit {reason}")

    def _other_exit(self, reason: int) -> StopReason | None:
        """Everything but port I/O and MMIO; None means carry on."""
        run = self.fd.kvm_run
        handler = self.exit_handlers.get(reason)
        if handler is not None:
            handler(self)
            return None
        if reason in (u.KVM_EXIT_X86_RDMSR, u.KVM_EXIT_X86_WRMSR):
            self._msr_exit(reason)
            return None
        if reason == u.KVM_EXIT_HLT:
            return None  # only without an in-kernel irqchip; the next KVM_RUN resumes
        if reason == u.KVM_EXIT_SHUTDOWN:
            # A triple fault (SDM 3A §6.15, #DF handling). Xen's default HVM action for it
            # is a reset of the domain, so it is a reboot, not a crash.
            return StopReason("reboot", "triple fault\n" + self.report("KVM_EXIT_SHUTDOWN"))
        if reason == u.KVM_EXIT_SYSTEM_EVENT:
            kind = run.exit.system_event.type
            if kind == u.KVM_SYSTEM_EVENT_SHUTDOWN:
                return StopReason("poweroff", "system event: shutdown")
            if kind == u.KVM_SYSTEM_EVENT_RESET:
                return StopReason("reboot", "system event: reset")
            return StopReason("crash", self.report(f"KVM_EXIT_SYSTEM_EVENT type {kind}"))
        if reason == u.KVM_EXIT_INTERNAL_ERROR:
            internal = run.exit.internal
            what = f"KVM_EXIT_INTERNAL_ERROR suberror {internal.suberror}"
            if internal.suberror == u.KVM_INTERNAL_ERROR_EMULATION:
                what += " (instruction emulation failed)"
            ndata = min(internal.ndata, 16)
            if ndata:
                what += "\n  data: " + " ".join(f"{internal.data[i]:#x}" for i in range(ndata))
            ef = run.exit.emulation_failure
            if (
                internal.suberror == u.KVM_INTERNAL_ERROR_EMULATION
                and ndata >= 1
                and ef.flags & u.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
            ):
                n = min(ef.insn_size, 15)
                what += "\n  KVM's instruction bytes: " + bytes(ef.insn_bytes[:n]).hex(" ")
            return StopReason("crash", self.report(what))
        if reason == u.KVM_EXIT_FAIL_ENTRY:
            fail = run.exit.fail_entry
            return StopReason(
                "crash",
                self.report(
                    "KVM_EXIT_FAIL_ENTRY hardware_entry_failure_reason "
                    f"{fail.hardware_entry_failure_reason:#x} on host cpu {fail.cpu}"
                ),
            )
        name = u.EXIT_NAMES.get(reason, "unknown")
        return StopReason("crash", self.report(f"unexpected exit {reason} ({name})"))

    def _msr_exit(self, reason: int) -> None:
        # kvm_run.msr: error (user -> kernel, 1 injects #GP), reason, index, data (api.rst).
        mm = self.fd.mmap
        _, index, data = _MSR.unpack_from(mm)
        handler = self.msr_handler
        ok = False
        if handler is not None:
            if reason == u.KVM_EXIT_X86_RDMSR:
                value = handler.rdmsr(self.index, index)
                if value is not None:
                    struct.pack_into("<Q", mm, _MSR_DATA, value & _MASK[8])
                    ok = True
            else:
                ok = handler.wrmsr(self.index, index, data)
        if not ok:
            log.debug(
                "vCPU %d: #GP for %s of MSR %#x",
                self.index,
                "rdmsr" if reason == u.KVM_EXIT_X86_RDMSR else "wrmsr",
                index,
            )
        mm[_MSR_ERROR] = 0 if ok else 1

    # --- crash reports -----------------------------------------------------------------
    def report(self, what: str) -> str:
        """The exit, the registers and the instruction bytes at CS:RIP, for humans."""
        lines = [f"vCPU {self.index}: {what}"] if what else [f"vCPU {self.index}:"]
        try:
            regs = self.fd.get_regs()
            sregs = self.fd.get_sregs()
        except Exception as e:  # a dead vCPU fd: say so rather than hide the exit
            lines.append(f"  registers unavailable: {e}")
            return "\n".join(lines)
        names = u.GPR_NAMES[:16]
        for i in range(0, 16, 4):
            lines.append(
                "  " + " ".join(f"{n:>3}={getattr(regs, n):016x}" for n in names[i : i + 4])
            )
        lines.append(f"  rip={regs.rip:016x} rflags={regs.rflags:08x}")
        lines.append(
            f"  cr0={sregs.cr0:08x} cr2={sregs.cr2:016x} cr3={sregs.cr3:016x} "
            f"cr4={sregs.cr4:08x} efer={sregs.efer:x}"
        )
        for name in ("cs", "ss"):
            s = getattr(sregs, name)
            lines.append(
                f"  {name}={s.selector:04x} base={s.base:016x} limit={s.limit:08x} "
                f"type={s.type:x} dpl={s.dpl} db={s.db} l={s.l}"
            )
        linear = (sregs.cs.base + regs.rip) & _MASK[8]
        if not sregs.efer & EFER_LMA:  # outside long mode, linear addresses are 32-bit
            linear &= 0xFFFFFFFF
        lines.append(f"  code at {linear:#x}: {self._code_bytes(linear, sregs)}")
        return "\n".join(lines)

    def _code_bytes(self, linear: int, sregs: u.kvm_sregs) -> str:
        out = bytearray()
        try:
            addr = linear
            while len(out) < 15:  # the longest x86 instruction (SDM 2A §2.3.11)
                chunk = min(15 - len(out), 0x1000 - (addr & 0xFFF))
                gpa = self._translate(addr, sregs)
                out += self.memory.read(gpa, chunk)
                addr += chunk
        except Exception as e:
            if not out:
                return f"unreadable ({e})"
        return out.hex(" ")

    def _translate(self, gva: int, sregs: u.kvm_sregs) -> int:
        return paging.translate(
            self.memory,
            gva,
            cr0=sregs.cr0,
            cr3=sregs.cr3,
            cr4=sregs.cr4,
            efer=sregs.efer,
            fetch=True,
        )
