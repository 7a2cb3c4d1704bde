/*
 * vballoon: a virtio-balloon driver (virtio 1.2 5.5): polls the device's num_pages and
 * moves its balloon there, giving page frame numbers (le32, 4 KiB pages) on the inflateq
 * and taking them back on the deflateq, then writes `actual` (5.5.6). Its pages come from
 * 16 MiB up (above the kit's image and heap). Each time it is there it prints
 *     "vballoon: num_pages N, actual N"
 * and runs until destroyed. Expected first: "vballoon: ready, num_pages N".
 */
#include "virtio.h"

GUEST("vballoon");

#define PAGE 4096ul
#define BATCH 256u /* PFNs per request */
#define NUM_PAGES 0
#define ACTUAL 4

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;
static u32 pfns[BATCH];

/* Inflate (queue 0) or deflate (queue 1) n pages from `first` up; 0 or -1. */
static int move(unsigned queue, u32 first, u32 n)
{
    for (u32 i = 0; i < n; i++)
        pfns[i] = first + i;
    struct vbuf b = {pfns, n * 4, 0};
    return vq_transfer(&dev.vq[queue], &b, 1, 5000) < 0 ? -1 : 0;
}

void guest_main(void)
{
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *f = virtio_find(fns, n, VIRTIO_ID_BALLOON, 0);
    if (!f) {
        result(0, "vballoon", "no virtio-balloon device");
        return;
    }
    if (virtio_init(&dev, f, 0) < 0 || virtio_queue(&dev, 0, 64, VIRTIO_NO_VECTOR) < 0 ||
        virtio_queue(&dev, 1, 64, VIRTIO_NO_VECTOR) < 0) {
        result(0, "vballoon", "init: %s", dev.error);
        return;
    }
    virtio_driver_ok(&dev);
    tsc_khz();
    const u32 base = (u32)((16ul << 20) / PAGE);
    u32 held = 0, last = ~0u;
    printf("vballoon: ready, num_pages %u\n", virtio_cfg32(&dev, NUM_PAGES));
    for (;;) {
        u32 want = virtio_cfg32(&dev, NUM_PAGES);
        if (want == held) {
            if (want != last)
                printf("vballoon: num_pages %u, actual %u\n", want, virtio_cfg32(&dev, ACTUAL));
            last = want;
            delay_ms(20);
            continue;
        }
        /* 5.5.6: inflate from the top of what it holds, deflate the last ones given. */
        u32 step = want > held ? want - held : held - want;
        step = step > BATCH ? BATCH : step;
        int rc = want > held ? move(0, base + held, step) : move(1, base + held - step, step);
        if (rc < 0) {
            result(0, "vballoon", "%s request timed out", want > held ? "inflate" : "deflate");
            return;
        }
        held = want > held ? held + step : held - step;
        mmio_write32(dev.device + ACTUAL, held);
    }
}
