"""Hypercall entry: discovery (CPUID), the hypercall page, the trap path, the dispatch table,
the in-kernel path's configuration and the choice between the two.

Discovery (xen/include/public/arch-x86/cpuid.h): the Xen leaves sit at 0x40000000 and
KVM's own leaves are removed. Linux (arch/x86/kernel/cpu/hypervisor.c) keeps the detected
hypervisor whose base leaf is *highest*, so KVM's leaves left at 0x40000000 with Xen's at
0x40000100 would do, but Xen's spec and simpler guests (which look at 0x40000000 only)
want Xen first; with Xen first, KVM's leaves must go (moved to 0x40000100 they would win
Linux's vote). A Xen guest needs nothing from them: its clock is Xen's vcpu_time_info,
which the XenDomain has KVM maintain through the host-side kvmclock MSR.

Trap path (any KVM): the guest writes the hypercall-page MSR (CPUID base+2 EBX); an MSR
filter denies that write in the kernel so it reaches userspace (KVM_EXIT_X86_WRMSR), and
we fill the page with one 32-byte stub per hypercall::

    b8 NN 00 00 00    mov  $NN, %eax
    e6 E2             out  %al, $0xE2
    c3                ret

The same bytes decode identically in 64-bit and 32-bit mode. The one-byte OUT exits to
us, and the run loop hands the exiting vCPU to `TrapPath.hypercall` (a port-OUT handler of
the Machine, not a bus device: it needs that vCPU's registers); the call number is in eax
and the arguments are still in the guest's registers
(64-bit: rdi, rsi, rdx, r10, r8, r9; 32-bit: ebx, ecx, edx, esi, edi, ebp, as in Xen's
HVM ABI). We write the result to rax before KVM completes the OUT (completing a port-I/O
OUT only advances rip).
No register but rax changes, which Linux's hypercall macros rely on (they list no clobbers
beyond the arguments). Port 0xE2: the PC/AT map reserves 0xE0-0xEF without assigning it;
the range's known users are 0xE9 (Bochs/QEMU/xenopus debug console) and 0xED (Linux's
``io_delay=0xed``); nothing in xenopus's device map claims it (the pio Bus would refuse a
second claim). An 8-bit port keeps the stub free of ``%dx``, an argument register.
Where Xen answers a CPL>0 caller -EPERM, a CPL 3 OUT faults (#GP) before leaving the guest
unless the guest granted IOPL 3; a caller that does get here from CPL>0 gets -EPERM.

In-kernel path (KVM_CAP_XEN_HVM with INTERCEPT_HCALL): vmcall/vmmcall are caught by KVM
and arrive as KVM_EXIT_XEN; `kernel_hcall` feeds them to the same table. The hypercall
page is still ours (the MSR filter keeps the write, so the layout is latched here as Xen
does), but its stubs are Xen's own for HVM (arch/x86/hvm/{vmx,svm}: ``mov $NN, %eax;
vmcall`` on Intel, ``vmmcall`` on AMD; ``ret``), so that calls through it reach KVM
too, which answers some without leaving the kernel (xen/kernel_events.py).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from xenopus.arch.x86 import CR0_PE as _CR0_PE
from xenopus.arch.x86 import EFER_LMA as _EFER_LMA
from xenopus.devices import platform as layout
from xenopus.devices.ratelimit import LimitedLog
from xenopus.kvm import uapi as u
from xenopus.memory.guest import GuestMemory, GuestMemoryError
from xenopus.vm.protocols import VcpuView
from xenopus.xen import abi
from xenopus.xen.guestmem import GuestAccess, GuestFault, PagingRegs, XenError

log = logging.getLogger("xenopus.xen")

XEN_VERSION = (4, 11)  # what XENVER_version and CPUID base+1 report
HYPERCALL_PORT = layout.XEN_HYPERCALL_PORT
CPUID_BASE = abi.XEN_CPUID_FIRST_LEAF
HVM_FEATURES = (
    abi.XEN_HVM_CPUID_VCPU_ID_PRESENT
    | abi.XEN_HVM_CPUID_DOMID_PRESENT
    | abi.XEN_HVM_CPUID_UPCALL_VECTOR
)

_STUB_PAD = 0xCC  # int3, as Xen fills unused stub bytes
VMCALL = bytes([0x0F, 0x01, 0xC1])  # Intel SDM vol. 2B VMCALL
VMMCALL = bytes([0x0F, 0x01, 0xD9])  # AMD APM vol. 3 VMMCALL
_PORT_OUT = bytes([0xE6, HYPERCALL_PORT])  # out %al, $0xE2
_MASK64 = (1 << 64) - 1
_ARGS64 = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_ARGS32 = ("rbx", "rcx", "rdx", "rsi", "rdi", "rbp")


# --- the hypercall page ---------------------------------------------------------------------
def stub(nr: int, insn: bytes = _PORT_OUT) -> bytes:
    """The 32-byte stub for hypercall `nr` (module docstring): the trap path's OUT, or
    `insn` (VMCALL/VMMCALL) on the in-kernel path."""
    code = bytes([0xB8]) + nr.to_bytes(4, "little") + insn + bytes([0xC3])
    return code.ljust(abi.HYPERCALL_STUB_SIZE, bytes([_STUB_PAD]))


def hypercall_page(insn: bytes = _PORT_OUT) -> bytes:
    """128 stubs; HYPERVISOR_iret's is left as int3 (HVM guests have no use for it, and Xen
    leaves it so too)."""
    pad = bytes([_STUB_PAD]) * abi.HYPERCALL_STUB_SIZE
    return b"".join(
        pad if nr == abi.HYPERVISOR_iret else stub(nr, insn) for nr in range(abi.NR_HYPERCALLS)
    )


def vmcall_for(vendor: str) -> bytes:
    """The hypercall instruction of a CPU `vendor` (CPUID leaf 0): VMMCALL on AMD's SVM
    (and Hygon's), VMCALL on Intel's VMX."""
    return VMMCALL if vendor in ("AuthenticAMD", "HygonGenuine") else VMCALL


# --- CPUID ----------------------------------------------------------------------------------
def xen_cpuid_entries(vcpu: int, domid: int, base: int = CPUID_BASE) -> list[u.kvm_cpuid_entry2]:
    """The Xen leaves for `vcpu` of domain `domid` (arch-x86/cpuid.h)."""
    major, minor = XEN_VERSION
    rows = [
        (base, base + 4, abi.XEN_CPUID_SIGNATURE_EBX, abi.XEN_CPUID_SIGNATURE_ECX,
         abi.XEN_CPUID_SIGNATURE_EDX),
        (base + 1, major << 16 | minor, 0, 0, 0),
        (base + 2, 1, abi.XEN_HYPERCALL_MSR, 0, 0),  # one hypercall page; no PV MMU features
        (base + 3, 0, 0, 0, 0),  # time: TSC mode default (0), nothing emulated
        (base + 4, HVM_FEATURES, vcpu, domid, 0),
    ]
    return [u.kvm_cpuid_entry2(function=f, index=0, flags=0, eax=a, ebx=b, ecx=c, edx=d)
            for f, a, b, c, d in rows]


def make_cpuid_fixup(
    domid: int, base: int = CPUID_BASE
) -> Callable[[int, ctypes.Structure], ctypes.Structure]:
    """A `Machine(cpuid_fixup=...)`: drops KVM's 0x40000000-0x4000FFFF leaves and adds Xen's."""

    hypervisor_leaves = range(abi.XEN_CPUID_FIRST_LEAF, abi.XEN_CPUID_SEARCH_END)

    def fixup(index: int, cpuid: ctypes.Structure) -> ctypes.Structure:
        keep = [
            u.kvm_cpuid_entry2.from_buffer_copy(cpuid.entries[i])
            for i in range(cpuid.nent)
            if cpuid.entries[i].function not in hypervisor_leaves
        ]
        entries = keep + xen_cpuid_entries(index, domid, base)
        out = u.cpuid2_with(len(entries))
        for i, e in enumerate(entries):
            out.entries[i] = e
        return out

    return fixup


# --- dispatch -------------------------------------------------------------------------------
@dataclass
class Call:
    """One hypercall as its handler sees it. `args` are zero-extended to 64 bits (32-bit
    callers' to 32); `access` copies through the caller's page tables."""

    vcpu: int
    args: tuple[int, ...]
    access: GuestAccess
    long_mode: bool = True
    cpl: int = 0

    def __post_init__(self) -> None:
        # Xen serves a caller outside 64-bit mode through its compat layer: the argument
        # structs are read and written in their 32-bit layouts (xen/compat.py).
        self.access.compat = not self.long_mode


Handler = Callable[[Call], int]


class HypercallTable:
    """Hypercall number -> handler. A handler returns the result (>= 0 or -errno) or
    raises `XenError`; the table turns faults into -EFAULT and keeps the host alive.

    `on_entry(vcpu)`, if set, runs on the calling vCPU's thread as each hypercall arrives
    from the guest (either path; not per multicall entry): the domain applies there what
    it had to defer to that vCPU's own thread."""

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}
        self.counts: dict[int, int] = {}
        self.on_entry: Callable[[VcpuView], None] | None = None

    def register(self, nr: int, handler: Handler) -> None:
        if not 0 <= nr < abi.NR_HYPERCALLS:
            raise ValueError(f"hypercall {nr} is outside the page")
        self._handlers[nr] = handler

    def handles(self, nr: int) -> bool:
        return nr in self._handlers

    def dispatch(self, nr: int, call: Call) -> int:
        if call.cpl > 0:
            return -abi.XEN_EPERM  # hvm_hypercall(): guest kernels only
        handler = self._handlers.get(nr)
        if handler is None:
            return -abi.XEN_ENOSYS
        self.counts[nr] = self.counts.get(nr, 0) + 1
        try:
            return handler(call)
        except XenError as e:
            log.debug("vCPU %d hypercall %d: %s", call.vcpu, nr, e)
            return -e.errno
        except GuestMemoryError as e:
            log.debug("vCPU %d hypercall %d: %s", call.vcpu, nr, e)
            return -abi.XEN_EFAULT
        except Exception:  # a bug of ours: the guest gets an error, the VMM stays up
            log.exception("vCPU %d hypercall %d failed", call.vcpu, nr)
            return -abi.XEN_EINVAL


class CallRegs(Protocol):
    """The general registers a call reads (`kvm_regs` has them)."""

    rax: int
    rbx: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    rbp: int
    r8: int
    r9: int
    r10: int


def in_long_mode(sregs: u.kvm_sregs) -> bool:
    """64-bit mode (Xen's hvm_guest_x86_mode() == 8): EFER.LMA and CS.L."""
    return bool(sregs.efer & _EFER_LMA) and bool(sregs.cs.l)


def call_from_regs(vcpu: int, regs: CallRegs, sregs: u.kvm_sregs, memory: GuestMemory) -> Call:
    """A `Call` from KVM's registers of the calling vCPU, in its calling convention."""
    long_mode = in_long_mode(sregs)
    cpl = sregs.ss.dpl if sregs.cr0 & _CR0_PE else 0
    names, mask = (_ARGS64, _MASK64) if long_mode else (_ARGS32, 0xFFFFFFFF)
    args = tuple(getattr(regs, n) & mask for n in names)
    return Call(vcpu, args, GuestAccess(memory, sregs), long_mode, cpl)


def result_for(call: Call, result: int) -> int:
    """The register value of `result`: two's complement in rax (eax for 32-bit callers)."""
    return result & (_MASK64 if call.long_mode else 0xFFFFFFFF)


# --- the trap path --------------------------------------------------------------------------
class TrapPath:
    """The trap path: the hypercall-page MSR handler (`Machine(msr_handler=...)`) and the
    hypercall port's OUT handler (`Machine(port_out_handlers=...)`), which the run loop
    calls with the exiting vCPU. As a bus device it only holds the port on the pio bus
    (no other device may claim it) and answers what does not come that way."""

    def __init__(
        self, table: HypercallTable, memory: GuestMemory, msr: int = abi.XEN_HYPERCALL_MSR
    ):
        self.table = table
        self.memory = memory
        self.msr = msr
        self.page_gpas: dict[int, int] = {}  # vCPU -> where it asked for the page
        self.insn = _PORT_OUT  # the stubs' call instruction: VMCALL/VMMCALL on the kernel path
        self._lock = threading.Lock()
        self._log = LimitedLog(log)  # the guest decides how often it writes the MSR
        # Told the vCPU that just had a page written (on its thread): Xen latches the
        # shared_info format there (hvm_init_hypercall_page -> hvm_latch_shinfo_size).
        self.on_page: Callable[[int], None] | None = None

    def save_state(self) -> dict[str, int]:
        """Where each vCPU asked for the hypercall page (the page itself is guest RAM)."""
        with self._lock:
            return {str(v): gpa for v, gpa in self.page_gpas.items()}

    def restore_state(self, pages: dict[str, int]) -> None:
        with self._lock:
            self.page_gpas = {int(v): gpa for v, gpa in pages.items()}

    def msr_filter(self) -> list[tuple[int, int, bytes]]:
        """For `Machine(msr_filter=...)`: a one-bit range that denies guest writes of the
        hypercall MSR, so they reach `wrmsr` (KVM_CAP_X86_USER_SPACE_MSR)."""
        return [(u.KVM_MSR_FILTER_WRITE, self.msr, b"\xfe")]  # bit 0 clear: deny

    def port_out_handlers(self) -> dict[int, Callable[[VcpuView], None]]:
        """For `Machine(port_out_handlers=...)`."""
        return {HYPERCALL_PORT: self.hypercall}

    # MsrHandler
    def rdmsr(self, vcpu: int, index: int) -> int | None:
        return None  # write-only, as on Xen: #GP

    def wrmsr(self, vcpu: int, index: int, value: int) -> bool:
        """Fill the page at `value & ~0xFFF`; the low bits pick the page (only 0 exists).
        False (#GP) for any other MSR, page index or a frame outside RAM."""
        if index != self.msr or value & 0xFFF:
            return False
        gpa = value & ~0xFFF & _MASK64
        try:
            self.memory.write(gpa, hypercall_page(self.insn))
        except GuestMemoryError:
            self._log.log(logging.INFO, "vCPU %d: hypercall page at %#x is not RAM", vcpu, gpa)
            return False
        with self._lock:
            self.page_gpas[vcpu] = gpa
        self._log.log(logging.INFO, "vCPU %d: hypercall page at %#x", vcpu, gpa)
        if self.on_page is not None:
            self.on_page(vcpu)
        return True

    def hypercall(self, vcpu: VcpuView) -> None:
        """A stub's OUT: dispatch the call in `vcpu`'s registers, result in rax."""
        on_entry = self.table.on_entry
        if on_entry is not None:
            on_entry(vcpu)
        regs, sregs = vcpu.exit_regs()
        call = call_from_regs(vcpu.index, regs, sregs, self.memory)
        nr = regs.rax & 0xFFFFFFFF  # the stub's mov
        regs.rax = result_for(call, self.table.dispatch(nr, call))
        vcpu.set_exit_regs(regs)

    # BusDevice: what reaches the port other than a stub's single OUT
    def read(self, base: int, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1  # nothing to read: the port is write-only

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self._log.log(logging.WARNING,
                      "string OUT to the hypercall port ignored (only a stub's OUT is a call)")


# --- the in-kernel path ---------------------------------------------------------------------
Path = Literal["kernel", "trap", "off"]


class CapabilitySource(Protocol):
    """A `Kvm` as far as the path choice needs it."""

    def check_extension(self, cap: int) -> int: ...


def kernel_flags(kvm: CapabilitySource) -> int:
    """The KVM_XEN_HVM_CONFIG_* flags this host's KVM offers (0 without CONFIG_KVM_XEN)."""
    return int(kvm.check_extension(u.KVM_CAP_XEN_HVM))


def kernel_path_available(flags: int) -> bool:
    return bool(flags & u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)


def kernel_config(flags: int, msr: int = abi.XEN_HYPERCALL_MSR) -> u.kvm_xen_hvm_config:
    """KVM_XEN_HVM_CONFIG for the in-kernel path without in-kernel events: KVM intercepts
    vmcall/vmmcall (api.rst 4.126) and every call comes to us.

    Not KVM_XEN_HVM_CONFIG_EVTCHN_SEND: that makes KVM serve SCHEDOP_poll itself
    (arch/x86/kvm/xen.c, kvm_xen_schedop_poll) against the shared_info it was told of,
    which only xen/kernel_events.py tells it (and it sets the flag itself)."""
    if not flags & u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL:
        raise ValueError("KVM lacks KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL")
    return u.kvm_xen_hvm_config(flags=u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, msr=msr)


def kernel_hcall(table: HypercallTable, xe: u.kvm_xen_exit, vcpu: int, access: GuestAccess
                 ) -> None:
    """Serve one KVM_EXIT_XEN: decode `kvm_run.xen`, dispatch, set its `result` (KVM
    hands it to the guest at the next KVM_RUN)."""
    if xe.type != u.KVM_EXIT_XEN_HCALL:
        raise ValueError(f"KVM_EXIT_XEN type {xe.type}")
    h = xe.hcall
    long_mode = bool(h.longmode)
    mask = _MASK64 if long_mode else 0xFFFFFFFF
    call = Call(vcpu, tuple(p & mask for p in h.params), access, long_mode, h.cpl)
    h.result = result_for(call, table.dispatch(h.input & 0xFFFFFFFF, call))


class KernelPath:
    """The in-kernel path's KVM_EXIT_XEN handler (`Machine(exit_handlers=...)`): the same
    table as the trap path."""

    def __init__(self, table: HypercallTable, memory: GuestMemory):
        self.table = table
        self.memory = memory

    def exit_handlers(self) -> dict[int, Callable[[VcpuView], None]]:
        return {u.KVM_EXIT_XEN: self.hypercall}

    def hypercall(self, vcpu: VcpuView) -> None:
        on_entry = self.table.on_entry
        if on_entry is not None:
            on_entry(vcpu)
        sregs: Callable[[], PagingRegs] = vcpu.exit_sregs
        kernel_hcall(self.table, vcpu.exit_view(u.kvm_xen_exit), vcpu.index,
                     GuestAccess(self.memory, sregs))


def choose_path(
    kvm: CapabilitySource | int,
    *,
    hypercall_page_note: bool,
    linux: bool,
    xen_platform: int | str = "auto",
    vmcall_only: bool = False,
    hypercall_path: str = "auto",
) -> tuple[Path, str]:
    """Which entry path a domain gets, and why.

    `vmcall_only`: the image issues vmcall/vmmcall itself and never asks for a hypercall
    page (Xen's PV shim, xen/arch/x86/guest/xen/hypercall_page.S): only the in-kernel path
    catches those, so without it the domain is refused (ValueError) rather than started.

    `kvm`: a `Kvm` or the KVM_CAP_XEN_HVM flags as an int. `hypercall_page_note`: the image
    has XEN_ELFNOTE_HYPERCALL_PAGE; `linux`: it is a Linux kernel (bzImage, or an ELF whose
    XEN_ELFNOTE_GUEST_OS is "linux"). Linux since the XSA-466 fix has no such note and
    issues vmcall/vmmcall itself, which only the in-kernel path catches.
    `hypercall_path` ("auto", "kernel" or "trap", the `xen_hypercall_path` key): "trap"
    keeps KVM's in-kernel Xen support unused where it exists (as on a host without it);
    "kernel" refuses a host without it (ValueError).
    """
    if xen_platform not in (0, 1, "auto", "0", "1"):
        raise ValueError(f'xen_platform must be 1, 0 or "auto", not {xen_platform!r}')
    if hypercall_path not in ("auto", "kernel", "trap"):
        raise ValueError(f'xen_hypercall_path must be "auto", "kernel" or "trap", '
                         f'not {hypercall_path!r}')
    flags = kvm if isinstance(kvm, int) else kernel_flags(kvm)
    if vmcall_only:
        if str(xen_platform) == "0":
            raise ValueError("xen_platform = 0, but this image (a PV shim) needs Xen")
        if hypercall_path == "trap":
            raise ValueError('xen_hypercall_path = "trap", but the PV shim issues '
                             "vmcall/vmmcall itself: it needs the in-kernel path")
        if not kernel_path_available(flags):
            raise ValueError(
                "Xen's PV shim (pvshim = 1) issues vmcall/vmmcall itself, which only KVM's "
                "in-kernel Xen support catches (KVM_CAP_XEN_HVM with INTERCEPT_HCALL, Linux "
                "CONFIG_KVM_XEN); this host's KVM lacks it, so PV guests cannot run here"
            )
        return "kernel", "the PV shim issues vmcall/vmmcall: KVM's in-kernel Xen path"
    if str(xen_platform) == "0":
        return "off", "xen_platform = 0: the guest sees no Xen"
    offered = kernel_path_available(flags)
    if hypercall_path == "kernel" and not offered:
        raise ValueError('xen_hypercall_path = "kernel": this host\'s KVM lacks the in-kernel '
                         "Xen path (KVM_CAP_XEN_HVM with INTERCEPT_HCALL)")
    if offered and hypercall_path != "trap":
        return "kernel", "KVM offers KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"
    no_kernel = ('xen_hypercall_path = "trap" leaves KVM\'s in-kernel Xen path unused' if offered
                 else "this host's KVM lacks the in-kernel Xen path (KVM_CAP_XEN_HVM)")
    if xen_platform == "auto" and linux and not hypercall_page_note:
        return "off", (
            "xen_platform = auto: this Linux has no XEN_ELFNOTE_HYPERCALL_PAGE note, so it "
            f"issues vmcall/vmmcall itself, and {no_kernel}, which could catch them: "
            "booting it as a plain PVH guest"
        )
    if linux and not hypercall_page_note:
        return "trap", (
            f"xen_platform = 1 and {no_kernel}: trap path, but this Linux lacks "
            "XEN_ELFNOTE_HYPERCALL_PAGE and its vmcall-based hypercalls will fail"
        )
    return "trap", f"{no_kernel}: hypercalls trap through port I/O"


__all__ = [
    "HYPERCALL_PORT", "XEN_VERSION", "Call", "GuestFault", "HypercallTable",
    "KernelPath", "TrapPath", "XenError", "choose_path", "hypercall_page", "kernel_config",
    "kernel_flags", "kernel_hcall", "make_cpuid_fixup", "stub", "xen_cpuid_entries",
]
