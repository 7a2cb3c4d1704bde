/*
 * xenevtchn: event channels on one domain (public/event_channel.h, 2-level ABI in
 * public/xen.h): alloc_unbound + bind_interdomain to itself (a loopback pair), send each way
 * and see the upcall on the other port only, mask/unmask (a masked event stays pending and
 * is delivered by EVTCHNOP_unmask), status of each state, bind_ipi to vCPU 0 and a send to
 * it, close (the peer goes back to unbound; a closed port refuses send with -EINVAL).
 *
 * Command line: upcall=vector|param (see xenhello).
 * Expected: one "ok"/"FAIL" line per check, then RESULT: PASS xenevtchn
 * (without Xen: RESULT: FAIL xenevtchn no-xen).
 */
#include "xen.h"

GUEST("xenevtchn");

static volatile int last_port = -1;
static void on_event(evtchn_port_t port) { last_port = (int)port; }

static int status_is(evtchn_port_t port, u32 want, struct evtchn_status *st)
{
    long rc = evtchn_status(port, st);
    return xcheck(rc == 0 && st->status == want, "status(%u) rc %ld: %s (want %s)", port, rc,
                  evtchn_status_name(st->status), evtchn_status_name(want));
}

void guest_main(void)
{
    if (!xen_require())
        return;
    const char *how;
    long rc = xen_events_init(NULL, &how);
    if (!xcheck(rc == 0, "upcall via %s rc %ld", how, rc))
        xen_finish(0, "events");
    long self = xen_domid();
    domid_t me = self >= 0 ? (domid_t)self : DOMID_SELF;
    printf("domid %ld\n", self);

    long a = evtchn_alloc_unbound(me);
    xcheck(a > 0, "alloc_unbound(remote %u) -> port %ld", me, a);
    struct evtchn_status st;
    if (a <= 0)
        xen_finish(0, "alloc_unbound %ld", a);
    status_is((evtchn_port_t)a, EVTCHNSTAT_unbound, &st);
    xcheck(st.u.unbound.dom == me, "unbound for domain %u", st.u.unbound.dom);
    long b = evtchn_bind_interdomain(me, (evtchn_port_t)a);
    xcheck(b > 0 && b != a, "bind_interdomain(%u, %ld) -> port %ld", me, a, b);
    if (b <= 0)
        xen_finish(0, "bind_interdomain %ld", b);
    evtchn_port_t pa = (evtchn_port_t)a, pb = (evtchn_port_t)b;
    status_is(pa, EVTCHNSTAT_interdomain, &st);
    xcheck(st.u.interdomain.port == pb, "port %u's peer is port %u", pa, st.u.interdomain.port);
    status_is(pb, EVTCHNSTAT_interdomain, &st);
    xcheck(st.u.interdomain.port == pa, "port %u's peer is port %u", pb, st.u.interdomain.port);
    evtchn_bind(pa, on_event);
    evtchn_bind(pb, on_event);

    /* Xen raises the binder's own port once at bind_interdomain (event_channel.c: "we may
     * have lost notifications on the remote unbound port"), so pb may already count one
     * event: only the peer's count says whether the send crossed over. */
    rc = evtchn_send(pb);
    int got = evtchn_wait(pa, 0, 2000);
    xcheck(rc == 0 && got && evtchn_count[pa] == 1, "send(%u) -> upcall on port %u (last %d)", pb, pa, last_port);
    unsigned before = evtchn_count[pb];
    rc = evtchn_send(pa);
    got = evtchn_wait(pb, before, 2000);
    xcheck(rc == 0 && got && evtchn_count[pa] == 1, "send(%u) -> upcall on port %u", pa, pb);

    evtchn_mask(pa);
    rc = evtchn_send(pb);
    got = evtchn_wait(pa, 1, 200);
    xcheck(rc == 0 && !got && evtchn_is_pending(pa), "masked port %u: pending, not delivered", pa);
    rc = evtchn_unmask(pa);
    got = evtchn_wait(pa, 1, 2000);
    xcheck(rc == 0 && got && !evtchn_is_masked(pa), "EVTCHNOP_unmask(%u) rc %ld delivers it", pa, rc);

    long ipi = evtchn_bind_ipi(0);
    xcheck(ipi > 0, "bind_ipi(vcpu 0) -> port %ld", ipi);
    if (ipi > 0) {
        evtchn_port_t pi = (evtchn_port_t)ipi;
        evtchn_bind(pi, on_event);
        status_is(pi, EVTCHNSTAT_ipi, &st);
        xcheck(st.vcpu == 0, "ipi port on vcpu %u", st.vcpu);
        rc = evtchn_send(pi);
        got = evtchn_wait(pi, 0, 2000);
        xcheck(rc == 0 && got, "send(%u) -> IPI to ourselves", pi);
        xcheck(evtchn_close(pi) == 0, "close(%u)", pi);
        status_is(pi, EVTCHNSTAT_closed, &st);
    }

    rc = evtchn_close(pb);
    xcheck(rc == 0, "close(%u) rc %ld", pb, rc);
    status_is(pb, EVTCHNSTAT_closed, &st);
    status_is(pa, EVTCHNSTAT_unbound, &st); /* event_channel.c: the other end goes unbound */
    rc = evtchn_send(pb);
    xcheck(rc == -XEN_EINVAL, "send on closed port %u -> %ld (want -EINVAL)", pb, rc);
    rc = evtchn_close(pa);
    xcheck(rc == 0, "close(%u) rc %ld", pa, rc);
    printf("events: %u upcall(s); port %u got %d, port %u got %d\n", evtchn_upcalls, pa, evtchn_count[pa], pb,
           evtchn_count[pb]);
    /* The FIFO ABI's argument checks (a bad control gfn is -EINVAL); no valid request here:
     * that would switch the domain to FIFO (xenfifo tests that), so expand_array still finds
     * no control block (-EOPNOTSUPP) and set_priority a 2-level domain (-ENOSYS). */
    static u8 control[4096] __attribute__((aligned(4096)));
    struct evtchn_init_control ic = {1ul << 40, 0, 0, 0, {0}};
    long bad_gfn = evtchn_op(EVTCHNOP_init_control, &ic);
    ic.control_gfn = virt_to_gfn(control);
    ic.offset = 4;
    long bad_offset = evtchn_op(EVTCHNOP_init_control, &ic);
    ic.offset = 0;
    ic.vcpu = 99;
    long bad_vcpu = evtchn_op(EVTCHNOP_init_control, &ic);
    u64 array_gfn = virt_to_gfn(control);
    long expand = evtchn_op(EVTCHNOP_expand_array, &array_gfn);
    struct {
        evtchn_port_t port;
        u32 priority;
    } prio = {(evtchn_port_t)evtchn_bind_ipi(0), 3};
    long set_prio = evtchn_op(13 /* EVTCHNOP_set_priority */, &prio);
    xcheck(bad_gfn == -XEN_EINVAL && bad_offset == -XEN_EINVAL && bad_vcpu == -XEN_ENOENT
               && expand == -XEN_EOPNOTSUPP && set_prio == -XEN_ENOSYS,
           "FIFO ABI: bad gfn %s, misaligned offset %s, vcpu 99 %s, expand_array %s, set_priority %s",
           xen_errname(bad_gfn), xen_errname(bad_offset), xen_errname(bad_vcpu), xen_errname(expand),
           xen_errname(set_prio));
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
