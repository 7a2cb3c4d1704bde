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
 * again=1 (both sides): a second round after a's domain was saved and restored or migrated
 * on this host (a new domid, the same ports and grants: its RAM came along). Xen leaves
 * the surviving end of a closed interdomain channel unbound (common/event_channel.c
 * evtchn_close: ECS_UNBOUND, remote_domid the dead domain), so a keeps waiting on its
 * port, which its new incarnation has unbound for b; b polls EVTCHNOP_status until its
 * end is unbound ("pair b: port P unbound"), reads a's new domid from its own
 * data/pair-peer (the toolstack's word), closes the old port and binds a's port anew,
 * copies "again from domain B: <a's text>" into a's page and sends; a checks it, answers.
 *
 * Command line: role=a|b peer=N timeout_ms=N [30000] wait=0|1 [1], upcall=vector|param,
 *   again=0|1 [0].
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
    seen = evtchn_count[port];
    xcheck(evtchn_send((evtchn_port_t)port) == 0, "answered with an event");
    if (cmdline_u64("again", 0)) {
        printf("pair a: round 1 done, waiting on port %ld\n", port);
        if (!xcheck(evtchn_wait((evtchn_port_t)port, seen, timeout), "second event from domain %u", peer))
            xen_finish(0, "role=a no second event");
        rc = evtchn_status((evtchn_port_t)port, &st);
        xcheck(rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == peer,
               "port %ld bound again to domain %u port %u", port, st.u.interdomain.dom,
               st.u.interdomain.port);
        snprintf(want, sizeof(want), "again from domain %u: %s", peer, (const char *)page);
        printf("pair a: second reply from domain %u: %s\n", peer, reply);
        xcheck(!strcmp(reply, want), "second reply is \"%s\"", want);
        xcheck(evtchn_send((evtchn_port_t)port) == 0, "answered again");
    }
    xcheck(gnttab_end((grant_ref_t)gref) == 1, "grant %ld revoked", gref);
    xen_finish(xen_failures == 0, "role=a");
}

/* b's second round (again=1): the peer's domain went (saved, or migrated), its end of
 * the channel with it; rebind to its new incarnation once the toolstack names it. */
static void again_b(domid_t me, domid_t old, long lport, grant_ref_t gref)
{
    struct evtchn_status st;
    long rc = -1;
    for (unsigned waited = 0; waited < timeout; waited += 20) {
        rc = evtchn_status((evtchn_port_t)lport, &st);
        if (rc || st.status != EVTCHNSTAT_interdomain)
            break;
        delay_ms(20);
    }
    if (!xcheck(rc == 0 && st.status == EVTCHNSTAT_unbound && st.u.unbound.dom == old,
                "port %ld unbound for domain %u (status %u rc %ld)", lport, st.u.unbound.dom, st.status, rc))
        xen_finish(0, "role=b peer stayed bound");
    printf("pair b: port %ld unbound: domain %u went away\n", lport, old);
    u64 peer = 0;
    rc = -1;
    for (unsigned waited = 0; waited < timeout && rc; waited += 20) {
        rc = xs_read_u64("data/pair-peer", &peer);
        if (rc)
            delay_ms(20);
    }
    if (!xcheck(rc == 0 && peer != old, "data/pair-peer names the peer's new domain %lu", peer))
        xen_finish(0, "role=b no new peer");
    xcheck(evtchn_close((evtchn_port_t)lport) == 0, "closed the old port %ld", lport);
    u64 rgref = 0;
    lport = xen_pair_accept("pair", (domid_t)peer, timeout, &rgref);
    xcheck(rgref == gref, "the peer's grant is the same, %lu", rgref);
    int seen = evtchn_count[lport];
    struct gnttab_copy op;
    memset(&op, 0, sizeof(op));
    op.source.u.ref = gref;
    op.source.domid = (domid_t)peer;
    op.dest.u.gmfn = virt_to_gfn(page);
    op.dest.domid = DOMID_SELF;
    op.len = 256;
    op.flags = GNTCOPY_source_gref;
    rc = gnttab_copy1(&op);
    if (!xcheck(rc == 0 && op.status == GNTST_okay, "copy from domain %lu's gref: status %d", peer, op.status))
        xen_finish(0, "role=b second copy");
    page[255] = 0;
    snprintf((char *)page + 2048, 256, "again from domain %u: %s", me, (char *)page);
    memset(&op, 0, sizeof(op));
    op.source.u.gmfn = virt_to_gfn(page);
    op.source.domid = DOMID_SELF;
    op.source.offset = 2048;
    op.dest.u.ref = gref;
    op.dest.domid = (domid_t)peer;
    op.dest.offset = 2048;
    op.len = 256;
    op.flags = GNTCOPY_dest_gref;
    rc = gnttab_copy1(&op);
    xcheck(rc == 0 && op.status == GNTST_okay, "second reply copied: status %d", op.status);
    printf("pair b: sent again to domain %lu: %s\n", peer, (char *)page + 2048);
    xcheck(evtchn_send((evtchn_port_t)lport) == 0, "event to domain %lu", peer);
    xcheck(evtchn_wait((evtchn_port_t)lport, seen, timeout), "domain %lu answered again", peer);
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
    if (cmdline_u64("again", 0))
        again_b(me, peer, lport, (grant_ref_t)rgref);
    xen_finish(xen_failures == 0, "role=b");
}

void guest_main(void)
{
    if (xen_require())
        xen_pair_run("pair", &timeout, role_a, role_b);
}
