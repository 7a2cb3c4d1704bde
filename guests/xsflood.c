/*
 * xsflood: a guest that stops reading its XenStore ring while watch events pile up for it
 * (issue 9 §3). xenstored bounds what it queues for such a guest: events past the domain's
 * memory quota are dropped (send_event), the connection stays. The guest sets `watches`
 * watches on data/flood with distinct `tokens`-byte tokens (no event duplicates another),
 * prints "xsflood: ready" and then touches neither ring index until a byte arrives on COM1
 * (the host floods the watched path meanwhile). Then it reads all that was queued for it,
 * counting the events, checks that the ring reports no error (xenstore-ring.txt's error
 * field) and that a read is still answered.
 *
 * Command line: watches=N [100] tokens=BYTES [800]; timeout_ms=N [5000] per reply.
 * Expected: "xsflood: ready", "xsflood: <n> events after the flood", RESULT: PASS xsflood.
 */
#include "xen.h"

GUEST("xsflood");

#define COM1_DATA 0x3F8
#define COM1_LSR 0x3FD
#define LSR_DATA_READY 0x01

static char token[2048], path[128], tok[64], body[XENSTORE_PAYLOAD_MAX + 1];

void guest_main(void)
{
    if (!xen_require())
        return;
    xs_timeout_ms = (unsigned)cmdline_u64("timeout_ms", 5000);
    long rc = xs_init();
    if (!xcheck(rc == 0, "ring from HVM_PARAM_STORE_PFN/STORE_EVTCHN rc %ld", rc))
        xen_finish(0, "no ring");
    unsigned watches = (unsigned)cmdline_u64("watches", 100);
    unsigned len = (unsigned)cmdline_u64("tokens", 800);
    if (len < 8 || len >= sizeof(token))
        len = 800;
    rc = xs_write(0, "data/flood", "");
    xcheck(rc >= 0, "write data/flood rc %ld (%s)", rc, xen_errname(rc));
    unsigned set = 0;
    for (unsigned i = 0; i < watches; i++) {
        memset(token, 't', len);
        token[len] = 0;
        snprintf(token, 8, "%06u", i);
        token[6] = 't'; /* snprintf's NUL */
        rc = xs_watch("data/flood", token);
        if (rc < 0)
            break;
        set++;
        xs_wait_watch(path, sizeof(path), tok, sizeof(tok), 2000); /* its registration event */
    }
    xcheck(set == watches, "%u watches set (last rc %ld %s)", set, rc, xen_errname(rc));
    printf("xsflood: ready\n");
    while (!(inb(COM1_LSR) & LSR_DATA_READY))
        delay_ms(10);
    (void)inb(COM1_DATA);

    unsigned events = 0, others = 0;
    struct xsd_sockmsg h;
    while (xs_recv_msg(&h, body, sizeof(body), 1000) >= 0) {
        if (h.type == XS_WATCH_EVENT)
            events++;
        else
            others++;
    }
    xcheck(xs_ring->error == 0, "ring error field %u (want XENSTORE_ERROR_NONE: not broken)",
           xs_ring->error);
    printf("xsflood: %u events after the flood (%u other messages)\n", events, others);
    static char v[64];
    rc = xs_read(0, "data/flood", v, sizeof(v));
    xcheck(rc >= 0, "a read after the flood is answered: rc %ld (%s)", rc, xen_errname(rc));
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
