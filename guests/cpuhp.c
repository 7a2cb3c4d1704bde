/*
 * cpuhp: ACPI CPU hotplug as an OS does it, without an AML interpreter (xl vcpu-set of a
 * guest without Xen). It reads what the DSDT's methods read: the MADT (ACPI 6.5 §5.2.12:
 * vCPUs past `vcpus` not Enabled but Online Capable) and the status byte per vCPU of
 * xenopus's CPU hotplug block (src/xenopus/devices/cpu_hotplug.py). It polls the GED
 * event register (src/xenopus/devices/acpi_power.py) where an OS takes its interrupt and
 * runs _EVT, then does what \_SB.CSCN and the OS do with its notifications:
 *   INSERT (Device Check): acknowledge, start the vCPU by INIT/SIPI, which reports
 *           "cpuhp: cpu APIC up";
 *   REMOVE (Eject Request): acknowledge; once the vCPU has stopped (each stops in cli;
 *           hlt once it has reported) write EJECT (_EJ0): "cpuhp: ejected APIC".
 * After each event: "cpuhp: online N status S" (S: the status bytes, hex). Runs until
 * destroyed, or wait_ms (default 600000) without an event ends it with a RESULT line.
 * Only meaningful under xenopus (the register block is its own).
 */
#include "platform.h"

GUEST("cpuhp");

#define GED_EVENT 0xFEB00004ull   /* platform.ACPI_REGS_BASE + acpi_power.GED_EVENT */
#define GED_CPU_HOTPLUG 2u
#define CPU_STATUS 0xFEB00100ull  /* platform.CPU_HOTPLUG_BASE: byte N for vCPU N */
#define ST_ENABLED 1u
#define ST_INSERT 2u
#define ST_REMOVE 4u
#define ST_EJECT 8u
#define MADT_LAPIC 0
#define LAPIC_ENABLED 1u
#define LAPIC_ONLINE_CAPABLE 2u

static volatile int print_lock;
static volatile int halted[MAX_CPUS];  /* by APIC ID: the vCPU is in its final cli; hlt */
static unsigned nr_vcpus;

/* A started vCPU reports and stops for good (cli; hlt, as Linux's play_dead leaves an
 * offlined CPU): only INIT (a new insertion's INIT/SIPI) takes it out of there. */
static void ap_job(struct cpu *c)
{
    u32 apic = c->apic_id;
    spin_lock(&print_lock);
    printf("cpuhp: cpu %u up\n", apic);
    spin_unlock(&print_lock);
    halted[apic] = 1;
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void report(void)
{
    char status[2 * MAX_CPUS + 1];
    unsigned online = 0;
    for (unsigned i = 0; i < nr_vcpus; i++) {
        u8 s = mmio_read8(CPU_STATUS + i);
        online += s & ST_ENABLED;
        snprintf(status + 2 * i, 3, "%02x", s);
    }
    spin_lock(&print_lock);
    printf("cpuhp: online %u status %s\n", online, status);
    spin_unlock(&print_lock);
}

static void scan(void)
{
    for (unsigned i = 1; i < nr_vcpus; i++) {
        u8 s = mmio_read8(CPU_STATUS + i);
        if (s & ST_INSERT) {
            mmio_write8(CPU_STATUS + i, ST_INSERT);
            halted[i] = 0;
            if (smp_start(i, ap_job) < 0)
                printf("cpuhp: cpu %u did not start\n", i);
        }
        if (s & ST_REMOVE) {
            mmio_write8(CPU_STATUS + i, ST_REMOVE);
            if (!wait_flag(&halted[i], 5000)) {
                printf("cpuhp: cpu %u did not stop\n", i);
                continue;
            }
            mmio_write8(CPU_STATUS + i, ST_EJECT);
            spin_lock(&print_lock);
            printf("cpuhp: ejected %u\n", i);
            spin_unlock(&print_lock);
        }
    }
    report();
}

void guest_main(void)
{
    u64 wait_ms = cmdline_u64("wait_ms", 600000);
    const struct acpi_table *madt = acpi_init() ? acpi_find("APIC") : 0;
    if (!madt) {
        result(0, "cpuhp", "no MADT");
        return;
    }
    const u8 *t = (const u8 *)madt->addr;
    unsigned enabled = 0, capable = 0;
    for (u32 off = 44; off + 2 <= madt->length && t[off + 1]; off += t[off + 1]) {
        if (t[off] != MADT_LAPIC)
            continue;
        u32 flags = *(const u32 *)(t + off + 4);
        enabled += !!(flags & LAPIC_ENABLED);
        capable += (flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE)) == LAPIC_ONLINE_CAPABLE;
        nr_vcpus++;
    }
    if (nr_vcpus > MAX_CPUS)
        nr_vcpus = MAX_CPUS;
    smp_boot(ap_job); /* the vCPUs enabled at boot */
    printf("cpuhp: ready madt enabled=%u capable=%u\n", enabled, capable);
    report();
    for (u64 quiet = 0; quiet < wait_ms; quiet += 10) {
        if (mmio_read32(GED_EVENT) & GED_CPU_HOTPLUG) {
            scan();
            quiet = 0;
        }
        delay_ms(10);
    }
    result(1, "cpuhp", "no event for %lu ms", wait_ms);
}
