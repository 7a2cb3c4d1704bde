/*
 * xengntv2: grant table version 2 (public/grant_table.h) on one domain. It puts a v1 grant
 * in reserved entry 1 and one at gref 10, switches with GNTTABOP_set_version(2) (the
 * reserved entry is kept, as a v2 entry, the other cleared), maps status frame 0 with
 * XENMAPIDX_grant_table_status (a second one is -EINVAL: 256 entries need one), checks
 * GNTTABOP_get_status_frames and get_version; then grants a page to itself (v2 full_page),
 * copies from it (GNTST_okay, the data arrives, its status word 0 again), maps it with
 * map_grant_ref (GNTMAP_host_map, at 2 GiB): its status word says GTF_reading|GTF_writing
 * while the entry's flags stay GTF_permit_access, so ending access the v2 way (flags to 0,
 * then read the status) sees it busy, and set_version(1) is -EBUSY; after the unmap the
 * status is 0. A sub-page grant bounds a copy to its window (GNTST_bad_copy_arg past it).
 * Last, set_version(1): the reserved entry is a v1 entry again, status frames gone.
 *
 * Command line: none. Expected: one "ok"/"FAIL" line per check, RESULT: PASS xengntv2.
 */
#include "xen.h"

GUEST("xengntv2");

#define GNTTABOP_get_status_frames 9
#define XENMAPIDX_grant_table_status 0x80000000u
#define GTF_sub_page (1u << 8)
#define MAP_GPA ((u64)0x80000000)

struct grant_entry_v2 {
    u16 flags;
    domid_t domid;
    u16 page_off, length; /* sub_page; pad0 of full_page */
    u64 frame;
};
_Static_assert(sizeof(struct grant_entry_v2) == 16, "grant_table.h layout");
struct gnttab_get_status_frames {
    u32 nr_frames;
    domid_t dom;
    i16 status;
    u64 *frame_list;
};
_Static_assert(sizeof(struct gnttab_get_status_frames) == 16, "grant_table.h layout");

static u8 src[4096] __attribute__((aligned(4096)));
static u8 dst[4096] __attribute__((aligned(4096)));
static u8 reserved_frame[4096] __attribute__((aligned(4096)));

static long set_version(u32 v, u32 *in_force)
{
    struct gnttab_set_version op = {v};
    long rc = gnttab_op(GNTTABOP_set_version, &op, 1);
    *in_force = op.version;
    return rc;
}

static int copy_from(grant_ref_t ref, domid_t me, u16 off, u16 len)
{
    struct gnttab_copy op;
    memset(&op, 0, sizeof(op));
    op.source.u.ref = ref;
    op.source.domid = me;
    op.source.offset = off;
    op.dest.u.gmfn = virt_to_gfn(dst);
    op.dest.domid = DOMID_SELF;
    op.dest.offset = off;
    op.len = len;
    op.flags = GNTCOPY_source_gref;
    op.status = 99;
    long rc = gnttab_copy1(&op);
    return rc ? (int)rc : op.status;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    domid_t me = (domid_t)xen.domid;
    long rc = gnttab_init();
    if (!xcheck(rc == 0, "grant frame 0 mapped (v1) rc %ld", rc))
        xen_finish(0, "setup");
    gnttab[1].frame = (u32)virt_to_gfn(reserved_frame);
    gnttab[1].domid = 0;
    barrier();
    gnttab[1].flags = GTF_permit_access;
    gnttab[10].frame = 0x1234;
    gnttab[10].domid = 0;
    barrier();
    gnttab[10].flags = GTF_permit_access;

    u32 v = 0;
    rc = set_version(2, &v);
    xcheck(rc == 0 && v == 2, "set_version(2) rc %ld, version %u", rc, v);
    struct gnttab_get_version gv = {DOMID_SELF, 0, 0};
    rc = gnttab_op(GNTTABOP_get_version, &gv, 1);
    xcheck(rc == 0 && gv.version == 2, "get_version -> %u", gv.version);
    volatile struct grant_entry_v2 *g2 = (volatile struct grant_entry_v2 *)gnttab;
    xcheck(g2[1].flags == GTF_permit_access && g2[1].domid == 0 &&
               g2[1].frame == virt_to_gfn(reserved_frame),
           "reserved entry 1 kept as v2 (flags 0x%x frame 0x%lx)", g2[1].flags, (u64)g2[1].frame);
    xcheck(g2[10].flags == 0 && g2[10].frame == 0 && g2[5].flags == 0, "the other entries cleared");

    static u16 status_page[2048] __attribute__((aligned(4096)));
    volatile u16 *status = status_page;
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_grant_table,
                                   XENMAPIDX_grant_table_status | 0, virt_to_gfn(status_page)};
    rc = memory_op(XENMEM_add_to_physmap, &x);
    xcheck(rc == 0, "status frame 0 mapped rc %ld", rc);
    static u8 spare[4096] __attribute__((aligned(4096)));
    struct xen_add_to_physmap x1 = {DOMID_SELF, 0, XENMAPSPACE_grant_table,
                                    XENMAPIDX_grant_table_status | 1, virt_to_gfn(spare)};
    rc = memory_op(XENMEM_add_to_physmap, &x1);
    xcheck(rc == -XEN_EINVAL, "status frame 1 -> %ld (want -EINVAL: one frame of 256 entries)", rc);
    static u64 sframes[2];
    struct gnttab_get_status_frames gs = {1, DOMID_SELF, 99, sframes};
    rc = gnttab_op(GNTTABOP_get_status_frames, &gs, 1);
    xcheck(rc == 0 && gs.status == GNTST_okay && sframes[0] == virt_to_gfn(status_page),
           "get_status_frames -> %s, frame 0x%lx", gntst_name(gs.status), sframes[0]);
    gs.nr_frames = 2;
    rc = gnttab_op(GNTTABOP_get_status_frames, &gs, 1);
    xcheck(rc == 0 && gs.status == GNTST_general_error, "two status frames -> %s", gntst_name(gs.status));

    /* A full-page v2 grant to ourselves: a copy through it */
    for (int i = 0; i < 4096; i++)
        src[i] = (u8)(i * 7 + 3);
    const grant_ref_t ref = 20;
    g2[ref].frame = virt_to_gfn(src);
    g2[ref].domid = me;
    barrier();
    g2[ref].flags = GTF_permit_access;
    int st = copy_from(ref, me, 0, 4096);
    xcheck(st == GNTST_okay && memcmp(src, dst, 4096) == 0 && status[ref] == 0,
           "copy through v2 gref %u: %s, status 0x%x after", ref, gntst_name(st), status[ref]);

    /* Mapped: the in-use bits are in the status frame, not in the entry */
    struct gnttab_map_grant_ref m = {MAP_GPA, GNTMAP_host_map, ref, me, 99, 0, 0};
    rc = gnttab_op(GNTTABOP_map_grant_ref, &m, 1);
    int mapped = xcheck(rc == 0 && m.status == GNTST_okay, "map_grant_ref at 0x%lx: %s", MAP_GPA,
                        rc ? "hypercall failed" : gntst_name(m.status));
    if (mapped) {
        if (!map_phys(MAP_GPA, 4096))
            xcheck(*(volatile u8 *)MAP_GPA == src[0], "the mapping shows the granted page");
        xcheck(status[ref] == (GTF_reading | GTF_writing) && g2[ref].flags == GTF_permit_access,
               "in use: status 0x%x, flags 0x%x", status[ref], g2[ref].flags);
        /* Linux's gnttab_end_foreign_access_ref_v2: clear the flags, then the status says busy */
        g2[ref].flags = 0;
        mb();
        int busy = (status[ref] & (GTF_reading | GTF_writing)) != 0;
        xcheck(busy, "ending access while mapped: busy");
        g2[ref].flags = GTF_permit_access;
        rc = set_version(1, &v);
        xcheck(rc == -XEN_EBUSY && v == 2, "set_version(1) while mapped -> %ld (want -EBUSY), version %u",
               rc, v);
        struct gnttab_unmap_grant_ref u = {MAP_GPA, 0, m.handle, 99};
        rc = gnttab_op(GNTTABOP_unmap_grant_ref, &u, 1);
        xcheck(rc == 0 && u.status == GNTST_okay && status[ref] == 0, "unmapped: %s, status 0x%x",
               gntst_name(u.status), status[ref]);
    }

    /* A sub-page grant: [0x100, 0x120) only */
    const grant_ref_t sub = 21;
    g2[sub].frame = virt_to_gfn(src);
    g2[sub].page_off = 0x100;
    g2[sub].length = 0x20;
    g2[sub].domid = me;
    barrier();
    g2[sub].flags = GTF_permit_access | GTF_sub_page;
    st = copy_from(sub, me, 0x100, 0x20);
    xcheck(st == GNTST_okay, "sub-page copy inside its window: %s", gntst_name(st));
    st = copy_from(sub, me, 0x100, 0x21);
    xcheck(st == GNTST_bad_copy_arg, "one byte past the window: %s (want bad_copy_arg)", gntst_name(st));

    rc = set_version(1, &v);
    xcheck(rc == 0 && v == 1, "set_version(1) rc %ld, version %u", rc, v);
    xcheck(gnttab[1].flags == GTF_permit_access && gnttab[1].frame == (u32)virt_to_gfn(reserved_frame) &&
               gnttab[3].flags == 0,
           "reserved entry 1 a v1 entry again (flags 0x%x frame 0x%x)", gnttab[1].flags, gnttab[1].frame);
    rc = memory_op(XENMEM_add_to_physmap, &x);
    xcheck(rc == -XEN_EINVAL, "status frame in v1 -> %ld (want -EINVAL)", rc);
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
