/*
 * xenchan: a PV channel's frontend (xl.cfg channel=, docs/man/xen-pv-channel.7.pod), the
 * steps of Linux's hvc_xen for a console N >= 1: find device/console/<id> and its name,
 * wait for the backend's InitWait, grant a page holding struct xencons_interface
 * (io/console.h) to the backend, allocate an event channel, write ring-ref and port, go
 * Initialised, wait for the backend's Connected, go Connected. Then `lines` numbered lines
 * out (more than the 2048-byte out ring holds: the backend must not lose what it cannot
 * pass on yet), one line in, and its answer out.
 *
 * Command line: id=N [1], lines=N [200], timeout_ms=N [10000].
 * Expected: "xenchan: device/console/1 name <name> backend <path>", "xenchan: connected",
 *   "xenchan: wrote N lines", "xenchan: got <line>", RESULT: PASS xenchan.
 * The host reads "line K of <name>" for K = 0..N-1, sends one line, reads "pong: <line>".
 */
#include "xen.h"

GUEST("xenchan");

static struct xencons_interface page __attribute__((aligned(4096)));
static struct xenbus_dev dev;

void guest_main(void)
{
    if (!xen_require())
        return;
    unsigned timeout = (unsigned)cmdline_u64("timeout_ms", 10000);
    u64 lines = cmdline_u64("lines", 200);
    const char *id = cmdline_get("id");
    xenbus_frontend_start(&dev, "console", id && *id ? id : "1");
    char path[192], name[96];
    snprintf(path, sizeof(path), "%s/name", dev.node);
    long rc = xs_read(0, path, name, sizeof(name));
    if (!xcheck(rc > 0, "%s rc %ld (%s)", path, rc, xen_errname(rc)))
        xen_finish(0, "no name");
    printf("xenchan: %s name %s backend %s\n", dev.node, name, dev.backend);

    char bpath[192];
    u64 state = 0;
    snprintf(bpath, sizeof(bpath), "%s/state", dev.backend);
    rc = xs_wait_state(bpath, XenbusStateInitWait, timeout, &state);
    if (!xcheck(rc == 0, "backend state %lu (want >= InitWait)", state))
        xen_finish(0, "backend not ready");
    memset(&page, 0, sizeof(page));
    long gref = gnttab_grant((domid_t)dev.backend_id, virt_to_gfn(&page), 0);
    long port = evtchn_alloc_unbound((domid_t)dev.backend_id);
    if (!xcheck(gref > 0 && port > 0, "ring-ref %ld port %ld", gref, port))
        xen_finish(0, "ring");
    dev.port = (evtchn_port_t)port;
    evtchn_bind(dev.port, NULL);
    rc = xenbus_write_u64(&dev, "ring-ref", (u64)gref);
    rc = rc ? rc : xenbus_write_u64(&dev, "port", (u64)port);
    rc = rc ? rc : xenbus_switch_state(&dev, XenbusStateInitialised);
    if (!xcheck(rc == 0, "ring-ref, port written, state Initialised rc %ld", rc))
        xen_finish(0, "xenbus");
    rc = xs_wait_state(bpath, XenbusStateConnected, timeout, &state);
    if (!xcheck(rc == 0 && state == XenbusStateConnected, "backend state %lu (want Connected)", state))
        xen_finish(0, "backend did not connect");
    xenbus_switch_state(&dev, XenbusStateConnected);
    printf("xenchan: connected\n");

    struct xencons_ring ring = {&page, dev.port, 0};
    char buf[160];
    for (u64 i = 0; i < lines; i++) {
        snprintf(buf, sizeof(buf), "line %lu of %s\n", i, name);
        rc = xencons_ring_write(&ring, buf);
        if (!xcheck(rc > 0, "line %lu out: rc %ld (%s)", i, rc, xen_errname(rc)))
            xen_finish(0, "write");
    }
    printf("xenchan: wrote %lu lines\n", lines);
    long n = xencons_ring_readline(&ring, buf, sizeof(buf), timeout);
    if (!xcheck(n > 0, "a line in within %u ms", timeout))
        xen_finish(0, "no input");
    printf("xenchan: got %s\n", buf);
    char reply[200];
    snprintf(reply, sizeof(reply), "pong: %s\n", buf);
    xcheck(xencons_ring_write(&ring, reply) > 0, "answer out");
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
