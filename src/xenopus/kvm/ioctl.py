"""ioctl request numbers, encoded as in include/uapi/asm-generic/ioctl.h (x86 uses it as is).

A request is dir:2 | size:14 | type:8 | nr:8, from the top bit down.
"""

from __future__ import annotations

import ctypes

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

# What an ioctl argument can be: a struct, a union or a scalar. ctypes has no public name
# for the scalar types' common base; `_SimpleCData` is the one its docs and typeshed use.
CData = ctypes._SimpleCData | ctypes.Structure | ctypes.Union
CType = type[CData]


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802 - the header's name
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:  # noqa: N802
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, arg: CType) -> int:  # noqa: N802
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(arg))


def _IOW(type_: int, nr: int, arg: CType) -> int:  # noqa: N802
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(arg))


def _IOWR(type_: int, nr: int, arg: CType) -> int:  # noqa: N802
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(arg))
