/*
 * hostile-bystander: the domain that runs beside a hostile one (tests/vm/test_hostile.py).
 * It counts 10 ms ticks of its own PIT and prints "tick N" every 100 ticks, with
 * a running FNV-1a checksum of the tick numbers, until the power button (ACPI GED, as
 * `powerbtn`) asks it to stop; then RESULT: PASS hostile-bystander ticks=N checksum=0x...
 * A disturbed bystander shows as a gap or repeat in its tick lines, a wrong checksum, a
 * missing result line, or a domain that is gone.
 * Command line: wait_ms=N [600000] before it gives up (RESULT: FAIL).
 */
#include "platform.h"

GUEST("hostile-bystander");

#define GED_EVENT 0xFEB00004ull /* platform.ACPI_REGS_BASE + GED_EVENT */

void guest_main(void)
{
    u64 wait_ms = cmdline_u64("wait_ms", 600000);
    u32 h = 0x811c9dc5u;
    printf("READY\n");
    for (u64 t = 0; t * 10 < wait_ms; t++) {
        h = (h ^ (u32)t) * 0x01000193u;
        if (t % 100 == 0)
            printf("tick %lu checksum 0x%08x\n", t, h);
        if (mmio_read32(GED_EVENT) & 1) {
            result(1, "hostile-bystander", "ticks=%lu checksum=0x%08x", t + 1, h);
            return;
        }
        delay_ms(10);
    }
    result(0, "hostile-bystander", "no power button in %lu ms", wait_ms);
}
