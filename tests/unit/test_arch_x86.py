"""xenopus.arch.x86 against the numbers printed in the manuals (Intel SDM, AMD APM)."""

from __future__ import annotations

from xenopus.arch import x86


def test_control_register_bits() -> None:
    # SDM vol. 3A §2.5, Figure 2-7: PE bit 0, ET bit 4, WP bit 16, PG bit 31;
    # CR4.PSE bit 4, PAE bit 5, LA57 bit 12, SMEP bit 20.
    assert (x86.CR0_PE, x86.CR0_ET, x86.CR0_WP, x86.CR0_PG) == (0x1, 0x10, 0x1_0000, 0x8000_0000)
    assert (x86.CR4_PSE, x86.CR4_PAE, x86.CR4_LA57, x86.CR4_SMEP) == (0x10, 0x20, 0x1000, 0x10_0000)


def test_efer_and_rflags_bits() -> None:
    # SDM vol. 3A §2.2.1, Table 2-1: LME bit 8, LMA bit 10, NXE bit 11.
    assert (x86.EFER_LME, x86.EFER_LMA, x86.EFER_NXE) == (0x100, 0x400, 0x800)
    # SDM vol. 1 §3.4.3, Figure 3-8: bit 1 reserved, set: RFLAGS after reset is 0x2.
    assert x86.RFLAGS_RESERVED == 0x2


def test_descriptor_types_and_paging_bits() -> None:
    # SDM vol. 3A Table 3-1 (code/data) and Table 3-2 (system: 1011b 64-bit TSS busy).
    assert (x86.SEG_TYPE_DATA_RWA, x86.SEG_TYPE_CODE_XRA, x86.SEG_TYPE_TSS_BUSY) == (3, 11, 11)
    # SDM vol. 3A Table 4-19 (PTE) and Figure 4-12 (#PF error code).
    assert (x86.PTE_P, x86.PTE_RW, x86.PTE_US, x86.PTE_PS, x86.PTE_XD) == (1, 2, 4, 0x80, 1 << 63)
    assert (x86.PF_P, x86.PF_W, x86.PF_U, x86.PF_RSVD, x86.PF_I) == (1, 2, 4, 8, 16)
    # SDM vol. 3A Table 6-1.
    assert (x86.GP_VECTOR, x86.PF_VECTOR) == (13, 14)


def test_msi_address() -> None:
    # SDM vol. 3A §10.11.1, Figure 10-24: 0FEEH in bits 31:20, the destination ID in 19:12.
    assert x86.MSI_ADDRESS_BASE == 0xFEE << 20
    assert x86.MSI_ADDRESS_BASE | 3 << x86.MSI_ADDRESS_DEST_SHIFT == 0xFEE03000
