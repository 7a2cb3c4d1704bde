/*
 * xengntmap: two domains sharing a page by grant mapping (public/grant_table.h
 * GNTTABOP_map_grant_ref / unmap_grant_ref with GNTMAP_host_map; for an HVM/PVH mapper
 * host_addr is a guest-physical address), with an interdomain event channel and XenStore
 * for the rendezvous, as gntdev and backend-in-a-guest driver domains use them.
 *
 *   role=a peer=<domid of b>: grants b one writable page holding "hello from domain <a>",
 *     publishes data/gntmap-gref and data/gntmap-port (readable by b); on b's first event
 *     finds b's write at offset 2048 and the entry marked GTF_reading|GTF_writing, so it
 *     cannot end access; writes at offset 1024 and answers; on b's second event (b has
 *     unmapped) the flags are clear and ending access succeeds.
 *   role=b peer=<domid of a>: reads a's gref and port, binds the port; map errors (no map
 *     kind: GNTST_bad_gntref, a gref beyond the table: GNTST_bad_gntref, a domain that does
 *     not exist: GNTST_bad_domain); maps the gref at GFN 0x80000 (2 GiB: above its RAM, below
 *     the MMIO hole), reads a's text there, writes its own at 2048, sends an event; after
 *     a's answer sees a's second write through the mapping; unmap at the wrong address
 *     (GNTST_general_error), unmap (GNTST_okay), unmap again (GNTST_bad_handle); sends the
 *     second event.
 *
 * With grant_version=2, a switches its table to version 2 first (GNTTABOP_set_version,
 * status frame 0 mapped) and grants with a v2 entry: the in-use bits it checks are then in
 * its status frame, and b's mapping goes through the v2 layout as a's process published it.
 *
 * Command line: role=a|b peer=N timeout_ms=N [30000], upcall=vector|param, grant_version=1|2.
 * Expected: "gntmap b: mapped gref G of domain A at 0x80000000: hello from domain A",
 *   "gntmap a: b wrote: written by domain B through its mapping", RESULT: PASS xengntmap
 *   role=a|b.
 */
#include "xen.h"

GUEST("xengntmap");

#define MAP_GPA 0x80000000ull
static u8 page[4096] __attribute__((aligned(4096)));
static unsigned timeout;

static int map(domid_t dom, u32 ref, u32 flags, u64 gpa, u32 *handle)
{
    struct gnttab_map_grant_ref op = {gpa, flags, ref, dom, 99, 0, 0};
    long rc = gnttab_op(GNTTABOP_map_grant_ref, &op, 1);
    if (rc)
        return (int)rc;
    if (handle)
        *handle = op.handle;
    return op.status;
}

static int unmap(u64 gpa, u32 handle)
{
    struct gnttab_unmap_grant_ref op = {gpa, 0, handle, 99};
    long rc = gnttab_op(GNTTABOP_unmap_grant_ref, &op, 1);
    return rc ? (int)rc : op.status;
}

/* Grant table v2 (grant_table.h): 16-byte entries, in-use bits in status frames. */
#define GNTTABOP_set_version_ 8
#define XENMAPIDX_grant_table_status 0x80000000u
struct grant_entry_v2 {
    u16 flags;
    domid_t domid;
    u16 page_off, length;
    u64 frame;
};
static int v2;
static u16 status_page[2048] __attribute__((aligned(4096)));
static volatile u16 *const gstatus = status_page;

static long grant_v2(domid_t peer, u64 gfn)
{
    struct gnttab_set_version sv = {2};
    long rc = gnttab_op(GNTTABOP_set_version_, &sv, 1);
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_grant_table,
                                   XENMAPIDX_grant_table_status, virt_to_gfn(status_page)};
    if (!xcheck(rc == 0 && sv.version == 2 && memory_op(XENMEM_add_to_physmap, &x) == 0,
                "grant table version 2 with its status frame (rc %ld)", rc))
        return -1;
    volatile struct grant_entry_v2 *g2 = (volatile struct grant_entry_v2 *)gnttab;
    const grant_ref_t ref = GNTTAB_NR_RESERVED + 1;
    g2[ref].frame = gfn;
    g2[ref].domid = peer;
    barrier();
    g2[ref].flags = GTF_permit_access;
    return ref;
}

static u16 in_use(long gref)
{
    return (v2 ? gstatus[gref] : gnttab[gref].flags) & (GTF_reading | GTF_writing);
}

/* Linux's gnttab_end_foreign_access_ref_v2: clear the flags, then the status tells. */
static int end_access(long gref)
{
    if (!v2)
        return gnttab_end((grant_ref_t)gref);
    volatile struct grant_entry_v2 *g2 = (volatile struct grant_entry_v2 *)gnttab;
    u16 flags = g2[gref].flags;
    g2[gref].flags = 0;
    mb();
    if (gstatus[gref] & (GTF_reading | GTF_writing)) {
        g2[gref].flags = flags; /* still mapped: keep the grant */
        return 0;
    }
    return 1;
}

static void role_a(domid_t me, domid_t peer)
{
    long port = evtchn_alloc_unbound(peer);
    snprintf((char *)page, 256, "hello from domain %u", me);
    v2 = cmdline_u64("grant_version", 1) == 2;
    long gref = gnttab_init() ? -1 : v2 ? grant_v2(peer, virt_to_gfn(page))
                                       : gnttab_grant(peer, virt_to_gfn(page), 0);
    if (!xcheck(port > 0 && gref > 0, "port %ld gref %ld", port, gref))
        xen_finish(0, "role=a setup");
    evtchn_bind((evtchn_port_t)port, NULL);
    int seen = evtchn_count[port];
    xen_pair_offer("gntmap", me, peer, port, gref);
    printf("gntmap a: port %ld gref %ld for domain %u\n", port, gref, peer);
    if (!xcheck(evtchn_wait((evtchn_port_t)port, seen, timeout), "first event from domain %u", peer))
        xen_finish(0, "role=a no event");
    seen = evtchn_count[port];
    char want[64];
    snprintf(want, sizeof(want), "written by domain %u through its mapping", peer);
    const char *got = (const char *)page + 2048;
    printf("gntmap a: b wrote: %s\n", got);
    xcheck(!strcmp(got, want), "the mapper's write is in our page");
    u16 flags = in_use(gref);
    xcheck(flags == (GTF_reading | GTF_writing),
           "%s 0x%x: GTF_reading|GTF_writing while mapped", v2 ? "status" : "entry flags", flags);
    xcheck(end_access(gref) == 0, "cannot end access while it is mapped");
    snprintf((char *)page + 1024, 64, "second write from domain %u", me);
    xcheck(evtchn_send((evtchn_port_t)port) == 0, "answered");
    if (!xcheck(evtchn_wait((evtchn_port_t)port, seen, timeout), "second event: domain %u unmapped", peer))
        xen_finish(0, "role=a no second event");
    flags = in_use(gref);
    xcheck(!flags, "%s 0x%x after the unmap", v2 ? "status" : "entry flags", flags);
    xcheck(end_access(gref) == 1, "grant %ld ended", gref);
    xen_finish(xen_failures == 0, "role=a");
}

static void role_b(domid_t me, domid_t peer)
{
    u64 rgref = 0;
    long lport = xen_pair_accept("gntmap", peer, timeout, &rgref);
    int seen = evtchn_count[lport];

    int st = map(peer, (u32)rgref, 0, MAP_GPA, NULL);
    xcheck(st == GNTST_bad_gntref, "map without GNTMAP_host_map: %s", gntst_name(st));
    st = map(peer, 1u << 20, GNTMAP_host_map, MAP_GPA, NULL);
    xcheck(st == GNTST_bad_gntref, "map of gref 2^20: %s", gntst_name(st));
    st = map(0x7fef, (u32)rgref, GNTMAP_host_map, MAP_GPA, NULL);
    xcheck(st == GNTST_bad_domain, "map from domain 0x7fef: %s", gntst_name(st));

    u32 handle = 0;
    st = map(peer, (u32)rgref, GNTMAP_host_map, MAP_GPA, &handle);
    if (!xcheck(st == GNTST_okay, "GNTTABOP_map_grant_ref(gref %lu of domain %u) at 0x%lx: %s handle %u", rgref, peer,
                (u64)MAP_GPA, gntst_name(st), handle))
        xen_finish(0, "role=b map");
    volatile char *mapped = (volatile char *)MAP_GPA;
    char text[64];
    for (int i = 0; i < 63; i++)
        text[i] = mapped[i];
    text[63] = 0;
    printf("gntmap b: mapped gref %lu of domain %u at 0x%lx: %s\n", rgref, peer, (u64)MAP_GPA, text);
    char want[64];
    snprintf(want, sizeof(want), "hello from domain %u", peer);
    xcheck(!strcmp(text, want), "the granter's text through the mapping");
    snprintf(text, sizeof(text), "written by domain %u through its mapping", me);
    for (int i = 0; i < 64; i++)
        mapped[2048 + i] = text[i];
    xcheck(evtchn_send((evtchn_port_t)lport) == 0, "first event to domain %u", peer);
    if (!xcheck(evtchn_wait((evtchn_port_t)lport, seen, timeout), "domain %u answered", peer))
        xen_finish(0, "role=b no answer");
    snprintf(want, sizeof(want), "second write from domain %u", peer);
    for (int i = 0; i < 63; i++)
        text[i] = mapped[1024 + i];
    text[63] = 0;
    xcheck(!strcmp(text, want), "the granter's later write is seen: \"%s\"", text);
    st = unmap(MAP_GPA + 4096, handle);
    xcheck(st == GNTST_general_error, "unmap at another address: %s", gntst_name(st));
    st = unmap(MAP_GPA, handle);
    xcheck(st == GNTST_okay, "GNTTABOP_unmap_grant_ref: %s", gntst_name(st));
    st = unmap(MAP_GPA, handle);
    xcheck(st == GNTST_bad_handle, "unmap again: %s", gntst_name(st));
    xcheck(evtchn_send((evtchn_port_t)lport) == 0, "second event to domain %u", peer);
    xen_finish(xen_failures == 0, "role=b");
}

void guest_main(void)
{
    if (xen_require())
        xen_pair_run("gntmap", &timeout, role_a, role_b);
}
