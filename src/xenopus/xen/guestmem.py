"""Xen argument structures in and out of guest memory, by guest-virtual address.

A hypercall's pointer arguments are guest-virtual addresses of the calling vCPU (Xen's
``copy_from_guest``/``copy_to_guest``, xen/include/xen/guest_access.h). They are resolved
with the vCPU's own paging registers through `xenopus.memory.paging`; any fault — an
unmapped page, a read-only page written, a frame outside RAM — becomes `GuestFault`, which
the dispatcher turns into ``-EFAULT``. Nothing here loops on a guest-supplied count
without a bound.

A 32-bit caller (``compat``) passes its structs in Xen's compat layouts: a struct of
`abi.COMPAT` is read and written in its compat form and handed over converted
(xen/compat.py), so handlers see native structs in both modes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Protocol, TypeVar

from xenopus.memory import paging
from xenopus.memory.guest import GuestMemory, GuestMemoryError
from xenopus.xen import abi
from xenopus.xen.compat import convert

T = TypeVar("T", bound=ctypes.Structure)

# A single copy larger than this is refused (-E2BIG): the largest Xen argument we copy is
# XENVER_capabilities' 1 KiB; arrays (extent lists, multicall batches) are bounded by count.
MAX_COPY = 1 << 20


class XenError(Exception):
    """A hypercall fails with Xen errno `errno` (returned to the guest negated)."""

    def __init__(self, errno: int, why: str = ""):
        super().__init__(why or f"Xen errno {errno}")
        self.errno = errno


class GuestFault(XenError):
    """A guest pointer could not be followed: -EFAULT."""

    def __init__(self, why: str):
        super().__init__(abi.XEN_EFAULT, why)


class PagingRegs(Protocol):
    """What a page walk needs; `kvm_sregs` has these fields."""

    cr0: int
    cr3: int
    cr4: int
    efer: int


class GuestAccess:
    """Guest-virtual copies for one hypercall. `regs` is the vCPU's paging state, or a
    callable returning it (read once, on first use: a call without pointers costs no
    KVM_GET_SREGS)."""

    def __init__(self, memory: GuestMemory, regs: PagingRegs | Callable[[], PagingRegs]):
        self.memory = memory
        self._regs_source = regs
        self._regs: PagingRegs | None = None if callable(regs) else regs
        self._ctl_args: dict[str, int] | None = None
        self.compat = False  # a 32-bit caller: Xen's compat layouts

    def layout(self, cls: type) -> type:
        """The layout `cls` has in the caller's ABI."""
        return abi.COMPAT.get(cls, cls) if self.compat else cls

    def sizeof(self, cls: type) -> int:
        """Bytes of `cls` in the caller's ABI (strides of argument arrays)."""
        return ctypes.sizeof(self.layout(cls))

    @property
    def pfn_size(self) -> int:
        """Bytes of a xen_pfn_t / xen_ulong_t in the caller's ABI."""
        return 4 if self.compat else 8

    @property
    def regs(self) -> PagingRegs:
        if self._regs is None:
            source = self._regs_source
            assert callable(source)
            self._regs = source()
        return self._regs

    def _ctl(self) -> dict[str, int]:
        """The walk's keyword arguments, built once per call (every copy needs them)."""
        if self._ctl_args is None:
            r = self.regs
            self._ctl_args = {"cr0": r.cr0, "cr3": r.cr3, "cr4": r.cr4, "efer": r.efer}
        return self._ctl_args

    # --- bytes -----------------------------------------------------------------------------
    def read(self, gva: int, what: int | type[T]) -> bytes | T:  # type: ignore[misc]
        """`what` bytes at `gva`, or, given a ctypes struct class, an instance of it."""
        if isinstance(what, type):
            return self.read_struct(gva, what)
        return self.read_bytes(gva, what)

    def write(self, gva: int, data: bytes | bytearray | memoryview | ctypes.Structure) -> None:
        """Bytes, or a ctypes struct's bytes, at `gva`."""
        if self.compat and type(data) in abi.COMPAT:
            data = convert(data, abi.COMPAT[type(data)])  # type: ignore[arg-type]
        if isinstance(data, ctypes.Structure | ctypes.Union | ctypes.Array):
            data = bytes(data)
        if len(data) > MAX_COPY:
            raise XenError(abi.XEN_E2BIG, f"copy of {len(data)} bytes refused")
        try:
            paging.write_virtual(self.memory, gva, data, **self._ctl())
        except (paging.PageFault, GuestMemoryError) as e:
            raise GuestFault(f"write {len(data)} bytes at {gva:#x}: {e}") from None

    def read_bytes(self, gva: int, length: int) -> bytes:
        if not 0 <= length <= MAX_COPY:
            raise XenError(abi.XEN_E2BIG, f"copy of {length} bytes refused")
        try:
            return paging.read_virtual(self.memory, gva, length, **self._ctl())
        except (paging.PageFault, GuestMemoryError) as e:
            raise GuestFault(f"read {length} bytes at {gva:#x}: {e}") from None

    def gpa(self, gva: int, *, write: bool = False) -> int:
        """The guest-physical address behind `gva` (for areas the guest registers once)."""
        try:
            gpa = paging.translate(self.memory, gva, write=write, **self._ctl())
        except paging.PageFault as e:
            raise GuestFault(f"translate {gva:#x}: {e}") from None
        if not self.memory.contains(gpa):
            raise GuestFault(f"{gva:#x} maps to {gpa:#x}, outside RAM")
        return gpa

    # --- structs and arrays ----------------------------------------------------------------
    def read_struct(self, gva: int, cls: type[T]) -> T:
        lay = self.layout(cls)
        value = lay.from_buffer_copy(self.read_bytes(gva, ctypes.sizeof(lay)))
        return value if lay is cls else convert(value, cls)

    def write_field(self, gva: int, value: ctypes.Structure, field: str) -> None:
        """Copy back one member (Xen's ``__copy_field_to_guest``): out-fields only, so a
        guest racing on the rest of its struct sees its own bytes."""
        lay = self.layout(type(value))
        if lay is not type(value):
            value = convert(value, lay)
        desc = getattr(lay, field)
        self.write(gva + desc.offset, bytes(value)[desc.offset : desc.offset + desc.size])

    def read_array(self, gva: int, ctype: type, count: int, limit: int) -> list:
        """`count` elements of `ctype` (a ctypes scalar or struct); more than `limit` is
        -E2BIG before anything is read."""
        if count < 0 or count > limit:
            raise XenError(abi.XEN_E2BIG, f"{count} elements (at most {limit})")
        raw = self.read_bytes(gva, ctypes.sizeof(ctype) * count)
        array = (ctype * count).from_buffer_copy(raw)
        return list(array)
