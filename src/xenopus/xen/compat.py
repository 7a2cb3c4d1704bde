"""The compat ABI: 32-bit guests' argument structs in and out of the native layouts.

Xen serves a vCPU in 32-bit mode through its compat layer (xen/common/compat/, the
xen/include/compat headers generated from the public ones for i386): ``xen_ulong_t``,
``xen_pfn_t`` and guest handles are 32 bits there, and a ``uint64_t`` inside a struct is
4-byte aligned (the i386 psABI), so e.g. ``xen_add_to_physmap`` is 16 bytes instead of 24.
Which mode a call is in is decided per call (``hvm_guest_x86_mode`` at the hypercall);
the shared_info/vcpu_info format is latched per domain (``hvm_latch_shinfo_size``; see
`XenDomain.latch_shinfo_size`).

The handlers work on native structs only: `GuestAccess` reads a 32-bit caller's struct
in its compat layout (`abi.COMPAT`) and converts it here, field by field by name, and
converts it back on the way out. A value too wide for a compat field is truncated, as the
compat layer's XLAT macros do for the fields they copy.
"""

from __future__ import annotations

import ctypes
from typing import TypeVar

T = TypeVar("T", bound=ctypes.Structure)


def _copy(src: ctypes.Structure | ctypes.Union, dst: ctypes.Structure | ctypes.Union
          ) -> None:
    if isinstance(dst, ctypes.Union):
        # Both layouts have the same members; the widest one carries every other's bits
        # (little-endian: a gref aliases the low half of a gmfn).
        name = max(dst._fields_, key=lambda f: ctypes.sizeof(f[1]))[0]
        _copy_member(src, dst, name)
        return
    for field in dst._fields_:
        _copy_member(src, dst, field[0])


def _copy_member(src: object, dst: object, name: str) -> None:
    value = getattr(src, name)
    if isinstance(value, ctypes.Structure | ctypes.Union):
        _copy(value, getattr(dst, name))
    elif isinstance(value, ctypes.Array):
        into = getattr(dst, name)
        for i in range(min(len(value), len(into))):
            if isinstance(value[i], ctypes.Structure | ctypes.Union):
                _copy(value[i], into[i])
            else:
                into[i] = value[i]
    else:
        setattr(dst, name, value)  # ctypes truncates to the field's width


def convert(value: ctypes.Structure, to: type[T]) -> T:
    """``value`` re-laid-out as ``to`` (native to compat or back), member by member."""
    out = to()
    _copy(value, out)
    return out


__all__ = ["convert"]
