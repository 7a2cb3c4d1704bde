"""Thin typed wrappers over the three kinds of KVM file descriptor.

Documentation/virt/kvm/api.rst: /dev/kvm (system ioctls) creates VM fds (VM ioctls), which
create vCPU fds (vCPU ioctls); each vCPU fd is mmapped to share `struct kvm_run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Mapping

from xenopus.kvm import uapi as u

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


class KvmError(Exception):
    """A KVM ioctl or /dev/kvm itself failed; `errno` is set when a system call failed."""

    def __init__(self, message: str, err: int | None = None):
        super().__init__(message)
        self.errno = err


class KvmCapabilityError(KvmError):
    """The host's KVM lacks capabilities xenopus needs."""

    def __init__(self, missing: list[int]):
        self.missing = missing
        names = ", ".join(u.CAP_NAMES.get(c, f"capability {c}") for c in missing)
        super().__init__(f"KVM on this host lacks {names}")


def _ioctl(
    fd: int,
    request: int,
    arg: int | ctypes.Structure | ctypes._SimpleCData | None = None,
    what: str = "",
) -> int:
    """ioctl(2) through libc (ctypes drops the GIL for the call); `arg` is an int or a struct."""
    if arg is None:
        ptr = 0
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        name = what or f"ioctl {request:#x}"
        raise KvmError(f"{name}: {os.strerror(err)}", err)
    return ret


class Kvm:
    """/dev/kvm: the system-wide KVM handle."""

    def __init__(self, path: str = "/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"cannot open {path}: {e.strerror}", e.errno) from e
        version = _ioctl(self.fd, u.KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
        if version != u.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(f"{path} speaks KVM API {version}, xenopus needs {u.KVM_API_VERSION}")
        self._mmap_size: int | None = None
        # KVM's answers about itself, which do not change: asked once (a build asks each
        # several times, and a spare asks before it is claimed: `warm_up`)
        self._supported_cpuid: ctypes.Structure | None = None
        self._msr_index_list: list[int] | None = None
        self._feature_msrs: dict[int, int] | None = None

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent, else a capability-specific positive value."""
        return _ioctl(self.fd, u.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def require(self, *caps: int) -> None:
        missing = [c for c in caps if self.check_extension(c) <= 0]
        if missing:
            raise KvmCapabilityError(missing)

    @property
    def vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = _ioctl(
                self.fd, u.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE"
            )
        return self._mmap_size

    def supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer while KVM answers E2BIG. Asked once
        per open /dev/kvm (its answer does not change; a build asks three times, ~0.6 ms
        each on nested KVM): each call gets a copy of its own to change."""
        if self._supported_cpuid is None:
            self._supported_cpuid = self._get_supported_cpuid()
        return type(self._supported_cpuid).from_buffer_copy(self._supported_cpuid)

    def _get_supported_cpuid(self) -> ctypes.Structure:
        n = 128
        while True:
            buf = u.cpuid2_with(n)
            try:
                _ioctl(self.fd, u.KVM_GET_SUPPORTED_CPUID, buf, "KVM_GET_SUPPORTED_CPUID")
            except KvmError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            # Trim to the entries KVM filled in (it rewrote nent).
            out = u.cpuid2_with(buf.nent)
            ctypes.memmove(
                ctypes.addressof(out.entries),
                ctypes.addressof(buf.entries),
                ctypes.sizeof(out.entries),
            )
            return out

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores (asked once per open
        /dev/kvm, as `supported_cpuid`)."""
        if self._msr_index_list is None:
            self._msr_index_list = self._msr_list(u.KVM_GET_MSR_INDEX_LIST,
                                                  "KVM_GET_MSR_INDEX_LIST")
        return list(self._msr_index_list)

    def _msr_list(self, request: int, what: str) -> list[int]:
        probe = u.msr_list_with(0)
        try:
            _ioctl(self.fd, request, probe)
        except KvmError as e:
            if e.errno != errno.E2BIG:
                raise
        buf = u.msr_list_with(probe.nmsrs)
        _ioctl(self.fd, request, buf, what)
        return list(buf.indices[: buf.nmsrs])

    def feature_msrs(self) -> dict[int, int]:
        """The host's feature MSRs as KVM would give them to a guest (api.rst 4.3,
        KVM_GET_MSR_FEATURE_INDEX_LIST, then KVM_GET_MSRS on the system fd): index -> value;
        empty without KVM_CAP_GET_MSR_FEATURES. Asked once per open /dev/kvm."""
        if self._feature_msrs is None:
            self._feature_msrs = self._get_feature_msrs()
        return dict(self._feature_msrs)

    def _get_feature_msrs(self) -> dict[int, int]:
        if self.check_extension(u.KVM_CAP_GET_MSR_FEATURES) <= 0:
            return {}
        indices = self._msr_list(u.KVM_GET_MSR_FEATURE_INDEX_LIST,
                                 "KVM_GET_MSR_FEATURE_INDEX_LIST")
        buf = u.msrs_with(len(indices))
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = _ioctl(self.fd, u.KVM_GET_MSRS, buf, "KVM_GET_MSRS (feature MSRs)")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def warm_up(self) -> None:
        """Ask KVM now what every x86 VM's build asks of it: its CPUID and MSR lists."""
        self.supported_cpuid()
        self.msr_index_list()
        self.feature_msrs()

    def create_vm(self, vm_type: int = 0) -> VmFd:
        """KVM_CREATE_VM; `vm_type` is the machine type (on arm64 the IPA size, 0 = 40 bits)."""
        fd = _ioctl(self.fd, u.KVM_CREATE_VM, vm_type, "KVM_CREATE_VM")
        return VmFd(fd, self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VmFd:
    """A VM file descriptor (KVM_CREATE_VM)."""

    # Where the VMX real-mode helpers live (api.rst, KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR):
    # three pages for the TSS, one for the EPT identity map, just below the BIOS at 4 GiB-256K.
    TSS_ADDR = 0xFFFBD000
    IDENTITY_MAP_ADDR = 0xFFFBC000

    def __init__(self, fd: int, kvm: Kvm):
        self.fd = fd
        self.kvm = kvm

    def set_user_memory_region(
        self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        region = u.kvm_userspace_memory_region(slot, flags, gpa, size, host_addr)
        _ioctl(
            self.fd,
            u.KVM_SET_USER_MEMORY_REGION,
            region,
            f"KVM_SET_USER_MEMORY_REGION slot {slot} gpa {gpa:#x}+{size:#x}",
        )

    def get_dirty_log(self, slot: int, pages: int) -> bytearray:
        """The slot's dirty bitmap since the last call (a set bit: the guest wrote that
        page), which KVM clears as it hands it over (api.rst, KVM_GET_DIRTY_LOG; the slot
        needs KVM_MEM_LOG_DIRTY_PAGES). Bit i of the little-endian longs is page i."""
        bitmap = bytearray((pages + 63) // 64 * 8)
        buf = (ctypes.c_char * len(bitmap)).from_buffer(bitmap)
        log = u.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(buf))
        _ioctl(self.fd, u.KVM_GET_DIRTY_LOG, log, f"KVM_GET_DIRTY_LOG slot {slot}")
        del buf
        return bitmap

    def clear_dirty_log(self, slot: int, bitmap: bytearray, first_page: int = 0,
                        pages: int | None = None) -> None:
        """Clear the bits set in `bitmap` (pages from `first_page`, a multiple of 64) from
        the slot's dirty log and write-protect those pages again, so the next write to one
        is logged (api.rst, KVM_CLEAR_DIRTY_LOG; needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
        enabled)."""
        count = len(bitmap) * 8 if pages is None else pages
        buf = (ctypes.c_char * len(bitmap)).from_buffer(bitmap)
        req = u.kvm_clear_dirty_log(slot=slot, num_pages=count, first_page=first_page,
                                    dirty_bitmap=ctypes.addressof(buf))
        _ioctl(self.fd, u.KVM_CLEAR_DIRTY_LOG, req, f"KVM_CLEAR_DIRTY_LOG slot {slot}")
        del buf

    def set_tss_addr(self, addr: int = TSS_ADDR) -> None:
        _ioctl(self.fd, u.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int = IDENTITY_MAP_ADDR) -> None:
        _ioctl(
            self.fd, u.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr), "KVM_SET_IDENTITY_MAP_ADDR"
        )

    def create_irqchip(self) -> None:
        _ioctl(self.fd, u.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        _ioctl(self.fd, u.KVM_CREATE_PIT2, u.kvm_pit_config(flags=flags), "KVM_CREATE_PIT2")

    def irq_line(self, irq: int, level: bool | int) -> None:
        _ioctl(self.fd, u.KVM_IRQ_LINE, u.kvm_irq_level(irq, int(bool(level))), "KVM_IRQ_LINE")

    def enable_cap(self, cap: int, *args: int) -> None:
        req = u.kvm_enable_cap(cap=cap)
        for i, a in enumerate(args):
            req.args[i] = a
        _ioctl(self.fd, u.KVM_ENABLE_CAP, req, f"KVM_ENABLE_CAP {u.CAP_NAMES.get(cap, cap)}")

    def set_msr_filter(
        self,
        ranges: Iterable[tuple[int, int, bytes]],
        default: int = u.KVM_MSR_FILTER_DEFAULT_ALLOW,
    ) -> None:
        """KVM_X86_SET_MSR_FILTER; `ranges` are (flags, base MSR, bitmap) — one bit per MSR,
        a set bit allows the accesses named in flags, a clear bit sends them to userspace
        (with KVM_CAP_X86_USER_SPACE_MSR enabled for KVM_MSR_EXIT_REASON_FILTER)."""
        filt = u.kvm_msr_filter(flags=default)
        keep = []  # the bitmaps must outlive the ioctl (KVM copies them)
        for i, (flags, base, bitmap) in enumerate(ranges):
            buf = ctypes.create_string_buffer(bytes(bitmap), len(bitmap))
            keep.append(buf)
            filt.ranges[i] = u.kvm_msr_filter_range(
                flags, len(bitmap) * 8, base, ctypes.addressof(buf)
            )
        _ioctl(self.fd, u.KVM_X86_SET_MSR_FILTER, filt, "KVM_X86_SET_MSR_FILTER")

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        *,
        datamatch: int | None = None,
        pio: bool = False,
        deassign: bool = False,
    ) -> None:
        flags = (u.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (
            u.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        )
        if datamatch is not None:
            flags |= u.KVM_IOEVENTFD_FLAG_DATAMATCH
        req = u.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        _ioctl(self.fd, u.KVM_IOEVENTFD, req, f"KVM_IOEVENTFD {addr:#x}")

    def irqfd(
        self, fd: int, gsi: int, *, resamplefd: int | None = None, deassign: bool = False
    ) -> None:
        flags = u.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resamplefd is not None:
            flags |= u.KVM_IRQFD_FLAG_RESAMPLE
        req = u.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd or 0)
        _ioctl(self.fd, u.KVM_IRQFD, req, f"KVM_IRQFD gsi {gsi}")

    def set_gsi_routing(self, entries: Iterable[u.kvm_irq_routing_entry]) -> None:
        """KVM_SET_GSI_ROUTING replaces the whole table; build entries with
        `irqchip_route()` / `msi_route()`."""
        entries = list(entries)
        table = u.irq_routing_with(len(entries))
        for i, e in enumerate(entries):
            table.entries[i] = e
        _ioctl(self.fd, u.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def xen_hvm_config(self, msr: int, flags: int = 0) -> None:
        req = u.kvm_xen_hvm_config(flags=flags, msr=msr)
        _ioctl(self.fd, u.KVM_XEN_HVM_CONFIG, req, "KVM_XEN_HVM_CONFIG")

    def xen_set_attr(self, attr: u.kvm_xen_hvm_attr) -> None:
        """KVM_XEN_HVM_SET_ATTR (api.rst 4.127)."""
        _ioctl(self.fd, u.KVM_XEN_HVM_SET_ATTR, attr, f"KVM_XEN_HVM_SET_ATTR {attr.type}")

    def xen_get_attr(self, attr: u.kvm_xen_hvm_attr) -> u.kvm_xen_hvm_attr:
        """KVM_XEN_HVM_GET_ATTR (api.rst 4.128): `attr` with its `type` set, filled in."""
        _ioctl(self.fd, u.KVM_XEN_HVM_GET_ATTR, attr, f"KVM_XEN_HVM_GET_ATTR {attr.type}")
        return attr

    def xen_evtchn_send(self, port: int, vcpu: int) -> None:
        """KVM_XEN_HVM_EVTCHN_SEND (api.rst 4.132): raise a 2-level port as Xen would."""
        req = u.kvm_irq_routing_xen_evtchn(
            port=port, vcpu=vcpu, priority=u.KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL)
        _ioctl(self.fd, u.KVM_XEN_HVM_EVTCHN_SEND, req, f"KVM_XEN_HVM_EVTCHN_SEND {port}")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd: some capabilities (KVM_CAP_XSAVE2's buffer
        size) answer for this VM only (api.rst, KVM_CHECK_EXTENSION)."""
        return _ioctl(self.fd, u.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def get_irqchip(self, chip_id: int) -> u.kvm_irqchip:
        """KVM_GET_IRQCHIP: the in-kernel PIC master, slave or IOAPIC (KVM_IRQCHIP_*)."""
        chip = u.kvm_irqchip(chip_id=chip_id)
        _ioctl(self.fd, u.KVM_GET_IRQCHIP, chip, f"KVM_GET_IRQCHIP {chip_id}")
        return chip

    def set_irqchip(self, chip: u.kvm_irqchip) -> None:
        _ioctl(self.fd, u.KVM_SET_IRQCHIP, chip, f"KVM_SET_IRQCHIP {chip.chip_id}")

    def get_pit2(self) -> u.kvm_pit_state2:
        state = u.kvm_pit_state2()
        _ioctl(self.fd, u.KVM_GET_PIT2, state, "KVM_GET_PIT2")
        return state

    def set_pit2(self, state: u.kvm_pit_state2) -> None:
        _ioctl(self.fd, u.KVM_SET_PIT2, state, "KVM_SET_PIT2")

    def get_clock(self) -> u.kvm_clock_data:
        """KVM_GET_CLOCK: the VM's kvmclock (ns), with the host's realtime and TSC at the
        same instant where the kernel provides them (flags)."""
        data = u.kvm_clock_data()
        _ioctl(self.fd, u.KVM_GET_CLOCK, data, "KVM_GET_CLOCK")
        return data

    def set_clock(self, data: u.kvm_clock_data) -> None:
        _ioctl(self.fd, u.KVM_SET_CLOCK, data, "KVM_SET_CLOCK")

    def create_vcpu(self, index: int) -> VcpuFd:
        fd = _ioctl(self.fd, u.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU {index}")
        return VcpuFd(fd, index, self.kvm.vcpu_mmap_size)

    # --- devices and attributes (api.rst 4.80-4.82; used by arm64's vGIC and SMCCC filter)
    def create_device(self, dev_type: int) -> int:
        """KVM_CREATE_DEVICE: the new device's fd (the caller closes it)."""
        dev = u.kvm_create_device(type=dev_type)
        _ioctl(self.fd, u.KVM_CREATE_DEVICE, dev, f"KVM_CREATE_DEVICE type {dev_type}")
        return dev.fd

    def set_attr(self, group: int, attr: int, value: ctypes.Structure | ctypes._SimpleCData
                 | None = None, *, fd: int | None = None) -> None:
        """KVM_SET_DEVICE_ATTR on the VM fd, or on device `fd`; `value` is what `addr`
        points at (None: no payload)."""
        set_device_attr(self.fd if fd is None else fd, group, attr, value)

    def has_attr(self, group: int, attr: int, *, fd: int | None = None) -> bool:
        return has_device_attr(self.fd if fd is None else fd, group, attr)

    def arm_preferred_target(self) -> u.kvm_vcpu_init:
        """KVM_ARM_PREFERRED_TARGET: the target (and no features) for KVM_ARM_VCPU_INIT."""
        init = u.kvm_vcpu_init()
        _ioctl(self.fd, u.KVM_ARM_PREFERRED_TARGET, init, "KVM_ARM_PREFERRED_TARGET")
        return init

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def set_device_attr(fd: int, group: int, attr: int,
                    value: ctypes.Structure | ctypes._SimpleCData | None = None) -> None:
    """KVM_SET_DEVICE_ATTR on any fd that takes it (VM, vCPU or device)."""
    addr = 0 if value is None else ctypes.addressof(value)
    _ioctl(fd, u.KVM_SET_DEVICE_ATTR, u.kvm_device_attr(0, group, attr, addr),
           f"KVM_SET_DEVICE_ATTR group {group} attr {attr:#x}")


def has_device_attr(fd: int, group: int, attr: int) -> bool:
    """KVM_HAS_DEVICE_ATTR: ENXIO (or ENODEV, EINVAL on old kernels) means no."""
    try:
        _ioctl(fd, u.KVM_HAS_DEVICE_ATTR, u.kvm_device_attr(0, group, attr, 0))
    except KvmError as e:
        if e.errno in (errno.ENXIO, errno.ENODEV, errno.EINVAL, errno.ENOTTY):
            return False
        raise
    return True


def irqchip_route(gsi: int, chip: int, pin: int) -> u.kvm_irq_routing_entry:
    e = u.kvm_irq_routing_entry(gsi=gsi, type=u.KVM_IRQ_ROUTING_IRQCHIP)
    e.u.irqchip = u.kvm_irq_routing_irqchip(chip, pin)
    return e


def msi_route(gsi: int, address: int, data: int) -> u.kvm_irq_routing_entry:
    e = u.kvm_irq_routing_entry(gsi=gsi, type=u.KVM_IRQ_ROUTING_MSI)
    e.u.msi = u.kvm_irq_routing_msi(address & 0xFFFFFFFF, address >> 32, data, 0)
    return e


class VcpuFd:
    """A vCPU file descriptor and its mmapped `struct kvm_run`."""

    def __init__(self, fd: int, index: int, mmap_size: int):
        self.fd = fd
        self.index = index
        self.mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # A live view of the shared page: reading a field reads what KVM wrote, no copy.
        self.kvm_run: u.kvm_run = u.kvm_run.from_buffer(self.mmap)

    def run(self) -> None:
        """KVM_RUN. Raises InterruptedError when a signal or immediate_exit cut it short.

        fcntl.ioctl with an int argument drops the GIL around ioctl(2) (Modules/fcntlmodule.c)
        and costs less per call than a ctypes call.
        """
        fcntl.ioctl(self.fd, u.KVM_RUN, 0)

    def get_regs(self) -> u.kvm_regs:
        regs = u.kvm_regs()
        _ioctl(self.fd, u.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: u.kvm_regs) -> None:
        _ioctl(self.fd, u.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> u.kvm_sregs:
        sregs = u.kvm_sregs()
        _ioctl(self.fd, u.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        _ioctl(self.fd, u.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_sregs2(self) -> u.kvm_sregs2:
        """KVM_GET_SREGS2 (KVM_CAP_SREGS2)."""
        sregs2 = u.kvm_sregs2()
        _ioctl(self.fd, u.KVM_GET_SREGS2, sregs2, "KVM_GET_SREGS2")
        return sregs2

    def set_sregs2(self, sregs2: u.kvm_sregs2) -> None:
        _ioctl(self.fd, u.KVM_SET_SREGS2, sregs2, "KVM_SET_SREGS2")

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        _ioctl(self.fd, u.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def xen_set_attr(self, attr: u.kvm_xen_vcpu_attr) -> None:
        """KVM_XEN_VCPU_SET_ATTR (api.rst 4.129; takes the vCPU mutex)."""
        _ioctl(self.fd, u.KVM_XEN_VCPU_SET_ATTR, attr, f"KVM_XEN_VCPU_SET_ATTR {attr.type}")

    def xen_get_attr(self, attr: u.kvm_xen_vcpu_attr) -> u.kvm_xen_vcpu_attr:
        """KVM_XEN_VCPU_GET_ATTR (api.rst 4.130): `attr` with its `type` set, filled in."""
        _ioctl(self.fd, u.KVM_XEN_VCPU_GET_ATTR, attr, f"KVM_XEN_VCPU_GET_ATTR {attr.type}")
        return attr

    def set_msrs(self, values: Mapping[int, int]) -> None:
        buf = u.msrs_with(len(values))
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i].index = index
            buf.entries[i].data = data
        n = _ioctl(self.fd, u.KVM_SET_MSRS, buf, "KVM_SET_MSRS")
        if n != len(values):
            raise KvmError(f"KVM_SET_MSRS: MSR {buf.entries[n].index:#x} was refused")

    def read_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS for every index it can read: KVM stops at the first MSR it refuses
        (returning how many it read), so that one is skipped and the rest asked again."""
        todo = list(indices)
        out: dict[int, int] = {}
        while todo:
            buf = u.msrs_with(len(todo))
            for i, index in enumerate(todo):
                buf.entries[i].index = index
            n = _ioctl(self.fd, u.KVM_GET_MSRS, buf, "KVM_GET_MSRS")
            out.update((buf.entries[i].index, buf.entries[i].data) for i in range(n))
            todo = todo[n + 1 :]
        return out

    def get_fpu(self) -> u.kvm_fpu:
        fpu = u.kvm_fpu()
        _ioctl(self.fd, u.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: u.kvm_fpu) -> None:
        _ioctl(self.fd, u.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_xsave(self, size: int = 0) -> ctypes.Structure:
        """The XSAVE area: KVM_GET_XSAVE2 into `size` octets when KVM_CAP_XSAVE2 gave one
        (api.rst, KVM_GET_XSAVE2: it may exceed 4 KiB, e.g. with AMX), KVM_GET_XSAVE otherwise."""
        if size > u.KVM_XSAVE_LEGACY_SIZE:
            buf = u.xsave_with(size)
            _ioctl(self.fd, u.KVM_GET_XSAVE2, buf, "KVM_GET_XSAVE2")
        else:
            buf = u.xsave_with(u.KVM_XSAVE_LEGACY_SIZE)
            _ioctl(self.fd, u.KVM_GET_XSAVE, buf, "KVM_GET_XSAVE")
        return buf

    def set_xsave(self, area: bytes, size: int = 0) -> None:
        """KVM_SET_XSAVE reads as many octets as this VM's KVM_CAP_XSAVE2 size (`size`; 4
        KiB without it), which may be more than `area` holds: the rest is zeros (XSAVE
        components absent from XSTATE_BV, SDM 1 §13.4.2)."""
        buf = u.xsave_with(max(len(area), size))
        ctypes.memmove(ctypes.addressof(buf), area, len(area))
        _ioctl(self.fd, u.KVM_SET_XSAVE, buf, "KVM_SET_XSAVE")

    def get_xcrs(self) -> u.kvm_xcrs:
        xcrs = u.kvm_xcrs()
        _ioctl(self.fd, u.KVM_GET_XCRS, xcrs, "KVM_GET_XCRS")
        return xcrs

    def set_xcrs(self, xcrs: u.kvm_xcrs) -> None:
        _ioctl(self.fd, u.KVM_SET_XCRS, xcrs, "KVM_SET_XCRS")

    def get_lapic(self) -> u.kvm_lapic_state:
        lapic = u.kvm_lapic_state()
        _ioctl(self.fd, u.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
        return lapic

    def set_lapic(self, lapic: u.kvm_lapic_state) -> None:
        _ioctl(self.fd, u.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_vcpu_events(self) -> u.kvm_vcpu_events:
        events = u.kvm_vcpu_events()
        _ioctl(self.fd, u.KVM_GET_VCPU_EVENTS, events, "KVM_GET_VCPU_EVENTS")
        return events

    def set_vcpu_events(self, events: u.kvm_vcpu_events) -> None:
        _ioctl(self.fd, u.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def get_debugregs(self) -> u.kvm_debugregs:
        dregs = u.kvm_debugregs()
        _ioctl(self.fd, u.KVM_GET_DEBUGREGS, dregs, "KVM_GET_DEBUGREGS")
        return dregs

    def set_debugregs(self, dregs: u.kvm_debugregs) -> None:
        _ioctl(self.fd, u.KVM_SET_DEBUGREGS, dregs, "KVM_SET_DEBUGREGS")

    def set_tsc_khz(self, khz: int) -> None:
        _ioctl(self.fd, u.KVM_SET_TSC_KHZ, khz, f"KVM_SET_TSC_KHZ {khz}")

    def get_tsc_khz(self) -> int:
        """The vCPU's TSC frequency in kHz (KVM_GET_TSC_KHZ, KVM_CAP_GET_TSC_KHZ)."""
        return _ioctl(self.fd, u.KVM_GET_TSC_KHZ, None, "KVM_GET_TSC_KHZ")

    def get_mp_state(self) -> int:
        state = u.kvm_mp_state()
        _ioctl(self.fd, u.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        _ioctl(self.fd, u.KVM_SET_MP_STATE, u.kvm_mp_state(mp_state), "KVM_SET_MP_STATE")

    # --- arm64 ---------------------------------------------------------------------------
    def arm_vcpu_init(self, init: u.kvm_vcpu_init) -> None:
        _ioctl(self.fd, u.KVM_ARM_VCPU_INIT, init, f"KVM_ARM_VCPU_INIT vCPU {self.index}")

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG of a 64-bit register."""
        value = ctypes.c_uint64()
        _ioctl(self.fd, u.KVM_GET_ONE_REG, u.kvm_one_reg(reg_id, ctypes.addressof(value)),
               f"KVM_GET_ONE_REG {reg_id:#x}")
        return value.value

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG of a 64-bit register."""
        data = ctypes.c_uint64(value)
        _ioctl(self.fd, u.KVM_SET_ONE_REG, u.kvm_one_reg(reg_id, ctypes.addressof(data)),
               f"KVM_SET_ONE_REG {reg_id:#x}")

    def close(self) -> None:
        # Drop the ctypes view first: mmap.close() refuses while a buffer export is alive.
        self.kvm_run = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still alive: unmapped at exit
            self.mmap.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
