/*
 * xenhostile: hostile arguments to every hypercall; each must come back with Xen's error code
 * (public/errno.h) while the guest, the VMM and the daemon keep running.
 *
 * Command line: case=NAME (one case) or case=all [all: every case but xs_corrupt, which
 * breaks the XenStore connection; run it on its own]. Cases and what they expect:
 *   fault      a bad pointer (unmapped: 0x10000000000; noncanonical: 0x8000000000000000) as
 *              the argument of xen_version, memory_op, hvm_op, event_channel_op,
 *              grant_table_op (query_size, copy), vcpu_op, sched_op (poll), console_io
 *              -> -EFAULT (14)
 *   port       ports out of range (4096 and 0xffffffff: the 2-level ABI has 4096) in send,
 *              close, unmask, status, bind_interdomain -> -EINVAL (22)
 *   gref       GNTTABOP_copy with refs beyond the table -> status GNTST_bad_gntref (-3)
 *   nosys      an unknown hypercall (60) and unknown sub-ops of xen_version, memory_op,
 *              hvm_op, event_channel_op, grant_table_op, vcpu_op, sched_op -> -ENOSYS (38)
 *   badarg     HVMOP_get_param of index 0xffff -> -EINVAL; VCPUOP_is_up of vCPU 1000 -> -ENOENT
 *   ring3      xen_version from CPL 3 -> -EPERM (1), or a #GP on the stub's exit instruction
 *              inside the hypercall page (xenopus's trap-path stubs leave through OUT, which
 *              faults at CPL 3 before reaching the hypervisor: refused all the same); any
 *              other exception is a FAIL
 *   xs_quota   writes data/quota/N until the store refuses (E2BIG, ENOSPC or EQUOTA, within
 *              quota_max=N [10000] nodes), then a 4000-byte value (refused the same way), then
 *              rm data/quota must work
 *   xs_corrupt a request header with len 0xfffffff0 on the XenStore ring: the guest must see
 *              an XS_ERROR, the ring's error/connection field set, or no reply at all
 * Each case prints "case <name> <what>: got <N> expected <M> ok|FAIL"; then
 * RESULT: PASS xenhostile [<case>] (without Xen: RESULT: FAIL xenhostile no-xen).
 */
#include "xen.h"

GUEST("xenhostile");

#define UNMAPPED 0x10000000000ul        /* PML4 slot 2: our page tables map only 4 GiB */
#define NONCANON 0x8000000000000000ul

static int expect(const char *c, const char *what, long got, long want)
{
    int ok = got == want;
    printf("case %s %s: got %ld expected %ld %s\n", c, what, got, want, ok ? "ok" : "FAIL");
    if (!ok)
        xen_failures++;
    return ok;
}

static void case_fault(void)
{
    static const u64 bad[2] = {UNMAPPED, NONCANON};
    for (int i = 0; i < 2; i++) {
        const char *c = i ? "fault(noncanonical)" : "fault(unmapped)";
        void *p = (void *)bad[i];
        expect(c, "xen_version(extraversion)", xen_version(XENVER_extraversion, p), -XEN_EFAULT);
        expect(c, "memory_op(add_to_physmap)", memory_op(XENMEM_add_to_physmap, p), -XEN_EFAULT);
        expect(c, "hvm_op(get_param)", hvm_op(HVMOP_get_param, p), -XEN_EFAULT);
        expect(c, "event_channel_op(alloc_unbound)", evtchn_op(EVTCHNOP_alloc_unbound, p), -XEN_EFAULT);
        expect(c, "grant_table_op(query_size)", gnttab_op(GNTTABOP_query_size, p, 1), -XEN_EFAULT);
        expect(c, "grant_table_op(copy)", gnttab_op(GNTTABOP_copy, p, 1), -XEN_EFAULT);
        expect(c, "vcpu_op(set_singleshot_timer)", vcpu_op(VCPUOP_set_singleshot_timer, 0, p), -XEN_EFAULT);
        expect(c, "sched_op(poll)", sched_op(SCHEDOP_poll, p), -XEN_EFAULT);
        expect(c, "console_io(write)", console_io(CONSOLEIO_write, 16, p), -XEN_EFAULT);
    }
    /* A good struct whose inner handle is bad: sched_poll.ports. */
    struct sched_poll poll = {(evtchn_port_t *)UNMAPPED, 1, 0};
    expect("fault", "sched_op(poll) ports handle", sched_op(SCHEDOP_poll, &poll), -XEN_EFAULT);
}

static void case_port(void)
{
    static const u32 ports[2] = {EVTCHN_2L_NR_CHANNELS, 0xffffffffu};
    for (int i = 0; i < 2; i++) {
        char c[32];
        snprintf(c, sizeof(c), "port(%u)", ports[i]);
        struct evtchn_status st;
        expect(c, "send", evtchn_send(ports[i]), -XEN_EINVAL);
        expect(c, "close", evtchn_close(ports[i]), -XEN_EINVAL);
        expect(c, "unmask", evtchn_unmask(ports[i]), -XEN_EINVAL);
        expect(c, "status", evtchn_status(ports[i], &st), -XEN_EINVAL);
        expect(c, "bind_interdomain(self)", evtchn_bind_interdomain(DOMID_SELF, ports[i]), -XEN_EINVAL);
    }
}

static u8 scratch[4096] __attribute__((aligned(4096)));

static void case_gref(void)
{
    long rc = gnttab_init();
    long self = xen_domid();
    if (!xcheck(rc == 0 && self >= 0, "grant table rc %ld domid %ld", rc, self))
        return;
    static const u32 refs[2] = {0xfffffff, 1u << 20};
    for (int i = 0; i < 2; i++) {
        char c[32];
        snprintf(c, sizeof(c), "gref(0x%x)", refs[i]);
        struct gnttab_copy op;
        memset(&op, 0, sizeof(op));
        op.source.u.ref = refs[i];
        op.source.domid = (domid_t)self;
        op.dest.u.gmfn = virt_to_gfn(scratch);
        op.dest.domid = DOMID_SELF;
        op.len = 8;
        op.flags = GNTCOPY_source_gref;
        rc = gnttab_copy1(&op);
        expect(c, "copy source rc", rc, 0);
        expect(c, "copy source status", op.status, GNTST_bad_gntref);
        memset(&op, 0, sizeof(op));
        op.source.u.gmfn = virt_to_gfn(scratch);
        op.source.domid = DOMID_SELF;
        op.dest.u.ref = refs[i];
        op.dest.domid = (domid_t)self;
        op.len = 8;
        op.flags = GNTCOPY_dest_gref;
        rc = gnttab_copy1(&op);
        expect(c, "copy dest status", rc ? rc : op.status, GNTST_bad_gntref);
    }
}

static void case_nosys(void)
{
    expect("nosys", "hypercall 60", hypercall5(60, 0, 0, 0, 0, 0), -XEN_ENOSYS);
    expect("nosys", "xen_version(0x77)", xen_version(0x77, NULL), -XEN_ENOSYS);
    expect("nosys", "memory_op(63)", memory_op(63, NULL), -XEN_ENOSYS);
    expect("nosys", "hvm_op(0x9999)", hvm_op(0x9999, NULL), -XEN_ENOSYS);
    expect("nosys", "event_channel_op(99)", evtchn_op(99, NULL), -XEN_ENOSYS);
    expect("nosys", "grant_table_op(99)", gnttab_op(99, NULL, 1), -XEN_ENOSYS);
    expect("nosys", "vcpu_op(99)", vcpu_op(99, 0, NULL), -XEN_ENOSYS);
    expect("nosys", "sched_op(99)", sched_op(99, NULL), -XEN_ENOSYS);
}

static void case_badarg(void)
{
    u64 v;
    expect("badarg", "hvm get_param(0xffff)", hvm_get_param(0xffff, &v), -XEN_EINVAL);
    expect("badarg", "vcpu_op(is_up, vcpu 1000)", vcpu_op(VCPUOP_is_up, 1000, NULL), -XEN_ENOENT);
}

#define RING3_EXCEPTION 0xe000000000000000ul
static u64 ring3_call(u64 arg)
{
    (void)arg;
    return (u64)xen_version(XENVER_version, NULL);
}

static u64 ring3_rip;
static void ring3_trap(struct frame *f)
{
    ring3_rip = f->rip;
    if ((f->cs & 3) == 3)
        user_return(RING3_EXCEPTION | f->vector);
    print_exception(f);
    xen_finish(0, "exception");
}

static void case_ring3(void)
{
    expect_exception(13, ring3_trap);
    expect_exception(6, ring3_trap);
    expect_exception(14, ring3_trap);
    u64 r = run_user(ring3_call, 0, 0);
    expect_exception(13, NULL);
    expect_exception(6, NULL);
    expect_exception(14, NULL);
    /* Exactly the marker and a vector: -EPERM (-1) has these top bits set too. */
    if ((r & ~0xfful) == RING3_EXCEPTION) {
        int v = (int)(r & 0xff);
        u64 at = ring3_rip - (u64)hypercall_page;
        int in_stub = v == 13 && at < 4096 && at / 32 == HYPERVISOR_xen_version;
        printf("case ring3 xen_version from CPL 3: got exception %s (vector %d) at RIP 0x%lx (%s) expected -1 "
               "or #GP in the stub %s\n", exception_name(v), v, ring3_rip,
               at < 4096 ? "in the hypercall page" : "outside the hypercall page", in_stub ? "ok" : "FAIL");
        if (!in_stub)
            xen_failures++;
        return;
    }
    expect("ring3", "xen_version from CPL 3", (long)r, -XEN_EPERM);
}

static int quota_error(long rc) { return rc == -XEN_E2BIG || rc == -XEN_ENOSPC || rc == -XEN_EQUOTA; }

static void case_xs_quota(void)
{
    if (!xcheck(xs_init() == 0, "xenstore ring"))
        return;
    u64 max = cmdline_u64("quota_max", 10000);
    long rc = 0;
    u64 n;
    char path[48];
    for (n = 0; n < max; n++) {
        snprintf(path, sizeof(path), "data/quota/%lu", n);
        rc = xs_write(0, path, "x");
        if (rc < 0)
            break;
    }
    printf("case xs_quota nodes: got %ld (%s) after %lu nodes expected E2BIG|ENOSPC|EQUOTA %s\n", rc,
           xen_errname(rc), n, quota_error(rc) ? "ok" : "FAIL");
    if (!quota_error(rc))
        xen_failures++;
    rc = xs_rm(0, "data/quota");
    expect("xs_quota", "rm data/quota afterwards", rc < 0 ? rc : 0, 0);
    static char big[4001];
    memset(big, 'v', 4000);
    rc = xs_write(0, "data/big", big);
    printf("case xs_quota 4000-byte value: got %ld (%s) expected E2BIG|ENOSPC|EQUOTA %s\n", rc, xen_errname(rc),
           quota_error(rc) ? "ok" : "FAIL");
    if (!quota_error(rc)) {
        xen_failures++;
        xs_rm(0, "data/big");
    }
    char v[32];
    rc = xs_read(0, "domid", v, sizeof(v));
    expect("xs_quota", "the store still answers (read domid)", rc > 0 ? 0 : rc, 0);
}

static void case_xs_corrupt(void)
{
    if (!xcheck(xs_init() == 0, "xenstore ring"))
        return;
    struct xsd_sockmsg h = {XS_READ, 0x7777, 0, 0xfffffff0u};
    long rc = xs_send_raw(&h, sizeof(h));
    expect("xs_corrupt", "header queued", rc, 0);
    static char body[256];
    struct xsd_sockmsg r;
    rc = xs_recv_msg(&r, body, sizeof(body), 2000);
    u32 err = xs_ring->error, conn = xs_ring->connection;
    const char *seen;
    int ok;
    if (rc == -XEN_ETIME) {
        seen = "no reply";
        ok = 1;
    } else if (rc >= 0 && r.type == XS_ERROR) {
        seen = "XS_ERROR";
        ok = 1;
    } else if (rc < 0) {
        seen = "a broken ring";
        ok = 1;
    } else {
        seen = "a normal reply";
        ok = 0;
    }
    ok |= err != 0;
    printf("case xs_corrupt len 0xfffffff0: got %s (rc %ld, ring error %u connection %u) expected an error or "
           "no reply %s\n", seen, rc, err, conn, ok ? "ok" : "FAIL");
    if (!ok)
        xen_failures++;
}

static const struct {
    const char *name;
    void (*fn)(void);
    int in_all;
} cases[] = {{"fault", case_fault, 1},       {"port", case_port, 1},         {"gref", case_gref, 1},
             {"nosys", case_nosys, 1},       {"badarg", case_badarg, 1},     {"ring3", case_ring3, 1},
             {"xs_quota", case_xs_quota, 1}, {"xs_corrupt", case_xs_corrupt, 0}};

void guest_main(void)
{
    if (!xen_require())
        return;
    const char *want = cmdline_get("case");
    static char which[32];
    snprintf(which, sizeof(which), "%s", want && *want ? want : "all");
    int ran = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++)
        if (!strcmp(which, cases[i].name) || (!strcmp(which, "all") && cases[i].in_all)) {
            cases[i].fn();
            ran++;
        }
    if (!ran)
        xen_finish(0, "unknown case %s", which);
    /* Still alive and served: one ordinary call after the hostile ones. */
    long v = xen_version(XENVER_version, NULL);
    expect(which, "xen_version afterwards", v < 0 ? v : 0, 0);
    xen_finish(xen_failures == 0, "%s", which);
}
