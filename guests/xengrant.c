/*
 * xengrant: grant table v1 (public/grant_table.h) on one domain. Frame 0 is mapped into the
 * guest with XENMEM_add_to_physmap(XENMAPSPACE_grant_table); then setup_table, query_size,
 * get_version/set_version(1), and GNTTABOP_copy from one of our grefs to a gmfn and back from
 * a gmfn to a writable gref (the data must arrive, GTF_reading/GTF_writing clear afterwards),
 * and the error statuses: a ref beyond the table (GNTST_bad_gntref), a read-only grant as the
 * destination (GNTST_general_error, Xen's "write-pin a r/o grant"), a copy past the page end
 * (GNTST_bad_copy_arg), a revoked grant (GNTST_general_error), an unknown domain
 * (GNTST_bad_domain).
 *
 * Command line: none. Expected: one "ok"/"FAIL" line per check, RESULT: PASS xengrant
 * (without Xen: RESULT: FAIL xengrant no-xen).
 */
#include "xen.h"

GUEST("xengrant");

static u8 src[4096] __attribute__((aligned(4096)));
static u8 dst[4096] __attribute__((aligned(4096)));

static struct gnttab_copy copy_op(int src_gref, u64 s, domid_t sdom, int dst_gref, u64 d, domid_t ddom,
                                  u16 off, u16 len)
{
    struct gnttab_copy op;
    memset(&op, 0, sizeof(op));
    if (src_gref)
        op.source.u.ref = (grant_ref_t)s;
    else
        op.source.u.gmfn = s;
    if (dst_gref)
        op.dest.u.ref = (grant_ref_t)d;
    else
        op.dest.u.gmfn = d;
    op.source.domid = sdom;
    op.dest.domid = ddom;
    op.source.offset = op.dest.offset = off;
    op.len = len;
    op.flags = (u16)((src_gref ? GNTCOPY_source_gref : 0) | (dst_gref ? GNTCOPY_dest_gref : 0));
    op.status = 99;
    return op;
}

static int copy_expect(const char *what, struct gnttab_copy op, int want)
{
    long rc = gnttab_copy1(&op);
    return xcheck(rc == 0 && op.status == want, "%s: rc %ld status %d %s (want %d %s)", what, rc, op.status,
                  gntst_name(op.status), want, gntst_name(want));
}

void guest_main(void)
{
    if (!xen_require())
        return;
    long rc = gnttab_init();
    if (!xcheck(rc == 0, "XENMEM_add_to_physmap(grant_table, 0) rc %ld", rc))
        xen_finish(0, "grant table");
    long self = xen_domid();
    if (!xcheck(self >= 0, "domid %ld", self))
        xen_finish(0, "domid");
    domid_t me = (domid_t)self;

    u64 frame = 0;
    struct gnttab_setup_table setup = {DOMID_SELF, 1, 99, &frame};
    rc = gnttab_op(GNTTABOP_setup_table, &setup, 1);
    xcheck(rc == 0 && setup.status == GNTST_okay, "setup_table(1 frame): rc %ld status %d frame 0x%lx", rc,
           setup.status, frame);
    struct gnttab_query_size q = {DOMID_SELF, 0, 0, 99};
    rc = gnttab_op(GNTTABOP_query_size, &q, 1);
    xcheck(rc == 0 && q.status == GNTST_okay && q.nr_frames >= 1 && q.max_nr_frames >= q.nr_frames,
           "query_size: rc %ld status %d nr_frames %u max %u", rc, q.status, q.nr_frames, q.max_nr_frames);
    struct gnttab_set_version sv = {1};
    rc = gnttab_op(GNTTABOP_set_version, &sv, 1);
    xcheck(rc == 0 && sv.version == 1, "set_version(1): rc %ld version %u", rc, sv.version);
    struct gnttab_get_version gv = {DOMID_SELF, 0, 0};
    rc = gnttab_op(GNTTABOP_get_version, &gv, 1);
    xcheck(rc == 0 && gv.version == 1, "get_version: rc %ld version %u", rc, gv.version);

    static const char msg[] = "grant-copy: 0123456789abcdef";
    memset(src, 0, sizeof(src));
    memset(dst, 0, sizeof(dst));
    memcpy(src + 100, msg, sizeof(msg));
    long r_ro = gnttab_grant(me, virt_to_gfn(src), 1);
    long r_rw = gnttab_grant(me, virt_to_gfn(dst), 0);
    xcheck(r_ro >= GNTTAB_NR_RESERVED && r_rw > r_ro, "granted refs %ld (ro) and %ld (rw) to domain %u", r_ro,
           r_rw, me);
    printf("grant entry %ld: flags 0x%x domid %u frame 0x%x\n", r_ro, gnttab[r_ro].flags, gnttab[r_ro].domid,
           gnttab[r_ro].frame);

    copy_expect("copy gref -> gmfn", copy_op(1, (u64)r_ro, me, 0, virt_to_gfn(dst), DOMID_SELF, 100, sizeof(msg)),
                GNTST_okay);
    xcheck(memcmp(dst + 100, msg, sizeof(msg)) == 0 && dst[99] == 0, "data arrived: \"%s\"", (char *)dst + 100);
    memcpy(src + 200, "and back", 9);
    copy_expect("copy gmfn -> gref", copy_op(0, virt_to_gfn(src), DOMID_SELF, 1, (u64)r_rw, me, 200, 9),
                GNTST_okay);
    xcheck(memcmp(dst + 200, "and back", 9) == 0, "data arrived: \"%s\"", (char *)dst + 200);
    xcheck((gnttab[r_ro].flags & (GTF_reading | GTF_writing)) == 0 &&
               (gnttab[r_rw].flags & (GTF_reading | GTF_writing)) == 0,
           "GTF_reading/GTF_writing clear after the copies (0x%x, 0x%x)", gnttab[r_ro].flags, gnttab[r_rw].flags);

    copy_expect("source ref beyond the table", copy_op(1, 0xfffffff, me, 0, virt_to_gfn(dst), DOMID_SELF, 0, 8),
                GNTST_bad_gntref);
    copy_expect("dest ref beyond the table", copy_op(0, virt_to_gfn(src), DOMID_SELF, 1, 1u << 20, me, 0, 8),
                GNTST_bad_gntref);
    copy_expect("read-only grant as destination", copy_op(0, virt_to_gfn(dst), DOMID_SELF, 1, (u64)r_ro, me, 0, 8),
                GNTST_general_error);
    copy_expect("copy past the page end", copy_op(1, (u64)r_ro, me, 0, virt_to_gfn(dst), DOMID_SELF, 4000, 200),
                GNTST_bad_copy_arg);
    copy_expect("unknown domain", copy_op(1, (u64)r_ro, 0x7fef, 0, virt_to_gfn(dst), DOMID_SELF, 0, 8),
                GNTST_bad_domain);

    xcheck(gnttab_end((grant_ref_t)r_ro) == 1 && gnttab[r_ro].flags == 0, "gnttab_end(%ld) revoked", r_ro);
    copy_expect("revoked grant", copy_op(1, (u64)r_ro, me, 0, virt_to_gfn(dst), DOMID_SELF, 0, 8),
                GNTST_general_error);
    xcheck(gnttab_end((grant_ref_t)r_rw) == 1, "gnttab_end(%ld) revoked", r_rw);
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
