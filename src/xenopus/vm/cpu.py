"""Architectural x86 state a boot protocol fixes at entry.

Loaders (layer 5) describe the vCPU's initial state with a `CpuState`; the vCPU
(`Vcpu.apply`) turns it into `kvm_regs`/`kvm_sregs`. The register bits are in
`xenopus.arch.x86`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenopus.arch.x86 import (
    CR0_ET,
    CR0_PE,
    RFLAGS_RESERVED,
    SEG_TYPE_CODE_XRA,
    SEG_TYPE_DATA_RWA,
    SEG_TYPE_TSS_BUSY,
)


@dataclass
class Segment:
    """A loaded segment register: the selector and its cached descriptor."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFFFFFF
    type: int = SEG_TYPE_DATA_RWA
    present: bool = True
    dpl: int = 0
    db: bool = True  # default operation size 32-bit
    s: bool = True  # code/data (not system)
    l: bool = False  # noqa: E741 - 64-bit code segment, the SDM's name
    g: bool = True  # limit in 4 KiB units

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor encoding this segment (SDM 3A figure 3-8)."""
        limit = self.limit >> 12 if self.g else self.limit
        value = limit & 0xFFFF
        value |= (self.base & 0xFFFFFF) << 16
        value |= (self.type & 0xF) << 40
        value |= int(self.s) << 44
        value |= (self.dpl & 3) << 45
        value |= int(self.present) << 47
        value |= ((limit >> 16) & 0xF) << 48
        value |= int(self.l) << 53
        value |= int(self.db) << 54
        value |= int(self.g) << 55
        value |= ((self.base >> 24) & 0xFF) << 56
        return value


def flat_code32(selector: int) -> Segment:
    return Segment(selector=selector, type=SEG_TYPE_CODE_XRA)


def flat_code64(selector: int) -> Segment:
    return Segment(selector=selector, type=SEG_TYPE_CODE_XRA, db=False, l=True)


def flat_data(selector: int) -> Segment:
    return Segment(selector=selector, type=SEG_TYPE_DATA_RWA)


def task_segment(selector: int) -> Segment:
    """A busy TSS; VMX refuses entry with an unusable TR even when it is never used."""
    return Segment(selector=selector, type=SEG_TYPE_TSS_BUSY, s=False, limit=0x67, g=False, db=False)


@dataclass
class CpuState:
    """Registers at the first instruction a boot protocol hands to the guest."""

    rip: int = 0
    rsp: int = 0
    rflags: int = RFLAGS_RESERVED
    gprs: dict[str, int] = field(default_factory=dict)  # e.g. {"rbx": start_info} or {"rsi": zero page}
    cr0: int = CR0_PE | CR0_ET
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    code: Segment = field(default_factory=lambda: flat_code32(0x08))
    data: Segment = field(default_factory=lambda: flat_data(0x10))
    tss: Segment = field(default_factory=lambda: task_segment(0x18))
    gdt_base: int = 0
    gdt_limit: int = 0
    idt_base: int = 0
    idt_limit: int = 0
