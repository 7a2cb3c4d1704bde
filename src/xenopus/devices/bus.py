"""An address space (port I/O or MMIO) mapping address ranges to devices.

`Bus` implements `xenopus.vm.ports.IoHandler`, so the vCPU run loop hands every
port-I/O or MMIO exit straight to it. Lookup is on the hot path of every exit:
an exact-address cache in front of a bisect over the sorted range bases.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from xenopus.devices.ratelimit import LimitedLog

log = logging.getLogger("xenopus.devices")

# Exact-address cache entries; beyond this, lookups fall back to bisect only.
_CACHE_LIMIT = 4096
UNCLAIMED_TRACKED = 4096


class BusDevice(Protocol):
    """A device as the bus sees it; `base` says which of its ranges was hit."""

    def read(self, base: int, offset: int, size: int) -> int: ...

    def write(self, base: int, offset: int, size: int, value: int) -> None: ...


class BusConflictError(ValueError):
    """A range asked for overlaps one already registered."""


@dataclass(frozen=True, slots=True)
class BusRange:
    """One registered range of a bus: `length` bytes from `base`, served by `device`."""

    base: int
    length: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.length

    def __str__(self) -> str:
        return f"{self.name} at {self.base:#x}-{self.end - 1:#x}"


def ones(size: int) -> int:
    """All-ones of an access size in bytes: what an undriven bus reads as."""
    return (1 << (8 * size)) - 1


def read_lanes(read_byte: Callable[[int], int], offset: int, size: int) -> int:
    """A wide access to byte registers: x86 port I/O of size n at port p touches
    ports p..p+n-1, the lowest port in the lowest byte (little-endian)."""
    value = 0
    for i in range(size):
        value |= (read_byte(offset + i) & 0xFF) << (8 * i)
    return value


def write_lanes(write_byte: Callable[[int, int], None], offset: int, size: int, value: int) -> None:
    for i in range(size):
        write_byte(offset + i, (value >> (8 * i)) & 0xFF)


class NullDevice:
    """Claims a range so accesses are quiet: reads all-ones, writes ignored
    (e.g. port 0x80, where firmware and Linux's io_delay write POST codes)."""

    def read(self, base: int, offset: int, size: int) -> int:
        return ones(size)

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        pass


class Bus:
    """Address ranges → devices. Registration is copy-on-write so lookups from
    vCPU threads never need a lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        # (sorted bases, ranges in the same order), swapped as one object.
        self._map: tuple[list[int], list[BusRange]] = ([], [])
        self._cache: dict[int, BusRange | None] = {}
        self._edit = threading.Lock()
        self._count = threading.Lock()
        # Accesses nothing claimed, per address: at most UNCLAIMED_TRACKED addresses
        # (a guest picks how many it touches), the rest counted together.
        self.unclaimed: Counter[int] = Counter()
        self.unclaimed_elsewhere = 0
        self._log = LimitedLog(log)

    def register(self, base: int, length: int, device: BusDevice, name: str) -> None:
        if length <= 0 or base < 0:
            raise ValueError(f"{self.name}: bad range for {name}: base {base:#x} length {length}")
        new = BusRange(base, length, device, name)
        with self._edit:
            bases, ranges = self._map
            i = bisect_right(bases, base)
            # Sorted and disjoint: only the neighbours on either side can overlap.
            for other in ranges[max(i - 1, 0) : i + 1]:
                if other.base < new.end and new.base < other.end:
                    raise BusConflictError(f"{self.name}: cannot register {new}: overlaps {other}")
            self._publish([*ranges[:i], new, *ranges[i:]])

    def unregister(self, base: int) -> BusDevice:
        """Remove the range registered at exactly `base`; returns its device."""
        with self._edit:
            bases, ranges = self._map
            i = bisect_right(bases, base) - 1
            if i < 0 or bases[i] != base:
                raise KeyError(f"{self.name}: nothing registered at {base:#x}")
            device = ranges[i].device
            self._publish(ranges[:i] + ranges[i + 1 :])
        return device

    def _publish(self, ranges: list[BusRange]) -> None:
        # New map first, then a new cache: an entry a racing reader computed from
        # the old map can only land in a cache that is being thrown away.
        self._map = ([r.base for r in ranges], ranges)
        self._cache = {}

    def lookup(self, addr: int) -> BusRange | None:
        """The range containing `addr`, if any."""
        cache = self._cache
        try:
            return cache[addr]
        except KeyError:
            pass
        bases, ranges = self._map
        i = bisect_right(bases, addr) - 1
        found = ranges[i] if i >= 0 and addr < ranges[i].end else None
        if len(cache) < _CACHE_LIMIT:
            cache[addr] = found
        return found

    @property
    def ranges(self) -> list[BusRange]:
        return list(self._map[1])

    def read(self, addr: int, size: int) -> int:
        r = self.lookup(addr)
        if r is None or addr + size > r.base + r.length:
            self._miss("read", addr, size)
            return ones(size)
        return r.device.read(r.base, addr - r.base, size) & ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.lookup(addr)
        if r is None or addr + size > r.base + r.length:
            self._miss("write", addr, size)
            return
        r.device.write(r.base, addr - r.base, size, value & ones(size))

    def _miss(self, kind: str, addr: int, size: int) -> None:
        with self._count:
            if addr in self.unclaimed or len(self.unclaimed) < UNCLAIMED_TRACKED:
                self.unclaimed[addr] += 1
                first = self.unclaimed[addr] == 1
            else:
                self.unclaimed_elsewhere += 1
                first = False
        if first:
            self._log.log(logging.INFO, "%s: unclaimed %s of %d byte(s) at %#x",
                          self.name, kind, size, addr)
