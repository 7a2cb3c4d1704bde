"""Boot loaders: PVH (ELF) and the Linux x86 boot protocol (bzImage)."""

from xenopus.boot.e820 import E820Entry, E820Map, build_e820
from xenopus.boot.layout import BootImageError, BootInfo
from xenopus.boot.loader import load_kernel

__all__ = ["BootImageError", "BootInfo", "E820Entry", "E820Map", "build_e820", "load_kernel"]
