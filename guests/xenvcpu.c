/*
 * xenvcpu: bringing a vCPU up and down through Xen (public/vcpu.h, hvm/hvm_vcpu.h) instead
 * of INIT/SIPI, as Linux PVH does where VCPUOP_up is offered: VCPUOP_initialise with a
 * 64-bit vcpu_hvm_context, VCPUOP_up, VCPUOP_down (by the vCPU itself: synchronous; and by
 * another), VCPUOP_is_up, and Xen's refusals (up before initialise, initialise twice, a
 * context without paging, taking the last vCPU down). Needs vcpus >= 2.
 *
 * Expected lines: one "ok"/"FAIL" per check, RESULT: PASS xenvcpu.
 */
#include "xen.h"

GUEST("xenvcpu");

#define EFER_MSR 0xc0000080

static struct {
    u16 limit;
    u64 base;
} __attribute__((packed)) gdtr, idtr;
static u8 ap_stack[8192] __attribute__((aligned(16)));
static volatile int ap_started, ap_resumed;
static volatile long ap_down_rc = 1;
static volatile u64 ap_arg;

/* vCPU 1's first instruction: the context's rdi is its argument. GDTR and IDTR start at 0
 * (hvm_vcpu.h), so it loads the boot vCPU's before anything could reload a segment. */
static void __attribute__((noreturn, used)) ap_main(u64 arg)
{
    __asm__ volatile("lgdt %0; lidt %1" : : "m"(gdtr), "m"(idtr));
    ap_arg = arg;
    ap_started = 1;
    ap_down_rc = vcpu_op(VCPUOP_down, 1, NULL); /* parks right here until VCPUOP_up */
    ap_resumed = 1;
    for (;;)
        __asm__ volatile("cli; hlt");
}

static int wait_for(volatile int *flag, unsigned ms)
{
    for (unsigned waited = 0; !*flag && waited < ms; waited += 10)
        delay_ms(10);
    return *flag;
}

void guest_main(void)
{
    if (!xen_require())
        return;
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(gdtr), "=m"(idtr));
    struct vcpu_hvm_context ctx = {.mode = VCPU_HVM_MODE_64B};
    u64 cr0, cr3, cr4;
    __asm__ volatile("mov %%cr0, %0; mov %%cr3, %1; mov %%cr4, %2" : "=r"(cr0), "=r"(cr3), "=r"(cr4));
    ctx.x86_64.rip = (u64)ap_main;
    ctx.x86_64.rsp = (u64)(ap_stack + sizeof(ap_stack) - 8); /* as after a call */
    ctx.x86_64.rdi = 0x5eed;
    ctx.x86_64.rflags = 0x2; /* interrupts off: no IDT yet */
    ctx.x86_64.cr0 = cr0;
    ctx.x86_64.cr3 = cr3;
    ctx.x86_64.cr4 = cr4;
    ctx.x86_64.efer = rdmsr(EFER_MSR);

    long rc = vcpu_op(VCPUOP_is_up, 1, NULL);
    xcheck(rc == 0, "vCPU 1 starts down: is_up %ld", rc);
    rc = vcpu_op(VCPUOP_up, 1, NULL);
    xcheck(rc == -XEN_EINVAL, "VCPUOP_up before VCPUOP_initialise: %s", xen_errname(rc));
    struct vcpu_hvm_context bad = ctx;
    bad.x86_64.cr0 &= ~(1ul << 31);
    rc = vcpu_op(VCPUOP_initialise, 1, &bad);
    xcheck(rc == -XEN_EINVAL, "a 64-bit context without paging: %s", xen_errname(rc));
    rc = vcpu_op(VCPUOP_initialise, 1, &ctx);
    long again = vcpu_op(VCPUOP_initialise, 1, &ctx);
    xcheck(rc == 0 && again == -XEN_EEXIST, "VCPUOP_initialise: %ld, then %s", rc, xen_errname(again));
    delay_ms(50);
    xcheck(!ap_started && vcpu_op(VCPUOP_is_up, 1, NULL) == 0, "initialised is not running");

    rc = vcpu_op(VCPUOP_up, 1, NULL);
    int started = wait_for(&ap_started, 5000);
    xcheck(rc == 0 && started && ap_arg == 0x5eed,
           "VCPUOP_up: vCPU 1 runs at the context's rip with its rdi (0x%lx)", ap_arg);
    for (unsigned waited = 0; vcpu_op(VCPUOP_is_up, 1, NULL) != 0 && waited < 5000; waited += 10)
        delay_ms(10);
    xcheck(vcpu_op(VCPUOP_is_up, 1, NULL) == 0, "vCPU 1 took itself down (is_up 0)");
    delay_ms(100);
    xcheck(!ap_resumed, "a vCPU that is down does not run");
    rc = vcpu_op(VCPUOP_down, 0, NULL);
    xcheck(rc == -XEN_EINVAL, "taking the last vCPU that is up down: %s", xen_errname(rc));
    rc = vcpu_op(VCPUOP_up, 1, NULL);
    int resumed = wait_for(&ap_resumed, 5000);
    xcheck(rc == 0 && resumed && ap_down_rc == 0,
           "VCPUOP_up again: it resumes after its VCPUOP_down (which returned %ld)", ap_down_rc);
    xcheck(vcpu_op(VCPUOP_is_up, 1, NULL) == 1, "is_up 1");
    rc = vcpu_op(VCPUOP_down, 1, NULL);
    xcheck(rc == 0 && vcpu_op(VCPUOP_is_up, 1, NULL) == 0, "VCPUOP_down of another vCPU: %ld", rc);
    xen_finish(xen_failures == 0, xen_failures ? "%d check(s) failed" : "", xen_failures);
}
