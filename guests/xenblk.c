/*
 * xenblk: a blkfront (public/io/blkif.h, io/ring.h, io/xenbus.h; the steps of Linux's
 * xen-blkfront). Finds device/vbd/<vdev> (default: the first, e.g. 51712 = xvda) and its
 * backend, waits for the backend's InitWait, grants a ring page, allocates an event channel
 * to the backend domain, writes ring-ref / event-channel / protocol = x86_64-abi, switches to
 * Initialised, waits for the backend's Connected, reads sectors / sector-size /
 * feature-flush-cache, switches to Connected. Then BLKIF_OP_WRITE of `count` sectors at
 * `sector` from a granted data page, BLKIF_OP_FLUSH_DISKCACHE (when the backend offers it),
 * BLKIF_OP_READ into a cleared page and a compare. Every response status is checked.
 *
 * The pattern (the same as vblk.c's, so the host test can check the image): disk byte at
 * offset o (o = sector * 512 + i) is (o / 512 * 131 + (o % 512) * 7 + seed) mod 256.
 *
 * Hotplug (xl block-attach / block-detach): with wait_attach=1 it watches device/vbd and
 * waits for device/vbd/<vdev> to appear first ("xenblk: waiting for device/vbd/N"); with
 * wait_detach=1, after the I/O it waits for the backend to go Closing (the toolstack's
 * removal), ends its grants, goes Closing then Closed ("xenblk: closed on the backend's
 * request") and waits for the toolstack to remove device/vbd/N ("xenblk: device/vbd/N
 * removed") before its result.
 *
 * With loops=N (a save or live migration while it runs): N rounds of a write and its
 * read-back, round i at sector + i * count with seed + i ("xenblk: loop i" after each),
 * then every round's range read back again ("xenblk: loops: N rounds written and read back").
 *
 * Command line: vdev=N (device/vbd/N), sector=S [2048], count=C [8, at most 8: one page],
 *   seed=N [0x5a], timeout_ms=N [10000], upcall=vector|param, wait_attach=1, wait_detach=1,
 *   loops=N [1].
 * Expected: "xenblk: <node> backend <path> (domain D) sectors N sector-size 512",
 *   "xenblk: wrote C sectors at S", "xenblk: flush ok|not offered", "xenblk: read back, pattern ok",
 *   RESULT: PASS xenblk (without Xen: RESULT: FAIL xenblk no-xen).
 */
#include "xen.h"

GUEST("xenblk");

static struct blkif_sring ring __attribute__((aligned(4096)));
static u8 data[4096] __attribute__((aligned(4096)));
static struct xenbus_dev dev;
static u32 rsp_cons;
static u16 handle;
static unsigned timeout;

static u8 pattern(u64 o, u64 seed) { return (u8)(o / 512 * 131 + (o % 512) * 7 + seed); }

/* One request, pushed as ring.h's RING_PUSH_REQUESTS does (entry before req_prod), then the
 * response it gets. Returns its status, or -100 on timeout. */
static int request(u8 op, u64 sector, u8 nsect, long gref)
{
    static u64 next_id = 1;
    u32 prod = ring.h.req_prod;
    struct blkif_request *rq = &ring.ring[prod % 32].req;
    memset(rq, 0, sizeof(*rq));
    rq->operation = op;
    rq->handle = handle;
    rq->id = next_id++;
    rq->sector_number = sector;
    if (nsect) {
        rq->nr_segments = 1;
        rq->seg[0].gref = (grant_ref_t)gref;
        rq->seg[0].first_sect = 0;
        rq->seg[0].last_sect = (u8)(nsect - 1);
    }
    barrier(); /* the request before the index */
    ring.h.req_prod = prod + 1;
    mb();
    evtchn_send(dev.port);
    for (unsigned waited = 0; ring.h.rsp_prod == rsp_cons; waited += 10) {
        if (waited >= timeout)
            return -100;
        evtchn_wait(dev.port, evtchn_count[dev.port], 10);
    }
    barrier();
    struct blkif_response rsp = ring.ring[rsp_cons % 32].rsp;
    rsp_cons++;
    ring.h.rsp_event = rsp_cons + 1; /* RING_FINAL_CHECK_FOR_RESPONSES */
    mb();
    if (rsp.id != rq->id || rsp.operation != op)
        printf("xenblk: response id %lu op %u for request %lu op %u\n", rsp.id, rsp.operation, rq->id, op);
    return rsp.status;
}

/* The toolstack's removal: backend Closing; the frontend closes (Closing, Closed, as
 * xenbus_frontend_closed), then the toolstack removes the device's nodes. */
static void close_on_request(const char *bpath, grant_ref_t ring_ref)
{
    u64 state = 0;
    printf("xenblk: waiting for the backend to close\n");
    long rc = xs_wait_state(bpath, XenbusStateClosing, timeout, &state);
    if (!xcheck(rc == 0, "backend state %lu (want Closing)", state))
        return;
    xenbus_switch_state(&dev, XenbusStateClosing);
    xcheck(gnttab_end(ring_ref) == 1, "ring grant revoked");
    rc = xenbus_switch_state(&dev, XenbusStateClosed);
    if (xcheck(rc == 0, "frontend Closed rc %ld", rc))
        printf("xenblk: closed on the backend's request\n");
    /* The backend follows to Closed, then the toolstack removes both directories. */
    char node[96], seen[96], token[16], v[8];
    snprintf(node, sizeof(node), "%s/state", dev.node);
    xs_watch("device/vbd", "removal");
    for (unsigned waited = 0; xs_read(0, node, v, sizeof(v)) >= 0 && waited < timeout; waited += 1000)
        xs_wait_watch(seen, sizeof(seen), token, sizeof(token), 1000);
    if (xcheck(xs_read(0, node, v, sizeof(v)) < 0, "%s removed by the toolstack", dev.node))
        printf("xenblk: %s removed\n", dev.node);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    timeout = (unsigned)cmdline_u64("timeout_ms", 10000);
    u64 sector = cmdline_u64("sector", 2048), count = cmdline_u64("count", 8), seed = cmdline_u64("seed", 0x5a);
    if (count < 1 || count > 8)
        xen_finish(0, "count must be 1..8");
    if (cmdline_has("wait_attach")) {
        const char *vdev = cmdline_get("vdev");
        printf("xenblk: waiting for device/vbd/%s\n", vdev ? vdev : "?");
        long rc = vdev ? xenbus_wait_for("vbd", vdev, timeout) : -XEN_EINVAL;
        if (!xcheck(rc == 0, "device/vbd/%s appeared: %s", vdev ? vdev : "? (no vdev=)", xen_errname(rc)))
            xen_finish(0, "no device");
    }
    xenbus_frontend_start(&dev, "vbd", cmdline_get("vdev"));
    handle = (u16)strtou64(strlen(dev.node) > 11 ? dev.node + 11 : "0", NULL); /* device/vbd/<id> */
    char bpath[192];
    u64 state = 0;
    snprintf(bpath, sizeof(bpath), "%s/state", dev.backend);
    long rc = xs_wait_state(bpath, XenbusStateInitWait, timeout, &state);
    if (!xcheck(rc == 0, "backend state %lu (want >= InitWait)", state))
        xen_finish(0, "backend not ready");

    memset(&ring, 0, sizeof(ring));
    ring.h.req_event = ring.h.rsp_event = 1; /* SHARED_RING_INIT */
    long ring_ref = gnttab_grant((domid_t)dev.backend_id, virt_to_gfn(&ring), 0);
    long port = evtchn_alloc_unbound((domid_t)dev.backend_id);
    if (!xcheck(ring_ref > 0 && port > 0, "ring-ref %ld event-channel %ld", ring_ref, port))
        xen_finish(0, "ring");
    dev.port = (evtchn_port_t)port;
    evtchn_bind(dev.port, NULL);
    rc = xenbus_write_u64(&dev, "ring-ref", (u64)ring_ref);
    if (!rc)
        rc = xenbus_write_u64(&dev, "event-channel", (u64)port);
    if (!rc) {
        char path[128];
        snprintf(path, sizeof(path), "%s/protocol", dev.node);
        rc = xs_write(0, path, "x86_64-abi");
    }
    if (!rc)
        rc = xenbus_switch_state(&dev, XenbusStateInitialised);
    if (!xcheck(rc == 0, "frontend keys written, state Initialised rc %ld", rc))
        xen_finish(0, "xenbus");
    rc = xs_wait_state(bpath, XenbusStateConnected, timeout, &state);
    if (!xcheck(rc == 0 && state == XenbusStateConnected, "backend state %lu (want Connected)", state))
        xen_finish(0, "backend did not connect");
    u64 sectors = 0, ssize = 512, flush = 0;
    char path[192];
    snprintf(path, sizeof(path), "%s/sectors", dev.backend);
    xs_read_u64(path, &sectors);
    snprintf(path, sizeof(path), "%s/sector-size", dev.backend);
    xs_read_u64(path, &ssize);
    snprintf(path, sizeof(path), "%s/feature-flush-cache", dev.backend);
    xs_read_u64(path, &flush);
    xenbus_switch_state(&dev, XenbusStateConnected);
    printf("xenblk: %s backend %s (domain %lu) sectors %lu sector-size %lu\n", dev.node, dev.backend,
           dev.backend_id, sectors, ssize);
    xcheck(ssize == 512 && sector + count <= sectors, "sector %lu + %lu fits the disk", sector, count);

    long gref = gnttab_grant((domid_t)dev.backend_id, virt_to_gfn(data), 0);
    for (u64 i = 0; i < count * 512; i++)
        data[i] = pattern(sector * 512 + i, seed);
    int st = request(BLKIF_OP_WRITE, sector, (u8)count, gref);
    if (xcheck(st == BLKIF_RSP_OKAY, "BLKIF_OP_WRITE status %d", st))
        printf("xenblk: wrote %lu sectors at %lu\n", count, sector);
    if (flush) {
        st = request(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0);
        if (xcheck(st == BLKIF_RSP_OKAY, "BLKIF_OP_FLUSH_DISKCACHE status %d", st))
            printf("xenblk: flush ok\n");
    } else {
        printf("xenblk: flush not offered\n");
    }
    memset(data, 0, sizeof(data));
    st = request(BLKIF_OP_READ, sector, (u8)count, gref);
    xcheck(st == BLKIF_RSP_OKAY, "BLKIF_OP_READ status %d", st);
    u64 bad = 0;
    for (u64 i = 0; i < count * 512; i++)
        bad += data[i] != pattern(sector * 512 + i, seed);
    if (xcheck(!bad, "read back %lu sectors, %lu bytes differ", count, bad))
        printf("xenblk: read back, pattern ok\n");
    u64 loops = cmdline_u64("loops", 1);
    if (loops > 1 && !xcheck(sector + loops * count <= sectors, "loops fit the disk"))
        loops = 1;
    for (u64 i = 1; i < loops && !xen_failures; i++) { /* round 0 was the write above */
        u64 at = sector + i * count;
        for (u64 j = 0; j < count * 512; j++)
            data[j] = pattern(at * 512 + j, seed + i);
        st = request(BLKIF_OP_WRITE, at, (u8)count, gref);
        xcheck(st == BLKIF_RSP_OKAY, "loop %lu BLKIF_OP_WRITE status %d", i, st);
        memset(data, 0, sizeof(data));
        st = request(BLKIF_OP_READ, at, (u8)count, gref);
        xcheck(st == BLKIF_RSP_OKAY, "loop %lu BLKIF_OP_READ status %d", i, st);
        bad = 0;
        for (u64 j = 0; j < count * 512; j++)
            bad += data[j] != pattern(at * 512 + j, seed + i);
        if (xcheck(!bad, "loop %lu: %lu bytes differ", i, bad))
            printf("xenblk: loop %lu\n", i);
    }
    for (u64 i = 0; loops > 1 && i < loops && !xen_failures; i++) { /* all of it, again */
        u64 at = sector + i * count;
        memset(data, 0, sizeof(data));
        st = request(BLKIF_OP_READ, at, (u8)count, gref);
        bad = 0;
        for (u64 j = 0; j < count * 512; j++)
            bad += data[j] != pattern(at * 512 + j, seed + i);
        xcheck(st == BLKIF_RSP_OKAY && !bad, "round %lu read again: status %d, %lu bytes differ", i, st, bad);
    }
    if (loops > 1 && !xen_failures)
        printf("xenblk: loops: %lu rounds written and read back\n", loops);
    xcheck(gnttab_end((grant_ref_t)gref) == 1, "data grant revoked");
    if (cmdline_has("wait_detach"))
        close_on_request(bpath, (grant_ref_t)ring_ref);
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
