/*
 * xenfifo: the FIFO event channel ABI (public/event_channel.h "FIFO ABI"), consumed the way
 * Linux's drivers/xen/events/events_fifo.c does: EVTCHNOP_init_control for vCPU 0 (a bad
 * offset and a second block are -EINVAL; link_bits comes back 17), EVTCHNOP_expand_array
 * with a page of event words initialised MASKED, then events on several ports and
 * priorities: three IPIs of priorities 15, 7 and 0 raised with interrupts off arrive
 * highest priority first; three of one priority arrive in the order they were raised; a
 * masked event stays PENDING and unlinked until EVTCHNOP_unmask links it; a loopback pair
 * both ways; VIRQ_TIMER from a singleshot timer (raised by Xen's timer, not a hypercall);
 * set_priority's range check; EVTCHNOP_reset goes back to 2-level (expand_array is then
 * -EOPNOTSUPP again).
 *
 * Command line: upcall=vector|param (see xenhello).
 * Expected: one "ok"/"FAIL" line per check, then RESULT: PASS xenfifo.
 */
#include "xen.h"

GUEST("xenfifo");

/* public/event_channel.h, FIFO ABI */
#define EVTCHNOP_set_priority 13
#define EVTCHN_FIFO_PENDING 31
#define EVTCHN_FIFO_MASKED 30
#define EVTCHN_FIFO_LINKED 29
#define EVTCHN_FIFO_BUSY 28
#define EVTCHN_FIFO_LINK_MASK ((1u << 17) - 1)
#define EVTCHN_FIFO_MAX_QUEUES 16
struct evtchn_fifo_control_block {
    u32 ready, _rsvd;
    u32 head[EVTCHN_FIFO_MAX_QUEUES];
};
_Static_assert(sizeof(struct evtchn_fifo_control_block) == 72, "event_channel.h layout");
struct evtchn_set_priority {
    evtchn_port_t port;
    u32 priority;
};
#define WORDS (4096 / 4)

static u8 control_page[4096] __attribute__((aligned(4096)));
static volatile u32 event_array[WORDS] __attribute__((aligned(4096)));
#define CB_OFFSET 64 /* anywhere 8-byte aligned that keeps the block inside the page */
static volatile struct evtchn_fifo_control_block *cb =
    (volatile struct evtchn_fifo_control_block *)(control_page + CB_OFFSET);
static u32 cursor[EVTCHN_FIFO_MAX_QUEUES]; /* our HEAD per queue (0: read the block's) */
static volatile int order[64];
static volatile int nr_order;
static volatile u32 fifo_upcalls;

#define BIT(n) (1u << (n))

/* Clear LINKED and LINK; return the LINK found (events_fifo.c clear_linked). */
static u32 clear_linked(volatile u32 *word)
{
    u32 w = *word;
    while (!__atomic_compare_exchange_n(word, &w, w & ~(BIT(EVTCHN_FIFO_LINKED) | EVTCHN_FIFO_LINK_MASK), 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
    return w & EVTCHN_FIFO_LINK_MASK;
}

static void consume_one(unsigned q, u32 *ready)
{
    u32 head = cursor[q];
    if (!head) /* we reached the tail last time: Xen may have started a new queue */
        head = __atomic_load_n(&cb->head[q], __ATOMIC_ACQUIRE);
    evtchn_port_t port = head;
    if (!port || port >= WORDS) { /* an empty READY queue: should not happen */
        *ready &= ~BIT(q);
        return;
    }
    volatile u32 *word = &event_array[port];
    head = clear_linked(word);
    if (!head)
        *ready &= ~BIT(q);
    u32 w = *word;
    if ((w & BIT(EVTCHN_FIFO_PENDING)) && !(w & BIT(EVTCHN_FIFO_MASKED))) {
        __atomic_fetch_and(word, ~BIT(EVTCHN_FIFO_PENDING), __ATOMIC_SEQ_CST);
        evtchn_count[port]++;
        if (nr_order < 64)
            order[nr_order++] = (int)port;
    }
    cursor[q] = head;
}

/* The upcall: clear evtchn_upcall_pending, take READY, consume lowest queue number first,
 * taking READY again after each event (events_fifo.c __evtchn_fifo_handle_events). */
static void fifo_upcall(int vector)
{
    (void)vector;
    fifo_upcalls++;
    vcpu0->evtchn_upcall_pending = 0;
    u32 ready = __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    for (int n = 0; ready && n < 4096; n++) {
        consume_one((unsigned)__builtin_ctz(ready), &ready);
        ready |= __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    }
}

/* events_fifo.c evtchn_fifo_unmask: clear MASKED ourselves unless the event is pending or
 * Xen holds BUSY; then Xen must do it (and link a pending event). */
static void fifo_unmask(evtchn_port_t port)
{
    volatile u32 *word = &event_array[port];
    u32 w = *word;
    while (!(w & (BIT(EVTCHN_FIFO_PENDING) | BIT(EVTCHN_FIFO_BUSY))))
        if (__atomic_compare_exchange_n(word, &w, w & ~BIT(EVTCHN_FIFO_MASKED), 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return;
    evtchn_unmask(port);
}

static void fifo_mask(evtchn_port_t port) { __atomic_fetch_or(&event_array[port], BIT(EVTCHN_FIFO_MASKED), __ATOMIC_SEQ_CST); }

static long set_priority(evtchn_port_t port, u32 priority)
{
    struct evtchn_set_priority sp = {port, priority};
    return evtchn_op(EVTCHNOP_set_priority, &sp);
}

/* A new port, unmasked, optionally with a priority. */
static evtchn_port_t ready_port(long port, int priority)
{
    if (port <= 0 || port >= WORDS) {
        xcheck(0, "port %ld", port);
        xen_finish(0, "ports");
    }
    if (priority >= 0)
        xcheck(set_priority((evtchn_port_t)port, (u32)priority) == 0, "set_priority(%ld, %d)", port, priority);
    fifo_unmask((evtchn_port_t)port);
    return (evtchn_port_t)port;
}

/* Raise each port with interrupts off, then take the upcall: the events land in `order`. */
static int raise_together(const evtchn_port_t *ports, int n)
{
    nr_order = 0;
    cli();
    for (int i = 0; i < n; i++)
        evtchn_send(ports[i]);
    /* The upcall waits at the LAPIC; delay_ms runs with interrupts on, so it is taken. */
    for (int tries = 0; tries < 200 && nr_order < n; tries++)
        delay_ms(10);
    return nr_order;
}

static int order_is(const evtchn_port_t *want, int n)
{
    for (int i = 0; i < n; i++)
        if (order[i] != (int)want[i])
            return 0;
    return nr_order == n;
}

static void print_order(const char *what)
{
    printf("%s:", what);
    for (int i = 0; i < nr_order; i++)
        printf(" %d", order[i]);
    printf("\n");
}

void guest_main(void)
{
    if (!xen_require())
        return;
    const char *how;
    long rc = xen_events_init(NULL, &how);
    if (!xcheck(rc == 0, "upcall via %s rc %ld", how, rc))
        xen_finish(0, "events");
    vector_handler(XEN_UPCALL_VECTOR, fifo_upcall); /* our consumer instead of 2-level's */
    long self = xen_domid();
    domid_t me = self >= 0 ? (domid_t)self : DOMID_SELF;

    for (unsigned i = 0; i < WORDS; i++) /* events_fifo.c init_array_page: all masked */
        event_array[i] = BIT(EVTCHN_FIFO_MASKED);
    struct evtchn_init_control ic = {virt_to_gfn(control_page), 4, 0, 0, {0}};
    long bad = evtchn_op(EVTCHNOP_init_control, &ic);
    ic.offset = 4096 - 64; /* 8-byte aligned, but the 72-byte block would cross the page */
    long crosses = evtchn_op(EVTCHNOP_init_control, &ic);
    ic.offset = CB_OFFSET;
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    xcheck(bad == -XEN_EINVAL && crosses == -XEN_EINVAL, "init_control: offset 4 %s, offset 4032 %s",
           xen_errname(bad), xen_errname(crosses));
    if (!xcheck(rc == 0 && ic.link_bits == 17, "EVTCHNOP_init_control(vcpu 0) rc %ld link_bits %u", rc,
                ic.link_bits))
        xen_finish(0, "init_control %s", xen_errname(rc));
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    xcheck(rc == -XEN_EINVAL, "a second control block for vCPU 0: %s", xen_errname(rc));
    u64 array_gfn = virt_to_gfn((const void *)event_array);
    rc = evtchn_op(EVTCHNOP_expand_array, &array_gfn);
    if (!xcheck(rc == 0, "EVTCHNOP_expand_array rc %ld", rc))
        xen_finish(0, "expand_array");

    /* Three priorities, raised lowest first: the upcall takes queue 0 first. */
    evtchn_port_t by_prio[3] = {ready_port(evtchn_bind_ipi(0), 15), ready_port(evtchn_bind_ipi(0), 7),
                                ready_port(evtchn_bind_ipi(0), 0)};
    int got = raise_together(by_prio, 3);
    print_order("priorities 15, 7, 0 raised; delivered");
    evtchn_port_t want_prio[3] = {by_prio[2], by_prio[1], by_prio[0]};
    xcheck(got == 3 && order_is(want_prio, 3), "highest priority first (%u upcall(s))", fifo_upcalls);

    /* One queue: first raised, first delivered. */
    evtchn_port_t same[3] = {ready_port(evtchn_bind_ipi(0), -1), ready_port(evtchn_bind_ipi(0), -1),
                             ready_port(evtchn_bind_ipi(0), -1)};
    evtchn_port_t raised[3] = {same[2], same[0], same[1]};
    got = raise_together(raised, 3);
    print_order("one queue, raised 3rd 1st 2nd; delivered");
    xcheck(got == 3 && order_is(raised, 3), "one queue is FIFO");

    /* Masked: pending, not linked, not delivered; EVTCHNOP_unmask links it. */
    evtchn_port_t m = same[0];
    fifo_mask(m);
    unsigned before = (unsigned)evtchn_count[m];
    evtchn_send(m);
    int arrived = evtchn_wait(m, (int)before, 200);
    u32 w = event_array[m];
    xcheck(!arrived && (w & BIT(EVTCHN_FIFO_PENDING)) && !(w & BIT(EVTCHN_FIFO_LINKED)),
           "masked port %u: word 0x%x, pending and unlinked", m, w);
    fifo_unmask(m);
    arrived = evtchn_wait(m, (int)before, 2000);
    xcheck(arrived && !(event_array[m] & BIT(EVTCHN_FIFO_MASKED)), "EVTCHNOP_unmask delivers port %u", m);

    /* A loopback interdomain pair, both ways. */
    long a = evtchn_alloc_unbound(me);
    long b = a > 0 ? evtchn_bind_interdomain(me, (evtchn_port_t)a) : a;
    evtchn_port_t pa = ready_port(a, 3), pb = ready_port(b, -1);
    int ca = evtchn_count[pa], cbn = evtchn_count[pb];
    evtchn_send(pb);
    int ok_a = evtchn_wait(pa, ca, 2000);
    evtchn_send(pa);
    int ok_b = evtchn_wait(pb, cbn, 2000);
    xcheck(ok_a && ok_b, "loopback pair %u <-> %u both ways", pa, pb);

    /* An event Xen raises by itself: VIRQ_TIMER from a singleshot timer. */
    evtchn_port_t timer = ready_port(evtchn_bind_virq(VIRQ_TIMER, 0), 1);
    struct vcpu_set_singleshot_timer t = {xen_system_time() + 5 * 1000000ull, 0};
    rc = vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
    arrived = evtchn_wait(timer, 0, 2000);
    xcheck(rc == 0 && arrived, "VIRQ_TIMER port %u through queue 1", timer);

    xcheck(set_priority(timer, 16) == -XEN_EINVAL, "set_priority 16 is -EINVAL");
    printf("fifo: %u upcall(s)\n", fifo_upcalls);

    /* EVTCHNOP_reset: every port closed, the domain back on 2-level. */
    struct evtchn_reset {
        domid_t dom;
    } reset = {DOMID_SELF};
    rc = evtchn_op(EVTCHNOP_reset, &reset);
    long expand = evtchn_op(EVTCHNOP_expand_array, &array_gfn);
    struct evtchn_status st;
    long stat = evtchn_status(pa, &st);
    xcheck(rc == 0 && expand == -XEN_EOPNOTSUPP && stat == 0 && st.status == EVTCHNSTAT_closed,
           "EVTCHNOP_reset rc %ld: ports closed, expand_array %s (2-level again)", rc, xen_errname(expand));
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
