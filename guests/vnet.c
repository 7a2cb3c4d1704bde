/*
 * virtio-net (virtio 1.2 5.1): reads the MAC, posts receive buffers, resolves dst_ip by ARP
 * (RFC 826) unless dst_mac is given, answers ARP requests for src_ip, sends one UDP datagram
 * (RFC 768, checksum 0) from src_ip:src_port to dst_ip:dst_port and waits for a UDP datagram
 * to src_port, printing "vnet reply from A.B.C.D:P: <payload>".
 *
 * Command line (defaults in brackets): src_ip=A.B.C.D [10.0.2.15] dst_ip=A.B.C.D [10.0.2.2]
 *   src_port=N [4444] dst_port=N [5555] dst_mac=xx:xx:xx:xx:xx:xx (skip ARP)
 *   payload=STR ["hello-from-xenopus-vnet"] expect_reply=STR (the reply payload must match)
 *   timeout_ms=N [10000] index=N [0]
 */
#include "netproto.h"
#include "virtio.h"

GUEST("vnet");

#define NET_F_MAC (1ul << 5)
#define RXQ 0
#define TXQ 1
#define RX_BUFS 16
#define BUF_LEN 2048
#define HDR_LEN 12 /* struct virtio_net_hdr with num_buffers (5.1.6: always, with VERSION_1) */

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;
static struct netproto np;
static u8 rx[RX_BUFS][BUF_LEN] __attribute__((aligned(64)));
static u8 tx[BUF_LEN] __attribute__((aligned(64)));
#define FRAME (tx + HDR_LEN)

/* The frame at FRAME, len bytes. */
static int send_frame(unsigned len)
{
    memset(tx, 0, HDR_LEN); /* no offloads: flags 0, gso_type NONE */
    struct vbuf b = {tx, HDR_LEN + len, 0};
    return vq_transfer(&dev.vq[TXQ], &b, 1, 2000) >= 0;
}

static void repost(u8 *buf)
{
    struct vbuf b = {buf, BUF_LEN, 1};
    vq_submit(&dev.vq[RXQ], &b, 1);
    vq_notify(&dev.vq[RXQ]);
}

/* Handles received frames until `want` (NET_ARP_REPLY or NET_UDP) arrives or the deadline
 * passes; answers ARP requests for our IP meanwhile. */
static int receive(int want, struct net_in *in, u64 limit)
{
    while (rdtsc() < limit) {
        u32 len;
        int id = vq_poll(&dev.vq[RXQ], &len);
        if (id < 0) {
            pause();
            continue;
        }
        u8 *buf = (u8 *)dev.vq[RXQ].desc[id].addr;
        int got = len >= HDR_LEN ? net_input(&np, buf + HDR_LEN, len - HDR_LEN, want, FRAME, in) : NET_NONE;
        repost(buf);
        if (got == NET_ARP_REQUEST)
            send_frame(in->reply_len);
        else if (got)
            return 1;
    }
    return 0;
}

void guest_main(void)
{
    unsigned n = pci_init(fns, PCI_MAX_FNS);
    struct pci_fn *f = virtio_find(fns, n, VIRTIO_ID_NET, (unsigned)cmdline_u64("index", 0));
    if (!f) {
        result(0, "vnet", "no virtio-net device");
        return;
    }
    if (virtio_init(&dev, f, NET_F_MAC) < 0 || virtio_queue(&dev, RXQ, 64, VIRTIO_NO_VECTOR) < 0 ||
        virtio_queue(&dev, TXQ, 64, VIRTIO_NO_VECTOR) < 0) {
        result(0, "vnet", "init: %s", dev.error);
        return;
    }
    for (int i = 0; i < RX_BUFS; i++) {
        struct vbuf b = {rx[i], BUF_LEN, 1};
        vq_submit(&dev.vq[RXQ], &b, 1);
    }
    virtio_driver_ok(&dev);
    vq_notify(&dev.vq[RXQ]);
    tsc_khz();
    if (dev.features & NET_F_MAC)
        for (int i = 0; i < 6; i++)
            np.mac[i] = virtio_cfg8(&dev, (unsigned)i);
    else
        memcpy(np.mac, "\x02\x00\x00\x00\x00\x01", 6); /* locally administered */
    printf("vnet: %02x:%02x.%x features 0x%lx mac ", f->bus, f->dev, f->fn, dev.features);
    net_print_mac(np.mac);
    printf("\n");
    int given = net_cmdline(&np);
    u64 limit = rdtsc() + cmdline_u64("timeout_ms", 10000) * tsc_khz();
    if (given < 0) {
        result(0, "vnet", "bad dst_mac");
        return;
    }
    if (!given) {
        int resolved = 0;
        struct net_in none = {0};
        for (int tries = 0; tries < 5 && !resolved && rdtsc() < limit; tries++) {
            send_frame(net_arp(&np, FRAME, 1, NULL, np.peer_ip));
            u64 step = rdtsc() + 1000 * tsc_khz();
            resolved = receive(NET_ARP_REPLY, &none, step < limit ? step : limit);
        }
        if (!resolved) {
            result(0, "vnet", "no ARP reply");
            return;
        }
    }
    net_print_peer("vnet", &np);
    const char *payload = cmdline_get("payload");
    static char msg[256], reply[256];
    snprintf(msg, sizeof(msg), "%s", payload && *payload ? payload : "hello-from-xenopus-vnet");
    if (!send_frame(net_udp(&np, FRAME, msg, (unsigned)strlen(msg)))) {
        result(0, "vnet", "transmit failed");
        return;
    }
    net_print_sent("vnet", &np, (unsigned)strlen(msg));
    struct net_in in = {reply, sizeof(reply), 0, 0, 0};
    if (!receive(NET_UDP, &in, limit)) {
        result(0, "vnet", "no UDP reply");
        return;
    }
    net_print_reply("vnet", &in);
    const char *want = cmdline_get("expect_reply");
    result(!want || !strcmp(want, reply), "vnet", "");
}
