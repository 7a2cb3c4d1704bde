/* The default guest: prints what it was given, runs a checksum loop in ring 3, shuts down. */
#include "runtime.h"

GUEST("hello");

/*
 * The ring-3 checksum, recomputed by tests/vm/test_guests_qemu.py: 32-bit FNV-1a style over
 * the loop counter,
 *     h = 0x811c9dc5; for i in 0 .. n-1: h = ((h ^ i) * 0x01000193) mod 2^32
 * with n = iterations= from the command line (default 10000000).
 */
static u64 checksum(u64 n)
{
    u32 h = 0x811c9dc5u;
    for (u32 i = 0; i < (u32)n; i++)
        h = (h ^ i) * 0x01000193u;
    return h;
}

void guest_main(void)
{
    printf("xenopus test guest: hello\n");
    printf("boot protocol: %s\n", boot.proto);
    printf("command line: %s\n", boot.cmdline);
    printf("memory map:\n");
    print_memmap();
    u32 a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = '\0';
    printf("cpu vendor: %s\n", vendor);
    u64 n = cmdline_u64("iterations", 10000000);
    u64 h = run_user(checksum, n, 0);
    printf("checksum: 0x%08lx (%lu iterations in ring 3)\n", h, n);
    result(1, "hello", "");
}
