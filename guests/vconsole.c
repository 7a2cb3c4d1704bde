/*
 * virtio-console (virtio 1.2 5.3), port 0 without VIRTIO_CONSOLE_F_MULTIPORT: queue 0 is
 * receiveq(port0), queue 1 transmitq(port0). Sends "hello from the xenopus vconsole guest\n"
 * through the port; with `echo` it then sends "READY\n", reads one line from the port
 * (bounded by timeout_ms=N [10000]), prints "vconsole echo: <line>" on COM1 and sends
 * "ECHO: <line>\n" back through the port.
 * Command line: index=N [0], echo, timeout_ms=N.
 */
#include "virtio.h"

GUEST("vconsole");

#define RXQ 0
#define TXQ 1
#define RX_BUFS 8
#define RX_LEN 64

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;

static int send(const char *s)
{
    static char buf[256];
    u32 n = (u32)strlen(s);
    if (n > sizeof(buf))
        n = sizeof(buf);
    memcpy(buf, s, n);
    struct vbuf b = {buf, n, 0};
    return vq_transfer(&dev.vq[TXQ], &b, 1, 5000) >= 0;
}

void guest_main(void)
{
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *f = virtio_find(fns, n, VIRTIO_ID_CONSOLE, (unsigned)cmdline_u64("index", 0));
    if (!f) {
        result(0, "vconsole", "no virtio-console device");
        return;
    }
    if (virtio_init(&dev, f, 0) < 0 || virtio_queue(&dev, RXQ, 64, VIRTIO_NO_VECTOR) < 0 ||
        virtio_queue(&dev, TXQ, 64, VIRTIO_NO_VECTOR) < 0) {
        result(0, "vconsole", "init: %s", dev.error);
        return;
    }
    static char rx[RX_BUFS][RX_LEN];
    for (int i = 0; i < RX_BUFS; i++) {
        struct vbuf b = {rx[i], RX_LEN, 1};
        vq_submit(&dev.vq[RXQ], &b, 1);
    }
    virtio_driver_ok(&dev);
    vq_notify(&dev.vq[RXQ]);
    tsc_khz();
    printf("vconsole: %02x:%02x.%x features 0x%lx of 0x%lx\n", f->bus, f->dev, f->fn,
           dev.features, dev.offered);
    int ok = send("hello from the xenopus vconsole guest\n");
    printf("vconsole: sent hello %s\n", ok ? "ok" : "FAILED");
    if (!ok || !cmdline_has("echo")) {
        result(ok, "vconsole", "");
        return;
    }
    send("READY\n");
    static char line[200];
    unsigned len = 0;
    int done = 0;
    u64 limit = rdtsc() + cmdline_u64("timeout_ms", 10000) * tsc_khz();
    while (!done && rdtsc() < limit) {
        u32 got;
        int id = vq_poll(&dev.vq[RXQ], &got);
        if (id < 0) {
            pause();
            continue;
        }
        const char *p = (const char *)dev.vq[RXQ].desc[id].addr;
        for (u32 i = 0; i < got && i < RX_LEN && !done; i++) {
            if (p[i] == '\n')
                done = 1;
            else if (p[i] != '\r' && len + 1 < sizeof(line))
                line[len++] = p[i];
        }
        struct vbuf b = {p, RX_LEN, 1}; /* give the buffer back */
        vq_submit(&dev.vq[RXQ], &b, 1);
        vq_notify(&dev.vq[RXQ]);
    }
    line[len] = 0;
    if (!done) {
        result(0, "vconsole", "no line from the host");
        return;
    }
    printf("vconsole echo: %s\n", line);
    static char reply[220];
    snprintf(reply, sizeof(reply), "ECHO: %s\n", line);
    result(send(reply), "vconsole", "echo");
}
