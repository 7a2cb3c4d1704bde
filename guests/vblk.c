/*
 * virtio-blk (virtio 1.2 5.2) over PCI. Functional mode: capacity, GET_ID, a patterned write
 * of count sectors at sector, FLUSH, read back and compare, DISCARD and WRITE_ZEROES of the
 * given ranges (the zeroed range is read back), or with expect_ro: a write must fail with
 * VIRTIO_BLK_S_IOERR while reads work. The first request completes by MSI-X interrupt.
 *
 * The pattern: disk byte at offset o (o = sector * 512 + i) is
 *     (o / 512 * 131 + (o % 512) * 7 + seed) mod 256
 *
 * Command line (defaults in brackets):
 *   index=N [0]            which virtio-blk function (0 = first)
 *   sector=S [2048] count=C [8] seed=N [0x5a]
 *   discard=S,N            DISCARD these sectors (needs VIRTIO_BLK_F_DISCARD)
 *   zeroes=S,N             WRITE_ZEROES these sectors (needs VIRTIO_BLK_F_WRITE_ZEROES)
 *   expect_ro              the disk is read-only: writes must fail with IOERR
 *   expect_sectors=N expect_serial=STR
 *   nomsix                 poll the first request instead of taking its MSI-X interrupt
 *   event_idx indirect     negotiate VIRTIO_F_EVENT_IDX / VIRTIO_F_INDIRECT_DESC
 *   loops=N [1]            N rounds of write + read back, round i at sector + i * count
 *                          with seed + i (printing "loop i"), then every round's range
 *                          read back again: I/O that keeps going across a live migration
 *   round_ms=N [0]         wait N ms after each round: the rounds outlast a slow migration
 * Benchmark mode (driven from ring 3 by polling, no interrupts):
 *   bench=seq|rand rw=read|write [read] bs=BYTES [1 MiB seq, 4096 rand] qd=N [4 seq, 32 rand]
 *   ops=N [256 seq, 20000 rand] span=SECTORS [capacity - sector]
 * prints "bench: <seq|rand> <read|write> bs=B qd=Q ops=N bytes=X us=T MiB/s=M.M IOPS=I".
 */
#include "virtio.h"

GUEST("vblk");

/* 5.2.3 feature bits, 5.2.4 configuration layout, 5.2.6 requests */
#define BLK_F_RO (1ul << 5)
#define BLK_F_BLK_SIZE (1ul << 6)
#define BLK_F_FLUSH (1ul << 9)
#define BLK_F_DISCARD (1ul << 13)
#define BLK_F_WRITE_ZEROES (1ul << 14)
#define BLK_CFG_CAPACITY 0
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_T_DISCARD 11
#define BLK_T_WRITE_ZEROES 13
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define BLK_ID_BYTES 20

struct blk_hdr {
    u32 type, reserved;
    u64 sector;
};
struct blk_range { /* virtio_blk_discard_write_zeroes */
    u64 sector;
    u32 num_sectors, flags;
};

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;
static volatile int msix_hits;
static unsigned failed;
#define TIMEOUT_MS 5000

static void check(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok" : "FAIL", what);
    failed += !ok;
}

static void on_msix(int vector)
{
    (void)vector;
    msix_hits++;
}

/* One request: header, optional data (device-writable for reads), status. Returns the
 * status byte, or -1 if the device never answered. */
static int request(u32 type, u64 sector, void *data, u32 len, int data_write)
{
    static struct blk_hdr hdr;
    static volatile u8 status;
    hdr = (struct blk_hdr){type, 0, sector};
    status = 0xff;
    struct vbuf b[3] = {{&hdr, sizeof(hdr), 0}, {data, len, data_write}, {(void *)&status, 1, 1}};
    struct vbuf s[2] = {{&hdr, sizeof(hdr), 0}, {(void *)&status, 1, 1}};
    i64 r = data ? vq_transfer(&dev.vq[0], b, 3, TIMEOUT_MS) : vq_transfer(&dev.vq[0], s, 2, TIMEOUT_MS);
    return r < 0 ? -1 : status;
}

struct fill {
    u8 *buf;
    u64 sector, count, seed;
    u64 mismatch; /* first mismatching offset + 1 */
};

static u64 fill_pattern(u64 arg)
{
    struct fill *f = (struct fill *)arg;
    for (u64 i = 0; i < f->count * 512; i++) {
        u64 o = f->sector * 512 + i;
        f->buf[i] = (u8)((o >> 9) * 131 + (o & 511) * 7 + f->seed);
    }
    return 0;
}

static u64 check_pattern(u64 arg)
{
    struct fill *f = (struct fill *)arg;
    for (u64 i = 0; i < f->count * 512; i++) {
        u64 o = f->sector * 512 + i;
        if (f->buf[i] != (u8)((o >> 9) * 131 + (o & 511) * 7 + f->seed))
            return i + 1;
    }
    return 0;
}

static u64 all_zero(u64 arg)
{
    struct fill *f = (struct fill *)arg;
    for (u64 i = 0; i < f->count * 512; i++)
        if (f->buf[i])
            return i + 1;
    return 0;
}

static int range_arg(const char *key, u64 *s, u64 *n)
{
    const char *v = cmdline_get(key);
    if (!v || !*v)
        return 0;
    const char *end;
    *s = strtou64(v, &end);
    *n = *end == ',' ? strtou64(end + 1, NULL) : 8;
    return 1;
}

static int range_request(u32 type, u64 s, u64 n)
{
    static struct blk_range r;
    r = (struct blk_range){s, (u32)n, 0};
    return request(type, 0, &r, sizeof(r), 0);
}

/* ---- benchmark, all in ring 3 ---- */

struct bench {
    struct virtq *q;
    int random, write;
    u64 bs, qd, ops, base, span; /* span in sectors */
    u8 *data;                    /* qd * bs */
    struct blk_hdr *hdr;         /* qd */
    volatile u8 *status;         /* qd */
    u16 *slot_of_head;           /* by descriptor head */
    u16 *free_slots;             /* qd: a stack of idle request slots */
    u64 done, errors, ticks;
    u64 phantom; /* head + 1 of a completion that arrived with nothing in flight */
};

static u64 xorshift(u64 *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static u64 bench_run(u64 arg)
{
    struct bench *b = (struct bench *)arg;
    u64 seed = 0x9e3779b97f4a7c15ul, next_seq = 0, issued = 0, inflight = 0, nfree = b->qd;
    for (u64 i = 0; i < b->qd; i++)
        b->free_slots[i] = (u16)i;
    u64 blocks = b->span / (b->bs / 512);
    if (!blocks)
        blocks = 1;
    u64 t0 = rdtsc();
    while (b->done < b->ops) {
        int added = 0;
        while (inflight < b->qd && issued < b->ops) {
            u64 slot = b->free_slots[nfree - 1], blk;
            if (b->random)
                blk = xorshift(&seed) % blocks;
            else
                blk = next_seq++ % blocks;
            b->hdr[slot] = (struct blk_hdr){b->write ? BLK_T_OUT : BLK_T_IN, 0,
                                            b->base + blk * (b->bs / 512)};
            b->status[slot] = 0xff;
            struct vbuf v[3] = {{&b->hdr[slot], sizeof(struct blk_hdr), 0},
                                {b->data + slot * b->bs, (u32)b->bs, !b->write},
                                {(void *)&b->status[slot], 1, 1}};
            int head = vq_submit(b->q, v, 3);
            if (head < 0)
                break;
            b->slot_of_head[head] = (u16)slot;
            nfree--;
            issued++;
            inflight++;
            added = 1;
        }
        if (added)
            vq_notify(b->q);
        u32 len;
        int head;
        u64 spins = 0;
        while ((head = vq_poll(b->q, &len)) < 0) {
            if (++spins > 4000000000ul) /* the device stopped answering */
                goto out;
            pause();
        }
        do {
            if (!inflight) { /* a used element for no request: the device broke the ring */
                b->phantom = (u64)head + 1; /* reported from ring 0: no port I/O here */
                b->errors++;
                goto out;
            }
            u16 slot = b->slot_of_head[head];
            if (b->status[slot] != BLK_S_OK)
                b->errors++;
            b->free_slots[nfree++] = slot;
            b->done++;
            inflight--;
        } while ((head = vq_poll(b->q, &len)) >= 0);
    }
out:
    b->ticks = rdtsc() - t0;
    return b->done;
}

static void bench(u64 capacity)
{
    const char *mode = cmdline_get("bench");
    struct bench *b = page_alloc(sizeof(*b), 64);
    memset(b, 0, sizeof(*b));
    b->random = !strcmp(mode, "rand");
    const char *rw = cmdline_get("rw");
    b->write = rw && !strcmp(rw, "write");
    b->bs = cmdline_u64("bs", b->random ? 4096 : 1 << 20);
    b->qd = cmdline_u64("qd", b->random ? 32 : 4);
    b->ops = cmdline_u64("ops", b->random ? 20000 : 256);
    b->base = cmdline_u64("sector", 2048);
    b->span = cmdline_u64("span", capacity > b->base ? capacity - b->base : 0);
    b->q = &dev.vq[0];
    if (b->qd * 3 > b->q->size)
        b->qd = b->q->size / 3;
    b->data = page_alloc(b->qd * b->bs, 4096);
    b->hdr = page_alloc(b->qd * sizeof(struct blk_hdr), 64);
    b->status = page_alloc(b->qd, 64);
    b->slot_of_head = page_alloc(2ul * b->q->size, 64);
    b->free_slots = page_alloc(2ul * b->qd, 64);
    if (!b->data || !b->hdr || !b->status || !b->slot_of_head || !b->free_slots || b->bs % 512 || b->span < b->bs / 512) {
        result(0, "vblk", "bench: bad parameters or not enough memory");
        return;
    }
    tsc_khz(); /* calibrated in ring 0 (PIT) before ring 3 needs it */
    b->q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    run_user(bench_run, (u64)b, 0);
    if (b->phantom)
        printf("vblk: bench: used element for head %lu with no request in flight\n", b->phantom - 1);
    u64 us = tsc_ns(b->ticks) / 1000;
    if (!us)
        us = 1;
    u64 bytes = b->done * b->bs;
    u64 mibs10 = bytes * 10 * 1000000 / us >> 20;
    u64 iops = b->done * 1000000 / us;
    printf("bench: %s %s bs=%lu qd=%lu ops=%lu bytes=%lu us=%lu MiB/s=%lu.%lu IOPS=%lu errors=%lu\n",
           b->random ? "rand" : "seq", b->write ? "write" : "read", b->bs, b->qd, b->done, bytes,
           us, mibs10 / 10, mibs10 % 10, iops, b->errors);
    result(b->done == b->ops && !b->errors, "vblk", "bench %s %s", b->random ? "rand" : "seq",
           b->write ? "write" : "read");
}

void guest_main(void)
{
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *f = virtio_find(fns, n, VIRTIO_ID_BLOCK, (unsigned)cmdline_u64("index", 0));
    if (!f) {
        result(0, "vblk", "no virtio-blk device");
        return;
    }
    u64 want = BLK_F_RO | BLK_F_BLK_SIZE | BLK_F_FLUSH | BLK_F_DISCARD | BLK_F_WRITE_ZEROES;
    if (cmdline_has("event_idx"))
        want |= VIRTIO_F_EVENT_IDX;
    if (cmdline_has("indirect"))
        want |= VIRTIO_F_INDIRECT_DESC;
    int use_msix = !cmdline_has("nomsix") && !cmdline_has("bench");
    if (virtio_init(&dev, f, want) < 0) {
        result(0, "vblk", "init: %s", dev.error);
        return;
    }
    unsigned msix = use_msix ? pci_msix_enable(f) : 0;
    if (msix)
        pci_msix_set(f, 0, lapic_id(), VEC_MSI_BASE, 0);
    if (virtio_queue(&dev, 0, 256, msix ? 0 : VIRTIO_NO_VECTOR) < 0) {
        result(0, "vblk", "queue: %s", dev.error);
        return;
    }
    virtio_driver_ok(&dev);
    printf("vblk: %02x:%02x.%x features 0x%lx of 0x%lx, queue size %u\n", f->bus, f->dev, f->fn,
           dev.features, dev.offered, dev.vq[0].size);
    u64 capacity = virtio_cfg64(&dev, BLK_CFG_CAPACITY);
    printf("capacity: %lu sectors\n", capacity);
    tsc_khz();
    if (cmdline_get("bench")) {
        bench(capacity);
        return;
    }
    const char *want_sectors = cmdline_get("expect_sectors");
    if (want_sectors && *want_sectors)
        check(strtou64(want_sectors, NULL) == capacity, "capacity");

    /* GET_ID (5.2.6.1: 20 bytes, NUL-padded), by interrupt where MSI-X was set up. */
    static char id[BLK_ID_BYTES + 1];
    if (msix) {
        lapic_enable();
        vector_handler(VEC_MSI_BASE, on_msix);
        static struct blk_hdr hdr;
        static volatile u8 status;
        hdr = (struct blk_hdr){BLK_T_GET_ID, 0, 0};
        status = 0xff;
        struct vbuf b[3] = {{&hdr, sizeof(hdr), 0}, {id, BLK_ID_BYTES, 1}, {(void *)&status, 1, 1}};
        vq_submit(&dev.vq[0], b, 3);
        vq_notify(&dev.vq[0]);
        wait_flag(&msix_hits, TIMEOUT_MS);
        int got = vq_poll(&dev.vq[0], NULL);
        printf("msix: %d interrupt(s) on vector %d, queue vector %u\n", msix_hits, VEC_MSI_BASE,
               dev.vq[0].msix);
        check(msix_hits > 0 && got >= 0 && status == BLK_S_OK, "get_id by msi-x interrupt");
    } else {
        check(request(BLK_T_GET_ID, 0, id, BLK_ID_BYTES, 1) == BLK_S_OK, "get_id");
    }
    printf("serial: %s\n", id);
    const char *want_serial = cmdline_get("expect_serial");
    if (want_serial)
        check(!strcmp(want_serial, id), "serial");

    u64 sector = cmdline_u64("sector", 2048), count = cmdline_u64("count", 8);
    struct fill fl = {page_alloc(count * 512, 4096), sector, count, cmdline_u64("seed", 0x5a), 0};
    if (!fl.buf || sector + count > capacity) {
        result(0, "vblk", "bad sector/count");
        return;
    }
    if (cmdline_has("expect_ro")) {
        check(!!(dev.features & BLK_F_RO), "VIRTIO_BLK_F_RO offered");
        run_user(fill_pattern, (u64)&fl, 0);
        int st = request(BLK_T_OUT, sector, fl.buf, (u32)(count * 512), 0);
        printf("write to read-only disk: status %d\n", st);
        check(st == BLK_S_IOERR, "write refused with VIRTIO_BLK_S_IOERR");
        st = request(BLK_T_IN, sector, fl.buf, (u32)(count * 512), 1);
        check(st == BLK_S_OK, "read from read-only disk");
        result(!failed, "vblk", "ro");
        return;
    }
    run_user(fill_pattern, (u64)&fl, 0);
    int st = request(BLK_T_OUT, sector, fl.buf, (u32)(count * 512), 0);
    printf("write: sector %lu count %lu status %d\n", sector, count, st);
    check(st == BLK_S_OK, "write");
    if (dev.features & BLK_F_FLUSH) {
        st = request(BLK_T_FLUSH, 0, NULL, 0, 0);
        printf("flush: status %d\n", st);
        check(st == BLK_S_OK, "flush");
    } else {
        printf("flush: not offered\n");
    }
    memset(fl.buf, 0, 512); /* so a read that moves nothing cannot pass */
    st = request(BLK_T_IN, sector, fl.buf, (u32)(count * 512), 1);
    u64 bad = run_user(check_pattern, (u64)&fl, 0);
    printf("read: sector %lu count %lu status %d %s\n", sector, count, st,
           bad ? "MISMATCH" : "pattern ok");
    if (bad)
        printf("  first mismatch at byte %lu\n", bad - 1);
    check(st == BLK_S_OK && !bad, "read back");

    u64 loops = cmdline_u64("loops", 1);
    if (sector + loops * count > capacity) {
        result(0, "vblk", "loops do not fit on the disk");
        return;
    }
    u64 round_ms = cmdline_u64("round_ms", 0);
    for (u64 i = 1; i < loops && !failed; i++) { /* round 0 was the write above */
        if (round_ms)
            delay_ms((unsigned)round_ms);
        struct fill li = {fl.buf, sector + i * count, count, fl.seed + i, 0};
        run_user(fill_pattern, (u64)&li, 0);
        st = request(BLK_T_OUT, li.sector, li.buf, (u32)(count * 512), 0);
        memset(li.buf, 0, 512);
        int rd = request(BLK_T_IN, li.sector, li.buf, (u32)(count * 512), 1);
        bad = run_user(check_pattern, (u64)&li, 0);
        if (st != BLK_S_OK || rd != BLK_S_OK || bad) {
            printf("loop %lu: write %d read %d %s\n", i, st, rd, bad ? "MISMATCH" : "");
            check(0, "loop");
        } else {
            printf("loop %lu\n", i);
        }
    }
    for (u64 i = 0; loops > 1 && i < loops && !failed; i++) { /* all of it, again */
        struct fill li = {fl.buf, sector + i * count, count, fl.seed + i, 0};
        memset(li.buf, 0, 512);
        st = request(BLK_T_IN, li.sector, li.buf, (u32)(count * 512), 1);
        if (st != BLK_S_OK || run_user(check_pattern, (u64)&li, 0)) {
            printf("reread %lu: status %d MISMATCH\n", i, st);
            check(0, "reread");
        }
    }
    if (loops > 1 && !failed)
        printf("loops: %lu rounds written and read back\n", loops);

    u64 s, c;
    if (range_arg("discard", &s, &c)) {
        if (!(dev.features & BLK_F_DISCARD)) {
            check(0, "discard offered");
        } else {
            st = range_request(BLK_T_DISCARD, s, c);
            printf("discard: sector %lu count %lu status %d\n", s, c, st);
            check(st == BLK_S_OK, "discard");
        }
    }
    if (range_arg("zeroes", &s, &c)) {
        if (!(dev.features & BLK_F_WRITE_ZEROES)) {
            check(0, "write_zeroes offered");
        } else {
            st = range_request(BLK_T_WRITE_ZEROES, s, c);
            printf("write_zeroes: sector %lu count %lu status %d\n", s, c, st);
            check(st == BLK_S_OK, "write_zeroes");
            struct fill z = {page_alloc(c * 512, 4096), s, c, 0, 0};
            memset(z.buf, 0xff, 512);
            st = request(BLK_T_IN, s, z.buf, (u32)(c * 512), 1);
            check(st == BLK_S_OK && !run_user(all_zero, (u64)&z, 0), "zeroed range reads as zeroes");
        }
    }
    if ((dev.features & BLK_F_FLUSH) && request(BLK_T_FLUSH, 0, NULL, 0, 0) != BLK_S_OK)
        check(0, "final flush");
    result(!failed, "vblk", "");
}
