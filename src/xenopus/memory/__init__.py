"""Layer 2: guest memory."""

from xenopus.memory.guest import (
    MMIO_HOLE_END,
    MMIO_HOLE_START,
    PAGE_SIZE,
    GiB,
    GuestMemory,
    GuestMemoryError,
    KiB,
    MemoryRegion,
    MiB,
)
from xenopus.memory.paging import (
    PageFault,
    PagingMode,
    read_virtual,
    translate,
    write_virtual,
)

__all__ = [
    "GiB",
    "GuestMemory",
    "GuestMemoryError",
    "KiB",
    "MemoryRegion",
    "MiB",
    "MMIO_HOLE_END",
    "MMIO_HOLE_START",
    "PAGE_SIZE",
    "PageFault",
    "PagingMode",
    "read_virtual",
    "translate",
    "write_virtual",
]
