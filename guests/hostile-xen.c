/*
 * hostile-xen: floods and races against the Xen guest interface (xenhostile.c checks each
 * hypercall's argument handling from one vCPU; this one leans on the shared state). Needs
 * xen_platform = 1; evtchn and grant need vcpus >= 2.
 *
 * case=   msr       count=N [3000] writes of junk to the hypercall-page MSR (a page index
 *                   with low bits set, a frame outside RAM): each must raise #GP; then the
 *                   page is written N/10 times with a good frame and still works. The host
 *                   log must rate-limit what it says about them (the test counts).
 *         console   count=N [3000] CONSOLEIO_write calls of one line each and one with a
 *                   count of 1 MiB over a 4 KiB buffer (0, -EFAULT or -E2BIG): the host
 *                   log rate-limits them
 *         evtchn    rounds=N [150] on every vCPU at once: alloc_unbound, bind_interdomain,
 *                   send both ways, status, close both; and closes, sends and unmasks of
 *                   ports the other vCPUs are using (event_channel.h). Every answer must be
 *                   a port or one of Xen's errnos; then a fresh loopback pair delivers an
 *                   event through the upcall
 *         grant     rounds=N [150]: the BSP flips grant entries 1..7 (flags, frame, readonly)
 *                   while the APs copy from and to them (GNTTABOP_copy), query_size and
 *                   get/set_version (grant_table.h); every status must be a GNTST_*; then a
 *                   copy through a steady grant reads the right bytes
 * Prints "check <what>: ok|FAIL ..." and RESULT: PASS|FAIL hostile-xen <case>.
 */
#include "xen.h"

GUEST("hostile-xen");

#define XEN_E2BIG 7 /* public/errno.h */

static int failures;
static volatile int print_lock;

static void check(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(int ok, const char *what, const char *fmt, ...)
{
    static char detail[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    spin_lock(&print_lock);
    printf("check %s: %s%s%s\n", what, ok ? "ok" : "FAIL", *detail ? " " : "", detail);
    spin_unlock(&print_lock);
    failures += !ok;
}

/* ---- msr ------------------------------------------------------------------------------- */

static volatile u64 gps;
static void skip_wrmsr(struct frame *f)
{
    gps++;
    f->rip += 2; /* wrmsr is 0f 30 */
}

static void case_msr(void)
{
    u64 count = cmdline_u64("count", 3000);
    expect_exception(13, skip_wrmsr);
    for (u64 i = 0; i < count; i++) {
        u64 junk = i & 1 ? (u64)hypercall_page | 0x123 : 0xfffff000ul + ((i & 0xff) << 32);
        wrmsr(xen.hypercall_msr, junk);
    }
    expect_exception(13, NULL);
    check(gps == count, "every junk write raised #GP", "%lu of %lu", gps, count);
    for (u64 i = 0; i < count / 10; i++)
        wrmsr(xen.hypercall_msr, (u64)hypercall_page);
    check(xen_version(0, NULL) > 0, "the hypercall page still works", "");
}

/* ---- console --------------------------------------------------------------------------- */

static void case_console(void)
{
    u64 count = cmdline_u64("count", 3000);
    static const char line[] = "console_io flood line\n";
    long bad = 0;
    for (u64 i = 0; i < count; i++)
        bad += console_io(CONSOLEIO_write, sizeof(line) - 1, line) != 0;
    check(!bad, "every console_io write answered 0", "%ld not", bad);
    static char page[4096] __attribute__((aligned(4096)));
    memset(page, 'C', sizeof(page));
    long rc = console_io(CONSOLEIO_write, 1u << 20, page);
    /* Xen writes what it can copy (-EFAULT past it); xenopus caps one call at 64 KiB. */
    check(rc == 0 || rc == -XEN_EFAULT || rc == -XEN_E2BIG, "a 1 MiB count over a 4 KiB buffer",
          "rc %ld", rc);
}

/* ---- races ----------------------------------------------------------------------------- */

static volatile int go, done;
static u64 rounds;
static domid_t me;
static volatile u64 odd[MAX_CPUS]; /* answers outside what the ABI allows, per CPU */

static int xen_errno(long rc)
{
    return rc == -XEN_EINVAL || rc == -XEN_ENOENT || rc == -XEN_EBUSY || rc == -XEN_ENOSPC ||
           rc == -XEN_EPERM || rc == -XEN_EACCES || rc == -XEN_ENOMEM || rc == -XEN_EFAULT;
}

static void note(unsigned cpu, long rc, int port_ok)
{
    if (rc < 0 ? !xen_errno(rc) : !(port_ok ? rc < EVTCHN_2L_NR_CHANNELS : rc == 0))
        odd[cpu]++;
}

static void evtchn_job(unsigned cpu)
{
    struct evtchn_status st;
    u32 seed = 0x9e3779b9u * (cpu + 1);
    for (u64 i = 0; i < rounds; i++) {
        seed = seed * 1103515245u + 12345u;
        long a = evtchn_alloc_unbound(me);
        note(cpu, a, 1);
        long b = a > 0 ? evtchn_bind_interdomain(me, (evtchn_port_t)a) : -XEN_EINVAL;
        note(cpu, b, 1);
        if (b > 0) {
            note(cpu, evtchn_send((evtchn_port_t)b), 0);
            note(cpu, evtchn_send((evtchn_port_t)a), 0);
        }
        /* Someone else's port, probably: close, send, unmask, status it. */
        evtchn_port_t victim = 1 + (seed >> 8) % 64;
        long rc = evtchn_status(victim, &st);
        note(cpu, rc, 0);
        if (seed & 0x10000)
            note(cpu, evtchn_close(victim), 0);
        note(cpu, evtchn_send(victim), 0);
        note(cpu, evtchn_unmask(victim), 0);
        if (b > 0)
            note(cpu, evtchn_close((evtchn_port_t)b), 0);
        if (a > 0)
            note(cpu, evtchn_close((evtchn_port_t)a), 0);
    }
}

static u8 src[4096] __attribute__((aligned(4096)));
static u8 dst[MAX_CPUS][4096] __attribute__((aligned(4096)));

static int gntst(long s) { return s <= GNTST_okay && s >= GNTST_eagain; }

static void grant_job(unsigned cpu)
{
    u32 seed = 0x85ebca6bu * (cpu + 1);
    for (u64 i = 0; i < rounds; i++) {
        seed = seed * 1103515245u + 12345u;
        struct gnttab_copy op;
        memset(&op, 0, sizeof(op));
        grant_ref_t ref = 1 + (seed >> 8) % 7;
        if (seed & 0x100) { /* from the grant into our page */
            op.source.u.ref = ref;
            op.source.domid = me;
            op.dest.u.gmfn = virt_to_gfn(dst[cpu]);
            op.dest.domid = DOMID_SELF;
            op.flags = GNTCOPY_source_gref;
        } else { /* from our page into the grant */
            op.source.u.gmfn = virt_to_gfn(dst[cpu]);
            op.source.domid = DOMID_SELF;
            op.dest.u.ref = ref;
            op.dest.domid = me;
            op.flags = GNTCOPY_dest_gref;
        }
        op.source.offset = (u16)((seed >> 12) & 0xfff);
        op.len = (u16)((seed >> 4) & 0x1fff); /* may cross the page: GNTST_bad_copy_arg */
        long rc = gnttab_copy1(&op);
        if (rc != 0 && !xen_errno(rc))
            odd[cpu]++;
        if (rc == 0 && !gntst(op.status))
            odd[cpu]++;
        struct gnttab_query_size q = {DOMID_SELF, 0, 0, 0};
        rc = gnttab_op(GNTTABOP_query_size, &q, 1);
        if (rc != 0 || !gntst(q.status))
            odd[cpu]++;
        u32 version = 1;
        rc = gnttab_op(GNTTABOP_set_version, &version, 1); /* v1 again: allowed */
        if (rc != 0 && !xen_errno(rc))
            odd[cpu]++;
    }
}

static void (*job)(unsigned cpu);

static void ap_run(struct cpu *c)
{
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
        pause();
    job(c->index);
    __atomic_fetch_add(&done, 1, __ATOMIC_RELEASE);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static volatile int delivered;
static void on_event(evtchn_port_t port)
{
    (void)port;
    delivered++;
}

/* All CPUs run `fn` at once; the BSP runs `bsp` (or fn) meanwhile. */
static unsigned race(void (*fn)(unsigned), void (*bsp)(unsigned))
{
    job = fn;
    unsigned aps = smp_boot(ap_run);
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    (bsp ? bsp : fn)(0);
    for (int i = 0; i < 500 && done < (int)aps; i++)
        delay_ms(20);
    u64 total = 0;
    for (unsigned c = 0; c <= aps; c++)
        total += odd[c];
    check(done == (int)aps, "every vCPU finished", "%d of %u APs", done, aps);
    check(total == 0, "every answer a port or one of Xen's errnos", "%lu odd", total);
    return aps;
}

static void case_evtchn(void)
{
    race(evtchn_job, NULL);
    /* Afterwards: a fresh loopback pair still delivers through the upcall. */
    const char *how;
    if (xen_events_init(NULL, &how) < 0) {
        check(0, "events init", "");
        return;
    }
    long a = evtchn_alloc_unbound(me), b = a > 0 ? evtchn_bind_interdomain(me, (evtchn_port_t)a) : -1;
    if (a <= 0 || b <= 0) {
        check(0, "a fresh pair", "a %ld b %ld", a, b);
        return;
    }
    evtchn_bind((evtchn_port_t)a, on_event);
    int seen = evtchn_count[a];
    evtchn_send((evtchn_port_t)b);
    check(evtchn_wait((evtchn_port_t)a, seen, 2000), "a fresh pair delivers an event",
          "port %ld count %d", a, evtchn_count[a]);
}

static void grant_flipper(unsigned cpu)
{
    (void)cpu;
    u32 seed = 1;
    for (u64 i = 0; i < rounds * 4; i++) {
        seed = seed * 1103515245u + 12345u;
        volatile struct grant_entry_v1 *e = &gnttab[1 + (seed >> 8) % 7];
        e->flags = 0;
        e->domid = me;
        e->frame = seed & 0x400 ? 0xfffff : (u32)virt_to_gfn(src);
        __atomic_store_n(&e->flags, (u16)(GTF_permit_access | (seed & 0x800 ? GTF_readonly : 0)),
                         __ATOMIC_RELEASE);
    }
}

static void case_grant(void)
{
    if (gnttab_init() < 0) {
        check(0, "grant table", "");
        return;
    }
    memset(src, 0x5a, sizeof(src));
    race(grant_job, grant_flipper);
    /* Afterwards: a steady grant copies the right bytes. */
    long ref = gnttab_grant(me, virt_to_gfn(src), 1);
    memset(src, 0xc3, 64);
    struct gnttab_copy op;
    memset(&op, 0, sizeof(op));
    op.source.u.ref = (grant_ref_t)ref;
    op.source.domid = me;
    op.dest.u.gmfn = virt_to_gfn(dst[0]);
    op.dest.domid = DOMID_SELF;
    op.len = 64;
    op.flags = GNTCOPY_source_gref;
    long rc = ref > 0 ? gnttab_copy1(&op) : -1;
    check(rc == 0 && op.status == GNTST_okay && dst[0][0] == 0xc3 && dst[0][63] == 0xc3,
          "a steady grant copies", "ref %ld rc %ld status %d byte 0x%x", ref, rc, op.status, dst[0][0]);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    const char *c = cmdline_get("case");
    static char name[32];
    snprintf(name, sizeof(name), "%s", c ? c : "");
    rounds = cmdline_u64("rounds", 150);
    long self = xen_domid();
    me = self >= 0 ? (domid_t)self : DOMID_SELF;
    tsc_khz();
    if (!strcmp(name, "msr"))
        case_msr();
    else if (!strcmp(name, "console"))
        case_console();
    else if (!strcmp(name, "evtchn"))
        case_evtchn();
    else if (!strcmp(name, "grant"))
        case_grant();
    else
        xen_finish(0, "unknown case '%s'", name);
    xen_finish(!failures, "%s", name);
}
