/*
 * virtio-rng (virtio 1.2 5.4): reads 64 bytes twice from the single requestq, prints them in
 * hex ("vrng: read N: <hex>"), and passes if both reads returned bytes, neither is all
 * zeroes, and they differ. Command line: index=N [0], bytes=N [64, at most 256].
 */
#include "virtio.h"

GUEST("vrng");

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;

void guest_main(void)
{
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *f = virtio_find(fns, n, VIRTIO_ID_RNG, (unsigned)cmdline_u64("index", 0));
    if (!f) {
        result(0, "vrng", "no virtio-rng device");
        return;
    }
    if (virtio_init(&dev, f, 0) < 0 || virtio_queue(&dev, 0, 64, VIRTIO_NO_VECTOR) < 0) {
        result(0, "vrng", "init: %s", dev.error);
        return;
    }
    virtio_driver_ok(&dev);
    tsc_khz();
    u32 want = (u32)cmdline_u64("bytes", 64);
    if (want > 256)
        want = 256;
    static u8 buf[2][256];
    i64 got[2];
    int zero[2];
    for (int r = 0; r < 2; r++) {
        /* 5.4.6.2: the device may return fewer bytes than asked: collect until full. */
        u32 have = 0;
        got[r] = 0;
        for (int tries = 0; have < want && tries < 64; tries++) {
            struct vbuf b = {buf[r] + have, want - have, 1};
            i64 len = vq_transfer(&dev.vq[0], &b, 1, 2000);
            if (len < 0)
                break;
            have += (u32)len;
        }
        got[r] = have;
        zero[r] = 1;
        printf("vrng: read %d: %ld bytes ", r + 1, got[r]);
        for (u32 i = 0; i < have; i++) {
            printf("%02x", buf[r][i]);
            zero[r] &= !buf[r][i];
        }
        printf("\n");
    }
    int differ = memcmp(buf[0], buf[1], want) != 0;
    int ok = got[0] == want && got[1] == want && !zero[0] && !zero[1] && differ;
    result(ok, "vrng", "%ld+%ld bytes%s", got[0], got[1], differ ? "" : " identical");
}
