/* ACPI table walk (ACPI 6.5 chapter 5) and ACPI power-off / reset. */
#include "platform.h"

struct acpi_info acpi;
static int acpi_done;

/* 5.2.5.3 RSDP; 5.2.6 System Description Table Header. */
struct rsdp {
    char sig[8];
    u8 checksum;
    char oem[6];
    u8 revision;
    u32 rsdt;
    u32 length;
    u64 xsdt;
    u8 ext_checksum, reserved[3];
} __attribute__((packed));
struct sdt {
    char sig[4];
    u32 length;
    u8 revision, checksum;
    char oem[6], oem_table[8];
    u32 oem_rev, creator, creator_rev;
} __attribute__((packed));

/* FADT field offsets (Table 5.9). */
#define FADT_DSDT 40
#define FADT_PM1A_CNT 64
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_X_DSDT 140
#define FADT_SLEEP_CTL 244
#define FADT_SLEEP_STS 256
#define FADT_HW_REDUCED (1u << 20)
/* MADT (5.2.12): entries start at 44. */
#define MADT_LAPIC_ADDR 36
#define MADT_ENTRIES 44
#define MADT_LAPIC 0
#define MADT_IOAPIC 1
#define MADT_OVERRIDE 2
#define MADT_LAPIC_OVERRIDE 5
#define MADT_X2APIC 9
/* MCFG: 8 reserved bytes after the header, then 16-byte allocations. */
#define MCFG_ENTRIES 44

static u8 sum(const void *p, u64 n)
{
    const u8 *b = p;
    u8 s = 0;
    while (n--)
        s += *b++;
    return s;
}

static int rsdp_ok(const struct rsdp *r)
{
    return !memcmp(r->sig, "RSD PTR ", 8) && sum(r, 20) == 0;
}

/* 5.2.5.1: the RSDP lies on a 16-byte boundary in the BIOS area 0xE0000-0xFFFFF (or the
 * first KiB of the EBDA, which these platforms do not use). */
static u64 rsdp_scan(void)
{
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (*(const u64 *)a == 0x2052545020445352ul && rsdp_ok((const void *)a)) /* "RSD PTR " */
            return a;
    return 0;
}

static void add_table(u64 addr)
{
    const struct sdt *t = (const void *)addr;
    if (!addr || acpi.nr_tables >= ACPI_MAX_TABLES)
        return;
    struct acpi_table *e = &acpi.tables[acpi.nr_tables++];
    memcpy(e->sig, t->sig, 4);
    e->sig[4] = 0;
    e->addr = addr;
    e->length = t->length;
    e->revision = t->revision;
    e->checksum_ok = t->length >= sizeof(*t) && sum(t, t->length) == 0;
    if (!e->checksum_ok)
        acpi.bad_checksums++;
}

const struct acpi_table *acpi_find(const char *sig)
{
    for (unsigned i = 0; i < acpi.nr_tables; i++)
        if (!memcmp(acpi.tables[i].sig, sig, 4))
            return &acpi.tables[i];
    return NULL;
}

static void parse_madt(const u8 *t, u32 len)
{
    acpi.have_madt = 1;
    acpi.lapic_addr = *(const u32 *)(t + MADT_LAPIC_ADDR);
    for (u32 off = MADT_ENTRIES; off + 2 <= len;) {
        u8 type = t[off], elen = t[off + 1];
        if (elen < 2 || off + elen > len)
            break;
        const u8 *e = t + off;
        if (type == MADT_LAPIC && (*(const u32 *)(e + 4) & 1)) { /* flags: Enabled */
            if (acpi.nr_cpus < MAX_CPUS)
                acpi.apic_ids[acpi.nr_cpus] = e[3];
            acpi.nr_cpus++;
        } else if (type == MADT_X2APIC && (*(const u32 *)(e + 8) & 1)) {
            if (acpi.nr_cpus < MAX_CPUS)
                acpi.apic_ids[acpi.nr_cpus] = *(const u32 *)(e + 4);
            acpi.nr_cpus++;
        } else if (type == MADT_IOAPIC) {
            if (!acpi.nr_ioapics++)
                acpi.ioapic_addr = *(const u32 *)(e + 4);
        } else if (type == MADT_OVERRIDE) {
            acpi.nr_overrides++;
        } else if (type == MADT_LAPIC_OVERRIDE) {
            acpi.lapic_addr = *(const u64 *)(e + 4);
        }
        off += elen;
    }
}

/* AML integer after a NameOp package element (ACPI 6.5 20.2.3 Data Objects Encoding). */
static int aml_int(const u8 *p, const u8 *end, u64 *v)
{
    if (p >= end)
        return 0;
    switch (p[0]) {
    case 0x00: *v = 0; return 1;          /* ZeroOp */
    case 0x01: *v = 1; return 1;          /* OneOp */
    case 0x0a: if (p + 1 >= end) return 0; *v = p[1]; return 2;   /* BytePrefix */
    case 0x0b: if (p + 2 >= end) return 0; *v = *(const u16 *)(p + 1); return 3; /* WordPrefix */
    case 0x0c: if (p + 4 >= end) return 0; *v = *(const u32 *)(p + 1); return 5; /* DWordPrefix */
    case 0x0e: if (p + 8 >= end) return 0; *v = *(const u64 *)(p + 1); return 9; /* QWordPrefix */
    }
    return 0;
}

/* \_S5: NameOp "_S5_" PackageOp PkgLength NumElements SLP_TYPa ... (7.4.2 "\_Sx (System
 * States)"). A byte scan, as small kernels do, rather than an AML interpreter. */
static void parse_dsdt(const u8 *t, u32 len)
{
    const u8 *end = t + len;
    for (const u8 *p = t + sizeof(struct sdt); p + 8 < end; p++) {
        if (p[0] == '_' && p[1] == 'S' && p[2] == '5' && p[3] == '_' && p[4] == 0x12 &&
            (p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08))) {
            const u8 *q = p + 5;
            q += 1 + (q[0] >> 6); /* PkgLength: bits 7-6 count the extra bytes */
            q++;                  /* NumElements */
            u64 v;
            if (aml_int(q, end, &v))
                acpi.s5_typ = (int)v;
        }
        /* PCI Firmware 3.2 4.1.3 _CBA: a host bridge's ECAM base, here a Method that returns
         * a constant (QEMU microvm has no MCFG): MethodOp PkgLength "_CBA" flags ReturnOp. */
        if (p[0] == '_' && p[1] == 'C' && p[2] == 'B' && p[3] == 'A' && p[5] == 0xa4 &&
            !acpi.cba) {
            u64 v;
            if (aml_int(p + 6, end, &v))
                acpi.cba = v;
        }
        /* 6.4.3.5.1 / 6.4.3.5.3: DWord / QWord Address Space descriptors of memory type: the
         * root bridge's windows (the first of each kind). */
        if (p[0] == 0x87 && p[1] == 0x17 && p[2] == 0 && p[3] == 0 && p + 26 <= end &&
            !acpi.mmio32_size) {
            acpi.mmio32_base = *(const u32 *)(p + 10);
            acpi.mmio32_size = *(const u32 *)(p + 22);
        }
        if (p[0] == 0x8a && p[1] == 0x2b && p[2] == 0 && p[3] == 0 && p + 46 <= end &&
            !acpi.mmio64_size) {
            acpi.mmio64_base = *(const u64 *)(p + 14);
            acpi.mmio64_size = *(const u64 *)(p + 38);
        }
    }
}

static void parse_fadt(const u8 *t, u32 len)
{
    acpi.have_fadt = 1;
    acpi.fadt_flags = len > FADT_FLAGS + 4 ? *(const u32 *)(t + FADT_FLAGS) : 0;
    acpi.hw_reduced = !!(acpi.fadt_flags & FADT_HW_REDUCED);
    acpi.pm1a_cnt = *(const u32 *)(t + FADT_PM1A_CNT);
    acpi.dsdt = *(const u32 *)(t + FADT_DSDT);
    if (len >= FADT_X_DSDT + 8 && *(const u64 *)(t + FADT_X_DSDT))
        acpi.dsdt = *(const u64 *)(t + FADT_X_DSDT);
    if (len >= FADT_RESET_VALUE + 1) {
        memcpy(&acpi.reset_reg, t + FADT_RESET_REG, sizeof(struct gas));
        acpi.reset_value = t[FADT_RESET_VALUE];
    }
    if (len >= FADT_SLEEP_STS + 12) {
        memcpy(&acpi.sleep_ctl, t + FADT_SLEEP_CTL, sizeof(struct gas));
        memcpy(&acpi.sleep_sts, t + FADT_SLEEP_STS, sizeof(struct gas));
    }
}

/* Runs in ring 3 (native speed where ring 0 is emulated): memory reads only, no output. */
static u64 acpi_parse(u64 unused)
{
    (void)unused;
    acpi.s5_typ = -1;
    u64 r = 0;
    if (boot.raw && !strcmp(boot.proto, "pvh")) {
        r = *(const u64 *)(boot.raw + 32); /* hvm_start_info.rsdp_paddr */
        acpi.rsdp_from = "start_info";
    } else if (boot.raw) {
        r = *(const u64 *)(boot.raw + 0x70); /* boot_params.acpi_rsdp_addr */
        acpi.rsdp_from = "boot_params";
    }
    /* The BIOS-area scan is the Linux boot protocol's fallback (a PVH loader passes the
     * RSDP or has none); where nothing backs that area every read would be an MMIO exit. */
    if ((!r || !rsdp_ok((const void *)r)) && !strcmp(boot.proto, "linux")) {
        r = rsdp_scan();
        acpi.rsdp_from = "scan";
    }
    if (!r || !rsdp_ok((const void *)r))
        return 0;
    const struct rsdp *rp = (const void *)r;
    acpi.found = 1;
    acpi.rsdp = r;
    acpi.rsdp_revision = rp->revision;
    acpi.rsdp_checksum_ok = rp->revision < 2 || sum(rp, rp->length) == 0;
    if (!acpi.rsdp_checksum_ok)
        acpi.bad_checksums++;
    acpi.xsdt = rp->revision >= 2 && rp->xsdt;
    u64 root = acpi.xsdt ? rp->xsdt : rp->rsdt;
    add_table(root);
    const struct sdt *rt = (const void *)root;
    unsigned width = acpi.xsdt ? 8 : 4;
    unsigned n = (rt->length - sizeof(*rt)) / width;
    for (unsigned i = 0; i < n; i++) {
        const u8 *ent = (const u8 *)(rt + 1) + i * width;
        add_table(acpi.xsdt ? *(const u64 *)ent : *(const u32 *)ent);
    }
    const struct acpi_table *t;
    if ((t = acpi_find("FACP"))) {
        parse_fadt((const u8 *)t->addr, t->length);
        add_table(acpi.dsdt);
    }
    if ((t = acpi_find("APIC")))
        parse_madt((const u8 *)t->addr, t->length);
    if ((t = acpi_find("DSDT"))) {
        acpi.dsdt_length = t->length;
        parse_dsdt((const u8 *)t->addr, t->length);
    }
    if ((t = acpi_find("MCFG")) && t->length >= MCFG_ENTRIES + 16) {
        const u8 *m = (const u8 *)t->addr + MCFG_ENTRIES;
        acpi.ecam_base = *(const u64 *)m;
        acpi.ecam_bus_start = m[10];
        acpi.ecam_bus_end = m[11];
        acpi.ecam_from = "mcfg";
    } else if (acpi.cba) {
        acpi.ecam_base = acpi.cba;
        acpi.ecam_bus_end = 0;
        acpi.ecam_from = "_CBA";
    }
    return 1;
}

int acpi_init(void)
{
    if (!acpi_done) {
        acpi_done = 1;
        /* Also safe from shutdown() inside a trap from ring 3: this nested run_user returns
         * here, and the interrupted one is never resumed. */
        run_user(acpi_parse, 0, 0);
    }
    return acpi.found;
}

static void gas_write(const struct gas *g, u64 v)
{
    if (g->space == 0) { /* system memory */
        if (g->bit_width == 8 || !g->bit_width)
            mmio_write8(g->address, (u8)v);
        else if (g->bit_width == 16)
            mmio_write16(g->address, (u16)v);
        else
            mmio_write32(g->address, (u32)v);
    } else if (g->space == 1) { /* system I/O */
        if (g->bit_width == 16)
            outw((u16)g->address, (u16)v);
        else if (g->bit_width == 32)
            outl((u16)g->address, (u32)v);
        else
            outb((u16)g->address, (u8)v);
    }
}

void acpi_poweroff(void)
{
    if (!acpi_init() || acpi.s5_typ < 0)
        return;
    if (acpi.hw_reduced && acpi.sleep_ctl.address)
        gas_write(&acpi.sleep_ctl, (u64)(acpi.s5_typ & 7) << 2 | 1u << 5);
    else if (!acpi.hw_reduced && acpi.pm1a_cnt)
        outw((u16)acpi.pm1a_cnt, (u16)((acpi.s5_typ & 7) << 10 | 1u << 13));
}

void acpi_reset(void)
{
    if (acpi_init() && (acpi.fadt_flags & (1u << 10)) && acpi.reset_reg.address) /* RESET_REG_SUP */
        gas_write(&acpi.reset_reg, acpi.reset_value);
}
