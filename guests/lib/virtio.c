/* virtio 1.2 over PCI (modern transport, 4.1) with split virtqueues (2.7). */
#include "virtio.h"

unsigned virtio_type(const struct pci_fn *f)
{
    if (f->vendor != VIRTIO_VENDOR)
        return 0;
    if (f->device >= 0x1040 && f->device <= 0x107f)
        return f->device - 0x1040u;
    if (f->device >= 0x1000 && f->device <= 0x103f)
        return f->subsys;
    return 0;
}

struct pci_fn *virtio_find(struct pci_fn *fns, unsigned n, unsigned type, unsigned nth)
{
    for (unsigned i = 0; i < n; i++)
        if (virtio_type(&fns[i]) == type && !nth--)
            return &fns[i];
    return NULL;
}

#define C8(d, o) (*(volatile u8 *)((d)->common + (o)))
#define C16(d, o) (*(volatile u16 *)((d)->common + (o)))
#define C32(d, o) (*(volatile u32 *)((d)->common + (o)))

u8 virtio_status(struct virtio_dev *d) { return C8(d, VCC_STATUS); }

void virtio_reset(struct virtio_dev *d)
{
    C8(d, VCC_STATUS) = 0;
    for (int i = 0; i < 100000 && C8(d, VCC_STATUS); i++) /* 4.1.4.3.2: wait for 0 */
        pause();
}

static void set_status(struct virtio_dev *d, u8 bits) { C8(d, VCC_STATUS) = C8(d, VCC_STATUS) | bits; }

/* 4.1.4 Virtio Structure PCI Capabilities: vendor-specific capabilities (id 0x09) with
 * cfg_type at +3, bar at +4, offset at +8, length at +12; notify adds the multiplier at +16. */
static int find_caps(struct virtio_dev *d)
{
    struct pci_fn *f = d->pci;
    for (unsigned c = pci_find_cap(f, 0x09, 0); c; c = pci_find_cap(f, 0x09, c)) {
        u8 type = (u8)pci_read(f, c + 3, 1), bar = (u8)pci_read(f, c + 4, 1);
        if (bar > 5 || !f->bar[bar].addr)
            continue;
        u64 a = f->bar[bar].addr + pci_read(f, c + 8, 4);
        if (type == 1 && !d->common)
            d->common = a;
        else if (type == 2 && !d->notify_base) {
            d->notify_base = a;
            d->notify_mult = pci_read(f, c + 16, 4);
        } else if (type == 3 && !d->isr)
            d->isr = a;
        else if (type == 4 && !d->device)
            d->device = a;
    }
    return d->common && d->notify_base && d->isr ? 0 : -1;
}

int virtio_init(struct virtio_dev *d, struct pci_fn *f, u64 want)
{
    if (d->pci != f) {
        memset(d, 0, sizeof(*d));
        d->pci = f;
        d->type = (u16)virtio_type(f);
        pci_enable(f);
        if (find_caps(d)) {
            d->error = "missing virtio PCI capabilities";
            return -1;
        }
    }
    virtio_reset(d);
    if (virtio_status(d)) {
        d->error = "reset did not complete";
        return -1;
    }
    set_status(d, VIRTIO_S_ACKNOWLEDGE);
    set_status(d, VIRTIO_S_DRIVER);
    C32(d, VCC_DFSELECT) = 0;
    u64 lo = C32(d, VCC_DF);
    C32(d, VCC_DFSELECT) = 1;
    d->offered = lo | (u64)C32(d, VCC_DF) << 32;
    if (!(d->offered & VIRTIO_F_VERSION_1)) {
        d->error = "device does not offer VIRTIO_F_VERSION_1";
        set_status(d, VIRTIO_S_FAILED);
        return -1;
    }
    d->features = d->offered & (want | VIRTIO_F_VERSION_1);
    C32(d, VCC_GFSELECT) = 0;
    C32(d, VCC_GF) = (u32)d->features;
    C32(d, VCC_GFSELECT) = 1;
    C32(d, VCC_GF) = (u32)(d->features >> 32);
    set_status(d, VIRTIO_S_FEATURES_OK);
    if (!(virtio_status(d) & VIRTIO_S_FEATURES_OK)) { /* 3.1.1 step 6 */
        d->error = "FEATURES_OK not accepted";
        set_status(d, VIRTIO_S_FAILED);
        return -1;
    }
    d->num_queues = C16(d, VCC_NUMQ);
    return 0;
}

void vq_rewind(struct virtq *q)
{
    memset(q->desc, 0, 16ul * q->size);
    memset((void *)q->avail, 0, 6 + 2ul * q->size);
    memset((void *)q->used, 0, 6 + 8ul * q->size);
    for (u16 i = 0; i < q->size; i++)
        q->desc[i].next = (u16)(i + 1);
    q->free_head = 0;
    q->num_free = q->size;
    q->last_used = 0;
    q->kicked = 0;
}

int virtio_queue(struct virtio_dev *d, unsigned qi, u16 max_size, u16 msix)
{
    struct virtq *q = &d->vq[qi];
    if (qi >= VIRTIO_MAX_QUEUES || qi >= d->num_queues) {
        d->error = "no such queue";
        return -1;
    }
    C16(d, VCC_Q_SELECT) = (u16)qi;
    u16 size = C16(d, VCC_Q_SIZE);
    if (!size) {
        d->error = "queue size 0";
        return -1;
    }
    if (size > max_size)
        size = max_size; /* 4.1.4.3.2: the driver MAY write a smaller (power-of-2) size */
    if (!q->desc || q->size != size) {
        q->desc = page_alloc(16ul * size, 4096);
        q->avail = page_alloc(6 + 2ul * size, 4096);
        q->used = page_alloc(6 + 8ul * size, 4096);
        if (!q->desc || !q->avail || !q->used) {
            d->error = "out of memory for a queue";
            return -1;
        }
    }
    q->size = size;
    q->index = (u16)qi;
    q->event_idx = !!(d->features & VIRTIO_F_EVENT_IDX);
    vq_rewind(q);
    C16(d, VCC_Q_SIZE) = size;
    C32(d, VCC_Q_DESC) = (u32)(u64)q->desc;
    C32(d, VCC_Q_DESC + 4) = (u32)((u64)q->desc >> 32);
    C32(d, VCC_Q_DRIVER) = (u32)(u64)q->avail;
    C32(d, VCC_Q_DRIVER + 4) = (u32)((u64)q->avail >> 32);
    C32(d, VCC_Q_DEVICE) = (u32)(u64)q->used;
    C32(d, VCC_Q_DEVICE + 4) = (u32)((u64)q->used >> 32);
    C16(d, VCC_Q_MSIX) = msix;
    q->msix = C16(d, VCC_Q_MSIX); /* NO_VECTOR back: the device could not map it */
    q->notify = d->notify_base + (u64)C16(d, VCC_Q_NOFF) * d->notify_mult;
    C16(d, VCC_Q_ENABLE) = 1;
    return 0;
}

void virtio_driver_ok(struct virtio_dev *d) { set_status(d, VIRTIO_S_DRIVER_OK); }

u8 virtio_cfg8(struct virtio_dev *d, unsigned off) { return mmio_read8(d->device + off); }
u16 virtio_cfg16(struct virtio_dev *d, unsigned off) { return mmio_read16(d->device + off); }
u32 virtio_cfg32(struct virtio_dev *d, unsigned off) { return mmio_read32(d->device + off); }

u64 virtio_cfg64(struct virtio_dev *d, unsigned off)
{
    u8 gen;
    u64 v;
    do { /* 4.1.4.3.1 / 2.5.1: re-read while config_generation changes */
        gen = C8(d, VCC_GENERATION);
        v = mmio_read32(d->device + off) | (u64)mmio_read32(d->device + off + 4) << 32;
    } while (gen != C8(d, VCC_GENERATION));
    return v;
}

/* ---- split virtqueue (2.7.13 Supplying Buffers to The Device; 2.7.14 Receiving Used
 * Buffers From The Device) ---- */

int vq_submit(struct virtq *q, const struct vbuf *b, unsigned n)
{
    if (!n || n > q->num_free)
        return -1;
    u16 head = q->free_head, i = head, last = head;
    for (unsigned k = 0; k < n; k++) {
        struct vring_desc *d = &q->desc[i];
        d->addr = (u64)b[k].addr;
        d->len = b[k].len;
        d->flags = (u16)((b[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
        last = i;
        i = d->next;
    }
    q->free_head = q->desc[last].next;
    q->num_free = (u16)(q->num_free - n);
    u16 idx = q->avail->idx;
    q->avail->ring[idx & (q->size - 1)] = head;
    barrier(); /* 2.7.13.3.1: the ring entry before the index (x86 keeps stores in order) */
    q->avail->idx = (u16)(idx + 1);
    return head;
}

void vq_notify(struct virtq *q)
{
    mb(); /* the index must be visible before the device looks (2.7.13.4) */
    u16 idx = q->avail->idx, old = q->kicked;
    q->kicked = idx;
    if (q->event_idx) { /* 2.7.10: notify only if avail_event lies in (old, idx] */
        u16 event = *(volatile u16 *)((volatile u8 *)q->used + 4 + 8ul * q->size);
        if ((u16)(idx - event - 1) >= (u16)(idx - old))
            return;
    }
    mmio_write16(q->notify, q->index);
}

int vq_poll(struct virtq *q, u32 *len)
{
    if (q->used->idx == q->last_used)
        return -1;
    barrier(); /* read the element after the index (x86 keeps loads in order) */
    volatile struct vring_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
    u32 id = e->id;
    if (len)
        *len = e->len;
    q->last_used++;
    if (id >= q->size)
        return -1;
    u16 i = (u16)id;
    unsigned n = 1;
    while ((q->desc[i].flags & VRING_DESC_F_NEXT) && n < q->size) {
        i = q->desc[i].next;
        n++;
    }
    q->desc[i].next = q->free_head;
    q->free_head = (u16)id;
    q->num_free = (u16)(q->num_free + n);
    return (int)id;
}

int vq_wait(struct virtq *q, u32 *len, u64 ms)
{
    u64 limit = rdtsc() + ms * tsc_khz();
    for (;;) {
        int id = vq_poll(q, len);
        if (id >= 0 || rdtsc() > limit)
            return id;
        pause();
    }
}

i64 vq_transfer(struct virtq *q, const struct vbuf *b, unsigned n, u64 ms)
{
    int head = vq_submit(q, b, n);
    if (head < 0)
        return -1;
    vq_notify(q);
    u64 limit = rdtsc() + ms * tsc_khz();
    u32 len;
    while (rdtsc() <= limit) {
        int id = vq_poll(q, &len);
        if (id == head)
            return len;
        pause();
    }
    return -1;
}
