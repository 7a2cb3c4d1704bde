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
#include "virtio.h"

GUEST("vnet");

#define NET_F_MAC (1ul << 5)
#define RXQ 0
#define TXQ 1
#define RX_BUFS 16
#define BUF_LEN 2048
#define HDR_LEN 12 /* struct virtio_net_hdr with num_buffers (5.1.6: always, with VERSION_1) */
#define ETH_ARP 0x0806
#define ETH_IP 0x0800

static struct pci_fn fns[PCI_MAX_FNS];
static struct virtio_dev dev;
static u8 mac[6], dst_mac[6];
static u32 src_ip, dst_ip;
static u16 src_port, dst_port;
static u8 rx[RX_BUFS][BUF_LEN] __attribute__((aligned(64)));
static u8 tx[BUF_LEN] __attribute__((aligned(64)));

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }

static u32 parse_ip(const char *key, const char *dflt)
{
    const char *s = cmdline_get(key);
    if (!s || !*s)
        s = dflt;
    u32 ip = 0;
    for (int i = 0; i < 4; i++) {
        ip = ip << 8 | (u8)strtou64(s, &s);
        if (*s == '.')
            s++;
    }
    return ip;
}

static int parse_mac(const char *s, u8 *out)
{
    for (int i = 0; i < 6; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++, s++) {
            char c = *s;
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
            if (d > 15)
                return 0;
            v = v << 4 | d;
        }
        out[i] = (u8)v;
        if (i < 5 && *s++ != ':')
            return 0;
    }
    return 1;
}

static void print_ip(u32 ip) { printf("%u.%u.%u.%u", ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255); }

static u16 ip_checksum(const u8 *p, unsigned n) /* RFC 791 / RFC 1071 */
{
    u32 s = 0;
    for (unsigned i = 0; i < n; i += 2)
        s += get16(p + i);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

static int send_frame(unsigned len)
{
    memset(tx, 0, HDR_LEN); /* no offloads: flags 0, gso_type NONE */
    struct vbuf b = {tx, HDR_LEN + len, 0};
    return vq_transfer(&dev.vq[TXQ], &b, 1, 2000) >= 0;
}

static unsigned eth(u8 *f, const u8 *to, u16 type)
{
    memcpy(f, to, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
    return 14;
}

static int send_arp(int op, const u8 *tha, u32 tpa)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    u8 *f = tx + HDR_LEN;
    unsigned n = eth(f, op == 1 ? bcast : tha, ETH_ARP);
    u8 *a = f + n;
    put16(a, 1);           /* htype Ethernet */
    put16(a + 2, ETH_IP);  /* ptype */
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, (u16)op); /* 1 request, 2 reply */
    memcpy(a + 8, mac, 6);
    put32(a + 14, src_ip);
    memcpy(a + 18, op == 1 ? (const u8 *)"\0\0\0\0\0\0" : tha, 6);
    put32(a + 24, tpa);
    return send_frame(n + 28 < 60 ? 60 : n + 28);
}

static int send_udp(const char *payload)
{
    u8 *f = tx + HDR_LEN;
    unsigned n = eth(f, dst_mac, ETH_IP), plen = (unsigned)strlen(payload);
    u8 *ip = f + n, *udp = ip + 20;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(20 + 8 + plen));
    ip[8] = 64; /* TTL */
    ip[9] = 17; /* UDP */
    put32(ip + 12, src_ip);
    put32(ip + 16, dst_ip);
    put16(ip + 10, ip_checksum(ip, 20));
    put16(udp, src_port);
    put16(udp + 2, dst_port);
    put16(udp + 4, (u16)(8 + plen));
    put16(udp + 6, 0); /* no checksum (RFC 768) */
    memcpy(udp + 8, payload, plen);
    unsigned len = n + 28 + plen;
    return send_frame(len < 60 ? 60 : len);
}

static void repost(u8 *buf)
{
    struct vbuf b = {buf, BUF_LEN, 1};
    vq_submit(&dev.vq[RXQ], &b, 1);
    vq_notify(&dev.vq[RXQ]);
}

/* Handles received frames until `want` (1 ARP reply from dst_ip, 2 UDP to src_port) arrives
 * or the deadline passes; answers ARP requests for src_ip meanwhile. */
static int receive(int want, char *payload, unsigned cap, u32 *from_ip, u16 *from_port, u64 limit)
{
    while (rdtsc() < limit) {
        u32 len;
        int id = vq_poll(&dev.vq[RXQ], &len);
        if (id < 0) {
            pause();
            continue;
        }
        u8 *buf = (u8 *)dev.vq[RXQ].desc[id].addr;
        u8 *f = buf + HDR_LEN;
        int got = 0;
        if (len >= HDR_LEN + 42 && get16(f + 12) == ETH_ARP) {
            u8 *a = f + 14;
            u16 op = get16(a + 6);
            if (op == 1 && get32(a + 24) == src_ip) {
                u8 sha[6];
                memcpy(sha, a + 8, 6);
                u32 spa = get32(a + 14);
                repost(buf);
                send_arp(2, sha, spa);
                continue;
            }
            if (op == 2 && want == 1 && get32(a + 14) == dst_ip) {
                memcpy(dst_mac, a + 8, 6);
                got = 1;
            }
        } else if (len >= HDR_LEN + 42 && get16(f + 12) == ETH_IP && want == 2) {
            u8 *ip = f + 14;
            unsigned ihl = (ip[0] & 15) * 4u;
            u8 *udp = ip + ihl;
            if (ip[9] == 17 && get32(ip + 16) == src_ip && get16(udp + 2) == src_port) {
                unsigned plen = get16(udp + 4) - 8u;
                if (plen >= cap)
                    plen = cap - 1;
                memcpy(payload, udp + 8, plen);
                payload[plen] = 0;
                *from_ip = get32(ip + 12);
                *from_port = get16(udp);
                got = 1;
            }
        }
        repost(buf);
        if (got)
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
            mac[i] = virtio_cfg8(&dev, (unsigned)i);
    else
        memcpy(mac, "\x02\x00\x00\x00\x00\x01", 6); /* locally administered */
    printf("vnet: %02x:%02x.%x features 0x%lx mac %02x:%02x:%02x:%02x:%02x:%02x\n", f->bus, f->dev,
           f->fn, dev.features, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    src_ip = parse_ip("src_ip", "10.0.2.15");
    dst_ip = parse_ip("dst_ip", "10.0.2.2");
    src_port = (u16)cmdline_u64("src_port", 4444);
    dst_port = (u16)cmdline_u64("dst_port", 5555);
    u64 limit = rdtsc() + cmdline_u64("timeout_ms", 10000) * tsc_khz();
    const char *dm = cmdline_get("dst_mac");
    if (dm && *dm) {
        if (!parse_mac(dm, dst_mac)) {
            result(0, "vnet", "bad dst_mac");
            return;
        }
    } else {
        int resolved = 0;
        for (int tries = 0; tries < 5 && !resolved && rdtsc() < limit; tries++) {
            send_arp(1, NULL, dst_ip);
            u64 step = rdtsc() + 1000 * tsc_khz();
            resolved = receive(1, NULL, 0, NULL, NULL, step < limit ? step : limit);
        }
        if (!resolved) {
            result(0, "vnet", "no ARP reply");
            return;
        }
    }
    printf("vnet: ");
    print_ip(dst_ip);
    printf(" is at %02x:%02x:%02x:%02x:%02x:%02x\n", dst_mac[0], dst_mac[1], dst_mac[2],
           dst_mac[3], dst_mac[4], dst_mac[5]);
    const char *payload = cmdline_get("payload");
    static char msg[256];
    snprintf(msg, sizeof(msg), "%s", payload && *payload ? payload : "hello-from-xenopus-vnet");
    if (!send_udp(msg)) {
        result(0, "vnet", "transmit failed");
        return;
    }
    printf("vnet: sent %u bytes to ", (unsigned)strlen(msg));
    print_ip(dst_ip);
    printf(":%u\n", dst_port);
    static char reply[256];
    u32 from_ip;
    u16 from_port;
    if (!receive(2, reply, sizeof(reply), &from_ip, &from_port, limit)) {
        result(0, "vnet", "no UDP reply");
        return;
    }
    printf("vnet reply from ");
    print_ip(from_ip);
    printf(":%u: %s\n", from_port, reply);
    const char *want = cmdline_get("expect_reply");
    result(!want || !strcmp(want, reply), "vnet", "");
}
