/*
 * xenballoon: a balloon driver as Linux's xen-balloon is one (drivers/xen/balloon.c and
 * xen-balloon.c over public/memory.h): it reads memory/target (KiB, the toolstack's: `xl
 * mem-set`), watches it, and moves the domain's reservation there — shrinking with
 * XENMEM_decrease_reservation of frames it does not use, growing with
 * XENMEM_populate_physmap of the frames it gave back first, then of 2 MiB extents above
 * RAM (as Linux's balloon hotplugs memory above RAM), within what Xen allows (max_pages).
 * Each time it has done what it can it prints
 *     "balloon: target T KiB, current C KiB" (plus ", short by N pages" when Xen refused)
 * and waits for the next change, until the domain is destroyed.
 *
 * Command line: none. Expected: "balloon: ready, target T KiB", then one line per target.
 */
#include "xen.h"

GUEST("xenballoon");

#define PAGE 4096ul
#define EXTENT 512ul /* pages in a 2 MiB extent (order 9) */
#define BATCH 512ul  /* frames per hypercall */

static u64 frames[BATCH];
static u64 pool_base, pool_end; /* RAM frames the balloon may give: [base, end) */
static u64 out;                 /* frames given back, from pool_base up */
static u64 above_base, above;   /* 2 MiB extents populated above RAM, from above_base */

static long reservation(int op, u64 n, u32 order)
{
    struct xen_memory_reservation r = {frames, n, order, 0, DOMID_SELF};
    return memory_op(op, &r);
}

static u64 current_pages(void)
{
    domid_t self = DOMID_SELF;
    long rc = memory_op(XENMEM_current_reservation, &self);
    return rc > 0 ? (u64)rc : 0;
}


static u64 min3(u64 a, u64 b, u64 c) { return a < b ? (a < c ? a : c) : (b < c ? b : c); }

/* Move the reservation towards `target` pages; the pages still to go (either way). */
static u64 balloon_to(u64 target)
{
    u64 cur = current_pages();
    /* Shrinking: extents above RAM first (what was added last), then RAM frames. */
    while (cur > target && above > 0 && cur - target >= EXTENT) {
        frames[0] = above_base + (above - 1) * EXTENT;
        if (reservation(XENMEM_decrease_reservation, 1, 9) != 1)
            break;
        above--;
        cur = current_pages();
    }
    while (cur > target && pool_base + out < pool_end) {
        u64 n = min3(cur - target, BATCH, pool_end - pool_base - out);
        for (u64 i = 0; i < n; i++)
            frames[i] = pool_base + out + i;
        long rc = reservation(XENMEM_decrease_reservation, n, 0);
        out += rc > 0 ? (u64)rc : 0;
        cur = current_pages();
        if (rc != (long)n)
            break;
    }
    /* Growing: the frames given back first, then 2 MiB extents above RAM. */
    while (cur < target && out > 0) {
        u64 n = min3(target - cur, BATCH, out);
        for (u64 i = 0; i < n; i++)
            frames[i] = pool_base + out - n + i;
        long rc = reservation(XENMEM_populate_physmap, n, 0);
        cur = current_pages();
        if (rc != (long)n)
            break; /* max_pages: Xen refused the rest (the populated ones stay out of `out`) */
        out -= n;
    }
    while (cur < target && target - cur >= EXTENT) {
        frames[0] = above_base + above * EXTENT;
        if (reservation(XENMEM_populate_physmap, 1, 9) != 1)
            break;
        above++;
        cur = current_pages();
    }
    return cur > target ? cur - target : target - cur;
}

static u64 read_target_pages(void)
{
    u64 kib = 0;
    if (xs_read_u64("memory/target", &kib))
        return 0;
    return kib / 4;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    long rc = xs_init();
    if (!xcheck(rc == 0, "xenstore rc %ld", rc))
        xen_finish(0, "no xenstore");
    u64 end = xen_ram_end() / PAGE;
    pool_base = (16ul << 20) / PAGE; /* from 16 MiB up: above the kit's image and heap */
    pool_end = end;
    above_base = (end + EXTENT - 1) / EXTENT * EXTENT + EXTENT; /* a 2 MiB hole, then up */
    u64 target = read_target_pages();
    if (!xcheck(target > 0 && pool_end > pool_base, "memory/target %lu KiB, RAM to 0x%lx", target * 4,
                end * PAGE))
        xen_finish(0, "no target");
    rc = xs_watch("memory/target", "balloon");
    if (!xcheck(rc == 0, "watch memory/target rc %ld", rc))
        xen_finish(0, "no watch");
    printf("balloon: ready, target %lu KiB\n", target * 4);
    char path[96], token[32];
    for (;;) {
        /* The watch fires once when set, then at each write: each time, follow the node. */
        if (!xs_wait_watch(path, sizeof(path), token, sizeof(token), 3600 * 1000u))
            continue;
        u64 want = read_target_pages();
        if (!want)
            continue;
        u64 short_by = balloon_to(want);
        u64 cur = current_pages();
        if (short_by)
            printf("balloon: target %lu KiB, current %lu KiB, short by %lu pages\n", want * 4, cur * 4,
                   short_by);
        else
            printf("balloon: target %lu KiB, current %lu KiB\n", want * 4, cur * 4);
    }
}
