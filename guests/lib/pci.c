/* PCI configuration access (mechanism #1 and ECAM), bus-0 enumeration, BARs, MSI-X. */
#include "platform.h"

int pci_use_ecam;

/* PCI Local Bus 3.0 3.2.2.3.2: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF. */
static u32 cf8_addr(const struct pci_fn *f, unsigned off)
{
    return 0x80000000u | (u32)f->bus << 16 | (u32)f->dev << 11 | (u32)f->fn << 8 | (off & 0xfc);
}

int pci_cf8_present(void)
{
    u32 old = inl(0xcf8);
    outl(0xcf8, 0x80000000u);
    int ok = inl(0xcf8) == 0x80000000u; /* the enable bit reads back only where it exists */
    outl(0xcf8, old);
    return ok;
}

u32 pci_cf8_read(const struct pci_fn *f, unsigned off, unsigned size)
{
    outl(0xcf8, cf8_addr(f, off));
    u16 port = (u16)(0xcfc + (off & 3));
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(0xcfc);
}

void pci_cf8_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v)
{
    outl(0xcf8, cf8_addr(f, off));
    u16 port = (u16)(0xcfc + (off & 3));
    if (size == 1)
        outb(port, (u8)v);
    else if (size == 2)
        outw(port, (u16)v);
    else
        outl(0xcfc, v);
}

/* PCIe Base 6.0 7.2.2: bus << 20 | device << 15 | function << 12 | register. */
static u64 ecam_addr(const struct pci_fn *f, unsigned off)
{
    return acpi.ecam_base + ((u64)f->bus << 20 | (u64)f->dev << 15 | (u64)f->fn << 12 | off);
}

u32 pci_ecam_read(const struct pci_fn *f, unsigned off, unsigned size)
{
    u64 a = ecam_addr(f, off);
    return size == 1 ? mmio_read8(a) : size == 2 ? mmio_read16(a) : mmio_read32(a);
}

void pci_ecam_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v)
{
    u64 a = ecam_addr(f, off);
    if (size == 1)
        mmio_write8(a, (u8)v);
    else if (size == 2)
        mmio_write16(a, (u16)v);
    else
        mmio_write32(a, v);
}

u32 pci_read(const struct pci_fn *f, unsigned off, unsigned size)
{
    return pci_use_ecam ? pci_ecam_read(f, off, size) : pci_cf8_read(f, off, size);
}

void pci_write(const struct pci_fn *f, unsigned off, unsigned size, u32 v)
{
    if (pci_use_ecam)
        pci_ecam_write(f, off, size, v);
    else
        pci_cf8_write(f, off, size, v);
}

unsigned pci_scan(struct pci_fn *out, unsigned max, int ecam)
{
    u32 (*rd)(const struct pci_fn *, unsigned, unsigned) = ecam ? pci_ecam_read : pci_cf8_read;
    unsigned n = 0;
    for (u8 dev = 0; dev < 32; dev++) {
        for (u8 fn = 0; fn < 8 && n < max; fn++) {
            struct pci_fn f = {.bus = 0, .dev = dev, .fn = fn};
            u32 id = rd(&f, 0x00, 4);
            if ((id & 0xffff) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            f.vendor = (u16)id;
            f.device = (u16)(id >> 16);
            f.class_rev = rd(&f, 0x08, 4);
            u8 header = (u8)rd(&f, 0x0e, 1);
            f.header = header & 0x7f;
            if (f.header == 0) {
                u32 ss = rd(&f, 0x2c, 4);
                f.subsys_vendor = (u16)ss;
                f.subsys = (u16)(ss >> 16);
            }
            out[n++] = f;
            if (fn == 0 && !(header & 0x80)) /* not multi-function */
                break;
        }
    }
    return n;
}

static u64 window_next, window_end;

/* Where unassigned memory BARs go: pci_mmio32=BASE[,SIZE] on the command line, else the
 * root bridge's 32-bit _CRS window from the DSDT. */
static void window_init(void)
{
    const char *v = cmdline_get("pci_mmio32");
    if (v && *v) {
        const char *end;
        window_next = strtou64(v, &end);
        window_end = window_next + (*end == ',' ? strtou64(end + 1, NULL) : 0x10000000);
    } else if (acpi.mmio32_size) {
        window_next = acpi.mmio32_base;
        window_end = acpi.mmio32_base + acpi.mmio32_size;
    }
}

void pci_probe_bars(struct pci_fn *f)
{
    unsigned nbars = f->header == 0 ? 6 : f->header == 1 ? 2 : 0;
    u16 cmd = (u16)pci_read(f, 0x04, 2);
    pci_write(f, 0x04, 2, cmd & ~3u); /* no decoding while the BARs hold all-ones */
    for (unsigned i = 0; i < nbars; i++) {
        struct pci_bar *b = &f->bar[i];
        unsigned off = 0x10 + 4 * i;
        u32 orig = pci_read(f, off, 4);
        pci_write(f, off, 4, 0xffffffffu);
        u32 lo = pci_read(f, off, 4);
        pci_write(f, off, 4, orig);
        if (!lo)
            continue; /* unimplemented */
        if (orig & 1) { /* I/O: PCI 3.0 6.2.5.1 */
            b->kind = 3;
            b->addr = orig & ~3u;
            b->size = (u16)(~(lo & ~3u) + 1);
            continue;
        }
        b->prefetch = !!(orig & 8);
        u64 mask = lo & ~0xfu, addr = orig & ~0xfu;
        if (((orig >> 1) & 3) == 2 && i + 1 < nbars) { /* 64-bit: the next BAR is the top half */
            u32 orig_hi = pci_read(f, off + 4, 4);
            pci_write(f, off + 4, 4, 0xffffffffu);
            u32 hi = pci_read(f, off + 4, 4);
            pci_write(f, off + 4, 4, orig_hi);
            mask |= (u64)hi << 32;
            addr |= (u64)orig_hi << 32;
            b->kind = 2;
        } else {
            mask |= 0xffffffff00000000ul;
            b->kind = 1;
        }
        b->size = ~mask + 1;
        if (!addr) { /* the firmware left it unassigned: place it ourselves */
            if (!window_end)
                window_init();
            u64 a = (window_next + b->size - 1) & ~(b->size - 1);
            if (window_end && a + b->size <= window_end) {
                window_next = a + b->size;
                addr = a;
                pci_write(f, off, 4, (u32)a | (orig & 0xf));
                if (b->kind == 2)
                    pci_write(f, off + 4, 4, (u32)(a >> 32));
            }
        }
        b->addr = addr;
        if (b->kind == 2)
            i++;
    }
    pci_write(f, 0x04, 2, cmd);
}

void pci_enable(struct pci_fn *f)
{
    for (unsigned i = 0; i < 6; i++)
        if (f->bar[i].kind && f->bar[i].kind != 3 && f->bar[i].addr)
            map_phys(f->bar[i].addr, f->bar[i].size);
    u16 cmd = (u16)pci_read(f, 0x04, 2);
    pci_write(f, 0x04, 2, cmd | 0x2 | 0x4); /* Memory Space, Bus Master */
}

unsigned pci_find_cap(const struct pci_fn *f, u8 id, unsigned from)
{
    if (!(pci_read(f, 0x06, 2) & 0x10)) /* status: Capabilities List */
        return 0;
    unsigned off = from ? pci_read(f, from + 1, 1) : pci_read(f, 0x34, 1);
    for (int guard = 0; off >= 0x40 && guard < 48; guard++) {
        off &= 0xfc;
        if (pci_read(f, off, 1) == id)
            return off;
        off = pci_read(f, off + 1, 1);
    }
    return 0;
}

/* PCI 3.0 6.8.2: Message Control at +2 (table size - 1 in bits 10:0, Function Mask bit 14,
 * MSI-X Enable bit 15); Table Offset/BIR at +4. */
unsigned pci_msix_enable(struct pci_fn *f)
{
    unsigned cap = pci_find_cap(f, 0x11, 0);
    if (!cap)
        return 0;
    u16 ctl = (u16)pci_read(f, cap + 2, 2);
    pci_write(f, cap + 2, 2, (ctl | 0x8000) & ~0x4000);
    pci_write(f, 0x04, 2, pci_read(f, 0x04, 2) | 0x400); /* INTx Disable */
    return (ctl & 0x7ff) + 1u;
}

void pci_msix_set(struct pci_fn *f, unsigned entry, u32 apic, u8 vector, int masked)
{
    unsigned cap = pci_find_cap(f, 0x11, 0);
    if (!cap)
        return;
    u32 t = pci_read(f, cap + 4, 4);
    u64 e = f->bar[t & 7].addr + (t & ~7u) + 16 * entry;
    mmio_write32(e + 12, 1);                           /* mask while reprogramming */
    mmio_write32(e + 0, 0xfee00000u | apic << 12);     /* SDM Vol. 3A 11.11.1 */
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vector);                       /* fixed, edge */
    mmio_write32(e + 12, masked ? 1 : 0);
}

unsigned pci_init(struct pci_fn *out, unsigned max)
{
    acpi_init();
    pci_use_ecam = acpi.ecam_base != 0;
    if (pci_use_ecam)
        map_phys(acpi.ecam_base, 1ul << 20);
    else if (!pci_cf8_present())
        return 0;
    unsigned n = pci_scan(out, max, pci_use_ecam);
    for (unsigned i = 0; i < n; i++)
        pci_probe_bars(&out[i]);
    return n;
}
