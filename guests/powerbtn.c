/* Waits for the ACPI power button, as a guest's shutdown path would, then powers off.
 *
 * xenopus signals the button through its hardware-reduced GED (ACPI0013): the event
 * register's bit 0 (src/xenopus/devices/acpi_power.py; the DSDT's _EVT reads the same
 * register). A real OS takes the GED interrupt; this guest polls, since polling is all
 * the test needs. Only meaningful under xenopus: QEMU's GED lives elsewhere. */
#include "runtime.h"
#include "platform.h"

GUEST("powerbtn");

#define GED_EVENT 0xFEB00004ull /* platform.ACPI_REGS_BASE + GED_EVENT */
#define GED_POWER_BUTTON 1u

void guest_main(void)
{
    u64 wait_ms = cmdline_u64("wait_ms", 60000);
    printf("READY\n");
    for (u64 t = 0; t < wait_ms; t += 10) {
        if (mmio_read32(GED_EVENT) & GED_POWER_BUTTON) {
            printf("power button pressed\n");
            result(1, "powerbtn", "");
            return; /* the runtime's shutdown(): ACPI S5 */
        }
        delay_ms(10);
    }
    result(0, "powerbtn", "no power button event in %lu ms", wait_ms);
}
