/*
 * xenpvh: the platform around a PVH guest, as pvh_platform chooses it. "xen" is what a
 * libxl PVH domU gets (tools/libs/light/libxl_x86.c): no UART, i8042, CMOS RTC or PIT,
 * and RAM from 0 with no legacy hole; "pc" keeps them. Checks, by the command line's
 * expect=xen|pc:
 *   - the memory map: RAM across 0x9F000-0xA1000 and up to the Xen special pages at
 *     0xDE000 (xen), or the PC hole reserved from 0x9FC00 (pc);
 *   - the legacy ports: COM1's LSR, the i8042 status, CMOS register 0x0A and PIT channel
 *     0 all read 0xFF with nothing there (xen), or answer (pc);
 *   - the FADT's IAPC_BOOT_ARCH: no 8042 and CMOS RTC not present (xen), or both (pc);
 *   - the MADT: no IO-APIC and no ISA overrides (xen, as libxl's), or one IO-APIC (pc);
 *   - Xen's XenStore ring is still where HVM_PARAM_STORE_PFN says.
 * It also prints where its .lowpage section was loaded: guests/xenpvh-ff000.ld links it
 * at 0xFF000, the image's first PT_LOAD segment just below 1 MiB.
 * Output goes to port 0xE9 too (Xen's HVM debug port), the only console without a UART.
 * Expected: "xenpvh: low page at 0x...", RESULT: PASS xenpvh <expect>.
 */
#include "xen.h"

GUEST("xenpvh");

__attribute__((section(".lowpage"), used)) static const char low_marker[] = "xenpvh low page";

/* The entry covering [a, a+n) in the boot memory map, or NULL. */
static const struct mem_range *covering(u64 a, u64 n)
{
    for (unsigned i = 0; i < boot.nr_mem; i++)
        if (boot.mem[i].addr <= a && a + n <= boot.mem[i].addr + boot.mem[i].size)
            return &boot.mem[i];
    return NULL;
}

static int ram(u64 a, u64 n)
{
    const struct mem_range *r = covering(a, n);
    return r && r->type == MEM_RAM;
}

void guest_main(void)
{
    const char *expect = cmdline_get("expect");
    int xen_platform = expect && !strcmp(expect, "xen");
    if (!xen_require())
        return;
    printf("xenpvh: low page at %p: \"%s\"\n", (const void *)low_marker, low_marker);
    print_memmap();

    if (xen_platform) {
        xcheck(ram(0, 0xDE000), "RAM from 0 to the special pages at 0xDE000, no legacy hole");
        const struct mem_range *special = covering(0xDE000, 0x2000);
        xcheck(special && special->type == MEM_RESERVED, "special pages 0xDE000-0xE0000 reserved");
        const struct mem_range *tables = covering(0xE0000, 0x1F000);
        xcheck(tables && tables->type == 3, "ACPI tables 0xE0000-0xFF000 typed ACPI");
        xcheck(ram(0xFF000, 0x1000) || (u64)low_marker == 0xFF000, "RAM (or our image) at 0xFF000");
    } else {
        const struct mem_range *hole = covering(0x9FC00, 0x60400);
        xcheck(hole && hole->type == MEM_RESERVED, "the PC hole 0x9FC00-1 MiB reserved");
    }

    /* Ports: nothing there reads all ones (an unclaimed port). */
    u8 lsr = inb(0x3fd), kbd = inb(0x64);
    outb(0x70, 0x0a);
    u8 rtc_a = inb(0x71);
    outb(0x43, 0x00); /* latch channel 0 (i8254 counter latch command) */
    u8 pit_lo = inb(0x40), pit_hi = inb(0x40);
    printf("xenpvh: COM1 LSR 0x%x, i8042 status 0x%x, CMOS A 0x%x, PIT 0x%x%02x\n", lsr, kbd, rtc_a,
           pit_hi, pit_lo);
    if (xen_platform) {
        xcheck(lsr == 0xff && kbd == 0xff && rtc_a == 0xff && pit_lo == 0xff && pit_hi == 0xff,
               "no UART, i8042, RTC or PIT answers");
    } else {
        xcheck(lsr != 0xff, "COM1 answers (LSR 0x%x)", lsr);
        xcheck(rtc_a != 0xff, "the CMOS RTC answers (register A 0x%x)", rtc_a);
        xcheck(pit_lo != 0xff || pit_hi != 0xff, "the PIT answers");
    }

    acpi_init();
    const struct acpi_table *facp = acpi_find("FACP");
    u16 boot_arch = facp && facp->length >= 111 ? *(const u16 *)(facp->addr + 109) : 0xffff;
    int has_8042 = !!(boot_arch & 2), no_rtc = !!(boot_arch & 0x20);
    xcheck(facp != NULL, "FADT found (IAPC_BOOT_ARCH 0x%x)", boot_arch);
    xcheck(xen_platform ? !has_8042 && no_rtc : has_8042 && !no_rtc,
           "IAPC_BOOT_ARCH: 8042 %d, CMOS RTC not present %d", has_8042, no_rtc);
    /* libxl's PVH MADT has no IO-APIC (libacpi's build_madt without ACPI_HAS_IOAPIC) */
    xcheck(xen_platform ? acpi.nr_ioapics == 0 && acpi.nr_overrides == 0 : acpi.nr_ioapics == 1,
           "MADT IO-APICs %u, ISA overrides %u", acpi.nr_ioapics, acpi.nr_overrides);

    u64 pfn = 0;
    long rc = hvm_get_param(HVM_PARAM_STORE_PFN, &pfn);
    xcheck(rc == 0 && pfn == 0xDE, "HVM_PARAM_STORE_PFN 0x%lx rc %ld", pfn, rc);
    xen_finish(xen_failures == 0, "%s%s", expect ? expect : "?", xen_failures ? " failed" : "");
}
