/* IDT, exception reports, 8259 PIC interrupts and bounded waits (PIT one-shots). */
#include "platform.h"

extern u64 gdt[];                 /* head.S */
extern u8 tss[];
extern u8 boot_stack[], user_stack_top[];
extern const u64 isr_stubs[64];   /* 0-31 exceptions, 32-47 IRQ 0-15, 48-63 MSI */
extern char user_exit[];
extern void isr_spurious(void);

#define SEL_KCODE 0x08
#define SEL_TSS 0x28
#define IRQ_BASE 0x20
#define VEC_SPURIOUS 0xff

/* SDM Vol. 3A 6.14.1: 16-byte 64-bit interrupt gate. */
struct gate {
    u16 off0, sel;
    u8 ist, attr;
    u16 off1;
    u32 off2, zero;
};
static struct gate idt[256] __attribute__((aligned(16)));

static void set_gate(int vec, u64 fn, int dpl)
{
    idt[vec] = (struct gate){(u16)fn, SEL_KCODE, 0, (u8)(0x8e | dpl << 5), (u16)(fn >> 16),
                             (u32)(fn >> 32), 0};
}

/* head.S reaches these fields by offset. */
_Static_assert(__builtin_offsetof(struct cpu, saved_rsp) == 0, "CPU_SAVED_RSP");
_Static_assert(__builtin_offsetof(struct cpu, tss) == 8, "CPU_TSS");
_Static_assert(__builtin_offsetof(struct cpu, user_stack_top) == 16, "CPU_USTACK");
_Static_assert(__builtin_offsetof(struct cpu, gdt) == 32, "CPU_GDT");
_Static_assert(sizeof(struct cpu) < 1024, "struct cpu eats the stack");

void idt_load(void)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* SDM Vol. 3A 8.2.3: 16-byte TSS descriptor, type 9 (available 64-bit TSS), limit 103. */
void tss_descriptor(u64 *g, const u8 *t)
{
    u64 base = (u64)t;
    g[SEL_TSS / 8] = 103 | (base & 0xffffff) << 16 | 0x89ul << 40 | ((base >> 24) & 0xff) << 56;
    g[SEL_TSS / 8 + 1] = base >> 32;
}

void traps_init(void)
{
    for (int v = 0; v < 64; v++)
        set_gate(v, isr_stubs[v], 0);
    set_gate(VEC_SPURIOUS, (u64)isr_spurious, 0);
    idt_load();
    /* The 8259s masked (OCW1) before anything enables interrupts: firmware that ran before
     * us may have left them as the BIOS has them, IRQ 0 (its PIT tick) unmasked at vector 8.
     * QEMU -M pc's SeaBIOS does, before its PVH option ROM starts us: the first STI took the
     * tick as a #DF. pic_init remaps them when a guest first wants an IRQ. No PIC here: the
     * writes go nowhere. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    tss_descriptor(gdt, tss);
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
    /* The BSP's struct cpu (the boot stack is not in .bss: set every field run_user uses). */
    struct cpu *c = (struct cpu *)boot_stack;
    c->saved_rsp = 0;
    c->tss = tss;
    c->user_stack_top = (u64)user_stack_top;
    c->index = 0;
    c->apic_id = 0;
    c->started = 1;
}

/* ---- exceptions ---- */

static trap_fn expected[32];

void expect_exception(int vector, trap_fn fn) { expected[vector & 31] = fn; }

const char *exception_name(int v)
{
    /* SDM Vol. 3A Table 6-1. */
    static const char *const names[32] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF-CSO", "#TS",
        "#NP", "#SS", "#GP", "#PF", "#RSVD", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
        "#RSVD", "#RSVD", "#RSVD", "#RSVD", "#RSVD", "#RSVD", "#HV", "#VC", "#SX", "#RSVD"};
    return v >= 0 && v < 32 ? names[v] : "#?";
}

void print_exception(const struct frame *f)
{
    printf("EXCEPTION: %s (vector %lu) error 0x%lx at RIP 0x%lx CPL %lu\n",
           exception_name((int)f->vector), f->vector, f->error, f->rip, f->cs & 3);
    if (f->vector == 14) {
        u64 cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        printf("  CR2 0x%lx\n", cr2);
    }
}

/* ---- 8259A PICs (Intel 8259A datasheet: ICW1-ICW4, OCW1 masks, OCW2 EOI) ---- */

static irq_fn handlers[16];
static u16 irq_masks = 0xffff;
static int pic_ready;

static void pic_write_masks(void)
{
    u16 m = irq_masks;
    if ((m & 0xff00) != 0xff00)
        m &= ~(1u << 2); /* cascade input for the slave */
    outb(0x21, (u8)m);
    outb(0xa1, (u8)(m >> 8));
}

/* ICW1-ICW4: vectors IRQ_BASE.., every input masked but those irq_handler has set. */
static void pic_remap(void)
{
    outb(0x20, 0x11); /* ICW1: edge, cascade, ICW4 follows */
    outb(0xa0, 0x11);
    outb(0x21, IRQ_BASE);     /* ICW2: vector base */
    outb(0xa1, IRQ_BASE + 8);
    outb(0x21, 0x04);         /* ICW3: slave on IRQ2 */
    outb(0xa1, 0x02);
    outb(0x21, 0x01);         /* ICW4: 8086 mode */
    outb(0xa1, 0x01);
    pic_write_masks();
}

static void pic_init(void)
{
    pic_remap();
    /* The PIC reaches the CPU through LAPIC LINT0: program the MP-spec "virtual wire"
     * (SDM Vol. 3A 11.4.7: software-enable in SVR; LVT LINT0 = ExtINT, LINT1 = NMI). */
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1b));
    if (lo & (1u << 11)) {
        volatile u32 *apic = (volatile u32 *)(u64)(lo & 0xfffff000u);
        apic[0xf0 / 4] = 0x100 | VEC_SPURIOUS;
        apic[0x350 / 4] = 0x700;
        apic[0x360 / 4] = 0x400;
    }
    pic_ready = 1;
}

void irq_mask(int irq, int masked)
{
    if (!pic_ready)
        pic_init();
    if (masked)
        irq_masks |= 1u << irq;
    else
        irq_masks &= ~(1u << irq);
    pic_write_masks();
}

void irq_handler(int irq, irq_fn fn)
{
    handlers[irq & 15] = fn;
    irq_mask(irq & 15, fn == NULL);
}

static vec_fn vec_handlers[16];

void vector_handler(int vector, vec_fn fn) { vec_handlers[(vector - VEC_MSI_BASE) & 15] = fn; }

void trap_entry(struct frame *f)
{
    int v = (int)f->vector;
    if (v == 6 && f->rip == (u64)user_exit && (f->cs & 3) == 3)
        user_return(f->rdi); /* run_user's fn returned */
    if (v < 32) {
        if (expected[v]) {
            expected[v](f);
            return;
        }
        print_exception(f);
        result(0, guest_name, "exception");
        shutdown();
    }
    if (v >= VEC_MSI_BASE) { /* MSI / MSI-X through the LAPIC: EOI there (SDM Vol. 3A 11.8.5) */
        if (vec_handlers[v - VEC_MSI_BASE])
            vec_handlers[v - VEC_MSI_BASE](v);
        lapic_write(LAPIC_EOI, 0);
        return;
    }
    int irq = v - IRQ_BASE;
    if (handlers[irq])
        handlers[irq](irq);
    if (irq >= 8)
        outb(0xa0, 0x20); /* OCW2 non-specific EOI */
    outb(0x20, 0x20);
}

/* ---- bounded waits: PIT channel 0 in mode 0 (interrupt on terminal count), 8254 datasheet */

#define PIT_HZ 1193182
#define CHUNK_MS 50 /* 59659 counts: fits the 16-bit counter */
static volatile int pit_fired;

static void pit_irq(int irq)
{
    (void)irq;
    pit_fired = 1;
}

static void pit_arm(unsigned ms)
{
    u32 count = (u32)((u64)PIT_HZ * ms / 1000);
    pit_fired = 0;
    outb(0x43, 0x30); /* channel 0, lobyte/hibyte, mode 0, binary */
    outb(0x40, (u8)count);
    outb(0x40, (u8)(count >> 8));
}

int wait_flag(volatile int *flag, unsigned ms)
{
    irq_handler(0, pit_irq);
    unsigned left = ms;
    unsigned chunk = left < CHUNK_MS ? left : CHUNK_MS;
    pit_arm(chunk);
    for (;;) {
        cli();
        if (flag && *flag)
            break;
        if (pit_fired) {
            left -= chunk;
            if (!left)
                break;
            chunk = left < CHUNK_MS ? left : CHUNK_MS;
            pit_arm(chunk);
        }
        __asm__ volatile("sti; hlt" ::: "memory"); /* STI's shadow makes this atomic */
    }
    irq_handler(0, NULL);
    return flag ? *flag : 0;
}

void delay_ms(unsigned ms) { wait_flag(NULL, ms); }
