"""What the vCPU run loop dispatches port-I/O and MMIO exits to."""

from __future__ import annotations

from typing import Protocol


class IoHandler(Protocol):
    """An address space (port I/O or MMIO): the devices layer's `Bus` implements it."""

    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...
