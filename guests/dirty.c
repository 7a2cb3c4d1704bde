/* Dirties memory at a fixed rate, for live-migration benchmarks: `rate` pages a second
 * (one 8-byte store in each page, cycling through a working set of `mib` MiB from 64 MiB
 * up), paced by the TSC (its rate taken against the PIT), in ring 3 where stores run
 * natively. It prints "dirty N" after each second, and checks on each store that the page
 * still holds what it wrote there one pass before: a migration that lost or rolled back a
 * page ends it with a FAIL. With `idle`, after `seconds` it stops storing and prints
 * "idle N" each second instead (its memory as it left it: what a clone benchmark maps). */
#include "runtime.h"

GUEST("dirty");

#define BASE (64ull << 20)
#define PAGE 4096ull

static u64 tsc_per_ms, pages, per_ms, cursor, wrong;

/* One second of stores at ring 3; returns the pages found not holding their last value. */
static u64 dirty_second(u64 unused)
{
    (void)unused;
    u64 start = rdtsc(), bad = 0;
    for (u64 ms = 1; ms <= 1000; ms++) {
        for (u64 i = 0; i < per_ms; i++, cursor++) {
            volatile u64 *p = (volatile u64 *)(BASE + (cursor % pages) * PAGE);
            u64 before = cursor >= pages ? cursor - pages + 1 : 0; /* 0: never written */
            if (*p != before)
                bad++;
            *p = cursor + 1;
        }
        while (rdtsc() - start < ms * tsc_per_ms)
            ;
    }
    return bad;
}

void guest_main(void)
{
    u64 rate = cmdline_u64("rate", 2560), mib = cmdline_u64("mib", 64);
    u64 seconds = cmdline_u64("seconds", 1000000);
    if (BASE + (mib << 20) > ram_bytes()) {
        result(0, "dirty", "a %lu MiB working set from 64 MiB needs more RAM", mib);
        return;
    }
    u64 t0 = rdtsc();
    delay_ms(100);
    tsc_per_ms = (rdtsc() - t0) / 100;
    pages = (mib << 20) / PAGE;
    per_ms = (rate + 999) / 1000;
    printf("dirty: %lu pages/s over %lu MiB\n", per_ms * 1000, mib);
    for (u64 s = 0; s < seconds; s++) {
        wrong += run_user(dirty_second, 0, 0);
        printf("dirty %lu\n", s);
        if (wrong)
            break;
    }
    if (cmdline_has("idle") && !wrong) {
        printf("idle: %lu pages written\n", cursor);
        for (u64 s = 0;; s++) {
            delay_ms(1000);
            printf("idle %lu\n", s);
        }
    }
    result(wrong == 0, "dirty", "pages=%lu wrong=%lu", cursor, wrong);
}
