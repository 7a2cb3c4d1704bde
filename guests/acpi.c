/*
 * ACPI tables: finds the RSDP (hvm_start_info / boot_params / BIOS-area scan), walks the
 * XSDT (or RSDT), verifies every checksum, reads the MADT, FADT and MCFG, then powers the
 * machine off through the FADT (ACPI 6.5 7.4.2 \_S5, 4.8.3.7 sleep control register).
 * Command line: expect_cpus=N (MADT enabled CPUs), expect_hw_reduced (FADT flag 20 set),
 * expect_mcfg (an MCFG with an ECAM base), nopoweroff (end through the default shutdown).
 */
#include "platform.h"

GUEST("acpi");

void guest_main(void)
{
    unsigned failed = 0;
    if (!acpi_init()) {
        result(0, "acpi", "no RSDP");
        return;
    }
    printf("rsdp: 0x%lx from %s revision %u checksum %s\n", acpi.rsdp, acpi.rsdp_from,
           acpi.rsdp_revision, acpi.rsdp_checksum_ok ? "ok" : "BAD");
    printf("root: %s\n", acpi.xsdt ? "XSDT" : "RSDT");
    for (unsigned i = 0; i < acpi.nr_tables; i++) {
        const struct acpi_table *t = &acpi.tables[i];
        printf("table %s at 0x%lx length %u revision %u checksum %s\n", t->sig, t->addr,
               t->length, t->revision, t->checksum_ok ? "ok" : "BAD");
    }
    if (acpi.bad_checksums) {
        printf("FAIL %u bad checksums\n", acpi.bad_checksums);
        failed++;
    }
    printf("madt: %u cpus, lapic 0x%lx, %u ioapic (0x%lx), %u overrides\n", acpi.nr_cpus,
           acpi.lapic_addr, acpi.nr_ioapics, acpi.ioapic_addr, acpi.nr_overrides);
    for (unsigned i = 0; i < acpi.nr_cpus && i < MAX_CPUS; i++)
        printf("  cpu %u apic %u\n", i, acpi.apic_ids[i]);
    printf("fadt: flags 0x%x hw_reduced %d sleep_ctl %u:0x%lx sleep_sts %u:0x%lx reset %u:0x%lx=0x%x pm1a_cnt 0x%x\n",
           acpi.fadt_flags, acpi.hw_reduced, acpi.sleep_ctl.space, acpi.sleep_ctl.address,
           acpi.sleep_sts.space, acpi.sleep_sts.address, acpi.reset_reg.space,
           acpi.reset_reg.address, acpi.reset_value, acpi.pm1a_cnt);
    printf("dsdt: 0x%lx length %u s5 %d\n", acpi.dsdt, acpi.dsdt_length, acpi.s5_typ);
    printf("ecam: 0x%lx buses %u-%u from %s\n", acpi.ecam_base, acpi.ecam_bus_start,
           acpi.ecam_bus_end, acpi.ecam_from ? acpi.ecam_from : "nowhere");
    printf("pci windows: mmio32 0x%lx+0x%lx mmio64 0x%lx+0x%lx\n", acpi.mmio32_base,
           acpi.mmio32_size, acpi.mmio64_base, acpi.mmio64_size);

    static const char *const required[] = {"FACP", "DSDT", "APIC"};
    for (unsigned i = 0; i < ARRAY_SIZE(required); i++)
        if (!acpi_find(required[i])) {
            printf("FAIL no %s table\n", required[i]);
            failed++;
        }
    const char *cpus = cmdline_get("expect_cpus");
    if (cpus && *cpus && strtou64(cpus, NULL) != acpi.nr_cpus) {
        printf("FAIL madt cpus %u, expected %s\n", acpi.nr_cpus, cpus);
        failed++;
    }
    if (cmdline_has("expect_hw_reduced") && !acpi.hw_reduced) {
        printf("FAIL FADT is not hardware-reduced\n");
        failed++;
    }
    if (cmdline_has("expect_mcfg") && !acpi_find("MCFG")) {
        printf("FAIL no ECAM in the MCFG\n");
        failed++;
    }
    if (acpi.s5_typ < 0) {
        printf("FAIL no \\_S5 package in the DSDT\n");
        failed++;
    }
    if (failed) {
        result(0, "acpi", "%u checks failed", failed);
        return;
    }
    result(1, "acpi", "%u tables %u cpus", acpi.nr_tables, acpi.nr_cpus);
    if (cmdline_has("nopoweroff"))
        return;
    printf("acpi: powering off (S5, SLP_TYP %d)\n", acpi.s5_typ);
    acpi_poweroff();
    /* A hypervisor may finish the power-off asynchronously (QEMU does it from its main
     * loop): give it time before calling the write ineffective. */
    delay_ms(2000);
    printf("acpi: still running after the power-off write\n");
}
