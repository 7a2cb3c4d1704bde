/*
 * xentick: Xen events that keep firing, for save/restore. A VIRQ_TIMER port on vCPU 0
 * (public/vcpu.h VCPUOP_set_singleshot_timer, re-armed on every tick as Linux's
 * xen_timerop does) and a loopback pair (EVTCHNOP_alloc_unbound + bind_interdomain to
 * itself): on every tick the guest sends on one end and waits for the event on the other,
 * then prints "tick N". A restored guest that lost its timer, its event channels, its
 * upcall or its place in system time stops or miscounts.
 *
 * With watch=1 it also writes data/note and watches data/poke (XenStore, through its
 * ring) before the ticks, and after them reads the note back and waits up to 60 s for the
 * host to write data/poke: "note NOTE", "poked VALUE" (a restored guest's own nodes and
 * watches, under its new domid).
 *
 * Command line: ticks=N [100], period_ms=N [20], watch=0|1 [0].
 * Expected: "tick 0" .. "tick N-1", then RESULT: PASS xentick ticks=N.
 */
#include "xen.h"

GUEST("xentick");

static volatile int timer_events;
static void on_timer(evtchn_port_t port) { (void)port; timer_events++; }
static void on_loop(evtchn_port_t port) { (void)port; }

static long arm(u64 period_ns)
{
    struct vcpu_set_singleshot_timer t = {xen_system_time() + period_ns, 0};
    return vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    u64 ticks = cmdline_u64("ticks", 100);
    u64 period = cmdline_u64("period_ms", 20) * 1000000;
    const char *how;
    long rc = xen_events_init(NULL, &how);
    long timer = evtchn_bind_virq(VIRQ_TIMER, 0);
    long near = evtchn_alloc_unbound(DOMID_SELF);
    long far = near > 0 ? evtchn_bind_interdomain(DOMID_SELF, (evtchn_port_t)near) : near;
    if (rc != 0 || timer <= 0 || near <= 0 || far <= 0)
        xen_finish(0, "setup: events %ld, timer %ld, pair %ld/%ld", rc, timer, near, far);
    evtchn_bind((evtchn_port_t)timer, on_timer);
    evtchn_bind((evtchn_port_t)near, on_loop);
    evtchn_bind((evtchn_port_t)far, on_loop);
    int watch = cmdline_u64("watch", 0) != 0;
    char path[128], token[32], value[64];
    if (watch) {
        if (xs_init() != 0 || xs_write(0, "data/note", "before") < 0 ||
            xs_watch("data/poke", "poke") < 0 ||
            !xs_wait_watch(path, sizeof(path), token, sizeof(token), 5000))
            xen_finish(0, "XenStore setup failed");
    }
    for (u64 i = 0; i < ticks; i++) {
        int seen = evtchn_count[timer];
        if (arm(period) != 0)
            xen_finish(0, "tick %lu: VCPUOP_set_singleshot_timer failed", i);
        if (!evtchn_wait((evtchn_port_t)timer, seen, 5000))
            xen_finish(0, "tick %lu: no timer event", i);
        int before = evtchn_count[near];
        evtchn_send((evtchn_port_t)far);
        if (!evtchn_wait((evtchn_port_t)near, before, 5000))
            xen_finish(0, "tick %lu: no event on the loopback pair", i);
        printf("tick %lu\n", i);
    }
    if (watch) {
        long n = xs_read(0, "data/note", value, sizeof(value));
        printf("note %s\n", n > 0 ? value : "-");
        int got = 0;
        for (int waited = 0; !got && waited < 60000; waited += 100)
            got = xs_wait_watch(path, sizeof(path), token, sizeof(token), 100) &&
                  !strcmp(token, "poke") && xs_read(0, "data/poke", value, sizeof(value)) > 0;
        printf("poked %s\n", got ? value : "-");
        if (!got || n <= 0)
            xen_finish(0, "the note or the watch did not survive");
    }
    /* Every send reached the near end once: none lost, none repeated. */
    xen_finish(evtchn_count[near] == (int)ticks, "ticks=%lu events=%d timer=%d", ticks,
               evtchn_count[near], timer_events);
}
