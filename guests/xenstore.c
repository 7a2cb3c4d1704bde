/*
 * xenstore: a xenbus client on the ring (public/io/xs_wire.h, docs/misc/xenstore.txt). Reads
 * its own `domid` and `name` (paths relative to its home /local/domain/<domid>), checks
 * GET_DOMAIN_PATH, writes data/guest-wrote = "hello-from-ring" and reads it back, mkdir and
 * directory, sets a watch on data/watched (the registration event, then the event for a
 * write), and runs two transactions that conflict on data/counter: the second to commit
 * gets EAGAIN, retries and succeeds. Then rm (a read afterwards gets ENOENT). Last, ring
 * reconnection (docs/misc/xenstore-ring.txt): with a watch set, a transaction open and a
 * request in flight, it sets the connection state to RECONNECT and waits for CONNECTED; the
 * ring's indexes are then 0, the watch, the transaction (and what it wrote) and the
 * in-flight request's reply are gone, and the ring works.
 *
 * Command line: timeout_ms=N [5000] per reply; upcall=vector|param.
 * Expected lines: "xenstore: domid N name <name>", "ok ..."/"FAIL ..." per check,
 *   "xenstore: second commit got EAGAIN, retry ok", "xenstore: reconnected", RESULT: PASS xenstore
 * (without Xen: RESULT: FAIL xenstore no-xen).
 */
#include "xen.h"

GUEST("xenstore");

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

static void reconnect_checks(void)
{
    static char v[256], wpath[128], wtok[32];
    if (!xcheck(xs_ring->server_features & XENSTORE_SERVER_FEATURE_RECONNECTION,
                "server features 0x%x offer ring reconnection", xs_ring->server_features))
        return;
    /* xenstore.txt: GET_FEATURE without a domid is the caller's own features; the quota
     * and control requests are dom0's. */
    long rc = xs_request(XS_GET_FEATURE, 0, "", 0, v, sizeof(v));
    xcheck(rc > 0 && strtou64(v, NULL) == (XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR),
           "GET_FEATURE -> %s", rc > 0 ? v : xen_errname(rc));
    rc = xs_request(XS_GET_QUOTA, 0, "nodes", 6, v, sizeof(v));
    xcheck(rc == -XEN_EACCES, "GET_QUOTA from a guest -> %s (want EACCES)", rc > 0 ? v : xen_errname(rc));
    rc = xs_request(XS_CONTROL, 0, "help", 5, v, sizeof(v));
    xcheck(rc == -XEN_EACCES, "CONTROL from a guest -> %s (want EACCES)", rc > 0 ? v : xen_errname(rc));
    rc = xs_watch("data/rc", "tokrc");
    int got = xs_wait_watch(wpath, sizeof(wpath), wtok, sizeof(wtok), 2000);
    xcheck(rc >= 0 && got, "watch data/rc before the reconnect");
    u32 tx = 0;
    rc = xs_transaction_start(&tx);
    if (!rc)
        rc = xs_write(tx, "data/rc-tx", "lost");
    xcheck(rc >= 0, "transaction %u open, data/rc-tx written in it", tx);
    /* A request in flight: its reply must not arrive after the reconnect. */
    static const char req[] = "name";
    struct xsd_sockmsg h = {XS_READ, 0x7777, 0, sizeof(req)};
    rc = xs_send_raw(&h, sizeof(h));
    if (!rc)
        rc = xs_send_raw(req, sizeof(req));
    xcheck(rc == 0, "a read left in flight");

    rc = xs_reconnect();
    xcheck(rc == 0, "reconnect rc %ld (%s)", rc, xen_errname(rc));
    xcheck(!xs_ring->req_cons && !xs_ring->req_prod && !xs_ring->rsp_cons && !xs_ring->rsp_prod,
           "ring indexes are 0 after the reconnect");
    rc = xs_write(0, "data/rc", "after");
    got = xs_wait_watch(wpath, sizeof(wpath), wtok, sizeof(wtok), 500);
    xcheck(rc >= 0 && !got, "the watch is gone (write rc %ld, event %s)", rc, got ? wtok : "none");
    rc = xs_transaction_end(tx, 1);
    xcheck(rc == -XEN_ENOENT, "the transaction is gone: end -> %s (want ENOENT)", xen_errname(rc));
    rc = xs_read(0, "data/rc-tx", v, sizeof(v));
    xcheck(rc == -XEN_ENOENT, "what it wrote is gone: read -> %s", rc >= 0 ? v : xen_errname(rc));
    rc = xs_read(0, "data/rc", v, sizeof(v));
    if (xcheck(rc == 5 && !strcmp(v, "after"), "the ring works: read back \"%s\"", rc >= 0 ? v : "-"))
        printf("xenstore: reconnected\n");
}

void guest_main(void)
{
    if (!xen_require())
        return;
    xs_timeout_ms = (unsigned)cmdline_u64("timeout_ms", 5000);
    long rc = xs_init();
    if (!xcheck(rc == 0, "ring from HVM_PARAM_STORE_PFN/STORE_EVTCHN rc %ld", rc))
        xen_finish(0, "no ring");
    static char v[256], name[128], buf[1024];
    u64 domid = 0;
    rc = xs_read_u64("domid", &domid);
    xcheck(rc == 0, "read domid rc %ld (%s)", rc, xen_errname(rc));
    rc = xs_read(0, "name", name, sizeof(name));
    xcheck(rc > 0, "read name rc %ld (%s)", rc, xen_errname(rc));
    printf("xenstore: domid %lu name %s\n", domid, name);
    if (xen.domid >= 0)
        xcheck(domid == (u64)xen.domid, "domid agrees with CPUID (%d)", xen.domid);
    char arg[16], want[48];
    snprintf(arg, sizeof(arg), "%lu", domid);
    snprintf(want, sizeof(want), "/local/domain/%lu", domid);
    rc = xs_request(XS_GET_DOMAIN_PATH, 0, arg, (u32)strlen(arg) + 1, v, sizeof(v));
    xcheck(rc > 0 && strcmp(v, want) == 0, "GET_DOMAIN_PATH -> %s", rc > 0 ? v : xen_errname(rc));

    rc = xs_write(0, "data/guest-wrote", "hello-from-ring");
    xcheck(rc >= 0, "write data/guest-wrote rc %ld (%s)", rc, xen_errname(rc));
    rc = xs_read(0, "data/guest-wrote", v, sizeof(v));
    xcheck(rc == 15 && strcmp(v, "hello-from-ring") == 0, "read back \"%s\"", rc >= 0 ? v : xen_errname(rc));
    rc = xs_mkdir(0, "data/dir");
    xcheck(rc >= 0, "mkdir data/dir rc %ld", rc);
    rc = xs_directory(0, "data", buf, sizeof(buf));
    int seen_wrote = 0, seen_dir = 0;
    for (long i = 0; rc > 0 && i < rc; i += (long)strlen(buf + i) + 1) {
        seen_wrote |= !strcmp(buf + i, "guest-wrote");
        seen_dir |= !strcmp(buf + i, "dir");
    }
    xcheck(seen_wrote && seen_dir, "directory data lists guest-wrote and dir (%ld bytes)", rc);

    char wpath[128], wtok[32];
    rc = xs_watch("data/watched", "tok1");
    xcheck(rc >= 0, "watch data/watched rc %ld (%s)", rc, xen_errname(rc));
    int got = xs_wait_watch(wpath, sizeof(wpath), wtok, sizeof(wtok), 2000);
    xcheck(got && ends_with(wpath, "data/watched") && !strcmp(wtok, "tok1"), "registration event %s %s",
           got ? wpath : "-", got ? wtok : "-");
    rc = xs_write(0, "data/watched", "1");
    got = xs_wait_watch(wpath, sizeof(wpath), wtok, sizeof(wtok), 2000);
    xcheck(rc >= 0 && got && ends_with(wpath, "data/watched") && !strcmp(wtok, "tok1"), "watch event %s %s",
           got ? wpath : "-", got ? wtok : "-");
    xcheck(xs_unwatch("data/watched", "tok1") >= 0, "unwatch");

    xs_write(0, "data/counter", "0");
    u32 t1 = 0, t2 = 0;
    long r1 = xs_transaction_start(&t1), r2 = xs_transaction_start(&t2);
    xcheck(r1 == 0 && r2 == 0 && t1 && t2 && t1 != t2, "two transactions %u and %u", t1, t2);
    xs_read(t1, "data/counter", v, sizeof(v));
    xs_read(t2, "data/counter", v, sizeof(v));
    r1 = xs_write(t1, "data/counter", "1");
    r2 = xs_write(t2, "data/counter", "2");
    xcheck(r1 >= 0 && r2 >= 0, "both write data/counter inside their transaction");
    rc = xs_read(0, "data/counter", v, sizeof(v));
    xcheck(rc >= 0 && !strcmp(v, "0"), "outside: still \"%s\" before commit", v);
    r1 = xs_transaction_end(t1, 1);
    xcheck(r1 >= 0, "first commit (tx %u) rc %ld (%s)", t1, r1, xen_errname(r1));
    r2 = xs_transaction_end(t2, 1);
    int conflict = xcheck(r2 == -XEN_EAGAIN, "second commit (tx %u) -> %s (want EAGAIN)", t2, xen_errname(r2));
    u32 t3 = 0;
    rc = xs_transaction_start(&t3);
    if (!rc)
        rc = xs_read(t3, "data/counter", v, sizeof(v));
    if (rc >= 0)
        rc = xs_write(t3, "data/counter", "2");
    if (rc >= 0)
        rc = xs_transaction_end(t3, 1);
    xcheck(rc >= 0, "retry (tx %u) rc %ld (%s)", t3, rc, xen_errname(rc));
    rc = xs_read(0, "data/counter", v, sizeof(v));
    xcheck(rc >= 0 && !strcmp(v, "2"), "data/counter is \"%s\"", v);
    if (conflict && rc >= 0)
        printf("xenstore: second commit got EAGAIN, retry ok\n");

    rc = xs_rm(0, "data/dir");
    xcheck(rc >= 0, "rm data/dir rc %ld", rc);
    rc = xs_read(0, "data/dir", v, sizeof(v));
    xcheck(rc == -XEN_ENOENT, "read after rm -> %s (want ENOENT)", xen_errname(rc));
    reconnect_checks();
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
