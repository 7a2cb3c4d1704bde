"""The Linux x86 boot protocol: a bzImage entered at its 64-bit entry point.

Implements Documentation/arch/x86/boot.rst ("The Linux/x86 Boot Protocol"): the setup
header at 0x1F1 is copied into a zeroed struct boot_params (the "zero page", laid out in
Documentation/arch/x86/zero-page.rst and arch/x86/include/uapi/asm/bootparam.h), the
protected-mode kernel is loaded and entered as the "64-bit Boot Protocol" section says.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenopus.arch.x86 import (
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    PTE_P,
    PTE_PS,
    PTE_RW,
    RFLAGS_RESERVED,
)
from xenopus.boot.e820 import E820Entry, build_e820
from xenopus.boot.layout import (
    HIGH_MEMORY,
    PAGE_SIZE,
    PD_ADDR,
    PD_COUNT,
    PDPT_ADDR,
    PML4_ADDR,
    ZERO_PAGE_ADDR,
    BootImageError,
    BootInfo,
    align_up,
    load_ramdisk,
    open_file,
    read_into,
    span,
    write_cmdline,
    write_gdt,
)
from xenopus.memory.guest import GuestMemory
from xenopus.vm.cpu import (
    CpuState,
    flat_code64,
    flat_data,
    task_segment,
)

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path

HDRS_MAGIC = b"HdrS"  # 0x53726448 at 0x202
BOOT_FLAG = 0xAA55  # at 0x1FE
MIN_VERSION = 0x0206  # cmdline_size appears in 2.06
SETUP_HEADER_OFFSET = 0x1F1
SETUP_HEADER_LIMIT = 0x290  # where boot_params continues with edd_mbr_sig_buffer

# loadflags (0x211)
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
# xloadflags (0x236, protocol 2.12+)
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02

TYPE_OF_LOADER_UNDEFINED = 0xFF  # "Otherwise, enter 0xFF here"
VID_MODE_NORMAL = 0xFFFF  # "normal" (see "Special Command Line Options")
# boot.rst "Sample Boot Configuration": heap ends at 0xE000 in the real-mode segment.
HEAP_END_PTR = 0xE000 - 0x200
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF  # before protocol 2.03
ENTRY_64_OFFSET = 0x200  # "the start address of loaded 64-bit kernel plus 0x200"
E820_MAX_ENTRIES_ZEROPAGE = 128

BOOT_CS = 0x10  # __BOOT_CS
BOOT_DS = 0x18  # __BOOT_DS
BOOT_TSS = 0x20


class SetupHeader(ctypes.LittleEndianStructure):
    """struct setup_header, at 0x1F1 of the image and of boot_params (boot.rst)."""

    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),  # 0x1F1
        ("root_flags", ctypes.c_uint16),  # 0x1F2
        ("syssize", ctypes.c_uint32),  # 0x1F4
        ("ram_size", ctypes.c_uint16),  # 0x1F8
        ("vid_mode", ctypes.c_uint16),  # 0x1FA
        ("root_dev", ctypes.c_uint16),  # 0x1FC
        ("boot_flag", ctypes.c_uint16),  # 0x1FE
        ("jump", ctypes.c_uint16),  # 0x200
        ("header", ctypes.c_uint32),  # 0x202
        ("version", ctypes.c_uint16),  # 0x206
        ("realmode_swtch", ctypes.c_uint32),  # 0x208
        ("start_sys_seg", ctypes.c_uint16),  # 0x20C
        ("kernel_version", ctypes.c_uint16),  # 0x20E
        ("type_of_loader", ctypes.c_uint8),  # 0x210
        ("loadflags", ctypes.c_uint8),  # 0x211
        ("setup_move_size", ctypes.c_uint16),  # 0x212
        ("code32_start", ctypes.c_uint32),  # 0x214
        ("ramdisk_image", ctypes.c_uint32),  # 0x218
        ("ramdisk_size", ctypes.c_uint32),  # 0x21C
        ("bootsect_kludge", ctypes.c_uint32),  # 0x220
        ("heap_end_ptr", ctypes.c_uint16),  # 0x224
        ("ext_loader_ver", ctypes.c_uint8),  # 0x226
        ("ext_loader_type", ctypes.c_uint8),  # 0x227
        ("cmd_line_ptr", ctypes.c_uint32),  # 0x228
        ("initrd_addr_max", ctypes.c_uint32),  # 0x22C
        ("kernel_alignment", ctypes.c_uint32),  # 0x230
        ("relocatable_kernel", ctypes.c_uint8),  # 0x234
        ("min_alignment", ctypes.c_uint8),  # 0x235
        ("xloadflags", ctypes.c_uint16),  # 0x236
        ("cmdline_size", ctypes.c_uint32),  # 0x238
        ("hardware_subarch", ctypes.c_uint32),  # 0x23C
        ("hardware_subarch_data", ctypes.c_uint64),  # 0x240
        ("payload_offset", ctypes.c_uint32),  # 0x248
        ("payload_length", ctypes.c_uint32),  # 0x24C
        ("setup_data", ctypes.c_uint64),  # 0x250
        ("pref_address", ctypes.c_uint64),  # 0x258
        ("init_size", ctypes.c_uint32),  # 0x260
        ("handover_offset", ctypes.c_uint32),  # 0x264
        ("kernel_info_offset", ctypes.c_uint32),  # 0x268
    ]


class BootE820Entry(ctypes.LittleEndianStructure):
    """struct boot_e820_entry: 20 bytes, packed."""

    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


class BootParams(ctypes.LittleEndianStructure):
    """struct boot_params, the 4096-byte zero page (zero-page.rst)."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),  # 0x000
        ("apm_bios_info", ctypes.c_uint8 * 0x14),  # 0x040
        ("_pad2", ctypes.c_uint8 * 4),  # 0x054
        ("tboot_addr", ctypes.c_uint64),  # 0x058
        ("ist_info", ctypes.c_uint8 * 0x10),  # 0x060
        ("acpi_rsdp_addr", ctypes.c_uint64),  # 0x070
        ("_pad3", ctypes.c_uint8 * 8),  # 0x078
        ("hd0_info", ctypes.c_uint8 * 0x10),  # 0x080
        ("hd1_info", ctypes.c_uint8 * 0x10),  # 0x090
        ("sys_desc_table", ctypes.c_uint8 * 0x10),  # 0x0A0
        ("olpc_ofw_header", ctypes.c_uint8 * 0x10),  # 0x0B0
        ("ext_ramdisk_image", ctypes.c_uint32),  # 0x0C0
        ("ext_ramdisk_size", ctypes.c_uint32),  # 0x0C4
        ("ext_cmd_line_ptr", ctypes.c_uint32),  # 0x0C8
        ("_pad4", ctypes.c_uint8 * (0x13C - 0xCC)),  # 0x0CC
        ("cc_blob_address", ctypes.c_uint32),  # 0x13C
        ("edid_info", ctypes.c_uint8 * 0x80),  # 0x140
        ("efi_info", ctypes.c_uint8 * 0x20),  # 0x1C0
        ("alt_mem_k", ctypes.c_uint32),  # 0x1E0
        ("scratch", ctypes.c_uint32),  # 0x1E4
        ("e820_entries", ctypes.c_uint8),  # 0x1E8
        ("eddbuf_entries", ctypes.c_uint8),  # 0x1E9
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),  # 0x1EA
        ("kbd_status", ctypes.c_uint8),  # 0x1EB
        ("secure_boot", ctypes.c_uint8),  # 0x1EC
        ("_pad5", ctypes.c_uint8 * 2),  # 0x1ED
        ("sentinel", ctypes.c_uint8),  # 0x1EF
        ("_pad6", ctypes.c_uint8),  # 0x1F0
        ("hdr", SetupHeader),  # 0x1F1
        ("_pad7", ctypes.c_uint8 * (SETUP_HEADER_LIMIT - 0x26C)),  # 0x26C
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * 16),  # 0x290
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2D0
        ("_pad8", ctypes.c_uint8 * 48),  # 0xCD0
        ("eddbuf", ctypes.c_uint8 * 0x1EC),  # 0xD00
        ("_pad9", ctypes.c_uint8 * 276),  # 0xEEC
    ]


assert ctypes.sizeof(SetupHeader) == 0x26C - 0x1F1
assert ctypes.sizeof(BootParams) == 4096


@dataclass
class BzImage:
    """A parsed bzImage: its setup header and where the protected-mode kernel lies."""

    path: str
    header: bytes  # the setup header bytes, from 0x1F1 to 0x202 + byte at 0x201
    hdr: SetupHeader
    setup_sects: int
    kernel_offset: int  # of the protected-mode kernel in the file
    kernel_size: int

    @property
    def version(self) -> int:
        return self.hdr.version


def parse_bzimage(head: bytes, path: str, file_size: int) -> BzImage:
    """Check the setup header in the first bytes of the file (boot.rst "The Real-Mode Kernel Header")."""
    if len(head) < 0x202 + 4 + 2:
        raise BootImageError(path, f"truncated bzImage: {file_size} bytes, no setup header")
    (boot_flag,) = struct.unpack_from("<H", head, 0x1FE)
    if head[0x202:0x206] != HDRS_MAGIC:
        raise BootImageError(path, 'not a bzImage: no "HdrS" signature at 0x202')
    if boot_flag != BOOT_FLAG:
        raise BootImageError(
            path, f"corrupt bzImage: boot_flag is {boot_flag:#06x}, expected 0xaa55"
        )
    (version,) = struct.unpack_from("<H", head, 0x206)
    if version < MIN_VERSION:
        raise BootImageError(
            path,
            f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old (need 2.06 or later)",
        )
    end = 0x202 + head[0x201]  # boot.rst "32-bit Boot Protocol": header end
    if end > SETUP_HEADER_LIMIT:
        raise BootImageError(
            path, f"corrupt bzImage: setup header claims to end at {end:#x}, past 0x290"
        )
    if end > len(head):
        raise BootImageError(path, "truncated bzImage: setup header cut short")
    header = head[SETUP_HEADER_OFFSET:end]
    padded = header.ljust(ctypes.sizeof(SetupHeader), b"\0")[: ctypes.sizeof(SetupHeader)]
    hdr = SetupHeader.from_buffer_copy(padded)
    # xloadflags only exists from 2.12; older kernels have no 64-bit entry at 0x200.
    if version < 0x020C or not hdr.xloadflags & XLF_KERNEL_64:
        raise BootImageError(path, "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)")
    if not hdr.loadflags & LOADED_HIGH:
        raise BootImageError(path, "zImage (LOADED_HIGH clear) is not supported, only bzImage")
    setup_sects = hdr.setup_sects or 4  # "If this field is 0, the real value is 4"
    offset = (setup_sects + 1) * 512
    if offset >= file_size:
        raise BootImageError(
            path, f"truncated bzImage: no protected-mode kernel after {setup_sects} setup sectors"
        )
    return BzImage(path, header, hdr, setup_sects, offset, file_size - offset)


def load_address(image: BzImage) -> int:
    """boot.rst: pref_address (2.10+) aligned to kernel_alignment if relocatable, else 1 MiB."""
    hdr = image.hdr
    if not hdr.relocatable_kernel:
        return HIGH_MEMORY
    base = hdr.pref_address if image.version >= 0x020A and hdr.pref_address else HIGH_MEMORY
    return align_up(max(base, HIGH_MEMORY), hdr.kernel_alignment or 1)


def write_identity_map(memory: GuestMemory) -> int:
    """Map the first 4 GiB 1:1 with 2 MiB pages (SDM 3A §4.5); returns CR3."""
    memory.fill(PML4_ADDR, PAGE_SIZE)
    memory.write_u64(PML4_ADDR, PDPT_ADDR | PTE_P | PTE_RW)
    memory.fill(PDPT_ADDR, PAGE_SIZE)
    for i in range(PD_COUNT):
        pd = PD_ADDR + i * PAGE_SIZE
        memory.write_u64(PDPT_ADDR + 8 * i, pd | PTE_P | PTE_RW)
        entries = [(i << 30) | (j << 21) | PTE_P | PTE_RW | PTE_PS for j in range(512)]
        memory.write(pd, struct.pack("<512Q", *entries))
    return PML4_ADDR


def entry_state(entry: int, memory: GuestMemory) -> CpuState:
    """boot.rst "64-bit Boot Protocol": long mode, paging on, __BOOT_CS/__BOOT_DS, rsi."""
    code, data, tss = flat_code64(BOOT_CS), flat_data(BOOT_DS), task_segment(BOOT_TSS)
    # A long-mode TSS descriptor is 16 bytes; the upper half (base 63:32) is zero.
    gdt_base, gdt_limit = write_gdt(
        memory, [0, 0, code.descriptor(), data.descriptor(), tss.descriptor(), 0]
    )
    return CpuState(
        rip=entry,
        rflags=RFLAGS_RESERVED,  # interrupts disabled
        gprs={"rsi": ZERO_PAGE_ADDR},
        cr0=CR0_PE | CR0_PG | CR0_ET,
        cr3=write_identity_map(memory),
        cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA,
        code=code,
        data=data,
        tss=tss,
        gdt_base=gdt_base,
        gdt_limit=gdt_limit,
    )


def build_zero_page(
    image: BzImage,
    *,
    kernel_addr: int,
    cmdline_paddr: int,
    ramdisk: tuple[int, int] | None,
    e820: Sequence[E820Entry],
    rsdp_paddr: int,
) -> bytes:
    page = bytearray(ctypes.sizeof(BootParams))
    page[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + len(image.header)] = image.header
    bp = BootParams.from_buffer(page)
    hdr = bp.hdr
    hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED
    hdr.vid_mode = VID_MODE_NORMAL
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP
    hdr.heap_end_ptr = HEAP_END_PTR
    hdr.code32_start = kernel_addr  # "must set code32_start ... to point to the loaded code"
    hdr.cmd_line_ptr = cmdline_paddr & 0xFFFFFFFF
    bp.ext_cmd_line_ptr = cmdline_paddr >> 32
    if ramdisk:
        size = ramdisk[1] - ramdisk[0]
        hdr.ramdisk_image = ramdisk[0] & 0xFFFFFFFF
        hdr.ramdisk_size = size & 0xFFFFFFFF
        bp.ext_ramdisk_image = ramdisk[0] >> 32
        bp.ext_ramdisk_size = size >> 32
    bp.acpi_rsdp_addr = rsdp_paddr
    for i, e in enumerate(e820):
        bp.e820_table[i] = BootE820Entry(e.addr, e.size, e.type)
    bp.e820_entries = len(e820)
    return bytes(page)


def load_bzimage(
    memory: GuestMemory,
    kernel: str | Path,
    *,
    ramdisk: str | Path | None = None,
    cmdline: str = "",
    rsdp_paddr: int = 0,
    extra_e820: Sequence[E820Entry] = (),
    legacy_hole: bool = True,
) -> BootInfo:
    path = str(kernel)
    f, file_size = open_file(kernel, "kernel")
    with f:
        image = parse_bzimage(f.read(0x400), path, file_size)
        hdr = image.hdr
        addr = load_address(image)
        init_size = hdr.init_size if image.version >= 0x020A else 0
        footprint = align_up(max(init_size, image.kernel_size), PAGE_SIZE)
        kernel_range = (addr, addr + footprint)
        if kernel_range[1] > memory.low_ram_end:
            raise BootImageError(
                path,
                f"kernel too big for guest memory: needs {span(*kernel_range)}"
                f" (init_size {init_size:#x}), RAM below 4 GiB ends at {memory.low_ram_end:#x}",
            )
        e820 = build_e820(memory, tuple(extra_e820), legacy_hole=legacy_hole).entries
        if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
            raise BootImageError(path, f"memory map has {len(e820)} entries, the zero page 128")
        cmdline_paddr = write_cmdline(memory, path, cmdline, hdr.cmdline_size)
        got = read_into(f, memory, addr, image.kernel_offset, image.kernel_size)
        if got != image.kernel_size:
            raise BootImageError(
                path, f"truncated bzImage: read {got} of {image.kernel_size} bytes"
            )
    ramdisk_range = None
    if ramdisk is not None:
        addr_max = hdr.initrd_addr_max or DEFAULT_INITRD_ADDR_MAX
        ramdisk_range = load_ramdisk(memory, ramdisk, addr_max + 1, kernel_range)
    memory.write(
        ZERO_PAGE_ADDR,
        build_zero_page(
            image,
            kernel_addr=addr,
            cmdline_paddr=cmdline_paddr,
            ramdisk=ramdisk_range,
            e820=e820,
            rsdp_paddr=rsdp_paddr,
        ),
    )
    entry = addr + ENTRY_64_OFFSET
    return BootInfo(
        protocol="linux",
        entry=entry,
        cpu=entry_state(entry, memory),
        kernel_range=kernel_range,
        ramdisk_range=ramdisk_range,
        cmdline=cmdline,
        e820=e820,
        kernel_path=path,
        ramdisk_path=str(ramdisk) if ramdisk is not None else None,
        boot_params_addr=ZERO_PAGE_ADDR,
        details={
            "guest_os": "linux",  # only Linux speaks this boot protocol
            "hypercall_page_note": False,
            "version": f"{image.version >> 8}.{image.version & 0xFF:02d}",
            "setup_sects": image.setup_sects,
            "init_size": init_size,
        },
    )
