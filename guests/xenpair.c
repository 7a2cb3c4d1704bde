/*
 * xenpair: two domains exchanging data through an interdomain event channel and a granted
 * page (public/event_channel.h, grant_table.h; XenStore for the rendezvous).
 *
 *   role=a peer=<domid of b>: allocates an unbound port for the peer, grants the peer one page
 *     (writable) holding "hello from domain <a>", publishes data/pair-port and data/pair-gref
 *     under its home path (readable by the peer: perms "n<a>" "r<b>"), waits for the peer's
 *     event, reads the reply the peer copied into the page at offset 2048, and answers with
 *     an event of its own.
 *   role=b peer=<domid of a>: polls /local/domain/<a>/data/pair-port and pair-gref, binds the
 *     port (bind_interdomain), GNTTABOP_copy from the peer's gref into a local page, copies
 *     "ack from domain <b>: <message>" back into the granted page at offset 2048, sends an
 *     event, and waits for a's answer (wait=0: stops right after sending).
 *
 * Each side counts only events that arrive after it looked: bind_interdomain itself raises
 * b's new port (public/event_channel.h), and that event is not a's answer.
 *
 * Command line: role=a|b peer=N timeout_ms=N [30000] wait=0|1 [1], upcall=vector|param.
 * Expected: "pair a: port P gref G for domain B", "pair b: got from domain A: hello from domain A",
 *   "pair a: reply from domain B: ack from domain B: hello from domain A", and
 *   RESULT: PASS xenpair role=a|b (without Xen: RESULT: FAIL xenpair no-xen).
 */
#include "xen.h"

GUEST("xenpair");

static u8 page[4096] __attribute__((aligned(4096)));
static unsigned timeout;

static void role_a(domid_t me, domid_t peer)
{
    long port = evtchn_alloc_unbound(peer);
    snprintf((char *)page, 256, "hello from domain %u", me);
    long gref = gnttab_grant(peer, virt_to_gfn(page), 0);
    if (!xcheck(port > 0 && gref > 0, "port %ld gref %ld", port, gref))
        xen_finish(0, "role=a setup");
    evtchn_bind((evtchn_port_t)port, NULL);
    int seen = evtchn_count[port];
    xen_pair_offer("pair", me, peer, port, gref);
    printf("pair a: port %ld gref %ld for domain %u\n", port, gref, peer);
    int got = evtchn_wait((evtchn_port_t)port, seen, timeout);
    if (!xcheck(got, "event from domain %u", peer))
        xen_finish(0, "role=a no event");
    struct evtchn_status st;
    long rc = evtchn_status((evtchn_port_t)port, &st);
    xcheck(rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == peer,
           "port %ld bound to domain %u port %u", port, st.u.interdomain.dom, st.u.interdomain.port);
    const char *reply = (const char *)page + 2048;
    char want[64];
    snprintf(want, sizeof(want), "ack from domain %u: hello from domain %u", peer, me);
    printf("pair a: reply from domain %u: %s\n", peer, reply);
    xcheck(!strcmp(reply, want), "reply is \"%s\"", want);
    xcheck(evtchn_send((evtchn_port_t)port) == 0, "answered with an event");
    xcheck(gnttab_end((grant_ref_t)gref) == 1, "grant %ld revoked", gref);
    xen_finish(xen_failures == 0, "role=a");
}

static void role_b(domid_t me, domid_t peer)
{
    u64 rgref = 0;
    long lport = xen_pair_accept("pair", peer, timeout, &rgref);
    int seen = evtchn_count[lport];
    struct gnttab_copy op;
    memset(&op, 0, sizeof(op));
    op.source.u.ref = (grant_ref_t)rgref;
    op.source.domid = peer;
    op.dest.u.gmfn = virt_to_gfn(page);
    op.dest.domid = DOMID_SELF;
    op.len = 256;
    op.flags = GNTCOPY_source_gref;
    long rc = gnttab_copy1(&op);
    if (!xcheck(rc == 0 && op.status == GNTST_okay, "copy from the peer's gref: rc %ld status %d %s", rc, op.status,
                gntst_name(op.status)))
        xen_finish(0, "role=b copy");
    page[255] = 0;
    printf("pair b: got from domain %u: %s\n", peer, (char *)page);
    snprintf((char *)page + 2048, 256, "ack from domain %u: %s", me, (char *)page);
    memset(&op, 0, sizeof(op));
    op.source.u.gmfn = virt_to_gfn(page);
    op.source.domid = DOMID_SELF;
    op.source.offset = 2048;
    op.dest.u.ref = (grant_ref_t)rgref;
    op.dest.domid = peer;
    op.dest.offset = 2048;
    op.len = 256;
    op.flags = GNTCOPY_dest_gref;
    rc = gnttab_copy1(&op);
    xcheck(rc == 0 && op.status == GNTST_okay, "reply copied into the peer's page: status %d", op.status);
    printf("pair b: sent to domain %u: %s\n", peer, (char *)page + 2048);
    rc = evtchn_send((evtchn_port_t)lport);
    xcheck(rc == 0, "event to domain %u", peer);
    if (cmdline_u64("wait", 1))
        xcheck(evtchn_wait((evtchn_port_t)lport, seen, timeout), "domain %u answered", peer);
    xen_finish(xen_failures == 0, "role=b");
}

void guest_main(void)
{
    if (xen_require())
        xen_pair_run("pair", &timeout, role_a, role_b);
}
