/*
 * What the CPU policy shows a guest (vm/cpu_policy.py), at CPL 0:
 *   leaves=L,L,...  print CPUID leaf L (subleaf 0): "cpuid 0x0000000L: eax=.. ebx=.. ecx=.. edx=.."
 *   msrs=M,M,...    RDMSR each: "rdmsr 0x0000010a: 0x..." or "rdmsr 0x...: #GP" (SDM Vol. 2B
 *                   RDMSR: "#GP(0) if the value in ECX specifies a reserved or unimplemented
 *                   MSR address"); the #GP handler resumes after the 2-byte instruction.
 * Always passes once every line is printed: the test compares the lines with the policy.
 */
#include "runtime.h"
#include "platform.h"

GUEST("cpupolicy");

static volatile int faulted;

static void on_gp(struct frame *f)
{
    faulted = 1;
    f->rip += 2; /* rdmsr is 0F 32 */
}

static void each(const char *key, void (*fn)(u32))
{
    const char *s = cmdline_get(key);
    while (s && *s) {
        const char *end;
        u64 v = strtou64(s, &end);
        if (end == s)
            break;
        fn((u32)v);
        s = *end == ',' ? end + 1 : end;
    }
}

static void show_leaf(u32 leaf)
{
    u32 a, b, c, d;
    cpuid(leaf, &a, &b, &c, &d);
    printf("cpuid 0x%08x: eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x\n", leaf, a, b, c, d);
}

static void show_msr(u32 msr)
{
    faulted = 0;
    u64 v = rdmsr(msr);
    if (faulted)
        printf("rdmsr 0x%08x: #GP\n", msr);
    else
        printf("rdmsr 0x%08x: 0x%lx\n", msr, v);
}

void guest_main(void)
{
    printf("xenopus test guest: cpupolicy\n");
    expect_exception(13, on_gp);
    each("leaves", show_leaf);
    each("msrs", show_msr);
    result(1, "cpupolicy", "");
    shutdown();
}
