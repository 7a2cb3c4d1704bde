/*
 * Exit benchmark: iterations=N (default 10000) `outb` to port 0x80 in a tight loop, each one
 * exactly one port-I/O exit. The loop runs in ring 3 with IOPL 3 so that no emulated ring-0
 * work is measured. Where ring 3 is denied port I/O despite IOPL 3 (the build machines run
 * ring 3 natively with IOPL forced to 0: the first outb raises #GP), it says so and runs
 * the same loop in ring 0.
 */
#include "runtime.h"

GUEST("exits");

#define REFUSED (~0ul)

static u64 port80_loop(u64 n)
{
    for (u64 i = 0; i < n; i++)
        outb(0x80, (u8)i);
    return n;
}

static void on_gp(struct frame *f)
{
    if ((f->cs & 3) != 3) {
        print_exception(f);
        result(0, "exits", "exception");
        shutdown();
    }
    user_return(REFUSED);
}

void guest_main(void)
{
    u64 n = cmdline_u64("iterations", 10000);
    printf("exits: %lu\n", n);
    expect_exception(13, on_gp);
    u64 done = run_user(port80_loop, n, USER_IOPL);
    expect_exception(13, NULL);
    if (done == REFUSED) {
        printf("ring 3 port I/O refused (#GP despite IOPL 3): looping in ring 0\n");
        done = port80_loop(n);
    } else {
        printf("looped in ring 3\n");
    }
    result(done == n, "exits", "%lu", done);
}
