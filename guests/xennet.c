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
 *   wait_attach=1: first wait for device/vif/<index> to appear (xl network-attach),
 *   printing "xennet: waiting for device/vif/N"; wait_detach=1: at the end, wait for the
 *   backend to go Closing (xl network-detach), then close ("xennet: closed on the
 *   backend's request").
 * Expected: RESULT: PASS xennet (without Xen: RESULT: FAIL xennet no-xen).
 */
#include "netproto.h"
#include "xen.h"

GUEST("xennet");

#define RX_BUFS 16

static struct netif_tx_sring txr __attribute__((aligned(4096)));
static struct netif_rx_sring rxr __attribute__((aligned(4096)));
static u8 rxbuf[RX_BUFS][4096] __attribute__((aligned(4096)));
static u8 txbuf[4096] __attribute__((aligned(4096)));
static long rx_gref[RX_BUFS], tx_gref;
static u32 tx_cons, rx_cons;
static struct xenbus_dev dev;
static struct netproto np;

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

/* Takes rx responses until `want` (NET_ARP_REPLY or NET_UDP) or timeout; answers ARP
 * requests for our IP meanwhile. */
static int receive(int want, struct net_in *in, unsigned ms)
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
        int got = NET_NONE;
        if (r.status >= 0 && r.offset + r.status <= 4096)
            got = net_input(&np, rxbuf[id] + r.offset, (unsigned)r.status, want, txbuf, in);
        else if (r.status < 0)
            printf("xennet: rx response id %u status %d\n", r.id, r.status);
        push_rx(id);
        if (got == NET_ARP_REQUEST) {
            send_frame(in->reply_len);
            continue;
        }
        mb();
        evtchn_send(dev.port);
        if (got)
            return 1;
    }
    return 0;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    unsigned timeout = (unsigned)cmdline_u64("timeout_ms", 10000);
    if (cmdline_has("wait_attach")) {
        const char *index = cmdline_get("index");
        printf("xennet: waiting for device/vif/%s\n", index ? index : "?");
        long rc = index ? xenbus_wait_for("vif", index, timeout) : -XEN_EINVAL;
        if (!xcheck(rc == 0, "device/vif/%s appeared: %s", index ? index : "? (no index=)", xen_errname(rc)))
            xen_finish(0, "no device");
    }
    xenbus_frontend_start(&dev, "vif", cmdline_get("index"));
    char path[192], v[64];
    snprintf(path, sizeof(path), "%s/mac", dev.node);
    if (xs_read(0, path, v, sizeof(v)) < 0 || !net_parse_mac(v, np.mac))
        memcpy(np.mac, "\x00\x16\x3e\x00\x00\x01", 6);
    char bstate[192];
    u64 state = 0;
    snprintf(bstate, sizeof(bstate), "%s/state", dev.backend);
    long rc = xs_wait_state(bstate, XenbusStateInitWait, timeout, &state);
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
    rc = xenbus_write_u64(&dev, "tx-ring-ref", (u64)tx_ref);
    rc = rc ? rc : xenbus_write_u64(&dev, "rx-ring-ref", (u64)rx_ref);
    rc = rc ? rc : xenbus_write_u64(&dev, "event-channel", (u64)port);
    rc = rc ? rc : xenbus_write_u64(&dev, "request-rx-copy", 1);
    rc = rc ? rc : xenbus_write_u64(&dev, "feature-rx-notify", 1);
    rc = rc ? rc : xenbus_switch_state(&dev, XenbusStateConnected);
    if (!xcheck(rc == 0, "frontend keys written, state Connected rc %ld", rc))
        xen_finish(0, "xenbus");
    rc = xs_wait_state(bstate, XenbusStateConnected, timeout, &state);
    if (!xcheck(rc == 0 && state == XenbusStateConnected, "backend state %lu (want Connected)", state))
        xen_finish(0, "backend did not connect");
    evtchn_send(dev.port); /* the rx requests posted before the backend connected */
    printf("xennet: %s mac ", dev.node);
    net_print_mac(np.mac);
    printf("\n");

    int given = net_cmdline(&np);
    if (given < 0)
        xen_finish(0, "bad dst_mac");
    if (!given) {
        int resolved = 0;
        struct net_in none = {0};
        for (int tries = 0; tries < 5 && !resolved; tries++) {
            send_frame(net_arp(&np, txbuf, 1, NULL, np.peer_ip));
            resolved = receive(NET_ARP_REPLY, &none, 1000);
        }
        if (!resolved)
            xen_finish(0, "no ARP reply");
    }
    net_print_peer("xennet", &np);
    const char *payload = cmdline_get("payload");
    static char msg[256], reply[256];
    snprintf(msg, sizeof(msg), "%s", payload && *payload ? payload : "hello-from-xenopus-xennet");
    if (!send_frame(net_udp(&np, txbuf, msg, (unsigned)strlen(msg))))
        xen_finish(0, "transmit failed");
    net_print_sent("xennet", &np, (unsigned)strlen(msg));
    struct net_in in = {reply, sizeof(reply), 0, 0, 0};
    if (!receive(NET_UDP, &in, timeout))
        xen_finish(0, "no UDP reply");
    net_print_reply("xennet", &in);
    const char *want = cmdline_get("expect_reply");
    int pass = !want || !strcmp(want, reply);
    if (cmdline_has("wait_detach")) {
        /* xl network-detach: the backend goes Closing; close as xenbus_frontend_closed. */
        u64 state = 0;
        printf("xennet: waiting for the backend to close\n");
        if (xs_wait_state(bstate, XenbusStateClosing, timeout, &state) == 0) {
            xenbus_switch_state(&dev, XenbusStateClosing);
            xenbus_switch_state(&dev, XenbusStateClosed);
            printf("xennet: closed on the backend's request\n");
        } else {
            pass = 0;
        }
    }
    xen_finish(pass, "");
}
