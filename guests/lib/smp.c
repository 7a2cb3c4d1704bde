/* Memory allocation, extra mappings, TSC, the local APIC and AP bring-up. */
#include "platform.h"

extern u8 _end[];                                  /* link.ld */
extern u64 gdt[], pml4[];                          /* head.S */
extern u8 ap_tramp_start[], ap_tramp_end[], ap_tramp_cr3[], ap_tramp_stack[];
void idt_load(void);                               /* traps.c */
void tss_descriptor(u64 *g, const u8 *t);

/* ---- memory ---- */

static u64 heap_next, heap_end;

void *page_alloc(u64 bytes, u64 align)
{
    if (!heap_next) {
        heap_next = ((u64)_end + 0xffff) & ~0xfffful;
        heap_end = 64ul << 20; /* no memory map: assume the 64 MiB every test gives */
        for (unsigned i = 0; i < boot.nr_mem; i++) {
            const struct mem_range *r = &boot.mem[i];
            if (r->type == MEM_RAM && r->addr <= (u64)_end && (u64)_end < r->addr + r->size)
                heap_end = r->addr + r->size;
        }
    }
    u64 a = (heap_next + align - 1) & ~(align - 1);
    /* Step over a ramdisk in the way (loaders put it high in the same RAM range). */
    if (boot.ramdisk_size && a < boot.ramdisk_addr + boot.ramdisk_size &&
        boot.ramdisk_addr < a + bytes)
        a = (boot.ramdisk_addr + boot.ramdisk_size + align - 1) & ~(align - 1);
    if (a + bytes > heap_end)
        return NULL;
    heap_next = a + bytes;
    return (void *)a;
}

/* SDM Vol. 3A 4.5: 1 GiB pages (PDPTE.PS) need CPUID.80000001H:EDX.Page1GB[bit 26]. */
int map_phys(u64 phys, u64 size)
{
    if (phys + size <= 1ul << 32)
        return 0;
    u32 a, b, c, d;
    cpuid(0x80000001, &a, &b, &c, &d);
    if (!(d & (1u << 26)))
        return -1;
    for (u64 g = phys >> 30; g <= (phys + size - 1) >> 30; g++) {
        u64 *e4 = &pml4[(g >> 9) & 511];
        if (!(*e4 & 1)) {
            u64 *t = page_alloc(4096, 4096);
            if (!t)
                return -1;
            memset(t, 0, 4096);
            *e4 = (u64)t | 0x7; /* P | RW | US */
        }
        u64 *pdpt = (u64 *)(*e4 & ~0xffful);
        pdpt[g & 511] = g << 30 | 0x9f; /* P | RW | US | PWT | PCD | PS */
    }
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) : : "memory");
    return 0;
}

/* ---- TSC ---- */

static u64 khz;

u64 tsc_khz(void)
{
    if (khz)
        return khz;
    u32 a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    u32 max = a;
    if (max >= 0x15) { /* SDM Vol. 3B 19.7.3: TSC = crystal * EBX / EAX */
        cpuid(0x15, &a, &b, &c, &d);
        if (a && b && c)
            khz = (u64)c * b / a / 1000;
    }
    if (!khz && max >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        khz = (u64)(a & 0xffff) * 1000;
    }
    if (!khz) { /* 50 ms of PIT against the TSC */
        u64 t0 = rdtsc();
        delay_ms(50);
        khz = (rdtsc() - t0) / 50;
    }
    return khz;
}

u64 tsc_ns(u64 ticks) { return ticks * 1000000 / tsc_khz(); }

/* ---- local APIC ---- */

static u64 lapic_base(void)
{
    static u64 base;
    if (!base)
        base = acpi_init() && acpi.lapic_addr ? acpi.lapic_addr : rdmsr(0x1b) & ~0xffful;
    return base;
}

u32 lapic_read(u32 reg) { return mmio_read32(lapic_base() + reg); }
void lapic_write(u32 reg, u32 v) { mmio_write32(lapic_base() + reg, v); }
u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_enable(void) { lapic_write(LAPIC_SVR, 0x100 | 0xff); }

/* ---- application processors ---- */

struct cpu *cpus[MAX_CPUS];
unsigned nr_cpus_started = 1;
static ap_fn ap_job;

void ap_main(struct cpu *c)
{
    idt_load();
    __asm__ volatile("ltr %w0" : : "r"(0x28));
    lapic_enable();
    c->apic_id = lapic_id();
    __atomic_store_n(&c->started, 1, __ATOMIC_RELEASE);
    ap_job(c);
}

static void icr(u32 apic, u32 lo)
{
    lapic_write(LAPIC_ICR_HI, apic << 24);
    lapic_write(LAPIC_ICR_LO, lo);
    for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & (1u << 12)); i++) /* delivery status */
        pause();
}

#define ICR_INIT 0x4500    /* delivery mode INIT, level assert */
#define ICR_STARTUP 0x4600 /* delivery mode Start-Up */

static struct cpu *new_cpu(unsigned index, u32 apic)
{
    struct cpu *c = page_alloc(KSTACK_SIZE, KSTACK_SIZE);
    u8 *ustack = page_alloc(KSTACK_SIZE, 16);
    if (!c || !ustack)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->index = index;
    c->apic_id = apic;
    c->tss = c->tss_mem;
    *(u16 *)(c->tss_mem + 102) = 104; /* I/O map base beyond the limit: no bitmap */
    c->user_stack_top = (u64)ustack + KSTACK_SIZE;
    memcpy(c->gdt, gdt, 5 * 8);
    tss_descriptor(c->gdt, c->tss_mem);
    return c;
}

static int tramp_ready;

int smp_start(u32 apic, ap_fn fn)
{
    acpi_init();
    lapic_enable();
    struct cpu *bsp = this_cpu();
    if (!tramp_ready) {
        bsp->apic_id = lapic_id();
        cpus[0] = bsp;
        u64 tlen = (u64)(ap_tramp_end - ap_tramp_start);
        memcpy((void *)SMP_TRAMPOLINE, ap_tramp_start, tlen);
        *(u64 *)(SMP_TRAMPOLINE + (ap_tramp_cr3 - ap_tramp_start)) = (u64)pml4;
        tramp_ready = 1;
    }
    ap_job = fn;
    if (nr_cpus_started >= MAX_CPUS)
        return -1;
    struct cpu *c = new_cpu(nr_cpus_started, apic);
    if (!c)
        return -1;
    *(u64 *)(SMP_TRAMPOLINE + (ap_tramp_stack - ap_tramp_start)) = (u64)c + KSTACK_SIZE;
    cpus[nr_cpus_started] = c;
    /* SDM Vol. 3A 8.4.4.1: INIT, 10 ms, SIPI, 200 us, SIPI (ignored once it runs). */
    icr(apic, ICR_INIT);
    delay_ms(10);
    icr(apic, ICR_STARTUP | (SMP_TRAMPOLINE >> 12));
    delay_ms(1);
    if (!c->started)
        icr(apic, ICR_STARTUP | (SMP_TRAMPOLINE >> 12));
    if (!wait_flag(&c->started, 1000)) {
        printf("cpu %u (apic %u): no response to INIT/SIPI\n", nr_cpus_started, apic);
        cpus[nr_cpus_started] = NULL;
        return -1;
    }
    return (int)nr_cpus_started++;
}

unsigned smp_boot(ap_fn fn)
{
    acpi_init();
    lapic_enable();
    u32 bsp = lapic_id();
    this_cpu()->apic_id = bsp;
    cpus[0] = this_cpu();
    unsigned n = acpi.nr_cpus < MAX_CPUS ? acpi.nr_cpus : MAX_CPUS;
    for (unsigned i = 0; i < n; i++) {
        if (acpi.apic_ids[i] == bsp)
            continue;
        if (smp_start(acpi.apic_ids[i], fn) < 0 && nr_cpus_started >= MAX_CPUS)
            break;
    }
    return nr_cpus_started - 1;
}
