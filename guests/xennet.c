/*
 * xennet: a minimal netfront (public/io/netif.h, io/ring.h, io/xenbus.h; the steps of Linux's
 * xen-netfront). Finds device/vif/<index> and its backend, reads the MAC, waits for the
 * backend's InitWait, grants a tx and an rx ring page, allocates one event channel, writes
 * tx-ring-ref / rx-ring-ref / event-channel / request-rx-copy = 1 / feature-rx-notify = 1,
 * switches to Connected and waits for the backend's Connected. Posts RX_BUFS granted receive
 * pages; then the vnet guest's exchange: ARP for dst_ip (unless dst_mac), one UDP datagram
 * (RFC 768, checksum 0) from src_ip:src_port to dst_ip:dst_port, and waits for a UDP datagram
 * to src_port, printing "xennet reply from A.B.C.D:P: <payload>"; ARP requests for src_ip are
 * answered meanwhile.
 *
 * Command line (as vnet.c; defaults in brackets): src_ip= [10.0.2.15] dst_ip= [10.0.2.2]
 *   src_port= [4444] dst_port= [5555] dst_mac=xx:..:xx payload= ["hello-from-xenopus-xennet"]
 *   expect_reply=STR timeout_ms=N [10000] index=N (device/vif/N, default the first)
 * Expected: RESULT: PASS xennet (without Xen: RESULT: FAIL xennet no-xen).
 */
#include "xen.h"

GUEST("xennet");

#define RX_BUFS 16
#define ETH_ARP 0x0806
#define ETH_IP 0x0800

static struct netif_tx_sring txr __attribute__((aligned(4096)));
static struct netif_rx_sring rxr __attribute__((aligned(4096)));
static u8 rxbuf[RX_BUFS][4096] __attribute__((aligned(4096)));
static u8 txbuf[4096] __attribute__((aligned(4096)));
static long rx_gref[RX_BUFS], tx_gref;
static u32 tx_cons, rx_cons;
static struct xenbus_dev dev;
static u8 mac[6], dst_mac[6];
static u32 src_ip, dst_ip;
static u16 src_port, dst_port;

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

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int parse_mac(const char *s, u8 *out)
{
    for (int i = 0; i < 6; i++, s += 3) {
        int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
        if (lo < 0 || (i < 5 && s[2] != ':'))
            return 0;
        out[i] = (u8)(hi << 4 | lo);
    }
    return 1;
}

static void print_ip(u32 ip) { printf("%u.%u.%u.%u", ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255); }

static u16 ip_checksum(const u8 *p, unsigned n) /* RFC 1071 */
{
    u32 s = 0;
    for (unsigned i = 0; i < n; i += 2)
        s += get16(p + i);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

static void push_rx(unsigned id)
{
    u32 prod = rxr.h.req_prod;
    rxr.ring[prod % NET_RX_RING_SIZE].req = (struct netif_rx_request){(u16)id, 0, (grant_ref_t)rx_gref[id]};
    barrier();
    rxr.h.req_prod = prod + 1;
}

/* One frame from txbuf; waits for its tx response. */
static int send_frame(unsigned len)
{
    static u16 id;
    u32 prod = txr.h.req_prod;
    txr.ring[prod % NET_TX_RING_SIZE].req = (struct netif_tx_request){(grant_ref_t)tx_gref, 0, 0, ++id, (u16)len};
    barrier();
    txr.h.req_prod = prod + 1;
    mb();
    evtchn_send(dev.port);
    for (unsigned waited = 0; txr.h.rsp_prod == tx_cons; waited += 10) {
        if (waited >= 2000)
            return 0;
        evtchn_wait(dev.port, evtchn_count[dev.port], 10);
    }
    barrier();
    struct netif_tx_response r = txr.ring[tx_cons % NET_TX_RING_SIZE].rsp;
    tx_cons++;
    txr.h.rsp_event = tx_cons + 1;
    mb();
    return r.id == id && r.status == NETIF_RSP_OKAY;
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
    memset(txbuf, 0, 64);
    unsigned n = eth(txbuf, op == 1 ? bcast : tha, ETH_ARP);
    u8 *a = txbuf + n;
    put16(a, 1);
    put16(a + 2, ETH_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, (u16)op); /* RFC 826: 1 request, 2 reply */
    memcpy(a + 8, mac, 6);
    put32(a + 14, src_ip);
    if (op == 2)
        memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    return send_frame(60);
}

static int send_udp(const char *payload)
{
    unsigned n = eth(txbuf, dst_mac, ETH_IP), plen = (unsigned)strlen(payload);
    u8 *ip = txbuf + n, *udp = ip + 20;
    memset(ip, 0, 28);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(28 + plen));
    ip[8] = 64;
    ip[9] = 17;
    put32(ip + 12, src_ip);
    put32(ip + 16, dst_ip);
    put16(ip + 10, ip_checksum(ip, 20));
    put16(udp, src_port);
    put16(udp + 2, dst_port);
    put16(udp + 4, (u16)(8 + plen));
    memcpy(udp + 8, payload, plen);
    unsigned len = n + 28 + plen;
    if (len < 60) {
        memset(txbuf + len, 0, 60 - len);
        len = 60;
    }
    return send_frame(len);
}

/* Takes rx responses until `want` (1 ARP reply from dst_ip, 2 UDP to src_port) or timeout. */
static int receive(int want, char *payload, unsigned cap, u32 *from_ip, u16 *from_port, unsigned ms)
{
    for (unsigned waited = 0; waited < ms;) {
        if (rxr.h.rsp_prod == rx_cons) {
            evtchn_wait(dev.port, evtchn_count[dev.port], 10);
            waited += 10;
            continue;
        }
        barrier();
        struct netif_rx_response r = rxr.ring[rx_cons % NET_RX_RING_SIZE].rsp;
        rx_cons++;
        rxr.h.rsp_event = rx_cons + 1;
        unsigned id = r.id % RX_BUFS;
        int got = 0;
        if (r.status >= 42 && r.offset + r.status <= 4096) {
            u8 *f = rxbuf[id] + r.offset;
            if (get16(f + 12) == ETH_ARP) {
                u8 *a = f + 14;
                u16 op = get16(a + 6);
                if (op == 1 && get32(a + 24) == src_ip) {
                    u8 sha[6];
                    memcpy(sha, a + 8, 6);
                    u32 spa = get32(a + 14);
                    push_rx(id);
                    send_arp(2, sha, spa);
                    continue;
                }
                if (op == 2 && want == 1 && get32(a + 14) == dst_ip) {
                    memcpy(dst_mac, a + 8, 6);
                    got = 1;
                }
            } else if (get16(f + 12) == ETH_IP && want == 2) {
                u8 *ip = f + 14, *udp = ip + (ip[0] & 15) * 4u;
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
        } else if (r.status < 0) {
            printf("xennet: rx response id %u status %d\n", r.id, r.status);
        }
        push_rx(id);
        mb();
        evtchn_send(dev.port);
        if (got)
            return 1;
    }
    return 0;
}

static long node_write(const char *key, u64 v)
{
    char path[128], val[24];
    snprintf(path, sizeof(path), "%s/%s", dev.node, key);
    snprintf(val, sizeof(val), "%lu", v);
    return xs_write(0, path, val);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    unsigned timeout = (unsigned)cmdline_u64("timeout_ms", 10000);
    long rc = xs_init();
    if (!rc)
        rc = gnttab_init();
    if (!rc)
        rc = xen_events_init(NULL, NULL);
    if (!xcheck(rc == 0, "xenstore, grant table, events rc %ld", rc))
        xen_finish(0, "setup");
    rc = xenbus_find(&dev, "vif", cmdline_get("index"));
    if (!xcheck(rc == 0, "found %s backend %s (domain %lu) rc %ld", dev.node, dev.backend, dev.backend_id, rc))
        xen_finish(0, "no vif");
    char path[192], v[64];
    snprintf(path, sizeof(path), "%s/mac", dev.node);
    if (xs_read(0, path, v, sizeof(v)) < 0 || !parse_mac(v, mac))
        memcpy(mac, "\x00\x16\x3e\x00\x00\x01", 6);
    char bstate[192];
    u64 state = 0;
    snprintf(bstate, sizeof(bstate), "%s/state", dev.backend);
    rc = xs_wait_state(bstate, XenbusStateInitWait, timeout, &state);
    if (!xcheck(rc == 0, "backend state %lu (want >= InitWait)", state))
        xen_finish(0, "backend not ready");

    domid_t be = (domid_t)dev.backend_id;
    memset(&txr, 0, sizeof(txr));
    memset(&rxr, 0, sizeof(rxr));
    txr.h.req_event = txr.h.rsp_event = rxr.h.req_event = rxr.h.rsp_event = 1; /* SHARED_RING_INIT */
    long tx_ref = gnttab_grant(be, virt_to_gfn(&txr), 0), rx_ref = gnttab_grant(be, virt_to_gfn(&rxr), 0);
    long port = evtchn_alloc_unbound(be);
    if (!xcheck(tx_ref > 0 && rx_ref > 0 && port > 0, "tx-ring-ref %ld rx-ring-ref %ld event-channel %ld", tx_ref,
                rx_ref, port))
        xen_finish(0, "rings");
    dev.port = (evtchn_port_t)port;
    evtchn_bind(dev.port, NULL);
    for (unsigned i = 0; i < RX_BUFS; i++) {
        rx_gref[i] = gnttab_grant(be, virt_to_gfn(rxbuf[i]), 0);
        push_rx(i);
    }
    tx_gref = gnttab_grant(be, virt_to_gfn(txbuf), 1);
    rc = node_write("tx-ring-ref", (u64)tx_ref);
    rc = rc ? rc : node_write("rx-ring-ref", (u64)rx_ref);
    rc = rc ? rc : node_write("event-channel", (u64)port);
    rc = rc ? rc : node_write("request-rx-copy", 1);
    rc = rc ? rc : node_write("feature-rx-notify", 1);
    rc = rc ? rc : xenbus_switch_state(&dev, XenbusStateConnected);
    if (!xcheck(rc == 0, "frontend keys written, state Connected rc %ld", rc))
        xen_finish(0, "xenbus");
    rc = xs_wait_state(bstate, XenbusStateConnected, timeout, &state);
    if (!xcheck(rc == 0 && state == XenbusStateConnected, "backend state %lu (want Connected)", state))
        xen_finish(0, "backend did not connect");
    evtchn_send(dev.port); /* the rx requests posted before the backend connected */
    printf("xennet: %s mac %02x:%02x:%02x:%02x:%02x:%02x\n", dev.node, mac[0], mac[1], mac[2], mac[3], mac[4],
           mac[5]);

    src_ip = parse_ip("src_ip", "10.0.2.15");
    dst_ip = parse_ip("dst_ip", "10.0.2.2");
    src_port = (u16)cmdline_u64("src_port", 4444);
    dst_port = (u16)cmdline_u64("dst_port", 5555);
    const char *dm = cmdline_get("dst_mac");
    if (dm && *dm) {
        if (!parse_mac(dm, dst_mac))
            xen_finish(0, "bad dst_mac");
    } else {
        int resolved = 0;
        for (int tries = 0; tries < 5 && !resolved; tries++) {
            send_arp(1, NULL, dst_ip);
            resolved = receive(1, NULL, 0, NULL, NULL, 1000);
        }
        if (!resolved)
            xen_finish(0, "no ARP reply");
    }
    printf("xennet: ");
    print_ip(dst_ip);
    printf(" is at %02x:%02x:%02x:%02x:%02x:%02x\n", dst_mac[0], dst_mac[1], dst_mac[2], dst_mac[3], dst_mac[4],
           dst_mac[5]);
    const char *payload = cmdline_get("payload");
    static char msg[256], reply[256];
    snprintf(msg, sizeof(msg), "%s", payload && *payload ? payload : "hello-from-xenopus-xennet");
    if (!send_udp(msg))
        xen_finish(0, "transmit failed");
    printf("xennet: sent %u bytes to ", (unsigned)strlen(msg));
    print_ip(dst_ip);
    printf(":%u\n", dst_port);
    u32 from_ip;
    u16 from_port;
    if (!receive(2, reply, sizeof(reply), &from_ip, &from_port, timeout))
        xen_finish(0, "no UDP reply");
    printf("xennet reply from ");
    print_ip(from_ip);
    printf(":%u: %s\n", from_port, reply);
    const char *want = cmdline_get("expect_reply");
    xen_finish(!want || !strcmp(want, reply), "");
}
