/* Platform runtime: ACPI tables, LAPIC + SMP bring-up, PCI, TSC, a page allocator.
 * See guests/README.md ("Platform runtime"). Everything here runs in ring 0 unless noted. */
#ifndef PLATFORM_H
#define PLATFORM_H
#include "runtime.h"

#define MAX_CPUS 32

static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* x86 stores are not reordered with other stores, loads not with loads (SDM Vol. 3A 9.2.2);
 * mfence orders a store before a later load (the virtio event-index checks need that). */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (u64)hi << 32 | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

/* MMIO accessors (volatile, exactly one access of the given width). */
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }

static inline void spin_lock(volatile int *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (*l)
            pause();
}
static inline void spin_unlock(volatile int *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* ---- memory ---- */
/* Bump allocator over the RAM after the image (never freed, not zeroed), `align` a power
 * of two. Returns NULL when the RAM range holding the image is exhausted. */
void *page_alloc(u64 bytes, u64 align);
/* Makes [phys, phys+size) reachable when it lies above the static 4 GiB identity map (1 GiB
 * pages, user-accessible, uncached). Returns 0 on success. */
int map_phys(u64 phys, u64 size);

/* ---- TSC ---- */
u64 tsc_khz(void); /* CPUID 0x15/0x16 when present, else measured against the PIT; cached */
u64 tsc_ns(u64 ticks);

/* ---- ACPI (ACPI 6.5 chapter 5) ---- */
struct gas { /* 5.2.3.2 Generic Address Structure */
    u8 space;  /* 0 system memory, 1 system I/O */
    u8 bit_width, bit_offset, access_size;
    u64 address;
} __attribute__((packed));
#define ACPI_MAX_TABLES 32
struct acpi_table {
    char sig[5];
    u64 addr;
    u32 length;
    u8 revision;
    int checksum_ok;
};
struct acpi_info {
    int found;
    const char *rsdp_from; /* "start_info", "boot_params", "scan" */
    u64 rsdp;
    u8 rsdp_revision;
    int rsdp_checksum_ok, xsdt; /* root table is the XSDT (else the RSDT) */
    unsigned nr_tables;
    struct acpi_table tables[ACPI_MAX_TABLES];
    unsigned bad_checksums;
    /* MADT (5.2.12) */
    int have_madt;
    u64 lapic_addr;
    unsigned nr_cpus; /* enabled Processor Local APIC / x2APIC entries */
    u32 apic_ids[MAX_CPUS];
    unsigned nr_ioapics;
    u64 ioapic_addr;
    unsigned nr_overrides;
    /* FADT (5.2.9) */
    int have_fadt;
    u32 fadt_flags;
    int hw_reduced; /* flags bit 20 HW_REDUCED_ACPI */
    struct gas sleep_ctl, sleep_sts, reset_reg;
    u8 reset_value;
    u32 pm1a_cnt;
    u64 dsdt;
    u32 dsdt_length;
    int s5_typ; /* SLP_TYP for S5 from the DSDT's \_S5 package, -1 if absent */
    /* MCFG (PCI Firmware Specification 3.2, 4.1.2) */
    u64 ecam_base;
    u8 ecam_bus_start, ecam_bus_end;
    const char *ecam_from; /* "mcfg", or "_CBA" (the DSDT's PCI0._CBA, where there is no MCFG) */
    u64 cba;
    /* The PCI root bridge's _CRS windows (DWord/QWord memory descriptors in the DSDT) */
    u64 mmio32_base, mmio32_size, mmio64_base, mmio64_size;
};
extern struct acpi_info acpi;
int acpi_init(void); /* idempotent; returns acpi.found */
const struct acpi_table *acpi_find(const char *sig);
/* Hardware-reduced: SLP_TYP(S5) << 2 | SLP_EN to SLEEP_CONTROL_REG (4.8.3.7); legacy:
 * SLP_TYP << 10 | SLP_EN (bit 13) to PM1a_CNT (4.8.3.2.1). Returns only if that failed. */
void acpi_poweroff(void);
void acpi_reset(void); /* RESET_REG <- RESET_VALUE (4.8.3.6), if the FADT has one */

/* ---- LAPIC (SDM Vol. 3A chapter 11), xAPIC MMIO ---- */
#define LAPIC_ID 0x20
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
void lapic_enable(void);  /* SVR software enable, spurious vector 0xff */
u32 lapic_id(void);

/* ---- per-CPU state: at the base of each 16 KiB-aligned ring-0 stack (head.S) ---- */
#define KSTACK_SIZE 16384
struct cpu {
    u64 saved_rsp;      /* run_user's frame (head.S offset 0) */
    u8 *tss;            /* this CPU's TSS (offset 8) */
    u64 user_stack_top; /* (offset 16) */
    u32 index, apic_id;
    u64 gdt[7];
    u8 tss_mem[104] __attribute__((aligned(16)));
    volatile int started;
    volatile u64 result;
};
static inline struct cpu *this_cpu(void)
{
    u64 sp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    return (struct cpu *)(sp & ~(u64)(KSTACK_SIZE - 1));
}

/* ---- SMP ---- */
/* Real-mode AP trampoline page (SIPI vector = page number). 0x6000 is free in xenopus's layout:
 * xenopus keeps its GDT at 0x500, start_info/memmap at 0x7000, page tables at 0x9000-0xEFFF
 * and the command line at 0x20000; QEMU microvm (qboot) leaves it alone too. */
#define SMP_TRAMPOLINE 0x6000
typedef void (*ap_fn)(struct cpu *c);
/* INIT / SIPI / SIPI (SDM Vol. 3A 8.4.4.1) to every enabled MADT CPU but this one, one at a
 * time; each runs fn(c) in ring 0 on its own stack, GDT and TSS (run_user works there). Returns
 * the number of APs that started; cpus[] (index order, BSP at 0) describes them. */
unsigned smp_boot(ap_fn fn);
/* INIT / SIPI / SIPI to one CPU by APIC ID (a hot-added one, say); it runs fn(c) as above.
 * Returns its index in cpus[] (a new one each start), or -1 if it did not start. */
int smp_start(u32 apic, ap_fn fn);
extern struct cpu *cpus[MAX_CPUS];
extern unsigned nr_cpus_started; /* BSP included */

/* ---- interrupt vectors 48-63 for MSI/MSI-X: the runtime sends the LAPIC EOI ---- */
#define VEC_MSI_BASE 48
typedef void (*vec_fn)(int vector);
void vector_handler(int vector, vec_fn fn);

/* ---- PCI (PCI Local Bus 3.0 chapter 6; PCIe Base 7.2.2 ECAM) ---- */
#define PCI_MAX_FNS 64
struct pci_bar {
    u8 kind; /* 0 none, 1 mem32, 2 mem64, 3 io */
    u8 prefetch;
    u64 addr, size;
};
struct pci_fn {
    u8 bus, dev, fn, header;
    u16 vendor, device, subsys_vendor, subsys;
    u32 class_rev; /* class << 8 | revision */
    struct pci_bar bar[6];
};
int pci_cf8_present(void);
extern int pci_use_ecam; /* set by pci_init when MCFG gave an ECAM */
u32 pci_cf8_read(const struct pci_fn *f, unsigned off, unsigned size);
void pci_cf8_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v);
u32 pci_ecam_read(const struct pci_fn *f, unsigned off, unsigned size);
void pci_ecam_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v);
u32 pci_read(const struct pci_fn *f, unsigned off, unsigned size); /* ECAM if present */
void pci_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v);
/* Enumerates bus 0 (multi-function aware) with the given accessor: 1 ECAM, 0 CF8. */
unsigned pci_scan(struct pci_fn *out, unsigned max, int ecam);
/* Sizes every BAR (all-ones, read back, restore; 64-bit pairs) and, where the firmware left
 * a memory BAR unassigned, places it in the root bridge's 32-bit window. */
void pci_probe_bars(struct pci_fn *f);
void pci_enable(struct pci_fn *f); /* command: memory space + bus master */
/* Capability list walk (PCI 3.0 6.7): offset of the first capability `id` after `from`
 * (0: from the start), or 0. */
unsigned pci_find_cap(const struct pci_fn *f, u8 id, unsigned from);
/* MSI-X (PCI 3.0 6.8.2): enable with function mask clear; entry `entry` -> LAPIC `apic` with
 * `vector`, unmasked. Returns the table size, or 0 without MSI-X. */
unsigned pci_msix_enable(struct pci_fn *f);
void pci_msix_set(struct pci_fn *f, unsigned entry, u32 apic, u8 vector, int masked);
/* One initialisation for a guest: ACPI, ECAM choice, bus-0 scan, BAR probing. */
unsigned pci_init(struct pci_fn *out, unsigned max);

#endif
