/*
 * pvhello: a 64-bit Xen PV kernel, as small as one can be. It runs in ring 3 under Xen
 * (here: Xen's PV shim, which xenopus boots as a PVH guest for `type = "pv"` with
 * `pvshim = 1`) and uses only what a PV guest has:
 *   - start_info (public/xen.h), whose address Xen passes in %rsi;
 *   - the hypercall page Xen wrote at XEN_ELFNOTE_HYPERCALL_PAGE (64-bit PV stubs: syscall);
 *   - HYPERVISOR_update_va_mapping to map shared_info, the console and XenStore rings
 *     (a PV guest's page tables hold machine frames: it maps what start_info names);
 *   - the PV console ring (public/io/console.h) and its event channel;
 *   - a XenStore read through the store ring (public/io/xs_wire.h), the store event
 *     channel signalled with EVTCHNOP_send and its events seen as the port's pending bit
 *     in shared_info while waiting with SCHEDOP_yield (upcalls stay masked: no callback);
 *   - SCHEDOP_shutdown(poweroff).
 * Prints `RESULT: PASS pvhello name=<its XenStore name> xen=<major.minor> events=<N> cmdline=<...>`.
 * No privileged instruction anywhere: ring 3 would fault on each.
 */
#include "runtime.h"
#include "xen.h"

#define HYPERVISOR_update_va_mapping 14
#define UVMF_INVLPG 2 /* public/xen.h: flush this VA on the local CPU */
/* L1 entry bits (x86 paging): present, writable, user, accessed, dirty; Xen keeps a
 * 64-bit PV kernel's mappings user-accessible anyway (its kernel runs in ring 3). */
#define PTE_FLAGS 0x67ul
#define PAGE_SHIFT 12

/* struct start_info (public/xen.h), x86-64. */
struct start_info {
    char magic[32];
    u64 nr_pages;
    u64 shared_info; /* machine address of the shared info page */
    u32 flags;
    u64 store_mfn;
    u32 store_evtchn;
    struct {
        u64 mfn;
        u32 evtchn;
    } console; /* console.domU */
    u64 pt_base, nr_pt_frames, mfn_list, mod_start, mod_len;
    char cmd_line[1024];
    u64 first_p2m_pfn, nr_p2m_frames;
};
_Static_assert(__builtin_offsetof(struct start_info, shared_info) == 40, "start_info");
_Static_assert(__builtin_offsetof(struct start_info, store_mfn) == 56, "start_info");
_Static_assert(__builtin_offsetof(struct start_info, console) == 72, "start_info");
_Static_assert(__builtin_offsetof(struct start_info, cmd_line) == 128, "start_info");

/* The page Xen filled (head.S), called through xen.h's hypercall macros (64-bit ABI:
 * rdi, rsi, rdx, r10, r8; the PV stubs are SYSCALLs). */
extern u8 pv_hypercall_page[4096];
u8 *hypercall_page = pv_hypercall_page;

/* Pages of our own image whose mappings are replaced by the frames start_info names. */
static u8 shared_page[4096] __attribute__((aligned(4096)));
static u8 console_page[4096] __attribute__((aligned(4096)));
static u8 store_page[4096] __attribute__((aligned(4096)));

static struct start_info *si;
static volatile struct shared_info *shared;
static volatile struct xencons_interface *cons;
static volatile struct xenstore_domain_interface *store;

static long map_machine(void *va, u64 maddr)
{
    return hypercall3(HYPERVISOR_update_va_mapping, (u64)va, (maddr & ~0xFFFul) | PTE_FLAGS,
                      UVMF_INVLPG);
}

static void notify(evtchn_port_t port)
{
    struct evtchn_port_arg send = {.port = port};
    evtchn_op(EVTCHNOP_send, &send);
}

/* ---- memory and strings (no lib: this guest links alone) ---- */
void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}
size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
static int starts_with(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

/* ---- the console ring ---- */
static void cons_write(const char *s, size_t n)
{
    while (n) {
        u32 prod = cons->out_prod;
        __asm__ volatile("mfence" ::: "memory");
        u32 room = sizeof(cons->out) - (prod - cons->out_cons);
        if (!room) {
            notify(si->console.evtchn);
            sched_op(SCHEDOP_yield, NULL);
            continue;
        }
        for (; n && room; n--, room--, s++)
            cons->out[prod++ & (sizeof(cons->out) - 1)] = *s;
        __asm__ volatile("" ::: "memory"); /* the bytes before the index */
        cons->out_prod = prod;
    }
    notify(si->console.evtchn);
}

static char line[512];
static size_t line_len;
static void put(char c)
{
    if (line_len < sizeof(line))
        line[line_len++] = c;
}
static void put_num(u64 v, unsigned base)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n)
        put(digits[--n]);
}
/* %s, %u, %x (all 64-bit: pass u64 or pointers) and %%. */
static void print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    line_len = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(*fmt);
            continue;
        }
        switch (*++fmt) {
        case 's':
            for (const char *s = va_arg(ap, const char *); *s; s++)
                put(*s);
            break;
        case 'u':
            put_num(va_arg(ap, u64), 10);
            break;
        case 'x':
            put_num(va_arg(ap, u64), 16);
            break;
        default:
            put(*fmt);
        }
    }
    va_end(ap);
    cons_write(line, line_len);
}

static __attribute__((noreturn)) void poweroff(void)
{
    struct sched_shutdown reason = {.reason = SHUTDOWN_poweroff};
    for (;;)
        sched_op(SCHEDOP_shutdown, &reason);
}

static __attribute__((noreturn)) void fail(const char *why, long rc)
{
    print("RESULT: FAIL pvhello %s (%x)\n", why, (u64)rc);
    poweroff();
}

/* ---- XenStore: one request, its answer awaited on the store event channel ---- */
static u64 events, yields;

/* Wait for `ready` with SCHEDOP_yield, counting the store port's events: each time its
 * pending bit in shared_info is found set (the answer's notification, delivered by the
 * shim from the L0 event), it is counted and cleared. Upcalls stay masked: no callback.
 * A wait that lasts prints where the rings stand, now and then. */
static void store_wait(int (*ready)(void))
{
    evtchn_port_t port = si->store_evtchn;
    volatile u64 *word = &shared->evtchn_pending[port / 64];
    u64 bit = 1ul << (port % 64);
    for (u64 spins = 1; !ready(); spins++) {
        if (*word & bit) {
            __atomic_and_fetch(word, ~bit, __ATOMIC_SEQ_CST);
            events++;
            continue;
        }
        if (!(spins & 0x3FFFF) && spins < 0x3FFFF * 20)
            print("waiting for xenstored: req %u/%u rsp %u/%u, %u events\n",
                  (u64)store->req_cons, (u64)store->req_prod, (u64)store->rsp_cons,
                  (u64)store->rsp_prod, events);
        sched_op(SCHEDOP_yield, NULL);
        yields++;
    }
    if (*word & bit) { /* the last answer's notification */
        __atomic_and_fetch(word, ~bit, __ATOMIC_SEQ_CST);
        events++;
    }
}

static u32 want;
static int request_taken(void) { return store->req_prod - store->req_cons <= XENSTORE_RING_SIZE - want; }
static int answer_ready(void) { return store->rsp_prod - store->rsp_cons >= want; }

static void store_put(const void *data, u32 n)
{
    const u8 *p = data;
    want = n;
    store_wait(request_taken);
    u32 prod = store->req_prod;
    for (u32 i = 0; i < n; i++)
        store->req[MASK_XENSTORE_IDX(prod + i)] = p[i];
    __asm__ volatile("" ::: "memory");
    store->req_prod = prod + n;
    notify(si->store_evtchn);
}

static void store_get(void *data, u32 n)
{
    u8 *p = data;
    want = n;
    store_wait(answer_ready);
    u32 cons_idx = store->rsp_cons;
    for (u32 i = 0; i < n; i++)
        p[i] = store->rsp[MASK_XENSTORE_IDX(cons_idx + i)];
    __asm__ volatile("mfence" ::: "memory");
    store->rsp_cons = cons_idx + n;
    notify(si->store_evtchn);
}

/* XS_READ of `path` (relative: under the domain's home) into `out`, NUL-terminated. */
static void store_read(const char *path, char *out, u32 size)
{
    u32 len = (u32)strlen(path) + 1;
    struct xsd_sockmsg msg = {.type = XS_READ, .req_id = 1, .tx_id = 0, .len = len};
    store_put(&msg, sizeof(msg));
    store_put(path, len);
    store_get(&msg, sizeof(msg));
    if (msg.len >= size)
        fail("XenStore answer too long", msg.len);
    store_get(out, msg.len);
    out[msg.len] = 0;
    if (msg.type != XS_READ)
        fail(out, msg.type); /* XS_ERROR carries the errno's name */
}

void pv_main(struct start_info *start)
{
    si = start;
    long rc;
    if (!starts_with(si->magic, "xen-3.0-x86_64"))
        poweroff(); /* not a 64-bit PV start_info: no console to say so on */
    if ((rc = map_machine(console_page, si->console.mfn << PAGE_SHIFT)))
        poweroff();
    cons = (volatile struct xencons_interface *)console_page;
    print("xenopus PV guest: pvhello\n");
    print("start_info: %s, %u pages, flags %x, cmdline \"%s\"\n", si->magic, si->nr_pages,
          (u64)si->flags, si->cmd_line);
    if ((rc = map_machine(shared_page, si->shared_info)))
        fail("mapping shared_info", rc);
    shared = (volatile struct shared_info *)shared_page;
    if ((rc = map_machine(store_page, si->store_mfn << PAGE_SHIFT)))
        fail("mapping the XenStore ring", rc);
    store = (volatile struct xenstore_domain_interface *)store_page;

    long version = xen_version(XENVER_version, NULL);
    u64 major = (u64)version >> 16, minor = (u64)version & 0xFFFF;
    print("Xen %u.%u (the shim), upcalls masked: %u\n", major, minor,
          (u64)shared->vcpu_info[0].evtchn_upcall_mask);

    static char name[128], domid[16];
    store_read("name", name, sizeof(name));
    store_read("domid", domid, sizeof(domid));
    print("xenstore: name \"%s\", domid %s, %u events on channel %u, %u yields\n", name,
          domid, events, (u64)si->store_evtchn, yields);
    print("RESULT: PASS pvhello name=%s xen=%u.%u events=%u cmdline=%s\n", name, major, minor,
          events, si->cmd_line);
    poweroff();
}
