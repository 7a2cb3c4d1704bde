/*
 * SMP: starts every enabled CPU of the MADT (INIT/SIPI/SIPI through the LAPIC), and each one
 * runs a ring-3 job on its own stacks and TSS, then reports "cpu N apic X ok <checksum>".
 * The job is the hello guest's FNV-style loop seeded with the CPU index:
 *     h = 0x811c9dc5 ^ N; for i < iterations: h = ((h ^ i) * 0x01000193) mod 2^32
 * Command line: expect_cpus=N (default: the MADT's count), iterations=N (default 1000000).
 */
#include "platform.h"

GUEST("smp");

static volatile int print_lock;
static volatile int reported;
static u64 iterations;

static u64 job(u64 index)
{
    u32 h = 0x811c9dc5u ^ (u32)index;
    for (u32 i = 0; i < (u32)iterations; i++)
        h = (h ^ i) * 0x01000193u;
    return h;
}

static void report(struct cpu *c)
{
    spin_lock(&print_lock);
    printf("cpu %u apic %u ok 0x%08lx\n", c->index, c->apic_id, c->result);
    spin_unlock(&print_lock);
    __atomic_fetch_add(&reported, 1, __ATOMIC_RELEASE);
}

static void ap_work(struct cpu *c)
{
    c->result = run_user(job, c->index, 0);
    report(c);
}

void guest_main(void)
{
    iterations = cmdline_u64("iterations", 1000000);
    if (!acpi_init() || !acpi.nr_cpus) {
        result(0, "smp", "no MADT");
        return;
    }
    unsigned expect = (unsigned)cmdline_u64("expect_cpus", acpi.nr_cpus);
    printf("madt: %u cpus, bsp apic %u\n", acpi.nr_cpus, lapic_id());
    unsigned aps = smp_boot(ap_work);
    spin_lock(&print_lock);
    printf("started %u application processors\n", aps);
    spin_unlock(&print_lock);
    struct cpu *bsp = this_cpu();
    bsp->result = run_user(job, 0, 0);
    report(bsp);
    /* Bounded wait for the APs' reports (100 ms steps of PIT, up to 5 s). */
    for (int i = 0; i < 50 && reported < (int)nr_cpus_started; i++)
        delay_ms(100);
    spin_lock(&print_lock);
    int ok = reported == (int)expect && nr_cpus_started == expect && acpi.nr_cpus == expect;
    result(ok, "smp", "%d", reported);
    spin_unlock(&print_lock);
}
