/*
 * xenvcpuset: vCPU hotplug as a Xen PVH guest does it (Linux's drivers/xen/cpu_hotplug.c:
 * a watch on "cpu", then cpu/N/availability "online"/"offline" brings vCPU N up or down;
 * public/vcpu.h VCPUOP_initialise/up/down/is_up). The toolstack writes those nodes (`xl
 * vcpu-set`); vCPU 0 stays up. A vCPU brought up for the first time gets a 64-bit
 * vcpu_hvm_context (this vCPU's paging, its own stack) and parks in a halt loop.
 *
 * Expected: "vcpuset: online K of N" once at start (K = the vCPUs up) and after each
 * change it carried out; runs until destroyed. Needs maxvcpus >= 2.
 */
#include "xen.h"

GUEST("xenvcpuset");

#define EFER_MSR 0xc0000080
#define MAX_VCPUS 8

static struct {
    u16 limit;
    u64 base;
} __attribute__((packed)) gdtr, idtr;
static u8 stacks[MAX_VCPUS][4096] __attribute__((aligned(16)));
static volatile int alive[MAX_VCPUS];
static int initialised[MAX_VCPUS];
static struct vcpu_hvm_context ctx;

/* A secondary vCPU's first instruction (rdi: its number): GDTR and IDTR start at 0
 * (hvm_vcpu.h), so it loads the boot vCPU's first; then it idles. */
static void __attribute__((noreturn, used)) ap_main(u64 index)
{
    __asm__ volatile("lgdt %0; lidt %1" : : "m"(gdtr), "m"(idtr));
    alive[index] = 1;
    for (;;)
        __asm__ volatile("cli; hlt");
}

static int available(unsigned i, int *online)
{
    char path[48], value[16];
    snprintf(path, sizeof(path), "cpu/%u/availability", i);
    if (xs_read(0, path, value, sizeof(value)) < 0)
        return 0;
    *online = !strcmp(value, "online");
    return 1;
}

static long bring_up(unsigned i)
{
    long rc = 0;
    if (!initialised[i]) {
        struct vcpu_hvm_context c = ctx;
        c.x86_64.rsp = (u64)(stacks[i] + sizeof(stacks[i]) - 8); /* as after a call */
        c.x86_64.rdi = i;
        rc = vcpu_op(VCPUOP_initialise, i, &c);
        if (rc)
            return rc;
        initialised[i] = 1;
    }
    rc = vcpu_op(VCPUOP_up, i, NULL);
    for (unsigned waited = 0; !rc && !alive[i] && waited < 5000; waited += 10)
        delay_ms(10);
    return rc ? rc : alive[i] ? 0 : -XEN_ETIME;
}

/* Follow every cpu/N/availability; the number of vCPUs that exist (N's found). */
static unsigned follow(void)
{
    unsigned n = 1;
    for (unsigned i = 1; i < MAX_VCPUS; i++) {
        int want = 0;
        if (!available(i, &want))
            break;
        n = i + 1;
        int up = vcpu_op(VCPUOP_is_up, i, NULL) == 1;
        long rc = 0;
        if (want && !up)
            rc = bring_up(i);
        else if (!want && up)
            rc = vcpu_op(VCPUOP_down, i, NULL);
        if (rc)
            printf("vcpuset: vCPU %u %s: %s\n", i, want ? "up" : "down", xen_errname(rc));
    }
    return n;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    long rc = xs_init();
    if (!xcheck(rc == 0, "xenstore rc %ld", rc))
        xen_finish(0, "no xenstore");
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(gdtr), "=m"(idtr));
    u64 cr0, cr3, cr4;
    __asm__ volatile("mov %%cr0, %0; mov %%cr3, %1; mov %%cr4, %2" : "=r"(cr0), "=r"(cr3), "=r"(cr4));
    ctx.mode = VCPU_HVM_MODE_64B;
    ctx.x86_64.rip = (u64)ap_main;
    ctx.x86_64.rflags = 0x2; /* interrupts off: no IDT yet */
    ctx.x86_64.cr0 = cr0;
    ctx.x86_64.cr3 = cr3;
    ctx.x86_64.cr4 = cr4;
    ctx.x86_64.efer = rdmsr(EFER_MSR);
    alive[0] = 1;
    rc = xs_watch("cpu", "vcpuset");
    if (!xcheck(rc == 0, "watch cpu rc %ld", rc))
        xen_finish(0, "no watch");
    char path[96], token[32];
    unsigned last = 0;
    for (;;) {
        /* A burst of events (one per node written) is followed once it has drained. */
        if (!xs_wait_watch(path, sizeof(path), token, sizeof(token), 3600 * 1000u))
            continue;
        while (xs_wait_watch(path, sizeof(path), token, sizeof(token), 50))
            ;
        unsigned n = follow(), up = 0;
        for (unsigned i = 0; i < n; i++)
            up += i == 0 || vcpu_op(VCPUOP_is_up, i, NULL) == 1;
        unsigned now = n << 8 | up;
        if (now != last)
            printf("vcpuset: online %u of %u\n", up, n);
        last = now;
    }
}
