"""Boot loaders: PVH (ELF) and the Linux x86 boot protocol (bzImage)."""

from xenopus.boot.e820 import E820Entry, E820Map, build_e820
from xenopus.boot.layout import BootImageError, BootInfo
from xenopus.boot.loader import load_kernel
from xenopus.boot.pvshim import load_pv_shim

__all__ = ["BootImageError", "BootInfo", "E820Entry", "E820Map", "build_e820", "load_kernel",
           "load_pv_shim"]
