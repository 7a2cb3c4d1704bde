/*
 * hostile-pci: a guest that abuses its platform devices the way a compromised kernel could,
 * then checks that each device still answers per spec and still serves. Needs a virtio-rng
 * (the target) and a virtio-blk (a second device whose BAR the rng's is moved onto).
 *
 * case=   common    virtio common configuration (virtio 1.2 4.1.4.3) read at every offset
 *                   0..0x3f and width 1/2/4/8, written at every width/offset that is not
 *                   the field's natural access (4.1.3.1: the driver MUST use it; a device
 *                   ignores others), the ISR/notify/device regions at odd widths and the
 *                   4.1.4.9 PCI-config window with a bad BAR, length and offset; the device
 *                   status must not change and the queue must serve without a reset
 *         qsize     queue_size 0, 3 (not a power of 2), 2*max and 0xffff before DRIVER_OK:
 *                   refused (reads back the maximum); a queue_select past num_queues reads
 *                   queue_size 0 (4.1.4.3.2) and ignores writes; a smaller power of 2 is
 *                   taken and the queue serves at that size
 *         reconfig  after DRIVER_OK: queue_size, queue_desc/driver/device, queue_enable 0,
 *                   queue_msix_vector and driver_feature rewritten (4.1.4.3.2, 3.1.1: the
 *                   driver MUST NOT): every register reads back unchanged and the queue
 *                   serves; then a reset (status 0) with a request in flight, and re-init
 *         msix      the MSI-X table and PBA (PCI 3.0 6.8.2) at every width around and past
 *                   their ends, PBA writes (read-only), an entry with a bogus address; then
 *                   function mask: a completion leaves its PBA bit pending and is delivered
 *                   on unmask (6.8.2.9), and the queue interrupts on its vector
 *         bar       the rng's 64-bit BAR moved, with decoding on, onto RAM, the LAPIC, ECAM,
 *                   the ACPI register page, the blk's BAR, address 0 and all-ones (sizing);
 *                   RAM, the LAPIC and ECAM keep answering as themselves (PCI 3.0 6.2.5.1:
 *                   software must not do this; the platform's own ranges win); then back:
 *                   rng and blk both serve
 *         ged       the ACPI hardware-reduced sleep/reset/GED registers (ACPI 6.5 4.8.3.6-8,
 *                   5.6.9) at every width and offset, sleep types that are not offered,
 *                   wrong reset values; the legacy PM1 ports a hardware-reduced platform has
 *                   not (0x600, 0xb000, 4.8.2.1) read as all-ones; then S5 must still power off
 *         sipi      needs vcpus >= 2: rounds=N [200] of INIT / SIPI / SIPI to all but self, to
 *                   an APIC id that does not exist, broadcast, and INIT level de-assert (SDM Vol. 3A
 *                   10.6.1), with a halt loop as the SIPI vector; then a normal smp_boot must
 *                   bring up every AP
 *         e9        lines=N [6000] lines "e9" to port 0xe9 (rep outsb), then one 64 KiB
 *                   line: the host log must rate-limit them (the test counts them)
 * Prints "check <what>: ok|FAIL ..." lines and RESULT: PASS|FAIL hostile-pci <case>.
 */
#include "virtio.h"

GUEST("hostile-pci");

static struct pci_fn fns[PCI_MAX_FNS];
static struct pci_fn *rf, *bf;
static struct virtio_dev rng, blk;
static int failures;

static void check(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(int ok, const char *what, const char *fmt, ...)
{
    static char detail[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    printf("check %s: %s%s%s\n", what, ok ? "ok" : "FAIL", *detail ? " " : "", detail);
    failures += !ok;
}

static u64 rd(u64 a, unsigned w)
{
    switch (w) {
    case 1: return mmio_read8(a);
    case 2: return mmio_read16(a);
    case 4: return mmio_read32(a);
    default: return *(volatile u64 *)a;
    }
}

static void wr(u64 a, unsigned w, u64 v)
{
    switch (w) {
    case 1: mmio_write8(a, (u8)v); break;
    case 2: mmio_write16(a, (u16)v); break;
    case 4: mmio_write32(a, (u32)v); break;
    default: *(volatile u64 *)a = v;
    }
}

static const unsigned widths[4] = {1, 2, 4, 8};

/* The rng up with one queue of (at most) `qmax` entries and the given MSI-X vector. */
static int rng_up(u16 qmax, u16 vector)
{
    if (virtio_init(&rng, rf, 0) < 0 || virtio_queue(&rng, 0, qmax, vector) < 0) {
        printf("rng init: %s\n", rng.error);
        return -1;
    }
    virtio_driver_ok(&rng);
    return 0;
}

static i64 rng_read(u64 ms)
{
    static u8 buf[16];
    struct vbuf b = {buf, sizeof(buf), 1};
    return vq_transfer(&rng.vq[0], &b, 1, ms);
}

static int blk_reads(void)
{
    static struct { u32 type, reserved; u64 sector; } h;
    static u8 data[512];
    static volatile u8 st;
    if (virtio_init(&blk, bf, 0) < 0 || virtio_queue(&blk, 0, 16, VIRTIO_NO_VECTOR) < 0)
        return 0;
    virtio_driver_ok(&blk);
    h.type = 0; /* VIRTIO_BLK_T_IN */
    h.sector = 0;
    st = 0xff;
    struct vbuf b[3] = {{&h, sizeof(h), 0}, {data, 512, 1}, {(void *)&st, 1, 1}};
    return vq_transfer(&blk.vq[0], b, 3, 2000) >= 0 && st == 0;
}

/* ---- common ---------------------------------------------------------------------------- */

static const struct { u8 off, size; } fields[] = { /* struct virtio_pci_common_cfg */
    {0, 4}, {4, 4}, {8, 4}, {12, 4}, {16, 2}, {18, 2}, {20, 1}, {21, 1}, {22, 2}, {24, 2},
    {26, 2}, {28, 2}, {30, 2}, {32, 8}, {40, 8}, {48, 8}, {56, 2}, {58, 2},
};

static int natural(unsigned off, unsigned w)
{
    for (unsigned i = 0; i < ARRAY_SIZE(fields); i++) {
        if (fields[i].off == off && fields[i].size == w)
            return 1;
        if (fields[i].size == 8 && w == 4 && (off == fields[i].off || off == fields[i].off + 4u))
            return 1; /* 4.1.3.1: 64-bit fields as two 32-bit halves */
    }
    return 0;
}

static void case_common(void)
{
    if (rng_up(16, VIRTIO_NO_VECTOR) < 0 || rng_read(2000) <= 0) {
        check(0, "rng serves before", "");
        return;
    }
    u8 status = virtio_status(&rng);
    unsigned reads = 0, writes = 0, nonzero_past = 0;
    for (unsigned off = 0; off < 0x40; off++)
        for (unsigned i = 0; i < 4; i++) {
            rd(rng.common + off, widths[i]);
            reads++;
        }
    for (unsigned off = 0x40; off < 0x1000; off += 0x1f8) /* past the structure: reads 0 */
        nonzero_past += rd(rng.common + off, 4) != 0;
    check(!nonzero_past, "common config past the structure reads 0", "(%u non-zero)", nonzero_past);
    for (unsigned off = 0; off < 0x40; off++)
        for (unsigned i = 0; i < 4; i++)
            if (!natural(off, widths[i])) {
                wr(rng.common + off, widths[i], 0xa5a5a5a5a5a5a5a5ul);
                writes++;
            }
    printf("common config: %u reads, %u odd writes\n", reads, writes);
    check(virtio_status(&rng) == status, "device status unchanged by odd writes", "0x%x -> 0x%x",
          status, virtio_status(&rng));
    /* ISR (4.1.4.5), device-specific, notify (4.1.4.4) regions at odd widths and offsets. */
    for (unsigned i = 0; i < 4; i++) {
        rd(rng.isr + 1, widths[i]);
        rd(rng.isr + 0xffc, widths[i] > 4 ? 4 : widths[i]);
        wr(rng.isr + 3, widths[i], ~0ul);
        wr(rng.notify_base + 1, widths[i], 0);
        wr(rng.notify_base + 0xffe, widths[i] > 2 ? 2 : widths[i], 7);
    }
    /* 4.1.4.9 window: bar 7, length 3, an unaligned offset, an offset past the BAR. */
    unsigned cap = 0;
    for (unsigned c = pci_find_cap(rf, 0x09, 0); c; c = pci_find_cap(rf, 0x09, c))
        if (pci_read(rf, c + 3, 1) == 5)
            cap = c;
    static const struct { u8 bar; u32 off, len; } win[] = {
        {7, 0, 4}, {0, 0x14, 3}, {0, 0x15, 4}, {0, 0xfffffffc, 4}, {0, 0x7ffe, 4}, {0, 0x14, 1},
    };
    for (unsigned i = 0; cap && i < ARRAY_SIZE(win); i++) {
        pci_write(rf, cap + 4, 1, win[i].bar);
        pci_write(rf, cap + 8, 4, win[i].off);
        pci_write(rf, cap + 12, 4, win[i].len);
        pci_read(rf, cap + 16, 4);
        pci_read(rf, cap + 17, 2);
        if (win[i].len != 1) /* {0, 0x14, 1} is a valid window onto device_status: read only */
            pci_write(rf, cap + 16, 4, 0);
    }
    check(cap != 0, "pci_cfg window exercised", "cap at 0x%x", cap);
    check(virtio_status(&rng) == status, "device status unchanged after window abuse", "0x%x",
          virtio_status(&rng));
    check(rng_read(2000) > 0, "rng serves without a reset", "");
}

/* ---- qsize ----------------------------------------------------------------------------- */

#define C16(o) (*(volatile u16 *)(rng.common + (o)))
#define C32(o) (*(volatile u32 *)(rng.common + (o)))

static void case_qsize(void)
{
    if (virtio_init(&rng, rf, 0) < 0) {
        check(0, "rng init", "%s", rng.error);
        return;
    }
    C16(VCC_Q_SELECT) = 0;
    u16 max = C16(VCC_Q_SIZE);
    static const u16 bad[] = {0, 3, 6, 0xffff, 0x8000, 0};
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        u16 v = i == 4 ? (u16)(max * 2) : bad[i];
        C16(VCC_Q_SIZE) = v;
        u16 back = C16(VCC_Q_SIZE);
        check(back == max, "queue_size write refused", "wrote %u, reads %u (max %u)", v, back, max);
    }
    C16(VCC_Q_SELECT) = rng.num_queues; /* no such queue */
    C16(VCC_Q_SIZE) = 8;
    C16(VCC_Q_ENABLE) = 1;
    check(C16(VCC_Q_SIZE) == 0 && C16(VCC_Q_ENABLE) == 0, "queue past num_queues reads size 0",
          "size %u enable %u", C16(VCC_Q_SIZE), C16(VCC_Q_ENABLE));
    C16(VCC_Q_SELECT) = 0xffff;
    check(C16(VCC_Q_SIZE) == 0, "queue_select 0xffff reads size 0", "%u", C16(VCC_Q_SIZE));
    C16(VCC_Q_SELECT) = 0;
    u16 small = max >= 8 ? 4 : 1;
    C16(VCC_Q_SIZE) = small;
    check(C16(VCC_Q_SIZE) == small, "smaller power of 2 taken", "%u", C16(VCC_Q_SIZE));
    /* virtio_queue takes min(device's, ours): the device now says `small`. */
    if (virtio_queue(&rng, 0, 16, VIRTIO_NO_VECTOR) < 0) {
        check(0, "queue setup", "%s", rng.error);
        return;
    }
    virtio_driver_ok(&rng);
    check(rng.vq[0].size == small && rng_read(2000) > 0, "rng serves at the smaller size", "%u",
          rng.vq[0].size);
}

/* ---- reconfig -------------------------------------------------------------------------- */

static void case_reconfig(void)
{
    if (rng_up(16, VIRTIO_NO_VECTOR) < 0 || rng_read(2000) <= 0) {
        check(0, "rng serves before", "");
        return;
    }
    C16(VCC_Q_SELECT) = 0;
    u16 size = C16(VCC_Q_SIZE);
    u64 desc = C32(VCC_Q_DESC) | (u64)C32(VCC_Q_DESC + 4) << 32;
    u64 drv = C32(VCC_Q_DRIVER) | (u64)C32(VCC_Q_DRIVER + 4) << 32;
    u64 dev = C32(VCC_Q_DEVICE) | (u64)C32(VCC_Q_DEVICE + 4) << 32;
    C32(VCC_GFSELECT) = 0;
    u32 feat = C32(VCC_GF);
    C16(VCC_Q_SIZE) = 2;
    C32(VCC_Q_DESC) = 0xdead0000;
    C32(VCC_Q_DESC + 4) = 0x7fff;
    C32(VCC_Q_DRIVER) = 0x10;
    C32(VCC_Q_DEVICE) = 0xfffffff0;
    C32(VCC_Q_DEVICE + 4) = 0xffffffff;
    C16(VCC_Q_ENABLE) = 0;
    C16(VCC_Q_MSIX) = 0;
    C32(VCC_GF) = 0xffffffff;
    *(volatile u8 *)(rng.common + VCC_STATUS) = VIRTIO_S_ACKNOWLEDGE; /* bits only add up */
    u64 desc2 = C32(VCC_Q_DESC) | (u64)C32(VCC_Q_DESC + 4) << 32;
    u64 drv2 = C32(VCC_Q_DRIVER) | (u64)C32(VCC_Q_DRIVER + 4) << 32;
    u64 dev2 = C32(VCC_Q_DEVICE) | (u64)C32(VCC_Q_DEVICE + 4) << 32;
    check(C16(VCC_Q_SIZE) == size, "queue_size unchanged after DRIVER_OK", "%u", C16(VCC_Q_SIZE));
    check(desc2 == desc && drv2 == drv && dev2 == dev, "ring addresses unchanged after DRIVER_OK",
          "desc 0x%lx driver 0x%lx device 0x%lx", desc2, drv2, dev2);
    check(C16(VCC_Q_ENABLE) == 1, "queue_enable stays 1", "%u", C16(VCC_Q_ENABLE));
    check(C16(VCC_Q_MSIX) == VIRTIO_NO_VECTOR, "queue_msix_vector unchanged", "0x%x", C16(VCC_Q_MSIX));
    check(C32(VCC_GF) == feat, "driver_feature fixed after FEATURES_OK", "0x%x", C32(VCC_GF));
    check(virtio_status(&rng) == 0xf, "status keeps DRIVER_OK", "0x%x", virtio_status(&rng));
    check(rng_read(2000) > 0, "rng serves after the rewrites", "");
    /* A reset with a request in flight (2.4: the device forgets the queue), then re-init. */
    static u8 buf[64];
    struct vbuf b = {buf, sizeof(buf), 1};
    for (int i = 0; i < 4; i++) {
        vq_submit(&rng.vq[0], &b, 1);
        vq_notify(&rng.vq[0]);
        virtio_reset(&rng);
        check(virtio_status(&rng) == 0, "reset with a request in flight reads 0", "0x%x",
              virtio_status(&rng));
        if (rng_up(16, VIRTIO_NO_VECTOR) < 0)
            break;
    }
    check(rng_read(2000) > 0, "rng serves after resets in flight", "");
}

/* ---- msix ------------------------------------------------------------------------------ */

static volatile int msix_irqs;
static void on_msix(int v) { (void)v; msix_irqs++; }

static void case_msix(void)
{
    unsigned cap = pci_find_cap(rf, 0x11, 0);
    if (!cap) {
        check(0, "msix capability", "none");
        return;
    }
    u32 tbl = pci_read(rf, cap + 4, 4), pba = pci_read(rf, cap + 8, 4);
    unsigned n = (pci_read(rf, cap + 2, 2) & 0x7ff) + 1;
    u64 t = rf->bar[tbl & 7].addr + (tbl & ~7u), p = rf->bar[pba & 7].addr + (pba & ~7u);
    printf("msix: %u vectors, table 0x%lx, pba 0x%lx\n", n, t, p);
    if (rng_up(16, 0) < 0)
        return;
    pci_msix_enable(rf);
    /* Reads and writes around and past both structures, every width. */
    for (i64 off = -8; off < (i64)(16 * n + 24); off++)
        for (unsigned i = 0; i < 4; i++)
            rd(t + off, widths[i]);
    for (i64 off = -8; off < 24; off++)
        for (unsigned i = 0; i < 4; i++) {
            rd(p + off, widths[i]);
            wr(p + off, widths[i], ~0ul); /* read-only (6.8.2.10) */
        }
    for (unsigned off = 16 * n - 4; off < 16 * n + 32; off++) /* straddling and past the end */
        for (unsigned i = 0; i < 4; i++)
            wr(t + off, widths[i], 0x5a5a5a5a5a5a5a5aul);
    check(rd(p, 8) == 0, "PBA writes ignored", "0x%lx", rd(p, 8));
    /* Entry 0 at odd widths, with a message address that is not the LAPIC's. */
    wr(t + 12, 4, 0);
    wr(t + 1, 1, 0x12);
    wr(t + 2, 2, 0x3456);
    wr(t + 4, 8, 0x123456789abcdeful);
    rng_read(200); /* the message goes wherever KVM takes it; the guest must not care */
    /* Proper entry 0 -> vector 50, then the function mask: pending, then delivered. */
    vector_handler(50, on_msix);
    pci_msix_set(rf, 0, lapic_id(), 50, 0);
    sti();
    msix_irqs = 0;
    i64 got = rng_read(2000);
    delay_ms(20);
    check(got > 0 && msix_irqs > 0, "queue interrupts on its MSI-X vector", "%d irqs", msix_irqs);
    u16 ctl = (u16)pci_read(rf, cap + 2, 2);
    pci_write(rf, cap + 3, 1, (ctl | 0x4000) >> 8); /* function mask, a byte write */
    msix_irqs = 0;
    got = rng_read(2000);
    delay_ms(20);
    int pending = (int)(rd(p, 4) & 1);
    check(got > 0 && !msix_irqs && pending, "masked function: no interrupt, PBA bit pending",
          "%d irqs, pba 0x%lx", msix_irqs, rd(p, 8));
    pci_write(rf, cap + 3, 1, (ctl & ~0x4000) >> 8);
    delay_ms(20);
    check(msix_irqs == 1 && !(rd(p, 4) & 1), "unmask delivers the pending message",
          "%d irqs, pba 0x%lx", msix_irqs, rd(p, 8));
    cli();
}

/* ---- bar ------------------------------------------------------------------------------- */

static void bar_set(u64 a)
{
    /* Low half then high half with decoding on: every intermediate address is live too. */
    pci_write(rf, 0x10, 4, (u32)a | 0x4);
    pci_write(rf, 0x14, 4, (u32)(a >> 32));
}

static void case_bar(void)
{
    if (rng_up(16, VIRTIO_NO_VECTOR) < 0 || rng_read(2000) <= 0 || !blk_reads()) {
        check(0, "rng and blk serve before", "");
        return;
    }
    u64 home = rf->bar[0].addr, size = rf->bar[0].size;
    u64 ram = 0x1000000;
    static const char pattern[] = "hostile-pci ram pattern";
    memcpy((void *)ram, pattern, sizeof(pattern));
    u32 lapic = lapic_read(LAPIC_ID);
    u32 ecam_id = pci_ecam_read(&fns[0], 0, 4);
    printf("bar: rng BAR0 0x%lx size 0x%lx, blk BAR0 0x%lx\n", home, size, bf->bar[0].addr);

    /* Straight from home onto the blk's BAR, doorbells and all; then elsewhere in the
     * window and home again: a doorbell left behind at home would swallow the kicks. */
    bar_set(bf->bar[0].addr);
    check(blk_reads(), "BAR on the blk's BAR: blk serves", "");
    bar_set(home + 0x1000000);
    bar_set(home);
    check(rng_read(2000) > 0, "BAR moved away and home again: rng serves", "");

    bar_set(ram);
    check(!memcmp((void *)ram, pattern, sizeof(pattern)), "BAR on RAM: RAM reads as RAM", "");
    wr(ram + 0x3000, 2, 0); /* a "doorbell" in RAM: a RAM write */
    check(*(volatile u16 *)(ram + 0x3000) == 0, "BAR on RAM: a write lands in RAM", "");

    bar_set(0xfee00000);
    check(lapic_read(LAPIC_ID) == lapic, "BAR on the LAPIC: LAPIC answers", "id 0x%x", lapic_read(LAPIC_ID));

    bar_set(acpi.ecam_base);
    check(pci_ecam_read(&fns[0], 0, 4) == ecam_id, "BAR on ECAM: ECAM answers", "0x%x",
          pci_ecam_read(&fns[0], 0, 4));
    wr(acpi.ecam_base + 0x3000, 2, 0); /* ECAM 00:00.3: no such function */

    bar_set(0xfeb00000); /* the ACPI register page */
    check(rd(0xfeb00001, 1) == 0, "BAR on the ACPI page: sleep status answers", "");


    bar_set(0);
    pci_write(rf, 0x10, 4, 0xffffffff); /* sizing with decoding on */
    pci_write(rf, 0x14, 4, 0xffffffff);
    u64 sized = (pci_read(rf, 0x10, 4) & ~0xful) | (u64)pci_read(rf, 0x14, 4) << 32;
    check(sized == ~(size - 1), "sizing reads the size mask", "0x%lx", sized);

    bar_set(home);
    check(rng_read(2000) > 0, "BAR back home: rng serves", "");
    check(blk_reads(), "BAR back home: blk serves", "");
    check(rng_up(16, VIRTIO_NO_VECTOR) == 0 && rng_read(2000) > 0, "rng re-initialises", "");
}

/* ---- ged ------------------------------------------------------------------------------- */

static void case_ged(void)
{
    if (!acpi_init() || !acpi.hw_reduced || !acpi.sleep_ctl.address) {
        check(0, "hardware-reduced FADT", "");
        return;
    }
    u64 base = acpi.sleep_ctl.address;
    printf("ged: sleep control 0x%lx status 0x%lx reset 0x%lx\n", base, acpi.sleep_sts.address,
           acpi.reset_reg.address);
    for (unsigned off = 0; off < 16; off++)
        for (unsigned i = 0; i < 4; i++)
            rd(base + off, widths[i]);
    for (unsigned off = 1; off < 16; off++) /* everything but SLEEP_CONTROL and RESET */
        for (unsigned i = 0; i < 4; i++)
            if (off != 2 && !(off < 2 && off + widths[i] > 2))
                wr(base + off, widths[i], 0xfffffffffffffffful);
    for (u8 typ = 0; typ < 8; typ++) /* SLP_EN with each sleep type but S5 */
        if (typ != 5)
            for (unsigned i = 0; i < 3; i++)
                wr(base, widths[i], (u64)(typ << 2 | 0x20));
    wr(base + 2, 1, 0); /* reset register, wrong values */
    wr(base + 2, 1, 0xfe);
    wr(base + 2, 2, 0x100);
    check(rd(base + 1, 1) == 0, "sleep status reads WAK_STS clear", "0x%lx", rd(base + 1, 1));
    static const u16 pm1[] = {0x600, 0xb000, 0x400};
    unsigned not_ones = 0;
    for (unsigned k = 0; k < ARRAY_SIZE(pm1); k++)
        for (unsigned off = 0; off < 16; off++) {
            not_ones += inb(pm1[k] + off) != 0xff;
            not_ones += off % 2 == 0 && inw(pm1[k] + off) != 0xffff;
            not_ones += off % 4 == 0 && inl(pm1[k] + off) != 0xffffffffu;
            outb(pm1[k] + off, 0xff);
            outw(pm1[k] + off, 0x2000 | 5 << 10); /* PM1 SLP_EN | SLP_TYP 5 */
        }
    check(!not_ones, "legacy PM1 ports absent (all-ones)", "%u reads not all-ones", not_ones);
}

/* ---- sipi ------------------------------------------------------------------------------ */

static void icr_raw(u32 hi, u32 lo)
{
    lapic_write(LAPIC_ICR_HI, hi);
    lapic_write(LAPIC_ICR_LO, lo);
}

static volatile int aps_alive;
static void ap_alive(struct cpu *c)
{
    (void)c;
    __atomic_fetch_add(&aps_alive, 1, __ATOMIC_RELEASE);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void case_sipi(void)
{
    if (!acpi_init() || acpi.nr_cpus < 2) {
        check(0, "needs vcpus >= 2", "");
        return;
    }
    lapic_enable();
    /* The storm's SIPIs start the APs on a halt loop in a page of its own, not in
     * SMP_TRAMPOLINE: an AP started late by the storm can still be inside the loop when
     * smp_boot copies the real trampoline there (before its INIT reaches that AP), and
     * would then run half of each (seen: an AP executing the GDT at 0x500). */
    static const u8 halt[] = {0xfa, 0xf4, 0xeb, 0xfd}; /* cli; hlt; jmp $-1 (real mode) */
    const u64 storm_page = 0x5000; /* free in xenopus's low layout (boot/layout.py) */
    memcpy((void *)storm_page, halt, sizeof(halt));
    u64 rounds = cmdline_u64("rounds", 200);
    const u32 all_but_self = 3u << 18, vec = storm_page >> 12;
    for (u64 i = 0; i < rounds; i++) {
        icr_raw(0, all_but_self | 0x4500);        /* INIT, assert */
        icr_raw(0, all_but_self | 0x8500);        /* INIT, level de-assert */
        icr_raw(0, all_but_self | 0x4600 | vec);  /* SIPI */
        icr_raw(0, all_but_self | 0x4600 | vec);  /* SIPI again */
        icr_raw(0x55u << 24, 0x4500);             /* INIT to a missing APIC id */
        icr_raw(0x55u << 24, 0x4600 | vec);
        /* SIPI broadcast: to the storm's page too. An AP whose INIT landed after the
         * SIPIs above is still waiting for one and starts at vector x 4 KiB, as a CPU
         * would; with vector 0xff that was 0xff000, firmware space, not ours (the AP
         * ran what was there and triple-faulted the guest, 1 run in 5). */
        icr_raw(0xffu << 24, 0x4600 | vec);
    }
    printf("sipi: %lu rounds sent\n", rounds);
    unsigned aps = smp_boot(ap_alive);
    for (int i = 0; i < 50 && aps_alive < (int)aps; i++)
        delay_ms(20);
    check(aps == acpi.nr_cpus - 1 && aps_alive == (int)aps, "every AP boots after the storm",
          "%u of %u started, %d alive", aps, acpi.nr_cpus - 1, aps_alive);
}

/* ---- e9 -------------------------------------------------------------------------------- */

static void outsb(u16 port, const void *buf, u64 n)
{
    __asm__ volatile("rep outsb" : "+S"(buf), "+c"(n) : "d"(port) : "memory");
}

static void case_e9(void)
{
    /* Short lines, so the guest outruns the host log's rate even where ring 0 is emulated. */
    u64 lines = cmdline_u64("lines", 6000);
    static char block[4096];
    const unsigned per = sizeof(block) / 3;
    for (unsigned i = 0; i < per; i++)
        memcpy(block + 3 * i, "e9\n", 3);
    for (u64 sent = 0; sent < lines; sent += per) {
        u64 n = lines - sent < per ? lines - sent : per;
        outsb(0xe9, block, 3 * n);
    }
    memset(block, 'L', sizeof(block));
    for (int i = 0; i < 16; i++) /* a 64 KiB line */
        outsb(0xe9, block, sizeof(block));
    outb(0xe9, '\n');
    printf("e9: %lu lines and a 64 KiB one sent\n", lines);
}

void guest_main(void)
{
    const char *c = cmdline_get("case");
    static char name[32];
    snprintf(name, sizeof(name), "%s", c ? c : "");
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    rf = virtio_find(fns, n, VIRTIO_ID_RNG, 0);
    bf = virtio_find(fns, n, VIRTIO_ID_BLOCK, 0);
    tsc_khz();
    int needs_pci = strcmp(name, "ged") && strcmp(name, "sipi") && strcmp(name, "e9");
    if (needs_pci && (!rf || !bf)) {
        result(0, "hostile-pci", "%s: needs a virtio-rng and a virtio-blk", name);
        return;
    }
    if (!strcmp(name, "common"))
        case_common();
    else if (!strcmp(name, "qsize"))
        case_qsize();
    else if (!strcmp(name, "reconfig"))
        case_reconfig();
    else if (!strcmp(name, "msix"))
        case_msix();
    else if (!strcmp(name, "bar"))
        case_bar();
    else if (!strcmp(name, "ged"))
        case_ged();
    else if (!strcmp(name, "sipi"))
        case_sipi();
    else if (!strcmp(name, "e9"))
        case_e9();
    else {
        result(0, "hostile-pci", "unknown case '%s'", name);
        return;
    }
    result(!failures, "hostile-pci", "%s", name);
}
