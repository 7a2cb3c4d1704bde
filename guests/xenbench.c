/*
 * xenbench: the guest of benchmarks/hypercall.py. After discovery (and, for evtchn, the event
 * set-up) it runs one loop of `iterations` round trips at CPL 0 — Xen refuses hypercalls from
 * ring 3 (-EPERM), so unlike the `exits` guest this loop cannot move to ring 3 — then prints
 * the RESULT line and leaves through SCHEDOP_shutdown(poweroff). The host times whole runs
 * with iterations=0 and =N; set-up and shutdown cancel in (T_N - T_0) / N.
 *
 * Modes (each iteration is kept to a handful of instructions: ring 0 may be emulated):
 *   version  xen_version(XENVER_version, NULL) (public/version.h), the null hypercall; every
 *            result must equal the first.
 *   evtchn   EVTCHNOP_send on one end of a loopback interdomain pair (alloc_unbound +
 *            bind_interdomain to ourselves, public/event_channel.h), then spin with interrupts
 *            on until the upcall handler (vector 62, 2-level ABI) has counted the event on the
 *            other end. Every send must arrive.
 *   null     the same call sequence as `version` into a local stub shaped like a hypercall-page
 *            stub (mov $nr, %eax; a 2-byte nop where the stub has its exit; ret): the ring-0
 *            cost of the loop itself, without any exit.
 *
 * Command line: mode=version|evtchn|null [version] iterations=N [1000].
 * Expected: "xenbench: <mode> N", then RESULT: PASS xenbench <mode> N
 * (without Xen: RESULT: FAIL xenbench no-xen).
 */
#include "xen.h"

GUEST("xenbench");

#define SPIN_LIMIT 1000000 /* per event; seconds of emulated ring 0, far beyond a delivery */

/* A hypercall-page stub without the exit: mov $17, %eax (xen_version); xchg %ax,%ax; ret. */
__asm__(".text\n"
        ".globl null_stub\n"
        "null_stub:\n"
        "    movl $17, %eax\n"
        "    xchgw %ax, %ax\n"
        "    ret\n");
extern char null_stub[];

/* hypercall5's register contract, aimed at null_stub. */
static inline long null_call(u64 a1, u64 a2)
{
    register u64 r10 __asm__("r10") = 0;
    register u64 r8 __asm__("r8") = 0;
    u64 a3 = 0;
    long ret;
    __asm__ volatile("call *%[entry]"
                     : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : [entry] "r"((u64)null_stub)
                     : "rcx", "r9", "r11", "memory", "cc");
    return ret;
}

static u64 loop_null(u64 n)
{
    u64 bad = 0;
    for (u64 i = 0; i < n; i++)
        bad += null_call(XENVER_version, 0) != HYPERVISOR_xen_version;
    return bad;
}

static u64 loop_version(u64 n)
{
    long want = xen_version(XENVER_version, NULL);
    if (want < 0)
        return n + 1;
    u64 bad = 0;
    for (u64 i = 0; i < n; i++)
        bad += xen_version(XENVER_version, NULL) != want;
    return bad;
}

static u64 loop_evtchn(u64 n)
{
    const char *how;
    long rc = xen_events_init(NULL, &how);
    if (!xcheck(rc == 0, "upcall via %s rc %ld", how, rc))
        return n + 1;
    long self = xen_domid();
    domid_t me = self >= 0 ? (domid_t)self : DOMID_SELF;
    long a = evtchn_alloc_unbound(me);
    long b = a > 0 ? evtchn_bind_interdomain(me, (evtchn_port_t)a) : a;
    if (!xcheck(a > 0 && b > 0, "loopback pair: ports %ld and %ld", a, b))
        return n + 1;
    evtchn_port_t pa = (evtchn_port_t)a, pb = (evtchn_port_t)b;
    evtchn_bind(pa, NULL);
    evtchn_bind(pb, NULL); /* takes the bind-time event on pb, if any; we count pa only */
    volatile int *count = &evtchn_count[pa];
    int start = *count;
    u32 upcalls = evtchn_upcalls;
    u64 bad = 0;
    sti();
    for (u64 i = 0; i < n; i++) {
        int seen = *count;
        if (evtchn_send(pb) != 0) {
            bad++;
            continue;
        }
        for (u32 spins = 0; *count == seen; spins++) {
            if (spins == SPIN_LIMIT) {
                cli();
                printf("event %lu on port %u never came\n", i, pa);
                return n + 1;
            }
            __asm__ volatile("pause" ::: "memory");
        }
    }
    cli();
    u64 got = (u64)(*count - start);
    u32 taken = evtchn_upcalls - upcalls;
    printf("events: %lu sent, %lu seen on port %u, %u upcall(s)\n", n - bad, got, pa, taken);
    return bad + (got != n);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    static char mode[16]; /* cmdline_get's buffer is reused by the next lookup */
    const char *m = cmdline_get("mode");
    snprintf(mode, sizeof(mode), "%s", m && *m ? m : "version");
    u64 n = cmdline_u64("iterations", 1000);
    printf("xenbench: %s %lu\n", mode, n);
    u64 bad;
    if (!strcmp(mode, "version"))
        bad = loop_version(n);
    else if (!strcmp(mode, "evtchn"))
        bad = loop_evtchn(n);
    else if (!strcmp(mode, "null"))
        bad = loop_null(n);
    else
        xen_finish(0, "%s unknown-mode", mode);
    xen_finish(bad == 0, "%s %lu%s", mode, n, bad ? " errors" : "");
}
