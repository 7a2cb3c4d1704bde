/*
 * xenctl: the guest side of the PV control protocol (docs/misc/xenstore-paths.pandoc,
 * ~/control/...), as Linux's drivers/xen/manage.c has it: advertise control/feature-poweroff
 * and control/feature-reboot ("1"), watch control/shutdown and control/sysrq. A request is
 * acknowledged by emptying its node inside a transaction (retried on EAGAIN), then acted
 * on: "poweroff" -> SCHEDOP_shutdown(SHUTDOWN_poweroff), "reboot" -> SHUTDOWN_reboot
 * (the toolstack's on_poweroff / on_reboot then apply); a sysrq letter is reported and
 * waited on again. An NMI is reported (xl trigger DOM nmi) and waited on again.
 * "suspend" (control/feature-suspend, as manage.c's do_suspend) -> SHUTDOWN_suspend, whose
 * return is reported ("xenctl: suspend returned 1": cancelled, xl resume) and waited on again.
 *
 * Command line: features=0 (advertise nothing: the toolstack must fall back or refuse);
 *   watchdog=S (arm a SCHEDOP_watchdog of S seconds and never pet it: SHUTDOWN_watchdog);
 *   timeout_ms=N (per XenStore reply, 5000).
 * Lines: "xenctl: ready", "xenctl: sysrq <c>", "xenctl: nmi", "xenctl: shutdown request
 *   <cmd>", then "RESULT: PASS xenctl <cmd>" and the SCHEDOP_shutdown.
 */
#include "xen.h"

GUEST("xenctl");

static volatile int nmis;

static void on_nmi(struct frame *f)
{
    (void)f;
    nmis++;
}

/* manage.c shutdown_handler / sysrq_handler: read the node and, if it holds something,
 * write "" in the same transaction; EAGAIN means someone else wrote meanwhile: again. */
static long take(const char *node, char *out, u32 cap)
{
    for (;;) {
        u32 tx = 0;
        long rc = xs_transaction_start(&tx);
        if (rc < 0)
            return rc;
        rc = xs_read(tx, node, out, cap);
        if (rc <= 0) {
            xs_transaction_end(tx, 0);
            out[0] = 0;
            return rc < 0 ? rc : 0;
        }
        rc = xs_write(tx, node, "");
        if (rc < 0) {
            xs_transaction_end(tx, 0);
            return rc;
        }
        rc = xs_transaction_end(tx, 1);
        if (rc == -XEN_EAGAIN)
            continue;
        return rc < 0 ? rc : (long)strlen(out);
    }
}

void guest_main(void)
{
    if (!xen_require())
        return;
    expect_exception(2, on_nmi);
    xs_timeout_ms = (unsigned)cmdline_u64("timeout_ms", 5000);
    long rc = xs_init();
    if (!xcheck(rc == 0, "ring from HVM_PARAM_STORE_PFN/STORE_EVTCHN rc %ld", rc))
        xen_finish(0, "no ring");
    if (cmdline_u64("features", 1)) {
        rc = xs_write(0, "control/feature-poweroff", "1");
        xcheck(rc >= 0, "write control/feature-poweroff rc %ld (%s)", rc, xen_errname(rc));
        rc = xs_write(0, "control/feature-reboot", "1");
        xcheck(rc >= 0, "write control/feature-reboot rc %ld (%s)", rc, xen_errname(rc));
        rc = xs_write(0, "control/feature-suspend", "1");
        xcheck(rc >= 0, "write control/feature-suspend rc %ld (%s)", rc, xen_errname(rc));
    }
    rc = xs_watch("control/shutdown", "shutdown");
    xcheck(rc >= 0, "watch control/shutdown rc %ld (%s)", rc, xen_errname(rc));
    rc = xs_watch("control/sysrq", "sysrq");
    xcheck(rc >= 0, "watch control/sysrq rc %ld (%s)", rc, xen_errname(rc));
    u64 watchdog = cmdline_u64("watchdog", 0);
    if (watchdog) {
        struct sched_watchdog wd = {0, (u32)watchdog};
        rc = sched_op(SCHEDOP_watchdog, &wd);
        xcheck(rc > 0, "SCHEDOP_watchdog armed for %lu s: id %ld", watchdog, rc);
    }
    if (xen_failures)
        xen_finish(0, "%d check(s) failed", xen_failures);
    printf("xenctl: ready\n");

    static char path[128], token[32], value[64];
    int seen_nmis = 0;
    for (;;) {
        if (nmis != seen_nmis) {
            seen_nmis = nmis;
            printf("xenctl: nmi\n");
        }
        if (!xs_wait_watch(path, sizeof(path), token, sizeof(token), 100))
            continue;
        if (!strcmp(token, "sysrq")) {
            if (take("control/sysrq", value, sizeof(value)) > 0)
                printf("xenctl: sysrq %c\n", value[0]);
            continue;
        }
        if (take("control/shutdown", value, sizeof(value)) <= 0)
            continue; /* the registration event, or our own acknowledgement */
        printf("xenctl: shutdown request %s\n", value);
        u32 reason;
        if (!strcmp(value, "poweroff") || !strcmp(value, "halt"))
            reason = SHUTDOWN_poweroff;
        else if (!strcmp(value, "reboot"))
            reason = SHUTDOWN_reboot;
        else if (!strcmp(value, "suspend")) {
            /* public/sched.h: 1 if the suspend was cancelled (or a checkpoint), 0 if
             * this is a new domain resuming */
            printf("xenctl: suspend returned %ld\n", xen_shutdown(SHUTDOWN_suspend));
            continue;
        } else {
            printf("xenctl: unknown shutdown request ignored\n");
            continue;
        }
        result(1, guest_name, "%s", value);
        for (int i = 0; i < 100000 && !(inb(0x3fd) & 0x40); i++) /* COM1 LSR TEMT */
            ;
        rc = xen_shutdown(reason);
        printf("xenctl: SCHEDOP_shutdown returned %ld\n", rc);
        shutdown();
    }
}
