/* Counts and prints, for save/restore: "count N" for N = 0 .. count-1, then a result line
 * with a checksum of every value, kept in a register and on the stack across the loop,
 * so a restored guest that lost or repeated a step (or its registers or memory) shows it. */
#include "runtime.h"

GUEST("counter");

void guest_main(void)
{
    u64 n = cmdline_u64("count", 1000);
    u32 h = 0x811c9dc5u;
    for (u64 i = 0; i < n; i++) {
        printf("count %lu\n", i);
        h = (h ^ (u32)i) * 0x01000193u; /* FNV-1a step, as in hello */
    }
    result(1, "counter", "count=%lu checksum=0x%08x", n, h);
}
