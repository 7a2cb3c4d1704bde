"""Guest-virtual (linear) to guest-physical translation for every x86 paging mode.

Follows Intel SDM vol. 3A chapter 4 ("Paging"): §4.1.1 picks the mode from CR0.PG, CR4.PAE,
EFER.LMA and CR4.LA57; §4.3 (32-bit), §4.4 (PAE) and §4.5 (4- and 5-level) give the walks;
§4.6 the access rights; §4.7 the page-fault error code.

What is deliberately left out, because the hypervisor's own reads and writes do not need it:
accessed/dirty flags are not set, protection keys (CR4.PKE/PKS) and SMAP (it depends on
RFLAGS.AC) are not checked, and PAE PDPTEs are read from memory at each walk instead of from
the registers the CPU loads them into at MOV to CR3 (§4.4.1).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from xenopus.arch.x86 import (
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    CR4_PAE,
    CR4_PSE,
    CR4_SMEP,
    EFER_LMA,
    EFER_NXE,
    GP_VECTOR,
    PF_I,
    PF_P,
    PF_RSVD,
    PF_U,
    PF_VECTOR,
    PF_W,
    PTE_A,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    PTE_XD,
)
from xenopus.memory.guest import PAGE_SIZE, GuestMemory, GuestMemoryError

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1


class PagingMode(enum.Enum):
    """The five modes of SDM vol. 3A §4.1.1 (Table 4-1), plus paging disabled."""

    NONE = "none"
    BITS32 = "32-bit"
    PAE = "PAE"
    LEVEL4 = "4-level"
    LEVEL5 = "5-level"


class PageFault(Exception):
    """A translation the CPU would refuse; `vector` and `error_code` are what it would raise."""

    vector = PF_VECTOR

    def __init__(self, gva: int, error_code: int, reason: str = "", level: str = ""):
        self.gva = gva
        self.error_code = error_code
        self.level = level
        self.reason = reason
        super().__init__(
            f"page fault at guest-virtual {gva:#x} (error code {error_code:#x}): {reason}"
        )


class NonCanonicalAddress(PageFault):
    """A 4/5-level address whose upper bits are not a sign extension: #GP(0), not #PF."""

    vector = GP_VECTOR

    def __init__(self, gva: int, bits: int):
        super().__init__(gva, 0, f"address is not canonical for {bits}-bit linear addresses")
        self.args = (
            f"general-protection fault #GP(0): guest-virtual {gva:#x} is not canonical "
            f"for {bits}-bit linear addresses",
        )


def paging_mode(cr0: int, cr4: int, efer: int) -> PagingMode:
    """SDM vol. 3A §4.1.1: the mode follows from CR0.PG, CR4.PAE, EFER.LMA and CR4.LA57."""
    if not cr0 & CR0_PG:
        return PagingMode.NONE
    if not cr4 & CR4_PAE:
        if efer & EFER_LMA:
            raise ValueError("EFER.LMA=1 with CR4.PAE=0 is not a reachable CPU state")
        return PagingMode.BITS32
    if not efer & EFER_LMA:
        return PagingMode.PAE
    return PagingMode.LEVEL5 if cr4 & CR4_LA57 else PagingMode.LEVEL4


def _bits(hi: int, lo: int) -> int:
    """Mask of bits hi:lo inclusive (empty when hi < lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


class _Walk:
    """State shared by the walkers: the access, the rights gathered so far, fault helpers."""

    def __init__(
        self,
        mem: GuestMemory,
        gva: int,
        cr0: int,
        cr4: int,
        efer: int,
        write: bool,
        user: bool,
        fetch: bool,
        pae: bool,
    ):
        self.mem = mem
        self.gva = gva
        self.cr0, self.cr4, self.efer = cr0, cr4, efer
        self.write, self.user, self.fetch = write, user, fetch
        self.nx = pae and bool(efer & EFER_NXE)
        # Rights are the AND (R/W, U/S) or OR (XD) over every level that has them (§4.6.1).
        self.rw = True
        self.us = True
        self.xd = False

    def error_code(self, extra: int) -> int:
        code = extra
        if self.write:
            code |= PF_W
        if self.user:
            code |= PF_U
        # §4.7: I/D is reported only when SMEP is on or NX is in use (PAE paging and EFER.NXE).
        if self.fetch and (self.cr4 & CR4_SMEP or self.nx):
            code |= PF_I
        return code

    def fault(self, extra: int, level: str, reason: str) -> PageFault:
        return PageFault(self.gva, self.error_code(extra), reason, level)

    def read_entry(self, level: str, gpa: int, size: int) -> int:
        try:
            return self.mem.read_int(gpa, size)
        except GuestMemoryError:
            raise self.fault(
                0, level, f"{level} at guest-physical {gpa:#x} is outside guest RAM"
            ) from None

    def check(
        self, level: str, gpa: int, e: int, size: int, reserved: int, rights: bool = True
    ) -> int:
        """Fault if entry `e` is not present or has reserved bits set; gather its rights."""
        if not e & PTE_P:
            raise self.fault(
                0, level, f"{level} at guest-physical {gpa:#x} is not present ({e:#x})"
            )
        if not self.nx:
            reserved |= PTE_XD if size == 8 else 0  # XD is reserved unless EFER.NXE=1 (§4.4, §4.5)
        if e & reserved:
            raise self.fault(
                PF_P | PF_RSVD,
                level,
                f"{level} at guest-physical {gpa:#x} ({e:#x}) has reserved bits {e & reserved:#x} set",
            )
        if rights:
            self.rw &= bool(e & PTE_RW)
            self.us &= bool(e & PTE_US)
        self.xd |= self.nx and bool(e & PTE_XD)
        return e

    def check_rights(self, level: str) -> None:
        """SDM vol. 3A §4.6.1: the access-rights rules for supervisor and user accesses."""
        why = None
        if self.user and not self.us:
            why = "user access to a supervisor page"
        elif self.write and not self.rw and (self.user or self.cr0 & CR0_WP):
            why = "write to a read-only page" + ("" if self.user else " with CR0.WP=1")
        elif self.fetch and self.xd:
            why = "instruction fetch from an execute-disable page"
        elif self.fetch and not self.user and self.us and self.cr4 & CR4_SMEP:
            why = "supervisor instruction fetch from a user page with CR4.SMEP=1"
        if why:
            raise self.fault(PF_P, level, f"{why} (final entry: {level})")


def translate(
    mem: GuestMemory,
    gva: int,
    *,
    cr0: int,
    cr3: int,
    cr4: int,
    efer: int,
    write: bool = False,
    user: bool = False,
    fetch: bool = False,
    maxphyaddr: int = 52,
) -> int:
    """The guest-physical address the CPU would reach for `gva` with these control registers.

    `user` means a CPL-3 access, `fetch` an instruction fetch. `maxphyaddr` is the guest's
    CPUID.80000008H:EAX[7:0]; entry bits above it are reserved (§4.1.4). Raises `PageFault`
    (or its subclass `NonCanonicalAddress`, a #GP) where the CPU would fault.
    """
    if write and fetch:
        raise ValueError("an access cannot be both a write and an instruction fetch")
    if not 12 <= maxphyaddr <= 52:
        raise ValueError(f"MAXPHYADDR {maxphyaddr} is outside 12..52")
    mode = paging_mode(cr0, cr4, efer)
    if mode is PagingMode.NONE:
        # §4.1.2: with CR0.PG=0 the linear address is the physical one; linear addresses are
        # 32 bits wide outside IA-32e mode, which paging must be on to enter.
        return gva & _MASK32
    if mode is PagingMode.BITS32:
        return _walk32(
            _Walk(mem, gva & _MASK32, cr0, cr4, efer, write, user, fetch, False), cr3, maxphyaddr
        )
    if mode is PagingMode.PAE:
        return _walk_pae(
            _Walk(mem, gva & _MASK32, cr0, cr4, efer, write, user, fetch, True), cr3, maxphyaddr
        )
    return _walk_long(
        _Walk(mem, gva & _MASK64, cr0, cr4, efer, write, user, fetch, True),
        cr3,
        maxphyaddr,
        5 if mode is PagingMode.LEVEL5 else 4,
    )


def _walk32(w: _Walk, cr3: int, maxphyaddr: int) -> int:
    """SDM vol. 3A §4.3: two levels of 4-byte entries, 4 MiB pages when CR4.PSE=1."""
    va = w.gva
    pde_addr = (cr3 & 0xFFFFF000) | ((va >> 22) << 2)  # Table 4-3: CR3[31:12]; §4.3 index va[31:22]
    pde = w.read_entry("PDE", pde_addr, 4)
    if pde & PTE_PS and w.cr4 & CR4_PSE:
        # Table 4-4: a 4 MiB page. Bits 20:13 hold PA bits 39:32 (PSE-36), up to MAXPHYADDR
        # (at most 40 with this format); bit 21 and the PSE-36 bits above it are reserved.
        high = max(min(maxphyaddr, 40) - 32, 0)
        w.check("PDE", pde_addr, pde, 4, _bits(21, 13 + high))
        w.check_rights("PDE")
        return (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32) | (va & 0x3FFFFF)
    # Table 4-5: a page table (bit 7 is ignored when CR4.PSE=0). Table 4-6: a 4 KiB PTE.
    w.check("PDE", pde_addr, pde, 4, 0)
    pte_addr = (pde & 0xFFFFF000) | (((va >> 12) & 0x3FF) << 2)
    pte = w.check("PTE", pte_addr, w.read_entry("PTE", pte_addr, 4), 4, 0)
    w.check_rights("PTE")
    return (pte & 0xFFFFF000) | (va & 0xFFF)


def _walk_pae(w: _Walk, cr3: int, maxphyaddr: int) -> int:
    """SDM vol. 3A §4.4: a 4-entry PDPT at CR3[31:5], then 8-byte PDEs and PTEs."""
    va = w.gva
    m = maxphyaddr
    pdpte_addr = (cr3 & 0xFFFFFFE0) | ((va >> 30) << 3)  # Table 4-7: CR3[31:5]
    # Table 4-8: PDPTE bits 2:1, 8:5 and 63:M are reserved; it carries no access rights.
    # Bit 5 excepted: where PDPTEs are walked from memory rather than loaded into registers
    # at MOV to CR3 (AMD nested paging, as QEMU's SVM model does it: target/i386/tcg
    # mmu_translate sets PG_ACCESSED in the PAE PDPTE it walks), the CPU sets it itself,
    # and a guest's own reserved bits were refused at its MOV to CR3 (#GP, §4.4.1).
    pdpte = w.check(
        "PDPTE",
        pdpte_addr,
        w.read_entry("PDPTE", pdpte_addr, 8),
        8,
        _bits(2, 1) | (_bits(8, 5) & ~PTE_A) | _bits(63, m),
        rights=False,
    )
    pde_addr = (pdpte & _bits(m - 1, 12)) | (((va >> 21) & 0x1FF) << 3)
    pde = w.read_entry("PDE", pde_addr, 8)
    if pde & PTE_PS:
        # Table 4-9: a 2 MiB page; bits 20:13 and 62:M are reserved.
        w.check("PDE", pde_addr, pde, 8, _bits(20, 13) | _bits(62, m))
        w.check_rights("PDE")
        return (pde & _bits(m - 1, 21)) | (va & 0x1FFFFF)
    w.check("PDE", pde_addr, pde, 8, _bits(62, m))  # Table 4-10
    pte_addr = (pde & _bits(m - 1, 12)) | (((va >> 12) & 0x1FF) << 3)
    pte = w.check("PTE", pte_addr, w.read_entry("PTE", pte_addr, 8), 8, _bits(62, m))  # Table 4-11
    w.check_rights("PTE")
    return (pte & _bits(m - 1, 12)) | (va & 0xFFF)


_LONG_LEVELS = (("PML5E", 48), ("PML4E", 39), ("PDPTE", 30), ("PDE", 21), ("PTE", 12))


def _walk_long(w: _Walk, cr3: int, maxphyaddr: int, levels: int) -> int:
    """SDM vol. 3A §4.5: 4 or 5 levels of 512 8-byte entries, 1 GiB and 2 MiB pages."""
    va = w.gva
    bits = 57 if levels == 5 else 48
    # §4.5.1 (and §3.3.7.1): bits 63:bits-1 must all equal bit bits-1.
    top = va >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):
        raise NonCanonicalAddress(va, bits)
    m = maxphyaddr
    addr_mask = _bits(m - 1, 12)
    # Tables 4-12/4-13: the top-level table is at CR3[M-1:12]; CR3[11:0] is flags or the PCID
    # and CR3[63] the no-flush hint on MOV, neither part of the address.
    table = cr3 & addr_mask
    rsvd = _bits(51, m)  # Tables 4-14 to 4-20: bits 51:M are reserved in every entry
    for name, shift in _LONG_LEVELS[5 - levels :]:
        addr = table | (((va >> shift) & 0x1FF) << 3)
        e = w.read_entry(name, addr, 8)
        if name in ("PDPTE", "PDE") and e & PTE_PS:
            # Table 4-16 (1 GiB page: bits 29:13 reserved), Table 4-18 (2 MiB: bits 20:13).
            w.check(name, addr, e, 8, rsvd | _bits(shift - 1, 13))
            w.check_rights(name)
            return (e & _bits(m - 1, shift)) | (va & ((1 << shift) - 1))
        # Tables 4-14 and 4-15: PS (bit 7) is reserved in a PML5E and a PML4E; in a PTE it is PAT.
        w.check(name, addr, e, 8, rsvd | (PTE_PS if shift >= 39 else 0))
        table = e & addr_mask
    w.check_rights("PTE")
    return table | (va & 0xFFF)


def _chunks(gva: int, length: int, mode: PagingMode) -> Iterator[tuple[int, int, int]]:
    """Split [gva, gva+length) at 4 KiB boundaries, wrapping linear addresses as the CPU does."""
    wrap = _MASK64 if mode in (PagingMode.LEVEL4, PagingMode.LEVEL5) else _MASK32
    done = 0
    while done < length:
        va = (gva + done) & wrap
        n = min(length - done, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
        yield va, done, n
        done += n


def read_virtual(
    mem: GuestMemory,
    gva: int,
    length: int,
    *,
    cr0: int,
    cr3: int,
    cr4: int,
    efer: int,
    user: bool = False,
    fetch: bool = False,
    maxphyaddr: int = 52,
) -> bytes:
    """Read `length` bytes at a guest-virtual address, page by page.

    Every page is translated before anything is returned, so a fault on the second page of a
    structure raises rather than giving back half of it. Pages that translate to guest-physical
    addresses outside RAM raise `GuestMemoryError`.
    """
    if length < 0:
        raise ValueError(f"negative length {length}")
    mode = paging_mode(cr0, cr4, efer)
    gpas = [
        (
            translate(
                mem,
                va,
                cr0=cr0,
                cr3=cr3,
                cr4=cr4,
                efer=efer,
                user=user,
                fetch=fetch,
                maxphyaddr=maxphyaddr,
            ),
            n,
        )
        for va, _, n in _chunks(gva, length, mode)
    ]
    return b"".join(mem.read(gpa, n) for gpa, n in gpas)


def write_virtual(
    mem: GuestMemory,
    gva: int,
    data: bytes | bytearray | memoryview,
    *,
    cr0: int,
    cr3: int,
    cr4: int,
    efer: int,
    user: bool = False,
    maxphyaddr: int = 52,
) -> None:
    """Write `data` at a guest-virtual address as a (CPL 0 unless `user`) data write.

    All pages are translated and checked first, so a fault leaves guest memory untouched.
    """
    data = memoryview(data).cast("B")
    mode = paging_mode(cr0, cr4, efer)
    parts = []
    for va, off, n in _chunks(gva, len(data), mode):
        gpa = translate(
            mem,
            va,
            cr0=cr0,
            cr3=cr3,
            cr4=cr4,
            efer=efer,
            write=True,
            user=user,
            maxphyaddr=maxphyaddr,
        )
        parts.append((mem.view(gpa, n), off, n))
    for view, off, n in parts:
        view[:] = data[off : off + n]
