/*
 * Malformed virtqueue chains against a virtio-blk device (virtio 1.2 2.7.4 / 2.7.5 driver
 * requirements, broken on purpose), then: does a second device still serve, does the VMM
 * still answer, and does the blk device either serve a good request or report
 * DEVICE_NEEDS_RESET (and work again after a reset)?
 *
 * case=   loop      two (device-readable) descriptors whose `next` point at each other
 *         long      an indirect table of 2 * queue-size descriptors (longer than the queue;
 *                   without VIRTIO_F_INDIRECT_DESC: every descriptor chained into a ring)
 *         oob       a data buffer at 0x700000000000, outside guest RAM
 *         overflow  a data buffer at 0xfffffffffffff000 of 0x2000 bytes (address + length wrap)
 *         rodata    a read (VIRTIO_BLK_T_IN) whose data buffer is device-readable only
 *         order     a device-readable descriptor after a device-writable one
 *         nested    an indirect table holding a VIRTIO_DESC_F_INDIRECT descriptor
 *         good      a well-formed read through the same raw path (control case)
 * other=rng|blk [rng]   the second device: virtio-rng, or the second virtio-blk
 *
 * Prints "bad request: ..." (what the device did with it), "device status 0x..", "other
 * device (...): ok|FAIL", "blk after: ok|FAIL ..." and RESULT: PASS hostile <case>.
 */
#include "virtio.h"

GUEST("hostile");

#define QSIZE 16
#define BLK_T_IN 0
#define OOB_ADDR 0x700000000000ul

struct blk_hdr {
    u32 type, reserved;
    u64 sector;
};

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev blk, other;
static struct blk_hdr hdr;
static volatile u8 status;
static u8 data[QSIZE * 2 * 512] __attribute__((aligned(4096)));
static struct vring_desc table[QSIZE * 2] __attribute__((aligned(16)));
static struct vring_desc table2[4] __attribute__((aligned(16)));

static int blk_setup(struct virtio_dev *d, struct pci_fn *f)
{
    if (virtio_init(d, f, VIRTIO_F_INDIRECT_DESC) < 0 || virtio_queue(d, 0, QSIZE, VIRTIO_NO_VECTOR) < 0)
        return -1;
    virtio_driver_ok(d);
    return 0;
}

/* A well-formed read of sector 0 through the driver: 0 if the device completed it OK. */
static int good_read(struct virtio_dev *d, u64 ms)
{
    static struct blk_hdr h;
    static volatile u8 st;
    static u8 buf[512];
    h = (struct blk_hdr){BLK_T_IN, 0, 0};
    st = 0xff;
    struct vbuf b[3] = {{&h, sizeof(h), 0}, {buf, 512, 1}, {(void *)&st, 1, 1}};
    return vq_transfer(&d->vq[0], b, 3, ms) >= 0 && st == 0 ? 0 : -1;
}

static void desc(struct vring_desc *t, unsigned i, const void *addr, u32 len, u16 flags, u16 next)
{
    t[i] = (struct vring_desc){(u64)addr, len, flags, next};
}

/* Builds the chain for `name` at the top of the descriptor table (the driver's free list
 * hands out the bottom first) and returns its head, or -1 for an unknown case. */
static int build(const char *name, struct virtq *q)
{
    const u16 A = q->size - 4, B = q->size - 3, C = q->size - 2;
    const u16 NEXT = VRING_DESC_F_NEXT, W = VRING_DESC_F_WRITE, IND = VRING_DESC_F_INDIRECT;
    struct vring_desc *d = q->desc;
    hdr = (struct blk_hdr){BLK_T_IN, 0, 0};
    status = 0xff;
    if (!strcmp(name, "good")) {
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, data, 512, NEXT | W, C);
        desc(d, C, (void *)&status, 1, W, 0);
    } else if (!strcmp(name, "loop")) { /* both readable: the loop is the only fault */
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, data, 512, NEXT, A);
    } else if (!strcmp(name, "long")) {
        if (blk.features & VIRTIO_F_INDIRECT_DESC) {
            unsigned n = 2u * q->size;
            desc(table, 0, &hdr, sizeof(hdr), NEXT, 1);
            for (unsigned i = 1; i + 1 < n; i++)
                desc(table, i, data + 512 * (i - 1), 512, NEXT | W, (u16)(i + 1));
            desc(table, n - 1, (void *)&status, 1, W, 0);
            desc(d, A, table, n * sizeof(struct vring_desc), IND, 0);
        } else {
            printf("long: no VIRTIO_F_INDIRECT_DESC: chaining the whole table into a ring\n");
            desc(d, 0, &hdr, sizeof(hdr), NEXT, 1);
            for (u16 i = 1; i < q->size; i++)
                desc(d, i, data + 512 * i, 512, NEXT | W, (u16)((i + 1) % q->size));
            return 0;
        }
    } else if (!strcmp(name, "oob")) {
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, (void *)OOB_ADDR, 512, NEXT | W, C);
        desc(d, C, (void *)&status, 1, W, 0);
    } else if (!strcmp(name, "overflow")) {
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, (void *)0xfffffffffffff000ul, 0x2000, NEXT | W, C);
        desc(d, C, (void *)&status, 1, W, 0);
    } else if (!strcmp(name, "rodata")) {
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, data, 512, NEXT, C); /* the device must write here, but may only read */
        desc(d, C, (void *)&status, 1, W, 0);
    } else if (!strcmp(name, "order")) {
        desc(d, A, &hdr, sizeof(hdr), NEXT, B);
        desc(d, B, (void *)&status, 1, NEXT | W, C);
        desc(d, C, data, 512, 0, 0); /* readable after writable: 2.7.4.2 forbids it */
    } else if (!strcmp(name, "nested")) {
        desc(table2, 0, &hdr, sizeof(hdr), NEXT, 1);
        desc(table2, 1, data, 512, NEXT | W, 2);
        desc(table2, 2, (void *)&status, 1, W, 0);
        desc(table, 0, table2, 3 * sizeof(struct vring_desc), IND, 0);
        desc(d, A, table, sizeof(struct vring_desc), IND, 0);
    } else {
        return -1;
    }
    return A;
}

static int other_works(struct pci_fn *of, int is_rng)
{
    if (is_rng) {
        static u8 buf[16];
        struct vbuf b = {buf, sizeof(buf), 1};
        i64 n = vq_transfer(&other.vq[0], &b, 1, 2000);
        printf("other device (virtio-rng %02x:%02x.%x): %ld bytes\n", of->bus, of->dev, of->fn, n);
        return n > 0;
    }
    int ok = good_read(&other, 2000) == 0;
    printf("other device (virtio-blk %02x:%02x.%x): read %s\n", of->bus, of->dev, of->fn,
           ok ? "ok" : "FAILED");
    return ok;
}

void guest_main(void)
{
    const char *name = cmdline_get("case");
    static char cname[32];
    snprintf(cname, sizeof(cname), "%s", name ? name : "");
    const char *ok_other = cmdline_get("other");
    int is_rng = !ok_other || strcmp(ok_other, "blk");
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *bf = virtio_find(fns, n, VIRTIO_ID_BLOCK, 0);
    struct pci_fn *of = is_rng ? virtio_find(fns, n, VIRTIO_ID_RNG, 0) : virtio_find(fns, n, VIRTIO_ID_BLOCK, 1);
    if (!bf || !of) {
        result(0, "hostile", "%s: needs a virtio-blk and a %s", cname, is_rng ? "virtio-rng" : "second virtio-blk");
        return;
    }
    tsc_khz();
    if (blk_setup(&blk, bf) < 0) {
        result(0, "hostile", "%s: blk init: %s", cname, blk.error);
        return;
    }
    int oinit = is_rng ? (virtio_init(&other, of, 0) < 0 || virtio_queue(&other, 0, 16, VIRTIO_NO_VECTOR) < 0)
                       : blk_setup(&other, of) < 0;
    if (oinit) {
        result(0, "hostile", "%s: other device init: %s", cname, other.error);
        return;
    }
    if (is_rng)
        virtio_driver_ok(&other);
    printf("hostile: blk %02x:%02x.%x features 0x%lx queue size %u\n", bf->bus, bf->dev, bf->fn,
           blk.features, blk.vq[0].size);
    if (good_read(&blk, 2000) < 0) {
        result(0, "hostile", "%s: the first good request failed", cname);
        return;
    }
    printf("before: good request ok\n");

    struct virtq *q = &blk.vq[0];
    int head = build(cname, q);
    if (head < 0) {
        result(0, "hostile", "unknown case '%s'", cname);
        return;
    }
    printf("case %s: head %d\n", cname, head);
    u16 idx = q->avail->idx;
    q->avail->ring[idx & (q->size - 1)] = (u16)head;
    barrier();
    q->avail->idx = (u16)(idx + 1);
    vq_notify(q);
    /* What did the device make of it? A used element (with a status), or nothing. */
    u64 limit = rdtsc() + 500 * tsc_khz();
    int seen = 0;
    while (!seen && rdtsc() < limit) {
        if (q->used->idx != q->last_used) {
            volatile struct vring_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
            printf("bad request: completed id %u len %u status 0x%x\n", e->id, e->len, status);
            q->last_used++;
            seen = 1;
        }
        pause();
    }
    if (!seen)
        printf("bad request: no completion within 500 ms\n");
    u8 st = virtio_status(&blk);
    printf("device status 0x%x%s\n", st, st & VIRTIO_S_NEEDS_RESET ? " DEVICE_NEEDS_RESET" : "");
    int vmm_ok = st != 0xff; /* the transport still answers */

    int other_ok = other_works(of, is_rng);
    int blk_ok;
    if (st & VIRTIO_S_NEEDS_RESET) {
        printf("blk: resetting\n");
        blk_ok = blk_setup(&blk, bf) == 0 && good_read(&blk, 2000) == 0;
        printf("blk after reset: %s\n", blk_ok ? "ok" : "FAILED");
    } else {
        /* The bad chain's descriptors sit at the top of the table: the free list hands out
         * the bottom, so a good request cannot collide with them. */
        blk_ok = good_read(&blk, 2000) == 0;
        if (!blk_ok && (virtio_status(&blk) & VIRTIO_S_NEEDS_RESET)) {
            printf("blk: DEVICE_NEEDS_RESET after the good request: resetting\n");
            blk_ok = blk_setup(&blk, bf) == 0 && good_read(&blk, 2000) == 0;
        }
        printf("blk after: %s\n", blk_ok ? "ok" : "FAILED");
    }
    int pass = vmm_ok && other_ok && blk_ok;
    if (!strcmp(cname, "good"))
        pass = pass && seen && status == 0;
    result(pass, "hostile", "%s", cname);
}
