"""Loads and stores of fields a guest reads or writes concurrently (ring indices, event
words): each is one aligned native access, so the other side never sees a torn value.

`struct.pack_into` is not enough: for little-endian formats CPython builds the value a
byte at a time in place, so a reader on another CPU can catch the field half written (or
zeroed). A `memoryview` cast to the field's native type stores it with one instruction.
The views are native-endian; x86 and the guests we run are little-endian.
"""

from __future__ import annotations

import sys

if sys.byteorder != "little":  # the guest ABIs are little-endian
    raise ImportError("xenopus.memory.shared needs a little-endian host")

_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def load(view: memoryview, offset: int, size: int) -> int:
    """The `size`-byte little-endian field at `offset` of `view`, in one access."""
    return view[offset : offset + size].cast(_FORMATS[size])[0]


def store(view: memoryview, offset: int, size: int, value: int) -> None:
    """Write the `size`-byte field at `offset` of `view` with one access."""
    view[offset : offset + size].cast(_FORMATS[size])[0] = value & ((1 << (8 * size)) - 1)
