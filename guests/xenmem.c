/*
 * xenmem: the guest-physical map and its accounting as Xen keeps them (public/memory.h,
 * vcpu.h, sched.h, hvm_op.h), as Linux and Xen's PV shim use them:
 *   - shared_info mapped at the first GFN above RAM (where the PV shim puts it: no page of
 *     RAM is given up), then read there: Xen's wallclock and vcpu0's time, kept by the host;
 *     an event delivered through it;
 *   - a grant frame at a free GFN far above RAM (where Linux's unpopulated-alloc puts its
 *     grant frames);
 *   - VCPUOP_register_vcpu_time_memory_area: the second vcpu_time_info Linux's vDSO reads;
 *   - ballooning: decrease_reservation, a second decrease of the same frames (0 extents),
 *     populate_physmap bringing them back, populate above RAM up to maxmem and no further,
 *     remove_from_physmap;
 *   - SCHEDOP_watchdog claimed, re-armed and released; HVMOP_pagetable_dying (-EINVAL: a
 *     shadow-paging hint, and our paging is hardware-assisted like Xen's HAP).
 *
 * Command line: hold_ms=N [0]: after ballooning out balloon_mb=M [0] MiB more, wait N ms
 * before finishing (the host looks at `xenopus list` meanwhile).
 *
 * Expected lines: one "ok"/"FAIL" per check, "memory: ..." lines, RESULT: PASS xenmem.
 */
#include "xen.h"

GUEST("xenmem");

#define PAGE 4096ul
#define BALLOON_PAGES 16

static u8 balloon[BALLOON_PAGES * PAGE] __attribute__((aligned(4096)));
static struct vcpu_time_info time_area __attribute__((aligned(64)));
static u64 frames[512];
static volatile int timer_events;

static void on_timer(evtchn_port_t port)
{
    (void)port;
    timer_events++;
}

static long reservation(int op, u64 *list, u64 n, u32 order)
{
    struct xen_memory_reservation r = {list, n, order, 0, DOMID_SELF};
    return memory_op(op, &r);
}

static long current_pages(void)
{
    domid_t self = DOMID_SELF;
    return memory_op(XENMEM_current_reservation, &self);
}


static void shared_info_above_ram(u64 gfn)
{
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, gfn};
    long rc = memory_op(XENMEM_add_to_physmap, &x);
    xcheck(rc == 0, "shared_info at gfn 0x%lx, the first above RAM: rc %ld", gfn, rc);
    if (rc)
        xen_finish(0, "shared_info above RAM");
    shared_info = (volatile struct shared_info *)(gfn * PAGE);
    vcpu0 = &shared_info->vcpu_info[0];
    u64 t0 = xen_system_time();
    printf("memory: shared_info at 0x%lx: wc_sec %u, vcpu0 time version %u mul %u\n",
           gfn * PAGE, shared_info->wc_sec, vcpu0->time.version, vcpu0->time.tsc_to_system_mul);
    xcheck(shared_info->wc_sec > 1600000000u, "wallclock written into the page above RAM");
    xcheck(vcpu0->time.tsc_to_system_mul != 0 && xen_system_time() >= t0,
           "vcpu0 time kept current above RAM");

    const char *how;
    rc = xen_events_init(NULL, &how);
    long port = evtchn_bind_virq(VIRQ_TIMER, 0);
    xcheck(rc == 0 && port > 0, "events through shared_info above RAM (%s, port %ld)", how, port);
    if (port > 0) {
        evtchn_bind((evtchn_port_t)port, on_timer);
        struct vcpu_set_singleshot_timer t = {xen_system_time() + 5000000, 0};
        vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
        xcheck(evtchn_wait((evtchn_port_t)port, 0, 2000) && timer_events == 1,
               "VIRQ_TIMER pending bit set in the page above RAM");
    }
}

static void grant_frame_far_above(u64 gfn)
{
    struct xen_add_to_physmap x = {DOMID_SELF, 0, XENMAPSPACE_grant_table, 0, gfn};
    long rc = memory_op(XENMEM_add_to_physmap, &x);
    xcheck(rc == 0, "grant frame 0 at free gfn 0x%lx: rc %ld", gfn, rc);
    volatile struct grant_entry_v1 *g = (volatile struct grant_entry_v1 *)(gfn * PAGE);
    g[GNTTAB_NR_RESERVED].frame = 0x1234;
    xcheck(rc == 0 && g[GNTTAB_NR_RESERVED].frame == 0x1234 && g[GNTTAB_NR_RESERVED].flags == 0,
           "the grant frame reads back, zeroed by Xen");
    struct xen_remove_from_physmap rm = {DOMID_SELF, gfn};
    rc = memory_op(XENMEM_remove_from_physmap, &rm);
    xcheck(rc == -XEN_EBUSY, "remove_from_physmap of the grant frame's gfn: %s", xen_errname(rc));
}

static void time_memory_area(void)
{
    struct vcpu_register_time_memory_area a = {(u64)&time_area};
    long rc = vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &a);
    xcheck(rc == 0, "VCPUOP_register_vcpu_time_memory_area rc %ld", rc);
    struct vcpu_time_info copy;
    u32 v;
    do {
        v = time_area.version;
        barrier();
        copy = *(volatile struct vcpu_time_info *)&time_area;
        barrier();
    } while ((v & 1) || v != time_area.version);
    printf("memory: time area version %u mul %u shift %d flags 0x%x (vcpu_info: flags 0x%x)\n",
           v, copy.tsc_to_system_mul, copy.tsc_shift, copy.flags, vcpu0->time.flags);
    xcheck(v != 0 && copy.tsc_to_system_mul == vcpu0->time.tsc_to_system_mul
               && copy.tsc_shift == vcpu0->time.tsc_shift,
           "the time area is a copy of vcpu0's vcpu_time_info");
    xcheck((copy.flags & XEN_PVCLOCK_TSC_STABLE_BIT) == (vcpu0->time.flags & XEN_PVCLOCK_TSC_STABLE_BIT),
           "TSC_STABLE in the area only as vcpu_info has it (%s)",
           copy.flags & XEN_PVCLOCK_TSC_STABLE_BIT ? "stable" : "not stable");
}

static void ballooning(u64 above)
{
    long max = memory_op(XENMEM_maximum_reservation, &(domid_t){DOMID_SELF});
    long cur = current_pages();
    printf("memory: current %ld pages, maximum %ld pages\n", cur, max);
    xcheck(cur > 0 && max >= cur, "reservations");
    for (u64 i = 0; i < BALLOON_PAGES; i++) {
        balloon[i * PAGE] = 0x5a;
        frames[i] = virt_to_gfn(balloon + i * PAGE);
    }
    long rc = reservation(XENMEM_decrease_reservation, frames, BALLOON_PAGES, 0);
    xcheck(rc == BALLOON_PAGES && current_pages() == cur - BALLOON_PAGES,
           "decrease_reservation of %d frames: %ld, current %ld", BALLOON_PAGES, rc, current_pages());
    rc = reservation(XENMEM_decrease_reservation, frames, BALLOON_PAGES, 0);
    xcheck(rc == 0, "the same frames again: %ld extents (they are gone)", rc);
    rc = reservation(XENMEM_populate_physmap, frames, BALLOON_PAGES, 0);
    xcheck(rc == BALLOON_PAGES && current_pages() == cur && balloon[0] == 0 && balloon[PAGE] == 0,
           "populate_physmap brings them back, zeroed: %ld", rc);
    rc = reservation(XENMEM_populate_physmap, frames, 1, 0);
    xcheck(rc == 0, "populate of a frame already there: %ld extents", rc);

    /* Above RAM, in 2 MiB extents, up to maxmem and no further. */
    u64 room = (u64)(max - cur), fit = room / 512;
    for (u64 i = 0; i <= fit && i < ARRAY_SIZE(frames); i++)
        frames[i] = above + i * 512;
    rc = reservation(XENMEM_populate_physmap, frames, fit + 1, 9);
    printf("memory: populated %ld of %lu 2 MiB extents above RAM, current %ld\n", rc, fit + 1,
           current_pages());
    xcheck(rc == (long)fit && current_pages() == cur + (long)fit * 512,
           "populate_physmap above RAM stops at maxmem");
    if (rc > 0) {
        volatile u8 *p = (volatile u8 *)(frames[0] * PAGE);
        p[0] = 0xa5;
        xcheck(p[0] == 0xa5, "a populated frame above RAM holds memory");
    }
    rc = reservation(XENMEM_decrease_reservation, frames, fit, 9);
    xcheck(rc == (long)fit && current_pages() == cur, "and back: %ld", rc);

    struct xen_remove_from_physmap rm = {DOMID_SELF, virt_to_gfn(balloon)};
    rc = memory_op(XENMEM_remove_from_physmap, &rm);
    long again = memory_op(XENMEM_remove_from_physmap, &rm);
    xcheck(rc == 0 && again == -XEN_ENOENT && current_pages() == cur - 1,
           "remove_from_physmap of a RAM frame: %s, then %s", xen_errname(rc), xen_errname(again));
    frames[0] = rm.gpfn;
    rc = reservation(XENMEM_populate_physmap, frames, 1, 0);
    xcheck(rc == 1 && current_pages() == cur, "populated again: %ld", rc);
}

static void watchdog_and_pagetable_dying(void)
{
    struct sched_watchdog w = {0, 3600};
    long id = sched_op(SCHEDOP_watchdog, &w);
    w.id = (u32)id;
    long rearm = sched_op(SCHEDOP_watchdog, &w);
    w.timeout = 0;
    long release = sched_op(SCHEDOP_watchdog, &w);
    long stale = sched_op(SCHEDOP_watchdog, &w);
    xcheck(id == 1 && rearm == 0 && release == 0 && stale == -XEN_EINVAL,
           "SCHEDOP_watchdog: claimed %ld, re-armed %ld, released %ld, then %s", id, rearm,
           release, xen_errname(stale));
    struct xen_hvm_pagetable_dying d = {DOMID_SELF, {0, 0, 0}, 0x1000};
    long rc = hvm_op(HVMOP_pagetable_dying, &d);
    xcheck(rc == -XEN_EINVAL, "HVMOP_pagetable_dying: %ld (a hint for shadow paging only)", rc);
}

void guest_main(void)
{
    if (!xen_require())
        return;
    u64 end = xen_ram_end();
    xcheck(end != 0, "RAM ends at 0x%lx", end);
    shared_info_above_ram(end / PAGE);
    /* 1 GiB up, 2 MiB aligned: free space as Linux's unpopulated-alloc finds it. */
    u64 far = ((end + (1ul << 30)) & ~((2ul << 20) - 1)) / PAGE;
    grant_frame_far_above(far);
    time_memory_area();
    ballooning(far + 512);
    watchdog_and_pagetable_dying();

    u64 hold = cmdline_u64("hold_ms", 0), mb = cmdline_u64("balloon_mb", 0);
    if (mb) {
        u64 base = (16ul << 20) / PAGE; /* from 16 MiB up: above the kit's image and heap */
        u64 want = mb * 256, done = 0;
        while (done < want) {
            u64 n = want - done < ARRAY_SIZE(frames) ? want - done : ARRAY_SIZE(frames);
            for (u64 i = 0; i < n; i++)
                frames[i] = base + done + i;
            long rc = reservation(XENMEM_decrease_reservation, frames, n, 0);
            if (rc != (long)n)
                break;
            done += n;
        }
        printf("memory: ballooned out %lu MiB, current %ld pages\n", done / 256, current_pages());
        xcheck(done == want, "ballooned out %lu MiB", mb);
    }
    if (hold) {
        printf("memory: holding\n");
        delay_ms((unsigned)hold);
    }
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
