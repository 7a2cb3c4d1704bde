/*
 * PCI: enumerates bus 0 through configuration mechanism #1 (0xCF8/0xCFC) and through ECAM
 * (MCFG, or the DSDT's _CBA), checks that both see the same functions and registers, sizes
 * the BARs and walks each capability list. One line per function:
 *     00:DD.F VVVV:DDDD class CCCCCC header HH
 *       BARn mem32|mem64|io 0xADDR size 0xSIZE [prefetch]
 *       caps: ID@OFF ...
 * Command line: expect_devices=N (functions on bus 0), expect_cf8 (mechanism #1 must exist:
 * QEMU microvm's PCIe host has ECAM only), expect_ecam.
 */
#include "platform.h"

GUEST("pci");

static struct pci_fn ecam_fns[PCI_MAX_FNS], cf8_fns[PCI_MAX_FNS];

static const char *const kinds[] = {"none", "mem32", "mem64", "io"};

void guest_main(void)
{
    unsigned failed = 0;
    acpi_init();
    int have_cf8 = pci_cf8_present();
    int have_ecam = acpi.ecam_base != 0;
    printf("cf8: %s\n", have_cf8 ? "present" : "absent");
    printf("ecam: 0x%lx from %s\n", acpi.ecam_base, acpi.ecam_from ? acpi.ecam_from : "nowhere");
    if (cmdline_has("expect_cf8") && !have_cf8) {
        printf("FAIL configuration mechanism #1 absent\n");
        failed++;
    }
    if (cmdline_has("expect_ecam") && !have_ecam) {
        printf("FAIL no ECAM\n");
        failed++;
    }
    unsigned ne = 0, nc = 0;
    if (have_ecam) {
        map_phys(acpi.ecam_base, 1ul << 20);
        ne = pci_scan(ecam_fns, PCI_MAX_FNS, 1);
    }
    if (have_cf8)
        nc = pci_scan(cf8_fns, PCI_MAX_FNS, 0);
    if (have_ecam && have_cf8) {
        /* Both mechanisms address the same registers: compare the first 64 bytes of each. */
        int same = ne == nc;
        for (unsigned i = 0; same && i < ne; i++)
            for (unsigned off = 0; off < 64 && same; off += 4)
                if (pci_ecam_read(&ecam_fns[i], off, 4) != pci_cf8_read(&ecam_fns[i], off, 4)) {
                    printf("FAIL %02x:%02x.%x offset 0x%x: ecam 0x%x cf8 0x%x\n", 0,
                           ecam_fns[i].dev, ecam_fns[i].fn, off,
                           pci_ecam_read(&ecam_fns[i], off, 4), pci_cf8_read(&ecam_fns[i], off, 4));
                    same = 0;
                }
        printf("cf8 and ecam %s (%u / %u functions)\n", same ? "agree" : "DISAGREE", nc, ne);
        failed += !same;
    }
    pci_use_ecam = have_ecam;
    struct pci_fn *fns = have_ecam ? ecam_fns : cf8_fns;
    unsigned n = have_ecam ? ne : nc;
    for (unsigned i = 0; i < n; i++) {
        struct pci_fn *f = &fns[i];
        printf("%02x:%02x.%x %04x:%04x class %06x header %02x\n", f->bus, f->dev, f->fn, f->vendor,
               f->device, f->class_rev >> 8, f->header);
        pci_probe_bars(f);
        for (unsigned b = 0; b < 6; b++)
            if (f->bar[b].kind)
                printf("  BAR%u %s 0x%lx size 0x%lx%s\n", b, kinds[f->bar[b].kind], f->bar[b].addr,
                       f->bar[b].size, f->bar[b].prefetch ? " prefetch" : "");
        char caps[160];
        unsigned len = 0;
        caps[0] = 0;
        if (pci_read(f, 0x06, 2) & 0x10) /* status: Capabilities List (PCI 3.0 6.7) */
            for (unsigned c = 0, off = pci_read(f, 0x34, 1) & 0xfc; off >= 0x40 && c < 24 &&
                                                                     len < sizeof(caps);
                 c++, off = pci_read(f, off + 1, 1) & 0xfc)
                len += (unsigned)snprintf(caps + len, sizeof(caps) - len, " %02x@%02x",
                                          pci_read(f, off, 1), off);
        if (caps[0])
            printf("  caps:%s\n", caps);
    }
    const char *want = cmdline_get("expect_devices");
    if (want && *want && strtou64(want, NULL) != n) {
        printf("FAIL %u functions, expected %s\n", n, want);
        failed++;
    }
    if (!n) {
        printf("FAIL no PCI functions found\n");
        failed++;
    }
    result(!failed, "pci", "%u functions", n);
}
