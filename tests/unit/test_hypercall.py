"""Hypercall entry and the simple hypercalls, without KVM: the page's bytes, CPUID leaves,
the dispatcher's error codes, each xen_version sub-op, and the domain's calls against a
guest memory with paging off (guest-virtual = guest-physical), on a stand-in machine."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import subprocess
import threading
from types import SimpleNamespace

import pytest

from xenopus.kvm import uapi as u
from xenopus.memory import image
from xenopus.memory.guest import GuestMemory
from xenopus.stream import REC_PAGE_DATA, REC_PART, StreamReader, StreamWriter
from xenopus.xen import abi
from xenopus.xen.domain import XenDomain
from xenopus.xen.evtchn import State
from xenopus.xen.guestmem import GuestAccess
from xenopus.xen.hypercall import (
    HYPERCALL_PORT,
    Call,
    HypercallTable,
    KernelPath,
    TrapPath,
    choose_path,
    hypercall_page,
    kernel_config,
    kernel_hcall,
    make_cpuid_fixup,
    stub,
)

DOMID = 3
NO_PAGING = SimpleNamespace(cr0=0x11, cr3=0, cr4=0, efer=0)
BAD = 0xF0000000  # in the 32-bit MMIO hole: never RAM
A = 0x10000  # argument area


@pytest.fixture
def mem():
    m = GuestMemory.create(4 << 20)
    yield m
    m.close()


class FakeVcpu:
    """A `VcpuView` that records the MSRs set on it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.msrs: dict[int, int] = {}
        self.kick_pending = False
        self.started = False

    def set_msrs(self, values) -> None:
        self.msrs.update(values)


class FakeRoute:
    """An MSI route that records where it was aimed and signals each trigger."""

    def __init__(self) -> None:
        self.address = self.data = 0
        self.triggered = threading.Event()

    def update(self, address: int, data: int) -> None:
        self.address, self.data = address, data

    def trigger(self) -> None:
        self.triggered.set()

    def release(self) -> None:
        pass


class FakeMachine:
    """A `MachineView` of two vCPUs whose kvmclock reads 0 at construction."""

    def __init__(self, memory: GuestMemory, vcpus: int = 2) -> None:
        self.memory = memory
        self.vcpus = [FakeVcpu(i) for i in range(vcpus)]
        self.stops: list = []
        self.route = FakeRoute()  # every upcall vector's route (one is enough here)
        self.updown: list = []  # vcpu_up / vcpu_down requests, in order

    def set_irq(self, gsi: int, level) -> None:
        pass

    def allocate_msi(self) -> FakeRoute:
        return self.route

    def request_stop(self, reason) -> None:
        self.stops.append(reason)

    def clock_ns(self) -> int:
        return 0

    def add_memory(self, gpa: int, size: int, *, backing=None, readonly: bool = False) -> None:
        from xenopus.memory.guest import MemoryRegion

        if backing is None:
            self.memory.attach(MemoryRegion.create(gpa, size))
        else:
            self.memory.attach(MemoryRegion.map_file(gpa, size, *backing, readonly=readonly))

    def remove_memory(self, gpa: int) -> None:
        self.memory.detach(gpa).close()

    def vcpu_down(self, index: int) -> None:
        self.updown.append(("down", index, None))

    def vcpu_up(self, index: int, state=None) -> None:
        self.updown.append(("up", index, state))


@pytest.fixture
def plat(mem):
    lines: list[str] = []
    p = XenDomain(DOMID, FakeMachine(mem), HypercallTable(), console_out=lines.append,
                  e820=[(0, 0x9F000, 1), (0x100000, (4 << 20) - 0x100000, 1)])
    p.lines = lines  # type: ignore[attr-defined]
    yield p
    p.close()


def call(p: XenDomain, mem, nr: int, *args: int, cpl: int = 0, vcpu: int = 0,
         long_mode: bool = True) -> int:
    full = (tuple(args) + (0,) * 6)[:6]
    return p.table.dispatch(nr, Call(vcpu, full, GuestAccess(mem, NO_PAGING), long_mode, cpl))


# --- the page and CPUID ---------------------------------------------------------------------
def test_stub_bytes() -> None:
    s = stub(abi.HYPERVISOR_xen_version)
    assert s[:8] == bytes([0xB8, 17, 0, 0, 0, 0xE6, HYPERCALL_PORT, 0xC3])
    assert len(s) == 32 and set(s[8:]) == {0xCC}
    page = hypercall_page()
    assert len(page) == 4096
    assert page[32 * 29 : 32 * 29 + 8] == stub(29)[:8]
    assert set(page[32 * abi.HYPERVISOR_iret : 32 * abi.HYPERVISOR_iret + 32]) == {0xCC}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
@pytest.mark.parametrize("arch", ["i386:x86-64", "i386"])
def test_stub_disassembles_as_intended(tmp_path, arch: str) -> None:
    path = tmp_path / "page.bin"
    path.write_bytes(hypercall_page()[32 * 17 : 32 * 18])
    out = subprocess.run(["objdump", "-D", "-b", "binary", f"-m{arch}", str(path)],
                         capture_output=True, text=True, check=True).stdout
    insns = [line.split("\t")[-1].split() for line in out.splitlines() if ":\t" in line]
    assert insns[0] == ["mov", "$0x11,%eax"]
    assert insns[1] == ["out", "%al,$0xe2"]
    assert insns[2] == ["ret"]
    assert all(i == ["int3"] for i in insns[3:])


def test_cpuid_leaves_replace_kvm_leaves() -> None:
    base = u.cpuid2_with(3)
    base.entries[0] = u.kvm_cpuid_entry2(function=0, eax=0xD)
    base.entries[1] = u.kvm_cpuid_entry2(function=0x40000000, ebx=0x4B4D564B)  # "KVMK"
    base.entries[2] = u.kvm_cpuid_entry2(function=0x40000001, eax=0xFFFF)
    out = make_cpuid_fixup(DOMID)(1, base)
    leaves = {out.entries[i].function: out.entries[i] for i in range(out.nent)}
    assert set(leaves) == {0, *range(0x40000000, 0x40000005)}
    sig = b"".join(getattr(leaves[0x40000000], r).to_bytes(4, "little") for r in ("ebx", "ecx", "edx"))
    assert sig == b"XenVMMXenVMM" and leaves[0x40000000].eax == 0x40000004
    assert leaves[0x40000001].eax == 0x0004000B
    assert (leaves[0x40000002].eax, leaves[0x40000002].ebx) == (1, 0x40000000)
    hvm = leaves[0x40000004]
    assert hvm.eax & abi.XEN_HVM_CPUID_VCPU_ID_PRESENT and hvm.eax & abi.XEN_HVM_CPUID_DOMID_PRESENT
    assert (hvm.ebx, hvm.ecx) == (1, DOMID)


# --- choosing a path, the in-kernel structures ----------------------------------------------
KERNEL = u.KVM_XEN_HVM_CONFIG_HYPERCALL_MSR | u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL


@pytest.mark.parametrize(("flags", "note", "linux", "setting", "path"), [
    (0, False, True, "auto", "off"),  # post-XSA-466 Linux on a trap-only host
    (0, True, True, "auto", "trap"),
    (0, False, False, "auto", "trap"),  # not Linux: uses the MSR page
    (0, False, True, 1, "trap"),  # forced on
    (KERNEL, False, True, "auto", "kernel"),
    (KERNEL, True, True, 0, "off"),
    (0, True, False, 0, "off"),
    (u.KVM_XEN_HVM_CONFIG_HYPERCALL_MSR, False, True, "auto", "off"),  # no INTERCEPT_HCALL
])
def test_choose_path(flags: int, note: bool, linux: bool, setting, path: str) -> None:
    got, why = choose_path(flags, hypercall_page_note=note, linux=linux, xen_platform=setting)
    assert got == path and why


@pytest.mark.parametrize(("flags", "note", "linux", "setting", "want", "path"), [
    (KERNEL, True, True, 1, "trap", "trap"),  # 6.1 (hypercall page) kept off KVM's path
    (KERNEL, True, True, "auto", "trap", "trap"),
    (KERNEL, False, True, "auto", "trap", "off"),  # 6.12 cannot run without vmcall
    (KERNEL, False, True, 1, "trap", "trap"),  # forced: its vmcalls will fail, it is said
    (KERNEL, True, True, 1, "kernel", "kernel"),
    (KERNEL, True, True, 0, "kernel", "off"),
    (0, True, True, 1, "trap", "trap"),
])
def test_choose_path_with_a_hypercall_path(flags: int, note: bool, linux: bool, setting,
                                           want: str, path: str) -> None:
    got, why = choose_path(flags, hypercall_page_note=note, linux=linux, xen_platform=setting,
                           hypercall_path=want)
    assert got == path and why
    if flags and want == "trap" and setting != 0:
        assert 'xen_hypercall_path = "trap"' in why  # the log says why KVM's path is unused


def test_choose_path_kernel_refuses_a_host_without_it() -> None:
    with pytest.raises(ValueError, match="KVM_CAP_XEN_HVM"):
        choose_path(0, hypercall_page_note=True, linux=True, xen_platform=1,
                    hypercall_path="kernel")
    with pytest.raises(ValueError, match="xen_hypercall_path"):
        choose_path(KERNEL, hypercall_page_note=True, linux=True, hypercall_path="vmcall")


def test_choose_path_rejects_other_settings_and_asks_kvm() -> None:
    with pytest.raises(ValueError):
        choose_path(0, hypercall_page_note=True, linux=False, xen_platform="yes")
    kvm = SimpleNamespace(check_extension=lambda cap: KERNEL if cap == u.KVM_CAP_XEN_HVM else 0)
    assert choose_path(kvm, hypercall_page_note=False, linux=True)[0] == "kernel"


def test_kernel_config_and_exit_struct() -> None:
    # linux/kvm.h: struct kvm_xen_hvm_config is 56 bytes (u32 flags, u32 msr, 2 x u64,
    # 2 x u8, u8 pad2[30]); struct kvm_xen_exit: u32 type, then hcall {u32 longmode, u32
    # cpl, u64 input @8, u64 result @16, u64 params[6] @24} at 8 -> 80.
    assert ctypes.sizeof(u.kvm_xen_hvm_config) == 56
    assert ctypes.sizeof(u.kvm_xen_exit) == 80 and u.kvm_xen_exit.hcall.offset == 8
    assert u.kvm_xen_hcall.result.offset == 16
    cfg = kernel_config(KERNEL | u.KVM_XEN_HVM_CONFIG_EVTCHN_SEND)
    # Never EVTCHN_SEND: KVM would serve SCHEDOP_poll from a shared_info it does not know.
    assert cfg.flags == u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
    assert cfg.msr == 0x40000000 and cfg.blob_size_64 == 0
    assert kernel_config(KERNEL).flags == u.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL


def test_kernel_hcall_feeds_the_same_table(mem) -> None:
    table = HypercallTable()
    table.register(abi.HYPERVISOR_xen_version, lambda c: 0x1234 + c.args[0])
    xe = u.kvm_xen_exit(type=u.KVM_EXIT_XEN_HCALL)
    xe.hcall.longmode, xe.hcall.input = 1, abi.HYPERVISOR_xen_version
    xe.hcall.params[0] = 1
    kernel_hcall(table, xe, 0, GuestAccess(mem, NO_PAGING))
    assert xe.hcall.result == 0x1235
    xe.hcall.cpl = 3
    kernel_hcall(table, xe, 0, GuestAccess(mem, NO_PAGING))
    assert xe.hcall.result == (-abi.XEN_EPERM) & (2**64 - 1)


class ExitingVcpu(FakeVcpu):
    """A vCPU in the middle of an exit: registers and kvm_run's exit data in memory."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.regs = u.kvm_regs()
        self.sregs = u.kvm_sregs(cr0=NO_PAGING.cr0)
        self.xen_exit = u.kvm_xen_exit(type=u.KVM_EXIT_XEN_HCALL)
        self.regs_given: u.kvm_regs | None = None

    def exit_regs(self):
        return self.regs, self.sregs

    def set_exit_regs(self, regs) -> None:
        self.regs_given = regs

    def exit_sregs(self):
        return self.sregs

    def exit_view(self, ctype):
        assert ctype is u.kvm_xen_exit
        return self.xen_exit


def test_both_paths_take_the_vcpu_they_are_handed(mem) -> None:
    table = HypercallTable()
    table.register(abi.HYPERVISOR_xen_version, lambda c: 0x100 * c.vcpu + c.args[0])
    entered: list[int] = []
    table.on_entry = lambda vcpu: entered.append(vcpu.index)
    vcpu = ExitingVcpu(1)
    # trap path: call number in eax, 64-bit arguments from rdi (long mode: EFER.LMA, CS.L)
    vcpu.regs.rax, vcpu.regs.rdi = abi.HYPERVISOR_xen_version, 7
    vcpu.sregs.efer, vcpu.sregs.cs.l = 1 << 10, 1
    TrapPath(table, mem).hypercall(vcpu)
    assert vcpu.regs_given is vcpu.regs and vcpu.regs.rax == 0x107
    # in-kernel path: KVM_EXIT_XEN's hcall, the result written into the exit in place
    vcpu.xen_exit.hcall.longmode, vcpu.xen_exit.hcall.input = 1, abi.HYPERVISOR_xen_version
    vcpu.xen_exit.hcall.params[0] = 9
    KernelPath(table, mem).hypercall(vcpu)
    assert vcpu.xen_exit.hcall.result == 0x109
    assert entered == [1, 1]


# --- the dispatcher -------------------------------------------------------------------------
def test_dispatch_errors(plat, mem) -> None:
    assert call(plat, mem, 50) == -abi.XEN_ENOSYS
    assert call(plat, mem, abi.HYPERVISOR_xen_version, abi.XENVER_version, cpl=3) == -abi.XEN_EPERM
    assert call(plat, mem, abi.HYPERVISOR_xen_version, abi.XENVER_extraversion, BAD) == -abi.XEN_EFAULT
    assert call(plat, mem, abi.HYPERVISOR_xen_version, 99) == -abi.XEN_ENOSYS
    boom = HypercallTable()
    boom.register(1, lambda c: 1 // 0)
    assert boom.dispatch(1, Call(0, (0,) * 6, GuestAccess(mem, NO_PAGING))) == -abi.XEN_EINVAL


def test_xen_version_sub_ops(plat, mem) -> None:
    xv = abi.HYPERVISOR_xen_version
    assert call(plat, mem, xv, abi.XENVER_version) == 0x0004000B
    assert call(plat, mem, xv, abi.XENVER_pagesize) == 4096
    for cmd, length in ((abi.XENVER_extraversion, 16), (abi.XENVER_capabilities, 1024),
                        (abi.XENVER_changeset, 64), (abi.XENVER_compile_info, 144),
                        (abi.XENVER_platform_parameters, 8), (abi.XENVER_guest_handle, 16)):
        mem.fill(A, 2048, 0xAA)
        assert call(plat, mem, xv, cmd, A) == 0
        assert mem.read(A + length, 1) == b"\xaa"  # nothing written past the type
    assert call(plat, mem, xv, abi.XENVER_extraversion, A) == 0
    assert mem.read(A, 16).rstrip(b"\0") == b".0-xenopus"
    assert call(plat, mem, xv, abi.XENVER_capabilities, A) == 0
    assert b"hvm-3.0-x86_64" in mem.read(A, 1024)
    mem.write(A, bytes(abi.xen_feature_info(submap_idx=0)))
    assert call(plat, mem, xv, abi.XENVER_get_features, A) == 0
    submap = abi.xen_feature_info.from_buffer_copy(mem.read(A, 8)).submap
    assert submap & 1 << abi.XENFEAT_hvm_callback_vector
    assert submap & 1 << abi.XENFEAT_auto_translated_physmap
    mem.write(A, bytes(abi.xen_feature_info(submap_idx=1)))
    assert call(plat, mem, xv, abi.XENVER_get_features, A) == -abi.XEN_EINVAL
    assert call(plat, mem, xv, abi.XENVER_commandline, A) == -abi.XEN_EPERM


def test_32bit_caller_gets_32bit_result(plat, mem) -> None:
    from xenopus.xen.hypercall import result_for

    c = Call(0, (0,) * 6, GuestAccess(mem, NO_PAGING), long_mode=False)
    assert result_for(c, -abi.XEN_EFAULT) == 0xFFFFFFF2


# --- memory_op ------------------------------------------------------------------------------
def test_memory_map_and_reservations(plat, mem) -> None:
    mo = abi.HYPERVISOR_memory_op
    mem.write(A, bytes(abi.xen_memory_map(nr_entries=8, buffer=A + 0x100)))
    assert call(plat, mem, mo, abi.XENMEM_memory_map, A) == 0
    assert abi.xen_memory_map.from_buffer_copy(mem.read(A, 16)).nr_entries == 2
    e = abi.e820entry.from_buffer_copy(mem.read(A + 0x100 + 20, 20))
    assert (e.addr, e.size, e.type) == (0x100000, (4 << 20) - 0x100000, 1)
    mem.write(A, bytes(abi.xen_memory_map(nr_entries=1, buffer=BAD)))
    assert call(plat, mem, mo, abi.XENMEM_memory_map, A) == -abi.XEN_EFAULT
    mem.write_u16(A, abi.DOMID_SELF)
    assert call(plat, mem, mo, abi.XENMEM_maximum_reservation, A) == 1024
    mem.write_u16(A, 5)
    assert call(plat, mem, mo, abi.XENMEM_current_reservation, A) == -abi.XEN_EPERM
    assert call(plat, mem, mo, abi.XENMEM_maximum_ram_page, 0) == 1024
    assert call(plat, mem, mo, 63, A) == -abi.XEN_ENOSYS


def test_balloon_out_and_back(plat, mem) -> None:
    mo = abi.HYPERVISOR_memory_op
    gpfn = 0x200
    mem.fill(gpfn * 4096, 2 * 4096, 0x55)
    mem.write_u64(A + 0x100, gpfn)
    mem.write_u64(A + 0x108, BAD // 4096)  # the second extent is not RAM
    r = abi.xen_memory_reservation(extent_start=A + 0x100, nr_extents=2, extent_order=1,
                                   domid=abi.DOMID_SELF)
    mem.write(A, bytes(r))
    assert call(plat, mem, mo, abi.XENMEM_decrease_reservation, A) == 1  # extents done
    assert mem.read(gpfn * 4096, 2 * 4096) == bytes(2 * 4096)  # released: reads zero
    mem.write_u16(A + 0x200, abi.DOMID_SELF)
    assert call(plat, mem, mo, abi.XENMEM_current_reservation, A + 0x200) == 1022
    r.nr_extents = 1
    mem.write(A, bytes(r))
    assert call(plat, mem, mo, abi.XENMEM_populate_physmap, A) == 1
    assert call(plat, mem, mo, abi.XENMEM_current_reservation, A + 0x200) == 1024
    r.extent_order = 30  # hostile order: nothing done
    mem.write(A, bytes(r))
    assert call(plat, mem, mo, abi.XENMEM_decrease_reservation, A) == 0
    r.extent_order, r.extent_start = 0, BAD  # list itself unreadable: nothing done
    mem.write(A, bytes(r))
    assert call(plat, mem, mo, abi.XENMEM_decrease_reservation, A) == 0


def test_add_to_physmap_shared_info(plat, mem) -> None:
    mem.fill(0x20000, 4096, 0x77)
    xatp = abi.xen_add_to_physmap(domid=abi.DOMID_SELF, space=abi.XENMAPSPACE_shared_info,
                                  idx=0, gpfn=0x20)
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == 0
    assert plat.evtchn.shared_info == 0x20000 and plat.shared_info == 0x20000
    # xen.h: vcpu_info[v] is 64 bytes at 64 * v, its vcpu_time_info at +32; kvmclock MSR
    # values carry the enable bit 0. The caller's clock is placed now, vCPU 1's as it enters.
    vcpu0, vcpu1 = plat.machine.vcpus
    assert vcpu0.msrs == {u.MSR_KVM_SYSTEM_TIME_NEW: 0x20000 + 32 | 1} and vcpu1.msrs == {}
    plat.table.on_entry(vcpu1)
    assert vcpu1.msrs == {u.MSR_KVM_SYSTEM_TIME_NEW: 0x20000 + 64 + 32 | 1}
    si = abi.shared_info.from_buffer_copy(mem.read(0x20000, ctypes.sizeof(abi.shared_info)))
    assert si.evtchn_pending[0] == 0 and si.wc_version % 2 == 0 and si.wc_sec > 1_600_000_000
    xatp.idx = 1
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == -abi.XEN_EINVAL
    xatp.idx, xatp.gpfn = 0, 1 << 40  # beyond any guest-physical address we back
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == -abi.XEN_EINVAL
    xatp.space = abi.XENMAPSPACE_grant_table
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == -abi.XEN_EINVAL
    xatp.gpfn = 0x21
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == 0
    assert plat.grants.frames == {0: 0x21}
    xatp.space = abi.XENMAPSPACE_gmfn
    mem.write(A, bytes(xatp))
    assert call(plat, mem, abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == -abi.XEN_ENOSYS


# --- hvm_op ---------------------------------------------------------------------------------
def test_hvm_params_permissions(plat, mem) -> None:
    ho = abi.HYPERVISOR_hvm_op
    plat.set_param(abi.HVM_PARAM_STORE_PFN, 0xFEFFF)
    p = abi.xen_hvm_param(domid=abi.DOMID_SELF, index=abi.HVM_PARAM_STORE_PFN)
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_get_param, A) == 0
    assert abi.xen_hvm_param.from_buffer_copy(mem.read(A, 16)).value == 0xFEFFF
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_set_param, A) == -abi.XEN_EPERM  # read-only to it
    p.index = abi.HVM_PARAM_IDENT_PT
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_get_param, A) == -abi.XEN_EPERM
    p.index = 1000
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_get_param, A) == -abi.XEN_EINVAL
    p.index, p.domid = abi.HVM_PARAM_CALLBACK_IRQ, 9
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_set_param, A) == -abi.XEN_EPERM  # not our domain
    p.domid, p.value = DOMID, abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | 0xF3
    mem.write(A, bytes(p))
    assert call(plat, mem, ho, abi.HVMOP_set_param, A) == 0
    assert plat.callback_vector == 0xF3
    uv = abi.xen_hvm_evtchn_upcall_vector(vcpu=1, vector=0xE0)
    mem.write(A, bytes(uv))
    assert call(plat, mem, ho, abi.HVMOP_set_evtchn_upcall_vector, A) == 0
    assert plat.upcall_vectors == {1: 0xE0}
    uv.vcpu = 2
    mem.write(A, bytes(uv))
    assert call(plat, mem, ho, abi.HVMOP_set_evtchn_upcall_vector, A) == -abi.XEN_ENOENT
    uv.vcpu, uv.vector = 0, 3
    mem.write(A, bytes(uv))
    assert call(plat, mem, ho, abi.HVMOP_set_evtchn_upcall_vector, A) == -abi.XEN_EINVAL
    assert call(plat, mem, ho, abi.HVMOP_get_param, BAD) == -abi.XEN_EFAULT


# --- vcpu_op, timers, sched_op --------------------------------------------------------------
def test_vcpu_op_checks(plat, mem) -> None:
    vo = abi.HYPERVISOR_vcpu_op
    assert call(plat, mem, vo, abi.VCPUOP_is_up, 5) == -abi.XEN_ENOENT
    assert call(plat, mem, vo, abi.VCPUOP_is_up, 0) == 1
    mem.write(A, bytes(abi.vcpu_set_periodic_timer(period_ns=1000)))
    assert call(plat, mem, vo, abi.VCPUOP_set_periodic_timer, 0, A) == -abi.XEN_EINVAL
    assert call(plat, mem, vo, abi.VCPUOP_stop_singleshot_timer, 1, 0) == -abi.XEN_EINVAL
    mem.write(A, bytes(abi.vcpu_set_singleshot_timer(timeout_abs_ns=1,
                                                     flags=abi.VCPU_SSHOTTMR_future)))
    assert call(plat, mem, vo, abi.VCPUOP_set_singleshot_timer, 0, A) == -abi.XEN_ETIME
    mem.write(A, bytes(abi.vcpu_register_runstate_memory_area(addr=A + 0x100)))
    assert call(plat, mem, vo, abi.VCPUOP_register_runstate_memory_area, 0, A) == 0
    rs = abi.vcpu_runstate_info.from_buffer_copy(mem.read(A + 0x100, 48))
    assert rs.state == abi.RUNSTATE_running
    mem.write(A, bytes(abi.vcpu_register_runstate_memory_area(addr=BAD)))
    assert call(plat, mem, vo, abi.VCPUOP_register_runstate_memory_area, 0, A) == -abi.XEN_EFAULT


def test_singleshot_timer_raises_virq_timer(plat, mem) -> None:
    plat.map_shared_info(0x30000)
    port = plat.evtchn.bind_virq(abi.VIRQ_TIMER, 1)
    mem.write(A, bytes(abi.xen_hvm_evtchn_upcall_vector(vcpu=1, vector=0xE0)))
    assert call(plat, mem, abi.HYPERVISOR_hvm_op, abi.HVMOP_set_evtchn_upcall_vector, A) == 0
    mem.write(A, bytes(abi.vcpu_set_singleshot_timer(timeout_abs_ns=plat.system_time() + 1_000_000)))
    assert call(plat, mem, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_set_singleshot_timer, 1, A, vcpu=1) == 0
    route = plat.machine.route
    assert route.triggered.wait(10)
    # shared_info (xen.h): evtchn_pending at 2048; the upcall as an MSI to APIC ID 1
    assert mem.read_u8(0x30000 + 2048 + port // 8) >> (port % 8) & 1
    assert (route.address, route.data) == (0xFEE00000 | 1 << 12, 0xE0)


def test_block_returns_when_the_timer_event_is_pending(plat, mem, monkeypatch) -> None:
    import time

    from xenopus.xen import domain as domain_mod

    monkeypatch.setattr(domain_mod, "BLOCK_MAX", 60.0)  # only the event may end the block
    plat.map_shared_info(0x30000)  # vCPU 0's vcpu_info: the first slot
    plat.evtchn.bind_virq(abi.VIRQ_TIMER, 0)
    start = time.monotonic()
    assert call(plat, mem, abi.HYPERVISOR_set_timer_op, plat.system_time() + 50_000_000) == 0
    assert call(plat, mem, abi.HYPERVISOR_sched_op, abi.SCHEDOP_block) == 0
    assert plat.timers.fired_count(0) == 1
    assert mem.read_u8(0x30000 + abi.vcpu_info.evtchn_upcall_pending.offset) == 1
    assert time.monotonic() - start < 30


def test_poll_returns_at_once_for_a_pending_port(plat, mem) -> None:
    plat.map_shared_info(0x30000)
    pending = 0x30000 + abi.shared_info.evtchn_pending.offset
    mem.write_u8(pending + 1, 0x04)  # port 10
    mem.write_u32(A + 0x100, 10)
    mem.write(A, bytes(abi.sched_poll(ports=A + 0x100, nr_ports=1)))
    assert call(plat, mem, abi.HYPERVISOR_sched_op, abi.SCHEDOP_poll, A) == 0
    mem.write(A, bytes(abi.sched_poll(ports=A + 0x100, nr_ports=100000)))
    assert call(plat, mem, abi.HYPERVISOR_sched_op, abi.SCHEDOP_poll, A) == -abi.XEN_EINVAL
    mem.write_u32(A + 0x100, 5000)
    mem.write(A, bytes(abi.sched_poll(ports=A + 0x100, nr_ports=1)))
    assert call(plat, mem, abi.HYPERVISOR_sched_op, abi.SCHEDOP_poll, A) == -abi.XEN_EINVAL


@pytest.mark.parametrize(("reason", "kind"), [
    (abi.SHUTDOWN_poweroff, "poweroff"), (abi.SHUTDOWN_reboot, "reboot"),
    (abi.SHUTDOWN_crash, "crash"),
])
def test_shutdown_stops_the_machine(plat, mem, reason: int, kind: str) -> None:
    mem.write_u32(A, reason)
    assert call(plat, mem, abi.HYPERVISOR_sched_op, abi.SCHEDOP_shutdown, A) == 0
    assert [s.kind for s in plat.machine.stops] == [kind]


def test_shutdown_errors_and_remote(plat, mem) -> None:
    so = abi.HYPERVISOR_sched_op
    mem.write_u32(A, 77)
    assert call(plat, mem, so, abi.SCHEDOP_shutdown, A) == -abi.XEN_EINVAL
    mem.write(A, bytes(abi.sched_remote_shutdown(domain_id=0, reason=0)))
    assert call(plat, mem, so, abi.SCHEDOP_remote_shutdown, A) == -abi.XEN_EPERM
    assert plat.machine.stops == []
    mem.write(A, bytes(abi.sched_remote_shutdown(domain_id=DOMID, reason=abi.SHUTDOWN_reboot)))
    assert call(plat, mem, so, abi.SCHEDOP_remote_shutdown, A) == 0
    assert [s.kind for s in plat.machine.stops] == ["reboot"]
    assert call(plat, mem, so, abi.SCHEDOP_yield) == 0
    assert call(plat, mem, so, abi.SCHEDOP_shutdown, BAD) == -abi.XEN_EFAULT


# --- console_io, multicall, forwarding ------------------------------------------------------
def test_console_io_lines_prefixed(plat, mem) -> None:
    co = abi.HYPERVISOR_console_io
    mem.write(A, b"hello\nwor")
    assert call(plat, mem, co, abi.CONSOLEIO_write, 9, A) == 0
    mem.write(A, b"ld\x07\n")
    assert call(plat, mem, co, abi.CONSOLEIO_write, 4, A) == 0
    assert plat.lines == [f"(d{DOMID}) hello", f"(d{DOMID}) world"]
    assert call(plat, mem, co, abi.CONSOLEIO_read, 4, A) == 0
    assert call(plat, mem, co, abi.CONSOLEIO_write, 4, BAD) == -abi.XEN_EFAULT
    assert call(plat, mem, co, abi.CONSOLEIO_write, 1 << 30, A) == -abi.XEN_E2BIG


def test_multicall(plat, mem) -> None:
    entries = (abi.multicall_entry * 3)()
    entries[0].op, entries[0].args[0] = abi.HYPERVISOR_xen_version, abi.XENVER_version
    entries[1].op = 99
    entries[2].op = abi.HYPERVISOR_multicall
    mem.write(A, bytes(entries))
    assert call(plat, mem, abi.HYPERVISOR_multicall, A, 3) == 0
    out = (abi.multicall_entry * 3).from_buffer_copy(mem.read(A, 3 * 64))
    assert out[0].result == 0x0004000B
    assert out[1].result == (-abi.XEN_ENOSYS) & (2**64 - 1)
    assert out[2].result == (-abi.XEN_ENOSYS) & (2**64 - 1)
    assert call(plat, mem, abi.HYPERVISOR_multicall, A, 10**6) == -abi.XEN_E2BIG
    assert call(plat, mem, abi.HYPERVISOR_multicall, BAD, 1) == -abi.XEN_EFAULT


def test_evtchn_and_grant_forwarding(plat, mem) -> None:
    mem.write(A, bytes(abi.evtchn_alloc_unbound(dom=abi.DOMID_SELF, remote_dom=0)))
    assert call(plat, mem, abi.HYPERVISOR_event_channel_op, abi.EVTCHNOP_alloc_unbound, A) == 0
    port = abi.evtchn_alloc_unbound.from_buffer_copy(mem.read(A, 8)).port
    assert port > 0 and plat.evtchn.port_state(port) == State.UNBOUND
    assert call(plat, mem, abi.HYPERVISOR_event_channel_op, 99, A) == -abi.XEN_ENOSYS
    mem.write(A, bytes(abi.gnttab_query_size(dom=abi.DOMID_SELF)))
    assert call(plat, mem, abi.HYPERVISOR_grant_table_op, abi.GNTTABOP_query_size, A, 1) == 0
    size = abi.gnttab_query_size.from_buffer_copy(mem.read(A, 16))
    # max_nr_frames: Xen's default gnttab_max_frames (64), as libxl leaves it by default
    assert (size.nr_frames, size.max_nr_frames, size.status) == (1, 64, 0)
    assert call(plat, mem, abi.HYPERVISOR_physdev_op, abi.PHYSDEVOP_map_pirq, A) == -abi.XEN_ENOSYS


# --- frames outside RAM, remove_from_physmap, ballooning -------------------------------------
MO = abi.HYPERVISOR_memory_op
ABOVE_RAM = 0x400  # the first GPFN above the 4 MiB of RAM (where Xen's PV shim puts shared_info)


def _map(plat, mem, space: int, idx: int, gpfn: int) -> int:
    mem.write(A, bytes(abi.xen_add_to_physmap(domid=abi.DOMID_SELF, space=space, idx=idx,
                                              gpfn=gpfn)))
    return call(plat, mem, MO, abi.XENMEM_add_to_physmap, A)


def _remove(plat, mem, gpfn: int, start: int = 0) -> int:
    mem.write(A, bytes(abi.xen_remove_from_physmap(domid=abi.DOMID_SELF, gpfn=gpfn)))
    return call(plat, mem, MO, abi.XENMEM_remove_from_physmap | start << abi.MEMOP_EXTENT_SHIFT,
                A)


def _reservation(plat, mem, op: int, gpfns: list[int], order: int = 0) -> int:
    for i, g in enumerate(gpfns):
        mem.write_u64(A + 0x100 + 8 * i, g)
    mem.write(A, bytes(abi.xen_memory_reservation(
        extent_start=A + 0x100, nr_extents=len(gpfns), extent_order=order,
        domid=abi.DOMID_SELF)))
    return call(plat, mem, MO, op, A)


def _current(plat, mem) -> int:
    mem.write_u16(A + 0x80, abi.DOMID_SELF)
    return call(plat, mem, MO, abi.XENMEM_current_reservation, A + 0x80)


def test_shared_info_and_grant_frames_at_free_gfns_above_ram(plat, mem) -> None:
    assert not mem.contains(ABOVE_RAM * 4096)
    assert _map(plat, mem, abi.XENMAPSPACE_shared_info, 0, ABOVE_RAM) == 0
    assert mem.contains(ABOVE_RAM * 4096, 4096) and not mem.is_ram(ABOVE_RAM * 4096)
    assert plat.shared_info == ABOVE_RAM * 4096 == plat.evtchn.shared_info
    assert plat.p2m.xen_pages == {ABOVE_RAM}
    assert _current(plat, mem) == 1024  # Xen's page: not charged to the domain
    mem.write_u8(ABOVE_RAM * 4096 + abi.shared_info.evtchn_pending.offset, 0x02)
    # Moved back into RAM: the content follows, the page above RAM goes.
    assert _map(plat, mem, abi.XENMAPSPACE_shared_info, 0, 0x20) == 0
    assert mem.read_u8(0x20000 + abi.shared_info.evtchn_pending.offset) == 0x02
    assert not mem.contains(ABOVE_RAM * 4096) and plat.p2m.xen_pages == set()
    # Grant frames where Linux's unpopulated-alloc puts them: far above RAM.
    assert _map(plat, mem, abi.XENMAPSPACE_grant_table, 0, 0x10000) == 0
    assert _map(plat, mem, abi.XENMAPSPACE_grant_table, 1, 0x10001) == 0
    assert plat.grants.frames == {0: 0x10000, 1: 0x10001}
    assert plat.p2m.xen_pages == {0x10000, 0x10001}
    # A refused frame index leaves no page behind; nor does a GFN beyond what we back.
    assert _map(plat, mem, abi.XENMAPSPACE_grant_table, 999, 0x10002) == -abi.XEN_EINVAL
    assert not mem.contains(0x10002 * 4096)
    assert _map(plat, mem, abi.XENMAPSPACE_shared_info, 0, 1 << 40) == -abi.XEN_EINVAL
    assert plat.shared_info == 0x20000


def test_remove_from_physmap(plat, mem) -> None:
    assert _map(plat, mem, abi.XENMAPSPACE_grant_table, 0, ABOVE_RAM) == 0
    assert _remove(plat, mem, ABOVE_RAM) == -abi.XEN_EBUSY  # the grant frame lives there
    assert _remove(plat, mem, 0x800) == -abi.XEN_ENOENT  # nothing mapped
    assert _remove(plat, mem, 0x200, start=1) == -abi.XEN_EINVAL  # not continuable
    mem.fill(0x200 * 4096, 4096, 0x66)
    assert _remove(plat, mem, 0x200) == 0
    assert mem.read(0x200 * 4096, 4096) == bytes(4096) and _current(plat, mem) == 1023
    assert _remove(plat, mem, 0x200) == -abi.XEN_ENOENT
    mem.write(A, bytes(abi.xen_remove_from_physmap(domid=9, gpfn=0x201)))
    assert call(plat, mem, MO, abi.XENMEM_remove_from_physmap, A) == -abi.XEN_EPERM


def test_balloon_as_xen_defines_it(plat, mem) -> None:
    dec, pop = abi.XENMEM_decrease_reservation, abi.XENMEM_populate_physmap
    region = mem.regions[0]
    mem.fill(0x100 * 4096, 64 * 4096, 0x5A)  # touched: the host holds these pages
    mem.fill(A, 4096)  # and the argument page, before counting
    held = os.fstat(region.fd).st_blocks
    assert _reservation(plat, mem, dec, [0x100 + i for i in range(64)]) == 64
    # The host really has the memory back (memfd blocks are 512 bytes).
    assert os.fstat(region.fd).st_blocks <= held - 64 * 4096 // 512
    assert _current(plat, mem) == 1024 - 64
    # A frame already ballooned out ends the call: 1 extent done, not 2.
    assert _reservation(plat, mem, dec, [0x140, 0x100]) == 1
    # populate brings frames back (zeroed); one already there ends the call.
    assert _reservation(plat, mem, pop, [0x100, 0x101, 0x300]) == 2
    assert mem.read(0x100 * 4096, 8192) == bytes(8192)
    assert _current(plat, mem) == 1024 - 63
    # Xen's special pages and shared_info are not the guest's to give away.
    plat.map_shared_info(0x20000)
    assert _reservation(plat, mem, dec, [0x20]) == 0


def test_populate_up_to_maxmem_above_ram(mem) -> None:
    d = XenDomain(DOMID, FakeMachine(mem), HypercallTable(), console_out=print,
                  max_pages=1024 + 8)
    try:
        mem.write_u16(A + 0x80, abi.DOMID_SELF)
        assert call(d, mem, MO, abi.XENMEM_maximum_reservation, A + 0x80) == 1032
        pop, dec = abi.XENMEM_populate_physmap, abi.XENMEM_decrease_reservation
        # Two extents of 4 frames above RAM fit under maxmem; a third does not.
        assert _reservation(d, mem, pop, [0x1000, 0x1004, 0x1008], order=2) == 2
        assert _current(d, mem) == 1032 and mem.contains(0x1004 * 4096, 4 * 4096)
        assert _reservation(d, mem, pop, [0x1008], order=2) == 0
        assert _reservation(d, mem, dec, [0x1004], order=2) == 1
        assert not mem.contains(0x1004 * 4096) and _current(d, mem) == 1028
        assert _reservation(d, mem, dec, [0x1004], order=2) == 0  # gone already
    finally:
        d.close()


# --- the secondary vcpu_time_info, the watchdog, pagetable_dying -----------------------------
def test_vcpu_time_memory_area_copies_vcpu_info_time(plat, mem) -> None:
    vo = abi.HYPERVISOR_vcpu_op
    plat.map_shared_info(0x30000)
    src = 0x30000 + abi.vcpu_info.time.offset  # vCPU 0's slot, where KVM keeps kvmclock
    kvm_time = abi.vcpu_time_info(version=4, tsc_timestamp=123, system_time=456,
                                  tsc_to_system_mul=789, tsc_shift=-1,
                                  flags=abi.XEN_PVCLOCK_TSC_STABLE_BIT)
    mem.write(src, bytes(kvm_time))
    area = A + 0x200
    mem.write(A, bytes(abi.vcpu_register_time_memory_area(addr=area)))
    assert call(plat, mem, vo, abi.VCPUOP_register_vcpu_time_memory_area, 0, A) == 0
    copy = abi.vcpu_time_info.from_buffer_copy(mem.read(area, 32))
    assert copy.version % 2 == 0 and copy.version != 0
    assert bytes(copy)[4:] == bytes(kvm_time)[4:]
    # KVM moves the clock on: the next hypercall of that vCPU brings the copy up to date.
    kvm_time.version, kvm_time.system_time = 6, 999
    mem.write(src, bytes(kvm_time))
    plat.table.on_entry(plat.machine.vcpus[0])
    again = abi.vcpu_time_info.from_buffer_copy(mem.read(area, 32))
    assert again.system_time == 999 and again.version == copy.version + 2
    # NULL unregisters; an area across a page boundary is refused; a bad pointer faults.
    mem.write(A, bytes(abi.vcpu_register_time_memory_area(addr=0)))
    assert call(plat, mem, vo, abi.VCPUOP_register_vcpu_time_memory_area, 0, A) == 0
    assert plat.time_areas == {}
    mem.write(A, bytes(abi.vcpu_register_time_memory_area(addr=A + 4096 - 16)))
    assert call(plat, mem, vo, abi.VCPUOP_register_vcpu_time_memory_area, 0, A) == -abi.XEN_EINVAL
    mem.write(A, bytes(abi.vcpu_register_time_memory_area(addr=BAD)))
    assert call(plat, mem, vo, abi.VCPUOP_register_vcpu_time_memory_area, 0, A) == -abi.XEN_EFAULT


def test_watchdog(plat, mem) -> None:
    so = abi.HYPERVISOR_sched_op

    def watchdog(wid: int, timeout: int) -> int:
        mem.write(A, bytes(abi.sched_watchdog(id=wid, timeout=timeout)))
        return call(plat, mem, so, abi.SCHEDOP_watchdog, A)

    assert watchdog(0, 3600) == 1
    assert watchdog(0, 3600) == 2
    assert watchdog(0, 3600) == -abi.XEN_ENOSPC
    assert watchdog(3, 10) == -abi.XEN_EINVAL
    assert watchdog(2, 3600) == 0  # re-armed
    assert watchdog(2, 0) == 0  # released ...
    assert watchdog(2, 10) == -abi.XEN_EINVAL  # ... so no longer ours to arm
    assert plat.machine.stops == []
    assert watchdog(1, 0) == 0
    assert watchdog(0, 0) == 1  # expires at once: the domain is shut down
    fired = [t for t in threading.enumerate() if t.name == f"d{DOMID}-watchdog0"]
    for t in fired:
        t.join(10)
    assert [r.kind for r in plat.machine.stops] == ["watchdog"]  # on_watchdog decides
    assert "reason 4" in plat.machine.stops[0].detail  # SHUTDOWN_watchdog


def test_pagetable_dying_is_a_shadow_paging_hint(plat, mem) -> None:
    ho = abi.HYPERVISOR_hvm_op
    for domid, rc in ((abi.DOMID_SELF, -abi.XEN_EINVAL), (DOMID, -abi.XEN_EINVAL),
                      (9, -abi.XEN_EOPNOTSUPP), (abi.DOMID_SELF + 1, -abi.XEN_ESRCH)):
        mem.write(A, bytes(abi.xen_hvm_pagetable_dying(domid=domid, gpa=0x1000)))
        assert call(plat, mem, ho, abi.HVMOP_pagetable_dying, A) == rc
    assert call(plat, mem, ho, abi.HVMOP_pagetable_dying, BAD) == -abi.XEN_EFAULT


# --- VCPUOP_initialise / up / down / is_up ---------------------------------------------------
def _ctx64(**regs: int) -> abi.vcpu_hvm_context:
    ctx = abi.vcpu_hvm_context(mode=abi.VCPU_HVM_MODE_64B)
    r = ctx.cpu_regs.x86_64
    r.rip, r.rsp, r.rdi, r.rflags = 0x100000, 0x8000, 7, 0x2
    r.cr0, r.cr3, r.cr4, r.efer = 0x80000011, 0x9000, 0x20, 0x100  # PG|ET|PE, PAE, LME
    for name, value in regs.items():
        setattr(r, name, value)
    return ctx


def test_vcpu_initialise_up_down(plat, mem) -> None:
    vo = abi.HYPERVISOR_vcpu_op
    m = plat.machine

    def op(cmd: int, target: int, arg: int = 0, vcpu: int = 0) -> int:
        return call(plat, mem, vo, cmd, target, arg, vcpu=vcpu)

    assert op(abi.VCPUOP_is_up, 1) == 0  # vCPUs other than the boot one start down
    assert op(abi.VCPUOP_up, 1) == -abi.XEN_EINVAL  # never initialised
    mem.write(A, bytes(_ctx64(cr0=0x11)))  # no paging in a 64-bit context
    assert op(abi.VCPUOP_initialise, 1, A) == -abi.XEN_EINVAL
    mem.write(A, bytes(_ctx64(rip=1 << 50)))  # non-canonical
    assert op(abi.VCPUOP_initialise, 1, A) == -abi.XEN_EINVAL
    mem.write(A, bytes(_ctx64()))
    assert op(abi.VCPUOP_initialise, 1, A) == 0
    assert op(abi.VCPUOP_initialise, 1, A) == -abi.XEN_EEXIST
    mem.write(A, bytes(_ctx64(cr0=0x11)))
    assert op(abi.VCPUOP_initialise, 0, A) == -abi.XEN_EEXIST  # running already: no check
    assert op(abi.VCPUOP_initialise, 1, BAD) == -abi.XEN_EFAULT
    assert op(abi.VCPUOP_is_up, 1) == 0 and m.updown == []  # initialised is not up
    assert op(abi.VCPUOP_up, 1) == 0
    (kind, index, state), = m.updown
    assert (kind, index) == ("up", 1)
    # hvm_vcpu.h, 64-bit mode: flat 64-bit CS, flat data, a busy 64-bit TSS; EFER.LMA set.
    assert (state.rip, state.rsp, state.gprs["rdi"], state.cr3) == (0x100000, 0x8000, 7, 0x9000)
    assert state.efer == 0x500 and state.code.l and not state.code.db and state.code.g
    assert state.data.type == 3 and state.data.db and state.tss.type == 0xB
    assert state.tss.limit == 0x67 and (state.gdt_base, state.idt_limit) == (0, 0)
    assert op(abi.VCPUOP_is_up, 1) == 1
    assert op(abi.VCPUOP_up, 1) == 0 and len(m.updown) == 1  # up already: nothing to do
    assert op(abi.VCPUOP_down, 1) == 0 and m.updown[-1] == ("down", 1, None)
    assert op(abi.VCPUOP_is_up, 1) == 0
    assert op(abi.VCPUOP_down, 0) == -abi.XEN_EINVAL  # the last vCPU that is up
    assert op(abi.VCPUOP_up, 1) == 0 and m.updown[-1] == ("up", 1, None)  # resumes as it was
    assert op(abi.VCPUOP_down, 0, vcpu=1) == 0 and op(abi.VCPUOP_is_up, 0, vcpu=1) == 0
    assert op(abi.VCPUOP_up, 3) == -abi.XEN_ENOENT


def test_vcpu_initialise_32bit_context(plat, mem) -> None:
    ctx = abi.vcpu_hvm_context(mode=abi.VCPU_HVM_MODE_32B)
    r = ctx.cpu_regs.x86_32
    r.eip, r.esp, r.ebx, r.cr0 = 0x100000, 0x8000, 0x7000, 0x11
    for seg, ar in (("cs", 0xC9B), ("ds", 0xC93), ("ss", 0xC93), ("es", 0xC93), ("tr", 0x8B)):
        setattr(r, f"{seg}_ar", ar)
        setattr(r, f"{seg}_limit", 0xFFFFFFFF if seg != "tr" else 0x67)
    r.ss_ar = 0xCF3  # SS at DPL 3 under a DPL 0 CS
    mem.write(A, bytes(ctx))
    assert call(plat, mem, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_initialise, 1, A) == -abi.XEN_EINVAL
    r.ss_ar = 0xC93
    mem.write(A, bytes(ctx))
    assert call(plat, mem, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_initialise, 1, A) == 0
    assert call(plat, mem, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_up, 1) == 0
    state = plat.machine.updown[-1][2]
    assert (state.rip, state.gprs["rbx"], state.code.db, state.code.l) == (0x100000, 0x7000, True, False)


# --- the FIFO event-channel ops: Xen's checks, a 2-level domain's answers, the switch -------
def test_fifo_ops_check_arguments_like_xen(plat, mem) -> None:
    eo = abi.HYPERVISOR_event_channel_op

    def init_control(**fields: int) -> int:
        ic = abi.evtchn_init_control(control_gfn=0x20, offset=0, vcpu=0)
        for name, value in fields.items():
            setattr(ic, name, value)
        mem.write(A, bytes(ic))
        return call(plat, mem, eo, abi.EVTCHNOP_init_control, A)

    assert init_control(vcpu=2) == -abi.XEN_ENOENT
    assert init_control(offset=4032) == -abi.XEN_EINVAL  # the 72-byte block would cross
    assert init_control(offset=4) == -abi.XEN_EINVAL  # not 8-byte aligned
    assert init_control(control_gfn=BAD // 4096) == -abi.XEN_EINVAL  # no page there
    assert _reservation(plat, mem, abi.XENMEM_decrease_reservation, [0x21]) == 1
    assert init_control(control_gfn=0x21) == -abi.XEN_EINVAL  # ballooned out
    assert call(plat, mem, eo, abi.EVTCHNOP_init_control, BAD) == -abi.XEN_EFAULT
    mem.write(A, bytes(abi.evtchn_expand_array(array_gfn=0x22)))
    assert call(plat, mem, eo, abi.EVTCHNOP_expand_array, A) == -abi.XEN_EOPNOTSUPP
    port = plat.evtchn.bind_virq(abi.VIRQ_TIMER, 0)
    mem.write(A, bytes(abi.evtchn_set_priority(port=port, priority=3)))
    assert call(plat, mem, eo, abi.EVTCHNOP_set_priority, A) == -abi.XEN_ENOSYS  # 2-level
    # A valid request switches the domain to FIFO and says how wide LINK is (17 bits).
    assert init_control(offset=4024) == 0
    assert abi.evtchn_init_control.from_buffer_copy(mem.read(A, 24)).link_bits == 17
    assert init_control(offset=8) == -abi.XEN_EINVAL  # vCPU 0 has its control block
    mem.write(A, bytes(abi.evtchn_expand_array(array_gfn=0x22)))
    assert call(plat, mem, eo, abi.EVTCHNOP_expand_array, A) == 0
    mem.write(A, bytes(abi.evtchn_set_priority(port=port, priority=3)))
    assert call(plat, mem, eo, abi.EVTCHNOP_set_priority, A) == 0
    mem.write(A, bytes(abi.evtchn_set_priority(port=port, priority=16)))
    assert call(plat, mem, eo, abi.EVTCHNOP_set_priority, A) == -abi.XEN_EINVAL
    mem.write(A, bytes(abi.evtchn_set_priority(port=999, priority=3)))
    assert call(plat, mem, eo, abi.EVTCHNOP_set_priority, A) == -abi.XEN_EINVAL


# --- GNTTABOP_map_grant_ref through the domain's p2m ----------------------------------------
def test_grant_mapping_is_a_p2m_entry_above_ram(plat, mem) -> None:
    """A page of ours granted to ourselves and mapped at a free GFN (grant_table.h:
    host_addr is a guest-physical address for a translated mapper): the same memory at two
    GFNs; not RAM for ballooning; gone at unmap (and at the domain's end)."""
    gt = abi.HYPERVISOR_grant_table_op
    assert _map(plat, mem, abi.XENMAPSPACE_grant_table, 0, 0x30) == 0
    entry = abi.grant_entry_v1(flags=abi.GTF_permit_access, domid=DOMID, frame=0x31)
    mem.write(0x30 * 4096 + 8 * 9, bytes(entry))

    def map_at(gfn: int) -> abi.gnttab_map_grant_ref:
        mem.write(A, bytes(abi.gnttab_map_grant_ref(
            host_addr=gfn * 4096, flags=abi.GNTMAP_host_map, ref=9, dom=abi.DOMID_SELF)))
        assert call(plat, mem, gt, abi.GNTTABOP_map_grant_ref, A, 1) == 0
        return abi.gnttab_map_grant_ref.from_buffer_copy(mem.read(A, 32))

    assert map_at(0x40).status == abi.GNTST_general_error  # a RAM frame: not ours to replace
    op = map_at(ABOVE_RAM + 5)
    assert op.status == abi.GNTST_okay and plat.p2m.grant_maps == {ABOVE_RAM + 5}
    mem.write(0x31 * 4096, b"same page")
    assert mem.read((ABOVE_RAM + 5) * 4096, 9) == b"same page"
    assert _current(plat, mem) == 1024  # not charged: the granter's page
    assert _remove(plat, mem, ABOVE_RAM + 5) == -abi.XEN_EBUSY
    assert _reservation(plat, mem, abi.XENMEM_decrease_reservation, [ABOVE_RAM + 5]) == 0
    mem.write(A, bytes(abi.gnttab_unmap_grant_ref(host_addr=(ABOVE_RAM + 5) * 4096,
                                                  handle=op.handle)))
    assert call(plat, mem, gt, abi.GNTTABOP_unmap_grant_ref, A, 1) == 0
    assert abi.gnttab_unmap_grant_ref.from_buffer_copy(mem.read(A, 24)).status == 0
    assert not mem.contains((ABOVE_RAM + 5) * 4096) and plat.p2m.grant_maps == set()
    assert map_at(ABOVE_RAM + 6).status == abi.GNTST_okay
    plat.close()  # gnttab_release_mappings: the entry's in-use flags go with the mapper
    assert mem.read_u16(0x30 * 4096 + 8 * 9) == abi.GTF_permit_access
    assert plat.p2m.grant_maps == set()


def test_frames_beyond_ram_and_time_areas_survive_a_save_through_the_stream(mem) -> None:
    """The p2m (ballooned RAM frames, extents populated above RAM, Xen pages there), the
    pages outside RAM and the secondary time areas travel in the `xen` part and the
    PAGE_DATA after it (docs/snapshot-stream.md), into a domain built alike."""
    dec, pop = abi.XENMEM_decrease_reservation, abi.XENMEM_populate_physmap
    src = XenDomain(DOMID, FakeMachine(mem), HypercallTable(), console_out=print,
                    max_pages=1024 + 8)
    target_mem = GuestMemory.create(4 << 20)
    dst = XenDomain(DOMID, FakeMachine(target_mem), HypercallTable(), console_out=print,
                    max_pages=1024 + 8)
    try:
        assert _reservation(src, mem, dec, [0x100, 0x101]) == 2
        assert _reservation(src, mem, pop, [0x1000], order=2) == 1
        mem.write(0x1002 * 4096, b"populated above RAM")
        assert _map(src, mem, abi.XENMAPSPACE_shared_info, 0, ABOVE_RAM) == 0
        mem.write_u32(ABOVE_RAM * 4096 + 0x800, 0xC0FFEE)
        src.set_time_area(1, 0x30000)
        # As snapshot.save writes it: RAM, the parts (here the Xen one), then the pages
        # outside RAM.
        out = io.BytesIO()
        w = StreamWriter(out)
        image.save_pages(mem, w)
        w.part("xen", "xen", src.save_state())
        image.send_pages(mem, w, image.nonzero_pages(mem, extra=True))
        w.end()
        image.discard(target_mem)
        for rec in StreamReader(io.BytesIO(out.getvalue())):
            if rec.type == REC_PAGE_DATA:
                image.restore_pages(target_mem, rec)
            elif rec.type == REC_PART:
                dst.restore_state(rec.part()[2])
        assert dst.p2m.ballooned == {0x100, 0x101}
        assert dst.p2m.populated == {0x1000: 4} and dst.p2m.xen_pages == {ABOVE_RAM}
        assert _current(dst, target_mem) == 1024 - 2 + 4  # charged as before
        assert target_mem.read(0x1002 * 4096, 19) == b"populated above RAM"
        assert target_mem.read_u32(ABOVE_RAM * 4096 + 0x800) == 0xC0FFEE
        assert dst.shared_info == ABOVE_RAM * 4096
        assert dst.time_areas == {1: 0x30000}
        # A saved state naming frames this domain cannot have is refused, by frame.
        state = src.save_state()
        state["p2m"]["ballooned"] = [0x5000]  # type: ignore[index]
        other = XenDomain(DOMID, FakeMachine(GuestMemory.create(4 << 20)), HypercallTable(),
                          console_out=print)
        try:
            with pytest.raises(ValueError, match="ballooned frame 0x5000 is not RAM"):
                other.restore_state(state)
        finally:
            other.close()
            other.memory.close()
    finally:
        src.close()
        dst.close()
        target_mem.close()
