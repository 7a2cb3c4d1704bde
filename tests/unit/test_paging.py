"""GVA -> GPA walks against page tables built by hand from the Intel SDM vol. 3A chapter 4.

Every constant below is written out from the SDM rather than imported, so a wrong bit in
paging.py cannot also make its test agree.
"""

from collections.abc import Iterator

import pytest

from xenopus.memory import GiB, GuestMemory, MiB, PageFault, PagingMode, read_virtual, translate
from xenopus.memory import write_virtual as write_v
from xenopus.memory.paging import NonCanonicalAddress, paging_mode

# Paging-structure entry bits (SDM vol. 3A Tables 4-4 .. 4-20).
P, RW, US, PWT, PCD, A, D, PS = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80
XD = 1 << 63
# Control registers (SDM vol. 3A §2.5) and IA32_EFER (§2.2.1, Table 2-1 "IA32_EFER").
CR0_PE, CR0_WP, CR0_PG = 0x1, 0x1_0000, 0x8000_0000
CR4_PSE, CR4_PAE, CR4_LA57, CR4_SMEP = 0x10, 0x20, 0x1000, 0x10_0000
EFER_LME, EFER_LMA, EFER_NXE = 0x100, 0x400, 0x800
# #PF error code (SDM vol. 3A §4.7, Figure 4-12).
E_P, E_W, E_U, E_RSVD, E_I = 0x1, 0x2, 0x4, 0x8, 0x10

FOUR_GIB = 0x1_0000_0000

PG = CR0_PE | CR0_PG
LONG = EFER_LME | EFER_LMA


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    # 3 GiB + 16 MiB of sparse memfd so there is RAM at 4 GiB for the PSE-36 page.
    with GuestMemory.create(3 * GiB + 16 * MiB) as m:
        yield m


def put(mem: GuestMemory, table: int, index: int, value: int, size: int = 8) -> None:
    mem.write_int(table + index * size, size, value)


def fault(fn, *args, **kw) -> PageFault:  # type: ignore[no-untyped-def]
    with pytest.raises(PageFault) as info:
        fn(*args, **kw)
    return info.value


# --- mode selection (SDM vol. 3A §4.1.1, Table 4-1) ----------------------------------------


@pytest.mark.parametrize(
    ("cr0", "cr4", "efer", "mode"),
    [
        (0, 0, 0, PagingMode.NONE),
        (CR0_PE, CR4_PAE, 0, PagingMode.NONE),
        (PG, 0, 0, PagingMode.BITS32),
        (PG, CR4_PSE, EFER_NXE, PagingMode.BITS32),
        (PG, CR4_PAE, 0, PagingMode.PAE),
        (PG, CR4_PAE, EFER_LME, PagingMode.PAE),  # LME without LMA: not yet in long mode
        (PG, CR4_PAE, LONG, PagingMode.LEVEL4),
        (PG, CR4_PAE | CR4_LA57, LONG, PagingMode.LEVEL5),
        (PG, CR4_PAE | CR4_LA57, 0, PagingMode.PAE),  # LA57 only matters in IA-32e mode
    ],
)
def test_paging_mode(cr0: int, cr4: int, efer: int, mode: PagingMode) -> None:
    assert paging_mode(cr0, cr4, efer) is mode


def test_paging_mode_refuses_lma_without_pae() -> None:
    with pytest.raises(ValueError):
        paging_mode(PG, 0, LONG)


# --- paging disabled (§4.1.2) ------------------------------------------------------------


def test_paging_off_is_identity_truncated_to_32_bits(mem: GuestMemory) -> None:
    regs = dict(cr0=CR0_PE, cr3=0xDEAD_B000, cr4=CR4_PAE, efer=0)
    assert translate(mem, 0x1234_5678, **regs) == 0x1234_5678
    assert translate(mem, 0xAB_1234_5678, **regs) == 0x1234_5678
    assert translate(mem, 0x100, cr0=0, cr3=0, cr4=0, efer=0) == 0x100


# --- 32-bit paging (§4.3) ------------------------------------------------------------------

PD32 = 0x10000
PT32 = 0x11000


@pytest.fixture
def tables32(mem: GuestMemory) -> dict[str, int]:
    # GVA 0x0040_1000: PDE index 0x401000>>22 = 1, PTE index (0x401000>>12)&0x3FF = 1.
    put(mem, PD32, 1, PT32 | P | RW | US, 4)  # Table 4-5
    put(mem, PT32, 1, 0x0012_3000 | P | RW | US, 4)  # Table 4-6
    put(mem, PT32, 2, 0x0012_4000 | P | US, 4)  # 0x0040_2000: read-only, user
    put(mem, PT32, 3, 0x0012_5000 | P | RW, 4)  # 0x0040_3000: supervisor only
    # GVA 0x8000_0000: PDE index 512 -> a 4 MiB page at 0x00C0_0000 (Table 4-4).
    put(mem, PD32, 512, 0x00C0_0000 | P | RW | PS, 4)
    # GVA 0xC000_0000: PDE index 768 -> PSE-36: PDE[20:13] = PA[39:32] = 1, PDE[31:22] = 1,
    # so PA = 0x1_0040_0000 (Table 4-4).
    put(mem, PD32, 768, 0x0040_0000 | (1 << 13) | P | RW | PS, 4)
    # PWT|PCD in CR3 are cache controls, not address bits (Table 4-3).
    return dict(cr0=PG, cr3=PD32 | PWT | PCD, cr4=CR4_PSE, efer=0)


def test_32bit_4k_page(mem: GuestMemory, tables32: dict[str, int]) -> None:
    assert translate(mem, 0x0040_1234, **tables32) == 0x0012_3234
    assert translate(mem, 0x0040_1FFF, **tables32, write=True, user=True) == 0x0012_3FFF


def test_32bit_4m_page(mem: GuestMemory, tables32: dict[str, int]) -> None:
    assert translate(mem, 0x8012_3456, **tables32) == 0x00D2_3456
    assert translate(mem, 0x803F_FFFF, **tables32) == 0x00FF_FFFF


def test_32bit_pse36_page_above_4gib(mem: GuestMemory, tables32: dict[str, int]) -> None:
    assert translate(mem, 0xC000_0010, **tables32) == 0x1_0040_0010
    mem.write(0x1_0040_0010, b"above 4G")
    assert read_virtual(mem, 0xC000_0010, 8, **tables32) == b"above 4G"


def test_32bit_pse36_bits_above_maxphyaddr_are_reserved(
    mem: GuestMemory, tables32: dict[str, int]
) -> None:
    # MAXPHYADDR 36: PDE bits 16:13 carry PA[35:32]; bit 17 (PA bit 36) is reserved.
    put(mem, PD32, 769, 0x0040_0000 | (1 << 17) | P | PS, 4)
    assert translate(mem, 0xC000_0000, **tables32, maxphyaddr=36) == 0x1_0040_0000
    f = fault(translate, mem, 0xC040_0000, **tables32, maxphyaddr=36)
    assert f.error_code == E_P | E_RSVD
    assert translate(mem, 0xC040_0000, **tables32) == 0x10_0040_0000


def test_32bit_4m_bit21_is_reserved(mem: GuestMemory, tables32: dict[str, int]) -> None:
    put(mem, PD32, 513, 0x0080_0000 | (1 << 21) | P | PS, 4)
    f = fault(translate, mem, 0x8040_0000, **tables32, write=True)
    assert f.error_code == E_P | E_RSVD | E_W
    assert f.level == "PDE"


def test_32bit_ps_is_ignored_without_cr4_pse(mem: GuestMemory, tables32: dict[str, int]) -> None:
    # Table 4-5: with CR4.PSE=0 the PDE at index 512 references a page table at 0x00C0_0000,
    # which is all zeroes, so the PTE is not present.
    regs = {**tables32, "cr4": 0}
    f = fault(translate, mem, 0x8000_0000, **regs)
    assert (f.error_code, f.level) == (0, "PTE")
    put(mem, 0x00C0_0000, 0, 0x0777_7000 | P, 4)
    assert translate(mem, 0x8000_0123, **regs) == 0x0777_7123


def test_32bit_not_present(mem: GuestMemory, tables32: dict[str, int]) -> None:
    f = fault(translate, mem, 0x0080_0000, **tables32)  # PDE index 2: empty
    assert (f.error_code, f.level) == (0, "PDE")
    assert "0x800000" in str(f) and "PDE" in str(f)
    f = fault(translate, mem, 0x0040_4000, **tables32, user=True, write=True)  # PTE index 4
    assert (f.error_code, f.level) == (E_U | E_W, "PTE")


def test_32bit_permissions(mem: GuestMemory, tables32: dict[str, int]) -> None:
    ro, sup = 0x0040_2000, 0x0040_3000
    assert translate(mem, ro, **tables32, user=True) == 0x0012_4000
    assert translate(mem, sup, **tables32) == 0x0012_5000
    assert fault(translate, mem, sup, **tables32, user=True).error_code == E_P | E_U
    # Supervisor write to a read-only page: allowed with CR0.WP=0, #PF with CR0.WP=1 (§4.6.1).
    assert translate(mem, ro, **tables32, write=True) == 0x0012_4000
    wp = {**tables32, "cr0": PG | CR0_WP}
    assert fault(translate, mem, ro, **wp, write=True).error_code == E_P | E_W
    # A user write to a read-only page faults whatever CR0.WP says.
    assert (
        fault(translate, mem, ro, **tables32, write=True, user=True).error_code == E_P | E_W | E_U
    )


def test_32bit_fetch_error_code_has_id_only_with_smep(
    mem: GuestMemory, tables32: dict[str, int]
) -> None:
    # §4.7: I/D is set only if CR4.SMEP=1 or (PAE/4-level and EFER.NXE=1).
    assert fault(translate, mem, 0x0080_0000, **tables32, fetch=True).error_code == 0
    smep = {**tables32, "cr4": CR4_PSE | CR4_SMEP}
    assert fault(translate, mem, 0x0080_0000, **smep, fetch=True).error_code == E_I
    # SMEP: a supervisor fetch from a user page faults (§4.6.1).
    assert fault(translate, mem, 0x0040_1000, **smep, fetch=True).error_code == E_P | E_I
    assert translate(mem, 0x0040_1000, **tables32, fetch=True) == 0x0012_3000


# --- PAE paging (§4.4) ---------------------------------------------------------------------

PDPT = 0x20020  # CR3[31:5]: 32-byte aligned, deliberately not page aligned (Table 4-7)
PD_PAE0 = 0x21000
PD_PAE3 = 0x22000
PT_PAE = 0x23000


@pytest.fixture
def tables_pae(mem: GuestMemory) -> dict[str, int]:
    put(mem, PDPT, 0, PD_PAE0 | P)  # Table 4-8: PDPTE carries no R/W or U/S
    put(mem, PDPT, 3, PD_PAE3 | P)
    # GVA 0x0020_1000: PDPTE 0, PDE index (>>21)&0x1FF = 1, PTE index 1 (Tables 4-10, 4-11).
    put(mem, PD_PAE0, 1, PT_PAE | P | RW | US)
    put(mem, PT_PAE, 1, 0x0034_5000 | P | RW | US)
    put(mem, PT_PAE, 2, 0x0034_6000 | P | RW | US | XD)  # 0x0020_2000: no-execute
    # GVA 0xC040_0000: PDPTE 3, PDE 2 -> a 2 MiB page at 0x0060_0000 (Table 4-9).
    put(mem, PD_PAE3, 2, 0x0060_0000 | P | RW | PS)
    return dict(cr0=PG, cr3=PDPT, cr4=CR4_PAE, efer=EFER_NXE)


def test_pae_4k_page(mem: GuestMemory, tables_pae: dict[str, int]) -> None:
    assert translate(mem, 0x0020_1ABC, **tables_pae) == 0x0034_5ABC


def test_pae_2m_page(mem: GuestMemory, tables_pae: dict[str, int]) -> None:
    assert translate(mem, 0xC04A_BCDE, **tables_pae) == 0x006A_BCDE
    f = fault(translate, mem, 0xC04A_BCDE, **tables_pae, user=True)
    assert f.error_code == E_P | E_U


def test_pae_nx(mem: GuestMemory, tables_pae: dict[str, int]) -> None:
    assert translate(mem, 0x0020_2000, **tables_pae) == 0x0034_6000
    assert fault(translate, mem, 0x0020_2000, **tables_pae, fetch=True).error_code == E_P | E_I
    assert translate(mem, 0x0020_1000, **tables_pae, fetch=True) == 0x0034_5000
    # With EFER.NXE=0, bit 63 is reserved (Table 4-11).
    no_nxe = {**tables_pae, "efer": 0}
    f = fault(translate, mem, 0x0020_2000, **no_nxe)
    assert (f.error_code, f.level) == (E_P | E_RSVD, "PTE")


def test_pae_not_present_pdpte(mem: GuestMemory, tables_pae: dict[str, int]) -> None:
    f = fault(translate, mem, 0x4000_0000, **tables_pae, write=True)
    assert (f.error_code, f.level) == (E_W, "PDPTE")


def test_pae_reserved_bits(mem: GuestMemory, tables_pae: dict[str, int]) -> None:
    put(mem, PDPT, 1, PD_PAE0 | P | RW)  # Table 4-8: bits 2:1 are reserved in a PDPTE
    assert fault(translate, mem, 0x4000_0000, **tables_pae).error_code == E_P | E_RSVD
    put(mem, PDPT, 1, PD_PAE0 | P | 1 << 6)  # and bits 8:5 ...
    assert fault(translate, mem, 0x4020_1000, **tables_pae).error_code == E_P | E_RSVD
    # ... but for bit 5, Accessed, which a CPU that walks the PDPTEs from memory (AMD nested
    # paging) sets: the xen32 PAE guest on the nested host's SVM had it in every PDPTE.
    put(mem, PDPT, 1, PD_PAE0 | P | 1 << 5)
    assert translate(mem, 0x4020_1ABC, **tables_pae) == 0x0034_5ABC
    put(mem, PD_PAE3, 3, 0x0080_0000 | (1 << 13) | P | PS)  # Table 4-9: bits 20:13 reserved
    assert fault(translate, mem, 0xC060_0000, **tables_pae).error_code == E_P | E_RSVD
    put(mem, PT_PAE, 5, (1 << 52) | 0x5000 | P)  # Table 4-11: bits 62:M reserved, even M=52
    assert fault(translate, mem, 0x0020_5000, **tables_pae).error_code == E_P | E_RSVD


# --- 4-level paging (§4.5) -----------------------------------------------------------------

PML4 = 0x30000
PDPT_K = 0x31000  # for PML4 index 256 (the kernel half)
PD_K = 0x32000
PT_K = 0x33000
PDPT_1 = 0x34000  # for PML4 index 1
KBASE = 0xFFFF_8000_0000_0000


@pytest.fixture
def tables64(mem: GuestMemory) -> dict[str, int]:
    # GVA KBASE + 0x20_1000: PML4 index (>>39)&0x1FF = 256, PDPT 0, PD 1, PT 1.
    put(mem, PML4, 256, PDPT_K | P | RW | US)  # Table 4-15
    put(mem, PDPT_K, 0, PD_K | P | RW | US)  # Table 4-17
    put(mem, PD_K, 1, PT_K | P | RW | US)  # Table 4-19
    put(mem, PT_K, 1, 0x0030_0000 | P | RW | US)  # Table 4-20
    put(mem, PT_K, 2, 0x0010_0000 | P | RW | US)  # KBASE + 0x20_2000: physically *below*
    put(mem, PT_K, 3, 0x0050_0000 | P | US)  # KBASE + 0x20_3000: read-only
    # KBASE + 0x40_0000: PD index 2 -> a 2 MiB page at 0x0080_0000 (Table 4-18).
    put(mem, PD_K, 2, 0x0080_0000 | P | RW | PS)
    # GVA 0x80_4000_0000: PML4 index 1, PDPT index 1 -> a 1 GiB page at 1 GiB (Table 4-16).
    put(mem, PML4, 1, PDPT_1 | P | RW | US)
    put(mem, PDPT_1, 1, 0x4000_0000 | P | RW | US | PS)
    # CR3[11:0] is a PCID when CR4.PCIDE=1, and bit 63 is the no-flush hint (Table 4-13).
    return dict(cr0=PG | CR0_WP, cr3=PML4 | 0x5 | (1 << 63), cr4=CR4_PAE, efer=LONG | EFER_NXE)


def test_4level_4k_page(mem: GuestMemory, tables64: dict[str, int]) -> None:
    assert translate(mem, KBASE + 0x20_1567, **tables64) == 0x0030_0567


def test_4level_2m_page(mem: GuestMemory, tables64: dict[str, int]) -> None:
    assert translate(mem, KBASE + 0x4A_BCDE, **tables64) == 0x008A_BCDE


def test_4level_1g_page(mem: GuestMemory, tables64: dict[str, int]) -> None:
    assert translate(mem, 0x80_4123_4567, **tables64) == 0x4123_4567
    assert translate(mem, 0x80_7FFF_FFFF, **tables64, user=True) == 0x7FFF_FFFF


def test_4level_large_page_reserved_bits(mem: GuestMemory, tables64: dict[str, int]) -> None:
    put(mem, PDPT_1, 2, 0x8000_0000 | (1 << 29) | P | PS)  # Table 4-16: bits 29:13 reserved
    f = fault(translate, mem, 0x80_8000_0000, **tables64)
    assert (f.error_code, f.level) == (E_P | E_RSVD, "PDPTE")
    put(mem, PD_K, 3, 0x00A0_0000 | (1 << 20) | P | PS)  # Table 4-18: bits 20:13 reserved
    assert fault(translate, mem, KBASE + 0x60_0000, **tables64).error_code == E_P | E_RSVD
    put(mem, PML4, 2, PDPT_1 | P | PS)  # Table 4-15: PS is reserved in a PML4E
    f = fault(translate, mem, 0x100_0000_0000, **tables64)
    assert (f.error_code, f.level) == (E_P | E_RSVD, "PML4E")


def test_4level_maxphyaddr_reserved_bits(mem: GuestMemory, tables64: dict[str, int]) -> None:
    put(mem, PT_K, 4, (1 << 40) | 0x7000 | P)  # bits 51:M are reserved (Table 4-20)
    assert translate(mem, KBASE + 0x20_4000, **tables64) == (1 << 40) | 0x7000
    f = fault(translate, mem, KBASE + 0x20_4000, **tables64, maxphyaddr=40)
    assert f.error_code == E_P | E_RSVD


@pytest.mark.parametrize("gva", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF, 1 << 63])
def test_4level_non_canonical(mem: GuestMemory, tables64: dict[str, int], gva: int) -> None:
    f = fault(translate, mem, gva, **tables64)
    assert isinstance(f, NonCanonicalAddress)
    assert f.vector == 13  # #GP, not #PF (SDM vol. 3A §4.5.1 / §6.15)
    assert hex(gva) in str(f)


def test_4level_rights_combine_over_levels(mem: GuestMemory, tables64: dict[str, int]) -> None:
    va = KBASE + 0x20_1000
    # U/S=0 at the PML4E makes the whole 512 GiB supervisor-only, whatever the PTE says.
    put(mem, PML4, 256, PDPT_K | P | RW)
    f = fault(translate, mem, va, **tables64, user=True)
    assert (f.error_code, f.level) == (E_P | E_U, "PTE")
    assert "user access to a supervisor page" in str(f)
    # R/W=0 at the PDPTE makes it read-only for supervisor writes with CR0.WP=1 only.
    put(mem, PDPT_K, 0, PD_K | P | US)
    assert fault(translate, mem, va, **tables64, write=True).error_code == E_P | E_W
    assert translate(mem, va, **{**tables64, "cr0": PG}, write=True) == 0x0030_0000
    # XD at the PDE forbids fetches from the pages below it.
    put(mem, PD_K, 1, PT_K | P | RW | US | XD)
    assert fault(translate, mem, va, **tables64, fetch=True).error_code == E_P | E_I


def test_4level_user_faults(mem: GuestMemory, tables64: dict[str, int]) -> None:
    ro = KBASE + 0x20_3000
    assert translate(mem, ro, **tables64, user=True) == 0x0050_0000
    f = fault(translate, mem, ro, **tables64, user=True, write=True)
    assert f.error_code == E_P | E_W | E_U
    f = fault(translate, mem, KBASE + 0x40_0000, **tables64, user=True, fetch=True)
    assert f.error_code == E_P | E_U | E_I
    f = fault(translate, mem, KBASE + 0x20_5000, **tables64, user=True, fetch=True)
    assert (f.error_code, f.level) == (E_U | E_I, "PTE")


def test_4level_not_present_levels(mem: GuestMemory, tables64: dict[str, int]) -> None:
    assert fault(translate, mem, 0x0, **tables64).level == "PML4E"
    assert fault(translate, mem, KBASE + 0x4000_0000, **tables64).level == "PDPTE"
    assert fault(translate, mem, KBASE + 0x80_0000, **tables64).level == "PDE"
    f = fault(translate, mem, KBASE + 0x20_5000, **tables64, write=True)
    assert (f.error_code, f.level, f.gva) == (E_W, "PTE", KBASE + 0x20_5000)
    assert "0xffff800000205000" in str(f) and "PTE" in str(f)


def test_table_outside_ram_is_a_page_fault(mem: GuestMemory, tables64: dict[str, int]) -> None:
    put(mem, PD_K, 5, 0xD000_0000 | P | RW)  # a page table in the MMIO hole
    f = fault(translate, mem, KBASE + 0xA0_0000, **tables64)
    assert f.level == "PTE"
    assert "outside guest RAM" in str(f)
    put(mem, PML4, 3, (8 << 30) | P)  # far beyond the end of RAM
    assert fault(translate, mem, 0x180_0000_0000, **tables64).level == "PDPTE"


def test_cr3_outside_ram(mem: GuestMemory) -> None:
    f = fault(translate, mem, 0x1000, cr0=PG, cr3=0xE000_0000, cr4=CR4_PAE, efer=LONG)
    assert f.level == "PML4E"


# --- 5-level paging (§4.5, CR4.LA57) -------------------------------------------------------

PML5 = 0x40000


@pytest.fixture
def tables57(mem: GuestMemory, tables64: dict[str, int]) -> dict[str, int]:
    # GVA 0x0001_0000_0020_1000: PML5 index (>>48)&0x1FF = 1, then PML4 index 0, PDPT 0,
    # PD 1, PT 1. PML5E[1] -> the 4-level PML4, whose entry 0 -> the kernel-half PDPT.
    put(mem, PML5, 1, PML4 | P | RW | US)  # Table 4-14
    put(mem, PML4, 0, PDPT_K | P | RW | US)
    return {**tables64, "cr3": PML5, "cr4": CR4_PAE | CR4_LA57}


def test_5level_4k_page(mem: GuestMemory, tables57: dict[str, int]) -> None:
    va = 0x0001_0000_0020_1ABC
    assert translate(mem, va, **tables57) == 0x0030_0ABC
    # The same address is not canonical with 48-bit linear addresses.
    with pytest.raises(NonCanonicalAddress):
        translate(mem, va, **{**tables57, "cr4": CR4_PAE})


def test_5level_canonical_and_reserved(mem: GuestMemory, tables57: dict[str, int]) -> None:
    with pytest.raises(NonCanonicalAddress):
        translate(mem, 1 << 56, **tables57)
    f = fault(translate, mem, 0xFF00_0000_0000_0000, **tables57)  # PML5 index 256: empty
    assert (f.error_code, f.level) == (0, "PML5E")
    put(mem, PML5, 2, PML4 | P | PS)  # Table 4-14: PS is reserved in a PML5E
    f = fault(translate, mem, 0x0002_0000_0000_0000, **tables57)
    assert (f.error_code, f.level) == (E_P | E_RSVD, "PML5E")


# --- read_virtual / write_virtual ----------------------------------------------------------


def test_read_virtual_across_non_contiguous_pages(
    mem: GuestMemory, tables64: dict[str, int]
) -> None:
    # KBASE+0x20_1000 -> 0x30_0000 and KBASE+0x20_2000 -> 0x10_0000: a structure straddling
    # the boundary lives in two physically unrelated places.
    mem.write(0x30_0FFC, b"0123")
    mem.write(0x10_0000, b"456789")
    assert read_virtual(mem, KBASE + 0x20_1FFC, 10, **tables64) == b"0123456789"
    assert read_virtual(mem, KBASE + 0x20_1FFC, 0, **tables64) == b""


def test_write_virtual_across_non_contiguous_pages(
    mem: GuestMemory, tables64: dict[str, int]
) -> None:
    write_v(mem, KBASE + 0x20_1FFE, b"abcdef", **tables64)
    assert mem.read(0x30_0FFE, 2) == b"ab"
    assert mem.read(0x10_0000, 4) == b"cdef"


def test_read_virtual_faults_on_second_page(mem: GuestMemory, tables64: dict[str, int]) -> None:
    # KBASE+0x20_3000 is mapped (read-only), KBASE+0x20_4000 is not.
    f = fault(read_virtual, mem, KBASE + 0x20_3FF0, 0x20, **tables64)
    assert (f.gva, f.level) == (KBASE + 0x20_4000, "PTE")


def test_write_virtual_checks_every_page_first(mem: GuestMemory, tables64: dict[str, int]) -> None:
    # KBASE+0x20_2000 is writable, KBASE+0x20_3000 read-only with CR0.WP=1: nothing is written.
    f = fault(write_v, mem, KBASE + 0x20_2FFC, b"12345678", **tables64)
    assert f.error_code == E_P | E_W
    assert mem.read(0x10_0FFC, 4) == bytes(4)


def test_read_virtual_32bit_wraps_at_4gib(mem: GuestMemory, tables32: dict[str, int]) -> None:
    # Outside IA-32e mode linear addresses wrap at 4 GiB: the byte after 0xFFFF_FFFF is 0.
    put(mem, PD32, 1023, 0x00C0_0000 | P | PS, 4)
    put(mem, PD32, 0, PT32 | P, 4)
    put(mem, PT32, 0, 0x0000_5000 | P, 4)
    mem.write(0x00FF_FFFF, b"A")
    mem.write(0x0000_5000, b"B")
    assert read_virtual(mem, 0xFFFF_FFFF, 2, **tables32) == b"AB"
