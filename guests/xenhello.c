/*
 * xenhello: the Xen basics, as a PVH guest meets them (Linux arch/x86/xen/enlighten_hvm.c):
 * CPUID discovery, the hypercall page, xen_version, console_io, shared_info, a VIRQ_TIMER
 * event from a singleshot timer through the upcall vector, then SCHEDOP_shutdown(poweroff)
 * in place of ACPI.
 *
 * Command line: upcall=vector|param (default: vector when CPUID 0x400000x4 offers
 * XEN_HVM_CPUID_UPCALL_VECTOR, else HVM_PARAM_CALLBACK_IRQ), timer_ms=N [10].
 *
 * Expected lines (one "ok"/"FAIL" per check):
 *   xen: CPUID 0x40000000 "XenVMMXenVMM" max leaf ..., version 4.11, ...
 *   xen version 4.11                          (XENVER_version, must match CPUID)
 *   xen extraversion: <s>   xen capabilities: <s>   xen changeset: <s>
 *   xen features[0]: 0x...   xen pagesize: 4096   xen guest handle: <32 hex digits>
 *   "hello through console_io" in the host log ((dN) prefix), rc >= 0
 *   shared_info mapped, vcpu0 time ...
 *   timer: VIRQ_TIMER port P, 1 event(s), N upcall(s)
 *   RESULT: PASS xenhello
 * Without Xen: "no Xen: CPUID 0x40000000 signature is "<sig>"" and RESULT: FAIL xenhello no-xen.
 */
#include "xen.h"

GUEST("xenhello");

static volatile int timer_events;
static void on_timer(evtchn_port_t port)
{
    (void)port;
    timer_events++;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    long v = xen_version(XENVER_version, NULL);
    printf("xen version %ld.%ld\n", v >> 16, v & 0xffff);
    xcheck(v >= 0 && (u64)v == ((u64)xen.major << 16 | xen.minor), "XENVER_version 0x%lx matches CPUID %u.%u",
           v, xen.major, xen.minor);
    static char extra[16 + 1], caps[1024 + 1], changeset[64 + 1];
    long rc = xen_version(XENVER_extraversion, extra);
    printf("xen extraversion: %s\n", extra);
    xcheck(rc == 0, "XENVER_extraversion rc %ld", rc);
    rc = xen_version(XENVER_capabilities, caps);
    printf("xen capabilities: %s\n", caps);
    xcheck(rc == 0 && caps[0] != 0, "XENVER_capabilities rc %ld", rc);
    rc = xen_version(XENVER_changeset, changeset);
    printf("xen changeset: %s\n", changeset);
    xcheck(rc == 0, "XENVER_changeset rc %ld", rc);
    struct xen_feature_info fi = {0, 0};
    rc = xen_version(XENVER_get_features, &fi);
    printf("xen features[0]: 0x%x\n", fi.submap);
    xcheck(rc == 0, "XENVER_get_features rc %ld", rc);
    rc = xen_version(XENVER_pagesize, NULL);
    printf("xen pagesize: %ld\n", rc);
    xcheck(rc == 4096, "XENVER_pagesize");
    u8 handle[16];
    memset(handle, 0xee, sizeof(handle));
    rc = xen_version(XENVER_guest_handle, handle);
    printf("xen guest handle: ");
    for (int i = 0; i < 16; i++)
        printf("%02x", handle[i]);
    printf("\n");
    xcheck(rc == 0, "XENVER_guest_handle rc %ld", rc);

    rc = xen_console_write("hello through console_io\n");
    xcheck(rc >= 0, "console_io write rc %ld", rc);

    rc = xen_map_shared_info();
    xcheck(rc == 0, "XENMEM_add_to_physmap(shared_info) rc %ld", rc);
    if (rc)
        xen_finish(0, "shared_info");
    printf("shared_info mapped at 0x%lx: wc_sec %u, vcpu0 time version %u system_time %lu mul %u shift %d\n",
           (u64)shared_info, shared_info->wc_sec, vcpu0->time.version, vcpu0->time.system_time,
           vcpu0->time.tsc_to_system_mul, vcpu0->time.tsc_shift);
    xcheck(vcpu0->time.tsc_to_system_mul != 0, "vcpu_time_info filled in");

    const char *how;
    rc = xen_events_init(NULL, &how);
    xcheck(rc == 0, "upcall via %s (vector %d) rc %ld", how, XEN_UPCALL_VECTOR, rc);
    long port = evtchn_bind_virq(VIRQ_TIMER, 0);
    xcheck(port > 0, "EVTCHNOP_bind_virq(VIRQ_TIMER) -> %ld", port);
    if (port > 0) {
        evtchn_bind((evtchn_port_t)port, on_timer);
        u64 now = xen_system_time();
        struct vcpu_set_singleshot_timer t = {now + cmdline_u64("timer_ms", 10) * 1000000, 0};
        rc = vcpu_op(VCPUOP_set_singleshot_timer, 0, &t);
        xcheck(rc == 0, "VCPUOP_set_singleshot_timer(now %lu + %lu ms) rc %ld", now,
               cmdline_u64("timer_ms", 10), rc);
        int got = evtchn_wait((evtchn_port_t)port, 0, 2000);
        printf("timer: VIRQ_TIMER port %ld, %d event(s), %u upcall(s)\n", port, timer_events, evtchn_upcalls);
        xcheck(got && timer_events == 1, "one timer event through the upcall");
        u64 after = xen_system_time();
        xcheck(after >= t.timeout_abs_ns, "system time %lu past the deadline %lu", after, t.timeout_abs_ns);
    }
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
