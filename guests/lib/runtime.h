/* The test-guest runtime: what every guest (guests/NAME.c) may call. See guests/README.md. */
#ifndef RUNTIME_H
#define RUNTIME_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)
#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Each guest names itself once: GUEST("hello"); and defines void guest_main(void). */
extern const char guest_name[];
#define GUEST(name) const char guest_name[] = name
void guest_main(void);

/* ---- port I/O and CPU helpers ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }

/* ---- strings ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
/* Parses decimal or 0x-hex; *end (if given) points past the digits. */
u64 strtou64(const char *s, const char **end);

/* ---- console: every byte to COM1 (\n sent as \r\n) and to port 0xE9 ---- */
void putchar(int c);
int puts(const char *s); /* appends \n */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* Prints exactly "RESULT: PASS <name>[ <detail>]" or "RESULT: FAIL ...". fmt may be "". */
void result(int pass, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* ACPI S5 power-off when the firmware tables describe one (platform.h), else i8042 reset
 * (port 0x64 <- 0xFE), then a triple fault for machines without an i8042. */
__attribute__((noreturn)) void shutdown(void);

/* ---- boot information, from hvm_start_info (PVH) or boot_params (Linux) ---- */
#define MEM_RAM 1
#define MEM_RESERVED 2
struct mem_range {
    u64 addr, size;
    u32 type; /* E820 / XEN_HVM_MEMMAP_TYPE_* numbering: 1 RAM, 2 reserved, 3 ACPI, ... */
};
#define MAX_MEM_RANGES 64
struct boot_info {
    const char *proto;   /* "pvh" or "linux" */
    const char *cmdline; /* never NULL ("" when none was given) */
    unsigned nr_mem;
    struct mem_range mem[MAX_MEM_RANGES];
    u64 ramdisk_addr, ramdisk_size; /* PVH: module 0; 0/0 when absent */
    unsigned nr_modules;
    u64 raw; /* physical address of the hvm_start_info / boot_params */
};
extern struct boot_info boot;
const char *mem_type_name(u32 type);
void print_memmap(void);
u64 ram_bytes(void); /* sum of the RAM entries */

/* "key=value" -> "value"; a bare "key" -> ""; absent -> NULL. The result is a static copy. */
const char *cmdline_get(const char *key);
u64 cmdline_u64(const char *key, u64 dflt);
int cmdline_has(const char *key);

/* ---- exceptions and interrupts ---- */
struct frame { /* what isr_common leaves on the stack, lowest address first */
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
typedef void (*trap_fn)(struct frame *f);
/* Let `fn` handle exception `vector` instead of the fatal default report. If fn returns,
 * execution resumes at f->rip (so it may advance it). */
void expect_exception(int vector, trap_fn fn);
const char *exception_name(int vector);
/* "EXCEPTION: #UD (vector 6) error 0x0 at RIP 0x... CPL 0" */
void print_exception(const struct frame *f);

typedef void (*irq_fn)(int irq);
/* Route ISA IRQ `irq` (8259 input) to fn and unmask it; the runtime sends the EOI. IRQ 0 is
 * used by wait_flag()/delay_ms(). The first call initialises the PICs. */
void irq_handler(int irq, irq_fn fn);
void irq_mask(int irq, int masked);
/* sti;hlt until *flag != 0 or `ms` milliseconds pass (PIT channel 0 one-shots); returns
 * *flag. Interrupts are off again on return. */
int wait_flag(volatile int *flag, unsigned ms);
void delay_ms(unsigned ms);

/* ---- ring 3 ---- */
#define USER_IOPL 1 /* ring-3 code may do port I/O (RFLAGS.IOPL = 3) */
/* Runs fn(arg) at CPL 3 on this CPU's user stack and returns its result (not reentrant on
 * one CPU; every CPU started by smp_boot has its own stacks and TSS). */
u64 run_user(u64 (*fn)(u64), u64 arg, unsigned flags);
/* From an exception handler that interrupted run_user's fn: abandon fn, and make run_user
 * return `result`. (Note: the build machines run ring 3 natively with IOPL forced to 0, so
 * USER_IOPL port I/O raises #GP there; guests that need it catch that and fall back.) */
__attribute__((noreturn)) void user_return(u64 result);

#endif
