/*
 * xenconsole: the PV console (public/io/console.h): the xencons_interface page and event
 * channel from HVM_PARAM_CONSOLE_PFN / HVM_PARAM_CONSOLE_EVTCHN. Prints
 * "hello from the xenopus xenconsole guest" through the ring's out half (and COM1, as
 * every guest does). With `echo`: sends "READY" through the ring, reads one line from the
 * in half (bounded by timeout_ms), prints "xenconsole echo: <line>" on COM1 and sends
 * "ECHO: <line>" back through the ring. Ring output uses \r\n line ends.
 *
 * Command line: echo, timeout_ms=N [10000], upcall=vector|param.
 * Expected: RESULT: PASS xenconsole (without Xen: RESULT: FAIL xenconsole no-xen).
 */
#include "xen.h"

GUEST("xenconsole");

void guest_main(void)
{
    if (!xen_require())
        return;
    long rc = xencons_init();
    if (!xcheck(rc == 0, "PV console ring from HVM_PARAM_CONSOLE_PFN/EVTCHN rc %ld", rc))
        xen_finish(0, "no console ring");
    printf("xenconsole: ring at 0x%lx event channel %u\n", (u64)xencons, xencons_port);
    const char *hello = "hello from the xenopus xenconsole guest\n";
    printf("%s", hello);
    rc = xencons_write(hello);
    xcheck(rc == (long)strlen(hello), "wrote %ld bytes to the out ring", rc);
    if (cmdline_has("echo")) {
        xencons_write("READY\n");
        static char line[128], reply[160];
        long n = xencons_readline(line, sizeof(line), (unsigned)cmdline_u64("timeout_ms", 10000));
        if (xcheck(n > 0, "read a line from the in ring (%ld bytes)", n)) {
            printf("xenconsole echo: %s\n", line);
            snprintf(reply, sizeof(reply), "ECHO: %s\n", line);
            xencons_write(reply);
        }
    }
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
