/*
 * The Xen runtime (xen.h): CPUID discovery, the hypercall page, shared_info and the 2-level
 * event-channel upcall, grant table v1, a XenStore client on the ring, the PV console and the
 * xenbus steps frontends share. The order of operations follows what Linux does as a PVH
 * guest (arch/x86/xen/enlighten_hvm.c, drivers/xen/events/events_2l.c, grant-table.c,
 * xenbus/xenbus_comms.c); the layouts are pinned to Xen's public headers below.
 */
#include "xen.h"

/* ---- layouts on x86-64, from the public headers ---- */
#define OFF(t, f) __builtin_offsetof(struct t, f)
/* xen.h: struct vcpu_info is 64 bytes; shared_info's pending/mask bitmaps follow 32 of them */
_Static_assert(OFF(vcpu_info, evtchn_pending_sel) == 8 && OFF(vcpu_info, time) == 32, "vcpu_info");
_Static_assert(sizeof(struct vcpu_info) == 64 && sizeof(struct vcpu_time_info) == 32, "vcpu_info");
_Static_assert(OFF(shared_info, evtchn_pending) == 2048 && OFF(shared_info, evtchn_mask) == 2560 &&
               OFF(shared_info, wc_version) == 3072, "shared_info");
/* memory.h, hvm_op.h, vcpu.h */
_Static_assert(OFF(xen_add_to_physmap, space) == 4 && OFF(xen_add_to_physmap, idx) == 8 &&
               OFF(xen_add_to_physmap, gpfn) == 16 && sizeof(struct xen_add_to_physmap) == 24, "physmap");
_Static_assert(OFF(xen_hvm_param, index) == 4 && OFF(xen_hvm_param, value) == 8, "hvm_param");
_Static_assert(sizeof(struct xen_hvm_evtchn_upcall_vector) == 8, "upcall_vector");
_Static_assert(sizeof(struct vcpu_set_singleshot_timer) == 16, "singleshot");
_Static_assert(sizeof(struct vcpu_register_vcpu_info) == 16, "register_vcpu_info");
/* event_channel.h */
_Static_assert(OFF(evtchn_alloc_unbound, port) == 4 && sizeof(struct evtchn_alloc_unbound) == 8, "alloc");
_Static_assert(OFF(evtchn_bind_interdomain, remote_port) == 4 &&
               OFF(evtchn_bind_interdomain, local_port) == 8, "bind_interdomain");
_Static_assert(OFF(evtchn_bind_virq, port) == 8 && OFF(evtchn_bind_ipi, port) == 4, "bind");
_Static_assert(OFF(evtchn_status, status) == 8 && OFF(evtchn_status, u) == 16 &&
               sizeof(struct evtchn_status) == 24, "status");
/* grant_table.h */
_Static_assert(sizeof(struct grant_entry_v1) == 8 && OFF(grant_entry_v1, frame) == 4, "grant_entry_v1");
_Static_assert(OFF(gnttab_setup_table, status) == 8 && OFF(gnttab_setup_table, frame_list) == 16, "setup");
_Static_assert(OFF(gnttab_query_size, status) == 12 && sizeof(struct gnttab_query_size) == 16, "query");
_Static_assert(OFF(gnttab_copy_ptr, domid) == 8 && sizeof(struct gnttab_copy_ptr) == 16, "copy_ptr");
_Static_assert(OFF(gnttab_copy, len) == 32 && OFF(gnttab_copy, status) == 36 &&
               sizeof(struct gnttab_copy) == 40, "copy");
/* io/xs_wire.h, io/console.h, io/ring.h, io/blkif.h, io/netif.h */
_Static_assert(sizeof(struct xsd_sockmsg) == 16, "xsd_sockmsg");
_Static_assert(OFF(xenstore_domain_interface, req_cons) == 2048 &&
               OFF(xenstore_domain_interface, rsp_prod) == 2060 &&
               OFF(xenstore_domain_interface, connection) == 2068, "xenstore ring");
_Static_assert(OFF(xencons_interface, in_cons) == 3072 && OFF(xencons_interface, out_prod) == 3084, "cons");
_Static_assert(sizeof(struct sring_header) == 64, "sring");
_Static_assert(OFF(blkif_request, id) == 8 && OFF(blkif_request, sector_number) == 16 &&
               OFF(blkif_request, seg) == 24 && sizeof(struct blkif_request) == 112, "blkif_request");
_Static_assert(OFF(blkif_response, status) == 10 && sizeof(struct blkif_response) == 16, "blkif_response");
_Static_assert(sizeof(struct blkif_sring) <= 4096 && sizeof(struct netif_tx_sring) <= 4096 &&
               sizeof(struct netif_rx_sring) <= 4096, "rings fit a page");
_Static_assert(sizeof(struct netif_tx_request) == 12 && sizeof(struct netif_rx_request) == 8 &&
               sizeof(struct netif_rx_response) == 8, "netif");

struct xen_info xen;
/* Everything big is page_alloc'd on first use: the runtime is linked into every guest, and
 * .bss is cleared at boot in ring 0, which is emulated (slow) on the build machines. */
u8 *hypercall_page;

static void *zalloc(u64 bytes)
{
    void *p = page_alloc(bytes, 4096);
    if (p)
        memset(p, 0, bytes);
    return p;
}

/* ---- discovery ---- */

static void sig_string(char *out, u32 b, u32 c, u32 d)
{
    memcpy(out, &b, 4);
    memcpy(out + 4, &c, 4);
    memcpy(out + 8, &d, 4);
    out[12] = 0;
    for (int i = 0; i < 12; i++)
        if (out[i] && (out[i] < 0x20 || out[i] > 0x7e))
            out[i] = '.';
}

int xen_init(void)
{
    if (xen.present)
        return 1;
    xen.domid = xen.vcpu_id = -1;
    u32 a, b, c, d;
    /* arch-x86/cpuid.h: the first 0x100-aligned leaf from 0x40000000 with the signature (it
     * moves up when Viridian leaves come first). Read at CPL 0: see shared/ENVIRONMENT.md. */
    for (u32 n = 0; n < 16 && !xen.present; n++) {
        u32 base = XEN_CPUID_FIRST_LEAF + n * 0x100;
        cpuid(base, &a, &b, &c, &d);
        if (n == 0)
            sig_string(xen.signature, b, c, d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a >= base + 2) {
            xen.present = 1;
            xen.base = base;
            xen.max_leaf = a;
        }
    }
    if (!xen.present) {
        printf("no Xen: CPUID 0x40000000 signature is \"%s\"\n", xen.signature);
        return 0;
    }
    cpuid(xen.base + 1, &a, &b, &c, &d);
    xen.major = (u16)(a >> 16);
    xen.minor = (u16)a;
    cpuid(xen.base + 2, &a, &b, &c, &d);
    xen.hypercall_pages = a;
    xen.hypercall_msr = b;
    if (xen.max_leaf >= xen.base + 4) {
        cpuid(xen.base + 4, &a, &b, &c, &d);
        xen.hvm_features = a;
        if (a & XEN_HVM_CPUID_VCPU_ID_PRESENT)
            xen.vcpu_id = (int)b;
        if (a & XEN_HVM_CPUID_DOMID_PRESENT)
            xen.domid = (int)c;
    }
    printf("xen: CPUID 0x%x \"XenVMMXenVMM\" max leaf 0x%x, version %u.%u, %u hypercall page(s) "
           "MSR 0x%x, HVM features 0x%x domid %d vcpu %d\n",
           xen.base, xen.max_leaf, xen.major, xen.minor, xen.hypercall_pages, xen.hypercall_msr,
           xen.hvm_features, xen.domid, xen.vcpu_id);
    if (xen.hypercall_pages < 1 || !xen.hypercall_msr) {
        printf("xen: no hypercall page offered\n");
        xen.present = 0;
        return 0;
    }
    /* The MSR takes the page's physical address | page index (here page 0; one page is all
     * a 64-bit guest needs: 128 stubs of 32 bytes). */
    hypercall_page = zalloc(4096);
    if (!hypercall_page) {
        xen.present = 0;
        return 0;
    }
    wrmsr(xen.hypercall_msr, (u64)hypercall_page);
    int filled = 0;
    for (int i = 0; i < 4096 && !filled; i += 32)
        filled = hypercall_page[i] != 0;
    if (!filled) {
        printf("xen: the hypervisor left the hypercall page empty\n");
        xen.present = 0;
        return 0;
    }
    return 1;
}

int xen_require(void)
{
    if (xen_init())
        return 1;
    result(0, guest_name, "no-xen");
    return 0;
}

int xen_failures;

int xcheck(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok" : "FAIL");
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (!ok)
        xen_failures++;
    return ok;
}

long xen_domid(void)
{
    if (xen.domid >= 0)
        return xen.domid;
    u64 v;
    long rc = xs_init();
    if (!rc)
        rc = xs_read_u64("domid", &v);
    if (rc)
        return rc;
    xen.domid = (int)v;
    return xen.domid;
}

long xen_console_write(const char *s) { return console_io(CONSOLEIO_write, (u32)strlen(s), s); }

long hvm_get_param(u32 index, u64 *value)
{
    struct xen_hvm_param p = {DOMID_SELF, index, 0};
    long rc = hvm_op(HVMOP_get_param, &p);
    *value = p.value;
    return rc;
}

long hvm_set_param(u32 index, u64 value)
{
    struct xen_hvm_param p = {DOMID_SELF, index, value};
    return hvm_op(HVMOP_set_param, &p);
}

u64 xen_ram_end(void)
{
    static struct e820entry map[32];
    struct xen_memory_map mm = {ARRAY_SIZE(map), map};
    long rc = memory_op(XENMEM_memory_map, &mm);
    u64 end = 0;
    for (u32 i = 0; rc == 0 && i < mm.nr_entries; i++)
        if (map[i].type == 1 /* E820_RAM */ && map[i].addr + map[i].size > end)
            end = map[i].addr + map[i].size;
    return end;
}

long xen_shutdown(u32 reason)
{
    struct sched_shutdown s = {reason};
    return sched_op(SCHEDOP_shutdown, &s);
}

void xen_finish(int pass, const char *fmt, ...)
{
    static char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    result(pass, guest_name, "%s", detail);
    for (int i = 0; i < 100000 && !(inb(0x3fd) & 0x40); i++) /* COM1 LSR TEMT */
        ;
    if (xen.present) {
        long rc = xen_shutdown(SHUTDOWN_poweroff);
        printf("xen: SCHEDOP_shutdown returned %ld\n", rc);
    }
    shutdown();
}

/* ---- shared_info and events ---- */

volatile struct shared_info *shared_info;
volatile struct vcpu_info *vcpu0;
volatile u32 evtchn_upcalls;
volatile int *evtchn_count;
static evtchn_fn *port_fns;
static volatile int event_seen;
static int events_ready;

long xen_map_shared_info(void)
{
    if (shared_info)
        return 0;
    u8 *page = zalloc(4096);
    if (!page)
        return -XEN_ENOMEM;
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, virt_to_gfn(page)};
    long rc = memory_op(XENMEM_add_to_physmap, &x);
    if (rc == 0) {
        shared_info = (volatile struct shared_info *)page;
        vcpu0 = &shared_info->vcpu_info[0];
    }
    return rc;
}

u64 xen_system_time(void)
{
    volatile struct vcpu_time_info *t = &vcpu0->time;
    u32 v;
    u64 stamp, sys;
    u32 mul;
    i8 shift;
    int tries = 0;
    do { /* xen.h "vcpu_time_info": an odd version means an update is in progress */
        v = t->version;
        barrier();
        stamp = t->tsc_timestamp;
        sys = t->system_time;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        barrier();
    } while (((v & 1) || v != t->version) && ++tries < 1000);
    u64 delta = rdtsc() - stamp;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    return sys + (u64)(((unsigned __int128)delta * mul) >> 32);
}

/* The 2-level upcall (xen.h "Event channel endpoints", Linux events_2l.c): clear
 * upcall_pending, take the selector word atomically, then for each selected word the
 * pending-and-unmasked bits, each cleared with a locked AND before its handler runs. */
static void upcall(int vector)
{
    (void)vector;
    evtchn_upcalls++;
    for (int round = 0; round < 8 && vcpu0->evtchn_upcall_pending; round++) {
        vcpu0->evtchn_upcall_pending = 0;
        u64 sel = __atomic_exchange_n(&vcpu0->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            unsigned w = (unsigned)__builtin_ctzl(sel);
            sel &= sel - 1;
            u64 bits = shared_info->evtchn_pending[w] & ~shared_info->evtchn_mask[w];
            while (bits) {
                unsigned b = (unsigned)__builtin_ctzl(bits);
                bits &= bits - 1;
                __atomic_fetch_and(&shared_info->evtchn_pending[w], ~(1ul << b), __ATOMIC_SEQ_CST);
                evtchn_port_t port = w * 64 + b;
                evtchn_count[port]++;
                if (port_fns[port])
                    port_fns[port](port);
            }
        }
    }
    event_seen = 1;
}

long xen_events_init(const char *how, const char **chosen)
{
    static const char *used = "none";
    if (chosen)
        *chosen = used;
    if (events_ready)
        return 0;
    long rc = xen_map_shared_info();
    if (rc)
        return rc;
    if (!evtchn_count) {
        evtchn_count = zalloc(EVTCHN_2L_NR_CHANNELS * sizeof(int));
        port_fns = zalloc(EVTCHN_2L_NR_CHANNELS * sizeof(evtchn_fn));
        if (!evtchn_count || !port_fns)
            return -XEN_ENOMEM;
    }
    if (!how)
        how = cmdline_get("upcall");
    if (!how || !*how)
        how = xen.hvm_features & XEN_HVM_CPUID_UPCALL_VECTOR ? "vector" : "param";
    lapic_enable();
    vector_handler(XEN_UPCALL_VECTOR, upcall);
    vcpu0->evtchn_upcall_mask = 0;
    if (!strcmp(how, "vector")) {
        struct xen_hvm_evtchn_upcall_vector up = {0, XEN_UPCALL_VECTOR};
        rc = hvm_op(HVMOP_set_evtchn_upcall_vector, &up);
        used = "HVMOP_set_evtchn_upcall_vector";
    } else {
        rc = hvm_set_param(HVM_PARAM_CALLBACK_IRQ,
                           (u64)HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | XEN_UPCALL_VECTOR);
        used = "HVM_PARAM_CALLBACK_IRQ";
    }
    if (chosen)
        *chosen = used;
    if (rc == 0)
        events_ready = 1;
    return rc;
}

void evtchn_mask(evtchn_port_t port)
{
    __atomic_fetch_or(&shared_info->evtchn_mask[port / 64], 1ul << (port % 64), __ATOMIC_SEQ_CST);
}

int evtchn_is_pending(evtchn_port_t port) { return (shared_info->evtchn_pending[port / 64] >> (port % 64)) & 1; }
int evtchn_is_masked(evtchn_port_t port) { return (shared_info->evtchn_mask[port / 64] >> (port % 64)) & 1; }

void evtchn_bind(evtchn_port_t port, evtchn_fn fn)
{
    if (port >= EVTCHN_2L_NR_CHANNELS)
        return;
    port_fns[port] = fn;
    /* Unmask locally; if an event is already pending, EVTCHNOP_unmask makes Xen re-raise it
     * (what Linux's unmask_evtchn does for HVM guests). */
    __atomic_fetch_and(&shared_info->evtchn_mask[port / 64], ~(1ul << (port % 64)), __ATOMIC_SEQ_CST);
    if (evtchn_is_pending(port))
        evtchn_unmask(port);
}

int evtchn_wait(evtchn_port_t port, int seen, unsigned ms)
{
    for (unsigned left = ms;;) {
        cli();
        if (evtchn_count[port % EVTCHN_2L_NR_CHANNELS] > seen)
            return 1;
        if (!left)
            return 0;
        unsigned step = left < 10 ? left : 10;
        event_seen = 0;
        wait_flag(&event_seen, step);
        left -= step;
    }
}

long evtchn_alloc_unbound(domid_t remote)
{
    struct evtchn_alloc_unbound a = {DOMID_SELF, remote, 0};
    long rc = evtchn_op(EVTCHNOP_alloc_unbound, &a);
    return rc ? rc : (long)a.port;
}

long evtchn_bind_interdomain(domid_t remote, evtchn_port_t remote_port)
{
    struct evtchn_bind_interdomain b = {remote, remote_port, 0};
    long rc = evtchn_op(EVTCHNOP_bind_interdomain, &b);
    return rc ? rc : (long)b.local_port;
}

long evtchn_bind_virq(u32 virq, u32 vcpu)
{
    struct evtchn_bind_virq b = {virq, vcpu, 0};
    long rc = evtchn_op(EVTCHNOP_bind_virq, &b);
    return rc ? rc : (long)b.port;
}

long evtchn_bind_ipi(u32 vcpu)
{
    struct evtchn_bind_ipi b = {vcpu, 0};
    long rc = evtchn_op(EVTCHNOP_bind_ipi, &b);
    return rc ? rc : (long)b.port;
}

long evtchn_send(evtchn_port_t port)
{
    struct evtchn_port_arg a = {port};
    return evtchn_op(EVTCHNOP_send, &a);
}

long evtchn_close(evtchn_port_t port)
{
    struct evtchn_port_arg a = {port};
    return evtchn_op(EVTCHNOP_close, &a);
}

long evtchn_unmask(evtchn_port_t port)
{
    struct evtchn_port_arg a = {port};
    return evtchn_op(EVTCHNOP_unmask, &a);
}

long evtchn_status(evtchn_port_t port, struct evtchn_status *st)
{
    memset(st, 0, sizeof(*st));
    st->dom = DOMID_SELF;
    st->port = port;
    return evtchn_op(EVTCHNOP_status, st);
}

const char *evtchn_status_name(u32 s)
{
    static const char *const names[] = {"closed", "unbound", "interdomain", "pirq", "virq", "ipi"};
    return s < ARRAY_SIZE(names) ? names[s] : "?";
}

/* ---- grant tables ---- */

volatile struct grant_entry_v1 *gnttab;

long gnttab_init(void)
{
    if (gnttab)
        return 0;
    u8 *page = zalloc(4096); /* its RAM is replaced by the table frame (memory.h) */
    if (!page)
        return -XEN_ENOMEM;
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_grant_table, 0, virt_to_gfn(page)};
    long rc = memory_op(XENMEM_add_to_physmap, &x);
    if (rc == 0)
        gnttab = (volatile struct grant_entry_v1 *)page;
    return rc;
}

long gnttab_grant(domid_t domid, u64 gfn, int readonly)
{
    for (grant_ref_t ref = GNTTAB_NR_RESERVED; ref < GNTTAB_ENTRIES; ref++) {
        if (gnttab[ref].flags || gnttab[ref].frame)
            continue;
        gnttab[ref].frame = (u32)gfn;
        gnttab[ref].domid = domid;
        /* grant_table.h: "the frame and domid fields must be written before the flags";
         * x86 keeps stores in order, so a compiler barrier is the wmb(). */
        barrier();
        gnttab[ref].flags = (u16)(GTF_permit_access | (readonly ? GTF_readonly : 0));
        return ref;
    }
    return -1;
}

int gnttab_end(grant_ref_t ref)
{
    volatile u16 *flags = &gnttab[ref].flags;
    u16 old = *flags;
    /* As Linux's gnttab_end_foreign_access_ref (v1): refuse while the peer has it mapped;
     * otherwise clear the flags atomically against a concurrent GTF_reading/writing set. */
    for (;;) {
        if (old & (GTF_reading | GTF_writing))
            return 0;
        if (__atomic_compare_exchange_n(flags, &old, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            break;
    }
    gnttab[ref].frame = 0;
    return 1;
}

long gnttab_copy1(struct gnttab_copy *op) { return gnttab_op(GNTTABOP_copy, op, 1); }

const char *gntst_name(int s)
{
    static const char *const names[] = {"okay", "general_error", "bad_domain", "bad_gntref",
                                        "bad_handle", "bad_virt_addr", "bad_dev_addr",
                                        "no_device_space", "permission_denied", "bad_page",
                                        "bad_copy_arg", "address_too_big", "eagain", "no_space"};
    return s <= 0 && -s < (int)ARRAY_SIZE(names) ? names[-s] : "?";
}

/* ---- XenStore ---- */

volatile struct xenstore_domain_interface *xs_ring;
evtchn_port_t xs_port;
unsigned xs_timeout_ms = 5000;
static u32 xs_req_id;
/* Reply bodies and request payloads (XENSTORE_PAYLOAD_MAX + 1 each), allocated by xs_init. */
static char *xs_body, *xs_reply, *xs_out;

/* A special page the toolstack named by an HVM param pair (its pfn and its event
 * channel: STORE_* or CONSOLE_*), mapped so that its guest-physical address is usable. */
static long map_special(u32 pfn_param, u32 port_param, u64 *pfn, u64 *port, volatile void **out)
{
    long rc = hvm_get_param(pfn_param, pfn);
    if (!rc)
        rc = hvm_get_param(port_param, port);
    if (rc)
        return rc;
    u64 pa = *pfn << 12;
    if (!*pfn)
        return -XEN_ENOENT;
    if (pa >= (4ul << 30) && map_phys(pa & ~((1ul << 30) - 1), 1ul << 30))
        return -XEN_ENOMEM;
    *out = (volatile void *)pa;
    return 0;
}

long xs_init(void)
{
    if (xs_ring)
        return 0;
    u64 pfn = 0, port = 0;
    volatile void *p;
    long rc = map_special(HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, &pfn, &port, &p);
    if (rc)
        return rc;
    xs_body = zalloc(3 * 4096 + 3);
    if (!xs_body)
        return -XEN_ENOMEM;
    xs_reply = xs_body + 4097;
    xs_out = xs_reply + 4097;
    xs_port = (evtchn_port_t)port;
    if (xen_events_init(NULL, NULL) == 0)
        evtchn_bind(xs_port, NULL);
    xs_ring = p;
    printf("xenstore: ring at pfn 0x%lx, event channel %u, connection %u, server features 0x%x\n",
           pfn, xs_port, xs_ring->connection, xs_ring->server_features);
    return 0;
}

/* Waits for the store's event channel (or a 10 ms tick without events). */
static void xs_wait_a_bit(void)
{
    if (events_ready)
        evtchn_wait(xs_port, evtchn_count[xs_port], 10);
    else
        delay_ms(10);
}

long xs_send_raw(const void *data, u32 len)
{
    const u8 *d = data;
    unsigned waited = 0;
    while (len) {
        u32 cons = xs_ring->req_cons, prod = xs_ring->req_prod;
        mb(); /* xs_wire.h ring protocol: read the indexes, then touch the data */
        if (prod - cons > XENSTORE_RING_SIZE)
            return -XEN_EIO;
        u32 space = XENSTORE_RING_SIZE - (prod - cons);
        u32 chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod);
        if (!space) {
            evtchn_send(xs_port);
            if ((waited += 10) > xs_timeout_ms)
                return -XEN_ETIME;
            xs_wait_a_bit();
            continue;
        }
        if (chunk > space)
            chunk = space;
        if (chunk > len)
            chunk = len;
        memcpy((void *)&xs_ring->req[MASK_XENSTORE_IDX(prod)], d, chunk);
        barrier(); /* data before the producer index (x86: stores stay in order) */
        xs_ring->req_prod = prod + chunk;
        d += chunk;
        len -= chunk;
    }
    mb();
    evtchn_send(xs_port);
    return 0;
}

/* Takes exactly len reply bytes, waiting (bounded) for them to arrive. */
static long xs_take(void *out, u32 len, unsigned ms)
{
    u8 *o = out;
    unsigned waited = 0;
    int taken = 0;
    while (len) {
        u32 cons = xs_ring->rsp_cons, prod = xs_ring->rsp_prod;
        mb();
        if (prod - cons > XENSTORE_RING_SIZE)
            return -XEN_EIO;
        u32 avail = prod - cons;
        if (!avail) {
            if (taken) { /* the server may be waiting for room */
                evtchn_send(xs_port);
                taken = 0;
            }
            if ((waited += 10) > ms)
                return -XEN_ETIME;
            xs_wait_a_bit();
            continue;
        }
        u32 chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(cons);
        if (chunk > avail)
            chunk = avail;
        if (chunk > len)
            chunk = len;
        memcpy(o, (const void *)&xs_ring->rsp[MASK_XENSTORE_IDX(cons)], chunk);
        mb(); /* done reading before the slot is handed back */
        xs_ring->rsp_cons = cons + chunk;
        o += chunk;
        len -= chunk;
        taken = 1;
    }
    if (taken)
        evtchn_send(xs_port);
    return 0;
}

long xs_recv_msg(struct xsd_sockmsg *hdr, char *out, u32 cap, unsigned ms)
{
    char *body = xs_body;
    long rc = xs_take(hdr, sizeof(*hdr), ms);
    if (rc)
        return rc;
    if (hdr->len > XENSTORE_PAYLOAD_MAX)
        return -XEN_EIO;
    rc = xs_take(body, hdr->len, ms);
    if (rc)
        return rc;
    body[hdr->len] = 0;
    if (out && cap) {
        u32 n = hdr->len < cap - 1 ? hdr->len : cap - 1;
        memcpy(out, body, n);
        out[n] = 0;
    }
    return hdr->len;
}

#define WATCH_QUEUE 8
static struct {
    char path[128], token[64];
} watch_q[WATCH_QUEUE];
static unsigned watch_head, watch_tail;

static void queue_watch(const char *body, u32 len)
{
    u32 plen = (u32)strlen(body);
    const char *token = plen + 1 < len ? body + plen + 1 : "";
    if (watch_tail - watch_head >= WATCH_QUEUE)
        watch_head++; /* drop the oldest */
    unsigned i = watch_tail++ % WATCH_QUEUE;
    snprintf(watch_q[i].path, sizeof(watch_q[i].path), "%s", body);
    snprintf(watch_q[i].token, sizeof(watch_q[i].token), "%s", token);
}

long xs_request(u32 type, u32 tx, const void *payload, u32 len, char *out, u32 cap)
{
    char *reply = xs_reply;
    if (!xs_ring)
        return -XEN_ENOENT;
    if (len > XENSTORE_PAYLOAD_MAX)
        return -XEN_E2BIG;
    struct xsd_sockmsg h = {type, ++xs_req_id, tx, len};
    long rc = xs_send_raw(&h, sizeof(h));
    if (!rc)
        rc = xs_send_raw(payload, len);
    if (rc)
        return rc;
    for (;;) {
        struct xsd_sockmsg r;
        long n = xs_recv_msg(&r, reply, XENSTORE_PAYLOAD_MAX + 1, xs_timeout_ms);
        if (n < 0)
            return n;
        if (r.type == XS_WATCH_EVENT) { /* xenstore.txt: events interleave with replies */
            queue_watch(reply, r.len);
            continue;
        }
        if (r.req_id != h.req_id) {
            printf("xenstore: reply to request %u while waiting for %u (dropped)\n", r.req_id, h.req_id);
            continue;
        }
        if (r.type == XS_ERROR)
            return -xs_errno(reply);
        if (r.type != type)
            return -XEN_EIO;
        if (out && cap) {
            u32 k = r.len < cap - 1 ? r.len : cap - 1;
            memcpy(out, reply, k);
            out[k] = 0;
        }
        return (long)r.len;
    }
}

/* Payload "a\0" or "a\0b" (b without its NUL: XS_WRITE) or "a\0b\0" (XS_WATCH). */
static long xs_two(u32 type, u32 tx, const char *a, const char *b, int nul_b, char *out, u32 cap)
{
    char *buf = xs_out;
    if (!buf)
        return -XEN_ENOENT;
    u32 la = (u32)strlen(a) + 1, lb = b ? (u32)strlen(b) + (nul_b ? 1 : 0) : 0;
    if (la + lb > XENSTORE_PAYLOAD_MAX)
        return -XEN_E2BIG;
    memcpy(buf, a, la);
    if (b)
        memcpy(buf + la, b, lb);
    return xs_request(type, tx, buf, la + lb, out, cap);
}

long xs_read(u32 tx, const char *path, char *out, u32 cap) { return xs_two(XS_READ, tx, path, NULL, 0, out, cap); }
/* Requests whose reply is just "OK": 0 on success, -errno otherwise. */
static long xs_ok(long r) { return r < 0 ? r : 0; }
long xs_write(u32 tx, const char *path, const char *value) { return xs_ok(xs_two(XS_WRITE, tx, path, value, 0, NULL, 0)); }
long xs_mkdir(u32 tx, const char *path) { return xs_ok(xs_two(XS_MKDIR, tx, path, NULL, 0, NULL, 0)); }
long xs_rm(u32 tx, const char *path) { return xs_ok(xs_two(XS_RM, tx, path, NULL, 0, NULL, 0)); }
long xs_directory(u32 tx, const char *path, char *out, u32 cap) { return xs_two(XS_DIRECTORY, tx, path, NULL, 0, out, cap); }
long xs_watch(const char *path, const char *token) { return xs_ok(xs_two(XS_WATCH, 0, path, token, 1, NULL, 0)); }
long xs_unwatch(const char *path, const char *token) { return xs_ok(xs_two(XS_UNWATCH, 0, path, token, 1, NULL, 0)); }

long xs_set_perms(u32 tx, const char *path, const char *const *perms, unsigned n)
{
    char *buf = xs_out;
    u32 len = 0;
    const char *parts[9];
    if (!buf)
        return -XEN_ENOENT;
    parts[0] = path;
    for (unsigned i = 0; i < n && i < 8; i++)
        parts[i + 1] = perms[i];
    for (unsigned i = 0; i <= n && i < 9; i++) {
        u32 l = (u32)strlen(parts[i]) + 1;
        if (len + l > XENSTORE_PAYLOAD_MAX)
            return -XEN_E2BIG;
        memcpy(buf + len, parts[i], l);
        len += l;
    }
    return xs_ok(xs_request(XS_SET_PERMS, tx, buf, len, NULL, 0));
}

long xs_transaction_start(u32 *tx)
{
    char id[32];
    long rc = xs_request(XS_TRANSACTION_START, 0, "", 1, id, sizeof(id));
    if (rc < 0)
        return rc;
    *tx = (u32)strtou64(id, NULL);
    return 0;
}

long xs_transaction_end(u32 tx, int commit)
{
    return xs_request(XS_TRANSACTION_END, tx, commit ? "T" : "F", 2, NULL, 0);
}

int xs_wait_watch(char *path, u32 path_cap, char *token, u32 token_cap, unsigned ms)
{
    for (unsigned waited = 0; watch_head == watch_tail; waited += 10) {
        if (waited >= ms)
            return 0;
        u32 avail = xs_ring->rsp_prod - xs_ring->rsp_cons;
        if (avail >= sizeof(struct xsd_sockmsg)) {
            struct xsd_sockmsg r;
            long n = xs_recv_msg(&r, xs_reply, XENSTORE_PAYLOAD_MAX + 1, xs_timeout_ms);
            if (n < 0)
                return 0;
            if (r.type == XS_WATCH_EVENT)
                queue_watch(xs_reply, r.len);
            continue;
        }
        xs_wait_a_bit();
    }
    unsigned i = watch_head++ % WATCH_QUEUE;
    snprintf(path, path_cap, "%s", watch_q[i].path);
    snprintf(token, token_cap, "%s", watch_q[i].token);
    return 1;
}

long xs_reconnect(void)
{
    if (!xs_ring)
        return -XEN_ENOENT;
    if (!(xs_ring->server_features & XENSTORE_SERVER_FEATURE_RECONNECTION))
        return -XEN_EOPNOTSUPP;
    xs_ring->connection = XENSTORE_RECONNECT;
    mb();
    evtchn_send(xs_port);
    /* "The guest must now ignore all fields except the Connection state" */
    for (unsigned waited = 0; xs_ring->connection != XENSTORE_CONNECTED; waited += 10) {
        if (waited > xs_timeout_ms)
            return -XEN_ETIME;
        xs_wait_a_bit();
    }
    mb();
    watch_head = watch_tail = 0;
    return 0;
}

long xs_read_u64(const char *path, u64 *v)
{
    char buf[32];
    long rc = xs_read(0, path, buf, sizeof(buf));
    if (rc < 0)
        return rc;
    *v = strtou64(buf, NULL);
    return 0;
}

/* xs_wire.h xsd_errors[] and the numbers of public/errno.h (EQUOTA: oxenstored's). */
static const struct {
    const char *name;
    int num;
} xs_errors[] = {{"EINVAL", 22}, {"EACCES", 13}, {"EEXIST", 17}, {"EISDIR", 21}, {"ENOENT", 2},
                 {"ENOMEM", 12}, {"ENOSPC", 28}, {"EIO", 5}, {"ENOTEMPTY", 39}, {"ENOSYS", 38},
                 {"EROFS", 30}, {"EBUSY", 16}, {"EAGAIN", 11}, {"EISCONN", 106}, {"E2BIG", 7},
                 {"EPERM", 1}, {"EQUOTA", 122}, {"EFAULT", 14}, {"ETIME", 62}, {"EOPNOTSUPP", 95}};

int xs_errno(const char *name)
{
    for (unsigned i = 0; i < ARRAY_SIZE(xs_errors); i++)
        if (!strcmp(name, xs_errors[i].name))
            return xs_errors[i].num;
    return XEN_EIO;
}

const char *xen_errname(long err)
{
    if (err >= 0)
        return "ok";
    for (unsigned i = 0; i < ARRAY_SIZE(xs_errors); i++)
        if (-err == xs_errors[i].num)
            return xs_errors[i].name;
    return "E?";
}

long xs_wait_state(const char *path, u64 want, unsigned ms, u64 *got)
{
    long rc = 0;
    for (unsigned waited = 0;; waited += 20) {
        u64 v = 0;
        rc = xs_read_u64(path, &v);
        if (got)
            *got = rc ? 0 : v;
        if (!rc && v >= want)
            return 0;
        if (waited >= ms)
            return rc ? rc : -XEN_ETIME;
        delay_ms(20);
    }
}

/* ---- PV console ---- */

volatile struct xencons_interface *xencons;
evtchn_port_t xencons_port;

long xencons_init(void)
{
    if (xencons)
        return 0;
    u64 pfn = 0, port = 0;
    volatile void *p;
    long rc = map_special(HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN, &pfn, &port, &p);
    if (rc)
        return rc;
    xencons_port = (evtchn_port_t)port;
    if (xen_events_init(NULL, NULL) == 0)
        evtchn_bind(xencons_port, NULL);
    xencons = p;
    return 0;
}

static long cons_put(struct xencons_ring *r, char c, unsigned *waited)
{
    volatile struct xencons_interface *x = r->intf;
    for (;;) {
        u32 cons = x->out_cons, prod = x->out_prod;
        mb();
        if (prod - cons > sizeof(x->out))
            return -XEN_EIO;
        if (prod - cons < sizeof(x->out)) {
            x->out[prod % sizeof(x->out)] = c;
            barrier(); /* console.h: data before the index */
            x->out_prod = prod + 1;
            return 0;
        }
        evtchn_send(r->port);
        if ((*waited += 10) > 5000)
            return -XEN_ETIME;
        if (events_ready)
            evtchn_wait(r->port, evtchn_count[r->port], 10);
        else
            delay_ms(10);
    }
}

long xencons_ring_write(struct xencons_ring *r, const char *s)
{
    long n = 0;
    unsigned waited = 0;
    for (; *s; s++, n++) {
        long rc = (*s == '\n' && r->crlf ? cons_put(r, '\r', &waited) : 0);
        if (!rc)
            rc = cons_put(r, *s, &waited);
        if (rc)
            return rc;
    }
    mb();
    evtchn_send(r->port);
    return n;
}

long xencons_ring_readline(struct xencons_ring *r, char *out, u32 cap, unsigned ms)
{
    volatile struct xencons_interface *x = r->intf;
    u32 n = 0;
    for (unsigned waited = 0;;) {
        u32 cons = x->in_cons, prod = x->in_prod;
        mb();
        if (prod - cons > sizeof(x->in))
            return -1;
        if (cons == prod) {
            if ((waited += 10) > ms)
                return -1;
            if (events_ready)
                evtchn_wait(r->port, evtchn_count[r->port], 10);
            else
                delay_ms(10);
            continue;
        }
        char c = x->in[cons % sizeof(x->in)];
        mb();
        x->in_cons = cons + 1;
        evtchn_send(r->port);
        if (c == '\r' || c == '\n') {
            if (!n)
                continue; /* the \n of a \r\n, or an empty line */
            out[n] = 0;
            return n;
        }
        if (n + 1 < cap)
            out[n++] = c;
    }
}

long xencons_write(const char *s)
{
    struct xencons_ring r = {xencons, xencons_port, 1};
    return xencons_ring_write(&r, s);
}

long xencons_readline(char *out, u32 cap, unsigned ms)
{
    struct xencons_ring r = {xencons, xencons_port, 1};
    return xencons_ring_readline(&r, out, cap, ms);
}

/* ---- xenbus frontend steps (io/xenbus.h, Linux xenbus_probe_frontend.c) ---- */

long xenbus_find(struct xenbus_dev *d, const char *type, const char *id)
{
    char names[256], dir[32], path[160];
    memset(d, 0, sizeof(*d));
    snprintf(dir, sizeof(dir), "device/%s", type);
    if (!id || !*id) {
        long rc = xs_directory(0, dir, names, sizeof(names));
        if (rc < 0)
            return rc;
        if (rc == 0 || !names[0])
            return -XEN_ENOENT;
        id = names;
    }
    snprintf(d->node, sizeof(d->node), "%s/%s", dir, id);
    snprintf(path, sizeof(path), "%s/backend", d->node);
    long rc = xs_read(0, path, d->backend, sizeof(d->backend));
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/backend-id", d->node);
    return xs_read_u64(path, &d->backend_id);
}

long xenbus_wait_for(const char *type, const char *id, unsigned ms)
{
    char dir[32], node[96], backend[128], path[96], token[16];
    long rc = xs_init();
    snprintf(dir, sizeof(dir), "device/%s", type);
    if (!rc)
        rc = xs_watch(dir, "hotplug");
    if (rc)
        return rc;
    snprintf(node, sizeof(node), "%s/%s/backend", dir, id);
    for (unsigned waited = 0; xs_read(0, node, backend, sizeof(backend)) < 0; waited += 1000) {
        if (waited >= ms)
            return -XEN_ETIME;
        xs_wait_watch(path, sizeof(path), token, sizeof(token), 1000);
    }
    return xs_unwatch(dir, "hotplug");
}

long xenbus_switch_state(struct xenbus_dev *d, u32 state)
{
    char path[96], v[8];
    snprintf(path, sizeof(path), "%s/state", d->node);
    snprintf(v, sizeof(v), "%u", state);
    return xs_write(0, path, v);
}

long xenbus_write_u64(struct xenbus_dev *d, const char *key, u64 v)
{
    char path[128], val[24];
    snprintf(path, sizeof(path), "%s/%s", d->node, key);
    snprintf(val, sizeof(val), "%lu", v);
    return xs_write(0, path, val);
}

long xen_pv_init(void)
{
    long rc = xs_init();
    if (!rc)
        rc = gnttab_init();
    if (!rc)
        rc = xen_events_init(NULL, NULL);
    return rc;
}

void xenbus_frontend_start(struct xenbus_dev *d, const char *type, const char *id)
{
    long rc = xen_pv_init();
    if (!xcheck(rc == 0, "xenstore, grant table, events rc %ld", rc))
        xen_finish(0, "setup");
    rc = xenbus_find(d, type, id);
    if (!xcheck(rc == 0, "found %s backend %s (domain %lu) rc %ld", d->node, d->backend, d->backend_id, rc))
        xen_finish(0, "no %s", type);
}

void xen_pair_offer(const char *name, domid_t self, domid_t peer, long port, long gref)
{
    char node[64], v[24], own[16], rd[16];
    snprintf(own, sizeof(own), "n%u", self);
    snprintf(rd, sizeof(rd), "r%u", peer);
    const char *perms[2] = {own, rd};
    long rc = 0;
    const char *what[2] = {"gref", "port"};
    long value[2] = {gref, port};
    for (int i = 0; i < 2 && rc >= 0; i++) {
        snprintf(node, sizeof(node), "data/%s-%s", name, what[i]);
        snprintf(v, sizeof(v), "%ld", value[i]);
        rc = xs_write(0, node, v);
        rc = rc < 0 ? rc : xs_set_perms(0, node, perms, 2);
    }
    if (!xcheck(rc >= 0, "published data/%s-port %ld and -gref %ld rc %ld (%s)", name, port,
                gref, rc, xen_errname(rc)))
        xen_finish(0, "role=a xenstore");
}

evtchn_port_t xen_pair_accept(const char *name, domid_t peer, unsigned timeout_ms, u64 *gref)
{
    char path[64];
    u64 rport = 0;
    long rc = -1;
    snprintf(path, sizeof(path), "/local/domain/%u/data/%s-port", peer, name);
    for (unsigned waited = 0; waited < timeout_ms && rc; waited += 50) {
        rc = xs_read_u64(path, &rport);
        if (rc)
            delay_ms(50);
    }
    snprintf(path, sizeof(path), "/local/domain/%u/data/%s-gref", peer, name);
    rc = rc ? rc : xs_read_u64(path, gref);
    if (!xcheck(rc == 0, "read the peer's port %lu and gref %lu rc %ld (%s)", rport, *gref, rc,
                xen_errname(rc)))
        xen_finish(0, "role=b rendezvous");
    long lport = evtchn_bind_interdomain(peer, (evtchn_port_t)rport);
    if (!xcheck(lport > 0, "bind_interdomain(%u, %lu) -> %ld", peer, rport, lport))
        xen_finish(0, "role=b bind");
    evtchn_bind((evtchn_port_t)lport, NULL);
    xcheck(evtchn_wait((evtchn_port_t)lport, 0, timeout_ms), "bind raised port %ld", lport);
    return (evtchn_port_t)lport;
}

void xen_pair_run(const char *what, unsigned *timeout_ms,
                  void (*role_a)(domid_t self, domid_t peer),
                  void (*role_b)(domid_t self, domid_t peer))
{
    *timeout_ms = (unsigned)cmdline_u64("timeout_ms", 30000);
    const char *r = cmdline_get("role");
    char role = r && *r ? r[0] : '?';
    const char *p = cmdline_get("peer");
    if ((role != 'a' && role != 'b') || !p || !*p)
        xen_finish(0, "usage: role=a|b peer=<domid>");
    domid_t peer = (domid_t)strtou64(p, NULL);
    long rc = xen_pv_init();
    long self = rc ? rc : xen_domid();
    if (!xcheck(self >= 0, "xenstore, grant table, events; domid %ld", self))
        xen_finish(0, "setup");
    printf("%s %c: domain %ld, peer %u\n", what, role, self, peer);
    if (role == 'a')
        role_a((domid_t)self, peer);
    role_b((domid_t)self, peer);
    xen_finish(0, "role %c returned", role);
}
