/*
 * xen32: a 32-bit protected-mode Xen guest (PVH, never in long mode), exercising Xen's
 * compat ABI (xen/include/public with xen_ulong_t, xen_pfn_t and handles 32 bits, uint64_t
 * members 4-byte aligned: the headers as an i386 compiler lays them out) and the 32-bit
 * shared_info/vcpu_info that Xen latches at HVM_PARAM_CALLBACK_IRQ:
 *
 *   discovery (CPUID leaves, the hypercall page MSR), xen_version (version, capabilities
 *   with hvm-3.0-x86_32, platform_parameters' 4-byte virt_start), console_io; XENMEM
 *   add_to_physmap(shared_info) in its 16-byte layout, memory_map, current_reservation;
 *   events: the upcall vector through HVM_PARAM_CALLBACK_IRQ, 2-level delivery in the 32-bit
 *   shared_info (32 words of 32 bits, a 32-bit selector), bind_ipi, a loopback pair both
 *   ways, mask/unmask, VIRQ_TIMER from a singleshot timer (12-byte layout), SCHEDOP_poll
 *   (16-byte layout) timing out on a masked port; grants: a grant frame, setup_table with
 *   32-bit frame numbers, query_size, GNTTABOP_copy (24-byte layout), map_grant_ref of our
 *   own grant at GFN 0x80000 and unmap; XenStore over the ring (read domid, write and read
 *   back); a multicall of 32-byte entries; the runstate area in its 44-byte layout.
 *
 * Command line: paging=none|pse|pae (none): the same checks with paging off, 4 MiB PSE
 * pages or PAE, each identity-mapping the 4 GiB.
 * Expected: one "ok"/"FAIL" line per check, then RESULT: PASS xen32 paging=<mode>.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed short i16;
typedef int i32;
typedef u32 uptr;
_Static_assert(sizeof(void *) == 4, "a 32-bit guest");

/* ---- ports, CPU ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
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
static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
#define barrier() __asm__ volatile("" ::: "memory")

/* ---- console: COM1 and the debug port, a small printf ---- */
#define COM1 0x3f8
static void putc_(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, (u8)c);
    outb(0xe9, (u8)c);
}
static void puts_(const char *s)
{
    while (*s) {
        if (*s == '\n')
            putc_('\r');
        putc_(*s++);
    }
}
static u32 slen(const char *s)
{
    u32 n = 0;
    while (s[n])
        n++;
    return n;
}
static int scmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}
static int sncmp(const char *a, const char *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (a[i] != b[i] || !a[i])
            return a[i] - b[i];
    return 0;
}
static void *mset(void *p, int c, u32 n)
{
    for (u32 i = 0; i < n; i++)
        ((u8 *)p)[i] = (u8)c;
    return p;
}
static void mcpy(void *d, const void *s, u32 n)
{
    for (u32 i = 0; i < n; i++)
        ((u8 *)d)[i] = ((const u8 *)s)[i];
}
/* What the compiler may call for struct copies and initialisers. */
void *memset(void *p, int c, u32 n);
void *memset(void *p, int c, u32 n) { return mset(p, c, n); }
void *memcpy(void *d, const void *s, u32 n);
void *memcpy(void *d, const void *s, u32 n)
{
    mcpy(d, s, n);
    return d;
}
static int has(const char *hay, const char *needle)
{
    u32 n = slen(needle);
    for (; *hay; hay++)
        if (!sncmp(hay, needle, n))
            return 1;
    return 0;
}

/* %s %c %d %u %x, and %X for a u64 in hex (no 64-bit division in a freestanding 32-bit build). */
static void vfmt(char *out, u32 cap, const char *f, __builtin_va_list ap)
{
    u32 n = 0;
#define PUT(ch) do { if (n + 1 < cap) out[n++] = (ch); } while (0)
    for (; *f; f++) {
        if (*f != '%') {
            PUT(*f);
            continue;
        }
        char k = *++f;
        char buf[24];
        int len = 0;
        if (k == 's') {
            const char *s = __builtin_va_arg(ap, const char *);
            while (s && *s)
                PUT(*s++);
            continue;
        }
        if (k == 'c') {
            PUT((char)__builtin_va_arg(ap, int));
            continue;
        }
        if (k == 'd' || k == 'u') {
            u32 v;
            if (k == 'd') {
                i32 s = __builtin_va_arg(ap, i32);
                if (s < 0)
                    PUT('-');
                v = s < 0 ? (u32)-s : (u32)s;
            } else {
                v = __builtin_va_arg(ap, u32);
            }
            do
                buf[len++] = (char)('0' + v % 10);
            while ((v /= 10));
        } else if (k == 'x' || k == 'X') {
            u64 v = k == 'X' ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32);
            do
                buf[len++] = "0123456789abcdef"[v & 15];
            while ((v >>= 4));
        } else {
            PUT(k);
            continue;
        }
        while (len)
            PUT(buf[--len]);
    }
    out[n] = 0;
#undef PUT
}
static void fmt(char *out, u32 cap, const char *f, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, f);
    vfmt(out, cap, f, ap);
    __builtin_va_end(ap);
}
static void printf_(const char *f, ...)
{
    char line[256];
    __builtin_va_list ap;
    __builtin_va_start(ap, f);
    vfmt(line, sizeof(line), f, ap);
    __builtin_va_end(ap);
    puts_(line);
}
static int failures;
static int check(int ok, const char *f, ...)
{
    char line[200];
    __builtin_va_list ap;
    __builtin_va_start(ap, f);
    vfmt(line, sizeof(line), f, ap);
    __builtin_va_end(ap);
    printf_("%s %s\n", ok ? "ok" : "FAIL", line);
    failures += !ok;
    return ok;
}

/* ---- Xen: public headers as an i386 compiler lays them out ---- */
#define HYPERVISOR_memory_op 12
#define HYPERVISOR_multicall 13
#define HYPERVISOR_xen_version 17
#define HYPERVISOR_console_io 18
#define HYPERVISOR_grant_table_op 20
#define HYPERVISOR_vcpu_op 24
#define HYPERVISOR_sched_op 29
#define HYPERVISOR_event_channel_op 32
#define HYPERVISOR_hvm_op 34
#define DOMID_SELF 0x7ff0
#define XEN_EINVAL 22
struct xen_add_to_physmap { u16 domid, size; u32 space; u32 idx; u32 gpfn; };
struct xen_memory_map { u32 nr_entries; u32 buffer; };
struct e820entry { u64 addr, size; u32 type; } __attribute__((packed));
struct xen_hvm_param { u16 domid; u32 index; u64 value; } __attribute__((aligned(4)));
struct xen_hvm_get_time { u64 now; } __attribute__((aligned(4)));
struct vcpu_set_singleshot_timer { u64 timeout_abs_ns; u32 flags; } __attribute__((packed, aligned(4)));
struct vcpu_runstate_info { i32 state; u64 state_entry_time; u64 time[4]; } __attribute__((packed, aligned(4)));
struct sched_poll { u32 ports; u32 nr_ports; u64 timeout; } __attribute__((packed, aligned(4)));
struct sched_shutdown { u32 reason; };
struct evtchn_alloc_unbound { u16 dom, remote_dom; u32 port; };
struct evtchn_bind_interdomain { u16 remote_dom; u32 remote_port, local_port; };
struct evtchn_bind_virq { u32 virq, vcpu, port; };
struct evtchn_bind_ipi { u32 vcpu, port; };
struct gnttab_setup_table { u16 dom; u32 nr_frames; i16 status; u32 frame_list; };
struct gnttab_query_size { u16 dom; u32 nr_frames, max_nr_frames; i16 status; };
struct gnttab_copy_ptr { u32 u; u16 domid, offset; };
struct gnttab_copy { struct gnttab_copy_ptr source, dest; u16 len, flags; i16 status; };
struct gnttab_map_grant_ref { u64 host_addr; u32 flags, ref; u16 dom; i16 status; u32 handle; u64 dev_bus_addr; }
    __attribute__((packed, aligned(4)));
struct gnttab_unmap_grant_ref { u64 host_addr, dev_bus_addr; u32 handle; i16 status; } __attribute__((aligned(4)));
struct grant_entry_v1 { u16 flags, domid; u32 frame; };
struct multicall_entry { u32 op, result, args[6]; };
struct vcpu_info32 { u8 pending, mask; u16 pad; u32 sel; u32 cr2, arch_pad[5]; u8 time[32]; };
struct shared_info32 {
    struct vcpu_info32 vcpu[32];
    u32 pending[32], mask[32];
    u32 wc_version, wc_sec, wc_nsec;
    u32 arch[7]; /* max_pfn .. p2m_generation, wc_sec_hi */
};
/* The i386 sizes (the same numbers tests/unit/test_compat.py checks the host against). */
_Static_assert(sizeof(struct xen_add_to_physmap) == 16, "memory.h");
_Static_assert(sizeof(struct xen_hvm_param) == 16, "hvm_op.h");
_Static_assert(sizeof(struct vcpu_set_singleshot_timer) == 12, "vcpu.h");
_Static_assert(sizeof(struct vcpu_runstate_info) == 44, "vcpu.h");
_Static_assert(sizeof(struct sched_poll) == 16, "sched.h");
_Static_assert(sizeof(struct gnttab_setup_table) == 16, "grant_table.h");
_Static_assert(sizeof(struct gnttab_copy) == 24, "grant_table.h");
_Static_assert(sizeof(struct gnttab_map_grant_ref) == 32, "grant_table.h");
_Static_assert(sizeof(struct gnttab_unmap_grant_ref) == 24, "grant_table.h");
_Static_assert(sizeof(struct multicall_entry) == 32, "xen.h");
_Static_assert(sizeof(struct vcpu_info32) == 64, "xen.h");
_Static_assert(sizeof(struct shared_info32) == 2344, "xen.h");

/* ---- the hypercall page: the 32-bit convention, ebx ecx edx esi edi -> eax ---- */
static u8 hypercall_page[4096] __attribute__((aligned(4096)));
static long hcall(u32 nr, u32 a1, u32 a2, u32 a3, u32 a4, u32 a5)
{
    long r;
    uptr entry = (uptr)hypercall_page + nr * 32;
    __asm__ volatile("call *%[e]"
                     : "=a"(r), "+b"(a1), "+c"(a2), "+d"(a3), "+S"(a4), "+D"(a5)
                     : [e] "m"(entry)
                     : "memory", "cc");
    return r;
}
#define H2(nr, a, b) hcall(nr, (u32)(a), (u32)(b), 0, 0, 0)
#define H3(nr, a, b, c) hcall(nr, (u32)(a), (u32)(b), (u32)(c), 0, 0)
static long evtchn_op(u32 cmd, void *arg) { return H2(HYPERVISOR_event_channel_op, cmd, arg); }
static long send(u32 port) { return evtchn_op(4, &port); }
static u64 now_ns(void)
{
    struct xen_hvm_get_time t = {0};
    H2(HYPERVISOR_hvm_op, 10 /* HVMOP_get_time */, &t);
    return t.now;
}
static void shutdown_(u32 reason)
{
    struct sched_shutdown s = {reason};
    H2(HYPERVISOR_sched_op, 2, &s);
}
__attribute__((noreturn)) static void finish(const char *mode)
{
    printf_("RESULT: %s xen32 paging=%s%s\n", failures ? "FAIL" : "PASS", mode, failures ? " (see FAIL lines)" : "");
    shutdown_(0);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- interrupts: an IDT of 32-bit gates, the local APIC (xAPIC MMIO) ---- */
struct frame32 { u32 edi, esi, ebp, esp, ebx, edx, ecx, eax, vector, error, eip, cs, eflags; };
struct gate { u16 lo, sel; u8 zero, type; u16 hi; };
static struct gate idt[256] __attribute__((aligned(8)));
extern const u32 isr_table[32], isr_upcall;
#define UPCALL_VECTOR 62
#define LAPIC 0xfee00000u
static volatile u32 upcalls;
static volatile int count[1024];
static volatile struct shared_info32 *si;
static const char *mode = "none";

static void set_gate(int v, u32 fn) { idt[v] = (struct gate){(u16)fn, 0x08, 0, 0x8e, (u16)(fn >> 16)}; }
static void lapic_w(u32 reg, u32 v) { *(volatile u32 *)(LAPIC + reg) = v; }

/* 2-level on the 32-bit shared_info (xen.h; Linux events_2l.c): clear upcall_pending, take
 * the 32-bit selector, then each selected word's pending-and-unmasked bits. */
static void upcall(void)
{
    volatile struct vcpu_info32 *v = &si->vcpu[0];
    upcalls++;
    while (v->pending) {
        v->pending = 0;
        u32 sel = __atomic_exchange_n(&v->sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            u32 w = (u32)__builtin_ctz(sel);
            sel &= sel - 1;
            u32 bits = si->pending[w] & ~si->mask[w];
            while (bits) {
                u32 b = (u32)__builtin_ctz(bits);
                bits &= bits - 1;
                __atomic_fetch_and(&si->pending[w], ~(1u << b), __ATOMIC_SEQ_CST);
                count[w * 32 + b]++;
            }
        }
    }
}

void trap32(struct frame32 *f);
void trap32(struct frame32 *f)
{
    if (f->vector == UPCALL_VECTOR) {
        upcall();
        lapic_w(0xb0, 0); /* EOI */
        return;
    }
    printf_("EXCEPTION vector %u error 0x%x at EIP 0x%x\n", f->vector, f->error, f->eip);
    printf_("RESULT: FAIL xen32 exception\n");
    shutdown_(3);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void interrupts_init(void)
{
    for (int v = 0; v < 32; v++)
        set_gate(v, isr_table[v]);
    set_gate(UPCALL_VECTOR, isr_upcall);
    struct { u16 limit; u32 base; } __attribute__((packed)) d = {sizeof(idt) - 1, (u32)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
    outb(0x21, 0xff); /* the 8259s masked: the upcall comes through the local APIC */
    outb(0xa1, 0xff);
    lapic_w(0xf0, 0x1ff); /* SVR: enabled, spurious vector 0xff */
    lapic_w(0x80, 0);     /* TPR: accept everything */
}

/* Wait for count[port] > seen with interrupts on: SCHEDOP_poll (bounded) on the port. */
static int wait_event(u32 port, int seen, u32 ms)
{
    u32 p = port;
    for (u32 waited = 0; waited <= ms; waited += 10) {
        __asm__ volatile("sti; nop; cli" ::: "memory");
        if (count[port] > seen)
            return 1;
        struct sched_poll poll = {(u32)&p, 1, now_ns() + 10000000ull};
        __asm__ volatile("sti" ::: "memory");
        H2(HYPERVISOR_sched_op, 3, &poll);
        __asm__ volatile("cli" ::: "memory");
    }
    return count[port] > seen;
}

/* ---- paging: identity maps of the 4 GiB ---- */
static u32 pse_pd[1024] __attribute__((aligned(4096)));
static u64 pae_pdpt[4] __attribute__((aligned(32)));
static u64 pae_pd[4][512] __attribute__((aligned(4096)));
static void paging_on(const char *how)
{
    u32 cr4, cr3;
    if (!scmp(how, "pse")) {
        for (u32 i = 0; i < 1024; i++)
            pse_pd[i] = (i << 22) | 0x83; /* P | RW | PS: 4 MiB pages (SDM Vol. 3A 4.3) */
        cr3 = (u32)pse_pd;
        cr4 = 1u << 4; /* CR4.PSE */
    } else if (!scmp(how, "pae")) {
        for (u32 i = 0; i < 4; i++) {
            for (u32 j = 0; j < 512; j++)
                pae_pd[i][j] = ((u64)i << 30 | (u64)j << 21) | 0x83; /* 2 MiB pages (4.4) */
            pae_pdpt[i] = (u32)pae_pd[i] | 1;
        }
        cr3 = (u32)pae_pdpt;
        cr4 = 1u << 5; /* CR4.PAE */
    } else {
        return;
    }
    u32 cr0;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr0));
    cr0 |= cr4;
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr0));
    __asm__ volatile("mov %0, %%cr3" ::"r"(cr3));
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 |= 1u << 31; /* CR0.PG */
    __asm__ volatile("mov %0, %%cr0; jmp 1f; 1:" ::"r"(cr0) : "memory");
}

/* ---- XenStore on the ring (io/xs_wire.h) ---- */
struct xs_ring { char req[1024], rsp[1024]; u32 req_cons, req_prod, rsp_cons, rsp_prod; };
static volatile struct xs_ring *xs;
static u32 xs_port;
static long xs_call(u32 type, const char *a, const char *b, char *out, u32 cap)
{
    u32 la = slen(a) + 1, lb = b ? slen(b) : 0;
    u32 hdr[4] = {type, 7, 0, la + lb};
    u8 msg[256];
    if (16 + la + lb > sizeof(msg))
        return -1;
    mcpy(msg, hdr, 16);
    mcpy(msg + 16, a, la);
    if (b)
        mcpy(msg + 16 + la, b, lb);
    u32 prod = xs->req_prod;
    for (u32 i = 0; i < 16 + la + lb; i++)
        xs->req[(prod + i) & 1023] = (char)msg[i];
    barrier();
    xs->req_prod = prod + 16 + la + lb;
    send(xs_port);
    u32 got = 0, want = 16;
    u8 rsp[272];
    for (u32 spins = 0; got < want && spins < 2000000; spins++) {
        if (xs->rsp_cons == xs->rsp_prod) {
            H2(HYPERVISOR_sched_op, 0 /* yield */, 0);
            continue;
        }
        barrier();
        rsp[got++] = (u8)xs->rsp[xs->rsp_cons & 1023];
        barrier();
        xs->rsp_cons = xs->rsp_cons + 1;
        if (got == 16) {
            u32 len;
            mcpy(&len, rsp + 12, 4);
            want = 16 + (len < 255 ? len : 255);
        }
    }
    send(xs_port);
    if (got < want)
        return -1;
    u32 rtype, len = want - 16;
    mcpy(&rtype, rsp, 4);
    if (out) {
        u32 n = len < cap - 1 ? len : cap - 1;
        mcpy(out, rsp + 16, n);
        out[n] = 0;
    }
    return rtype == 16 /* XS_ERROR */ ? -2 : (long)len;
}

/* ---- the checks ---- */
static u8 si_page[4096] __attribute__((aligned(4096)));
static u8 gnt_page[4096] __attribute__((aligned(4096)));
static u8 data_page[4096] __attribute__((aligned(4096)));
static u8 copy_page[4096] __attribute__((aligned(4096)));
static u32 frames[4];
static struct e820entry map[16];
static u8 runstate[64];
#define MAP_GFN 0x80000u /* 2 GiB: above RAM, below the MMIO hole */

static u32 xen_base;
static int discover(void)
{
    u32 a, b, c, d;
    for (u32 base = 0x40000000; base < 0x40010000; base += 0x100) {
        cpuid(base, &a, &b, &c, &d);
        if (b == 0x566e6558 && c == 0x65584d4d && d == 0x4d4d566e && a >= base + 2) {
            xen_base = base;
            break;
        }
    }
    if (!check(xen_base != 0, "CPUID: Xen signature at 0x%x", xen_base))
        return 0;
    cpuid(xen_base + 2, &a, &b, &c, &d);
    wrmsr(b, (u32)hypercall_page);
    long v = H2(HYPERVISOR_xen_version, 0, 0);
    check(v > 0, "hypercall page via MSR 0x%x; xen_version %d.%d", b, (int)(v >> 16), (int)(v & 0xffff));
    return 1;
}

static void version_and_console(void)
{
    static char caps[1024];
    long rc = H2(HYPERVISOR_xen_version, 3 /* capabilities */, caps);
    check(rc == 0 && has(caps, "hvm-3.0-x86_32"), "XENVER_capabilities \"%s\"", caps);
    u32 pp[2] = {0x11111111, 0x22222222};
    rc = H2(HYPERVISOR_xen_version, 5 /* platform_parameters */, pp);
    check(rc == 0 && pp[1] == 0x22222222, "platform_parameters: a 4-byte virt_start 0x%x", pp[0]);
    const char *hello = "hello from a 32-bit guest";
    rc = H3(HYPERVISOR_console_io, 0, slen(hello), hello);
    check(rc == 0, "console_io write rc %d", (int)rc);
}

static void memory(void)
{
    struct xen_add_to_physmap x = {DOMID_SELF, 0, 0 /* shared_info */, 0, (u32)si_page >> 12};
    long rc = H2(HYPERVISOR_memory_op, 7, &x);
    check(rc == 0, "XENMEM_add_to_physmap(shared_info), 16-byte layout: rc %d", (int)rc);
    si = (volatile struct shared_info32 *)si_page;
    struct xen_memory_map mm = {16, (u32)map};
    rc = H2(HYPERVISOR_memory_op, 9, &mm);
    check(rc == 0 && mm.nr_entries > 0 && map[0].type == 1, "XENMEM_memory_map: %u entries, first 0x%X+0x%X",
          mm.nr_entries, map[0].addr, map[0].size);
    u16 dom = DOMID_SELF;
    rc = H2(HYPERVISOR_memory_op, 3, &dom);
    check(rc > 0, "XENMEM_current_reservation %d pages", (int)rc);
}

static void events(void)
{
    struct xen_hvm_param p = {DOMID_SELF, 0 /* CALLBACK_IRQ */, (u64)2 << 56 | UPCALL_VECTOR};
    long rc = H2(HYPERVISOR_hvm_op, 0, &p);
    /* Latched 32-bit: the wallclock lands at the i386 offsets (wc_sec at 2308). */
    check(rc == 0 && si->wc_sec > 1600000000u, "HVM_PARAM_CALLBACK_IRQ rc %d; 32-bit shared_info wc_sec %u", (int)rc,
          si->wc_sec);
    si->vcpu[0].mask = 0;
    struct evtchn_bind_ipi ipi = {0, 0};
    rc = evtchn_op(7, &ipi);
    u32 port = ipi.port;
    if (!check(rc == 0 && port > 0 && port < 1024, "bind_ipi -> port %u", port))
        return;
    rc = send(port);
    int got = wait_event(port, 0, 2000);
    check(rc == 0 && got, "IPI port %u through the upcall (%u upcall(s))", port, upcalls);

    struct evtchn_alloc_unbound au = {DOMID_SELF, DOMID_SELF, 0};
    rc = evtchn_op(6, &au);
    struct evtchn_bind_interdomain bi = {DOMID_SELF, au.port, 0};
    long rc2 = evtchn_op(0, &bi);
    u32 a = au.port, b = bi.local_port;
    check(rc == 0 && rc2 == 0 && a && b, "loopback pair %u <-> %u", a, b);
    int ca = count[a], cb = count[b];
    send(b);
    int ok_a = wait_event(a, ca, 2000);
    send(a);
    int ok_b = wait_event(b, cb, 2000);
    check(ok_a && ok_b, "sends both ways");

    /* Masked: pending stays in the 32-bit bitmap; SCHEDOP_poll still sees it. */
    __atomic_fetch_or(&si->mask[a / 32], 1u << (a % 32), __ATOMIC_SEQ_CST);
    ca = count[a];
    send(b);
    int arrived = wait_event(a, ca, 100);
    check(!arrived && (si->pending[a / 32] >> (a % 32) & 1), "masked port %u: pending bit in word %u", a, a / 32);
    rc = evtchn_op(9 /* unmask: clears the mask bit, passes a pending event on */, &a);
    check(rc == 0 && !(si->mask[a / 32] >> (a % 32) & 1) && wait_event(a, ca, 2000), "EVTCHNOP_unmask delivers it");

    /* SCHEDOP_poll (16-byte layout) on a port nothing raises: returns at its timeout. */
    u32 quiet = a;
    __atomic_fetch_or(&si->mask[a / 32], 1u << (a % 32), __ATOMIC_SEQ_CST);
    u64 t0 = now_ns();
    struct sched_poll poll = {(u32)&quiet, 1, t0 + 30000000ull};
    rc = H2(HYPERVISOR_sched_op, 3, &poll);
    u64 t1 = now_ns();
    check(rc == 0 && t1 - t0 >= 25000000ull, "SCHEDOP_poll timed out after 0x%X ns", t1 - t0);
    __atomic_fetch_and(&si->mask[a / 32], ~(1u << (a % 32)), __ATOMIC_SEQ_CST);

    struct evtchn_bind_virq bv = {0 /* VIRQ_TIMER */, 0, 0};
    rc = evtchn_op(1, &bv);
    struct vcpu_set_singleshot_timer t = {now_ns() + 5000000ull, 0};
    rc2 = H3(HYPERVISOR_vcpu_op, 8, 0, &t);
    check(rc == 0 && rc2 == 0 && wait_event(bv.port, 0, 2000), "VIRQ_TIMER port %u from a 12-byte singleshot timer",
          bv.port);
}

static void grants(u16 me)
{
    struct xen_add_to_physmap x = {DOMID_SELF, 0, 1 /* grant_table */, 0, (u32)gnt_page >> 12};
    long rc = H2(HYPERVISOR_memory_op, 7, &x);
    check(rc == 0, "grant frame 0 at gfn 0x%x rc %d", (u32)gnt_page >> 12, (int)rc);
    frames[2] = 0x5a5a5a5a;
    struct gnttab_setup_table st = {DOMID_SELF, 2, 99, (u32)frames};
    rc = H3(HYPERVISOR_grant_table_op, 2, &st, 1);
    check(rc == 0 && st.status == 0 && frames[0] == (u32)gnt_page >> 12 && frames[1] == 0xffffffffu &&
              frames[2] == 0x5a5a5a5a,
          "setup_table: 32-bit frames 0x%x 0x%x", frames[0], frames[1]);
    struct gnttab_query_size qs = {DOMID_SELF, 0, 0, 99};
    rc = H3(HYPERVISOR_grant_table_op, 6, &qs, 1);
    check(rc == 0 && qs.status == 0 && qs.nr_frames >= 2, "query_size %u of %u", qs.nr_frames, qs.max_nr_frames);

    volatile struct grant_entry_v1 *g = (volatile struct grant_entry_v1 *)gnt_page;
    fmt((char *)data_page, 64, "granted by a 32-bit domain %u", me);
    g[9].domid = me;
    g[9].frame = (u32)data_page >> 12;
    barrier();
    g[9].flags = 1; /* GTF_permit_access */
    struct gnttab_copy c;
    mset(&c, 0, sizeof(c));
    c.source.u = 9;
    c.source.domid = DOMID_SELF;
    c.dest.u = (u32)copy_page >> 12;
    c.dest.domid = DOMID_SELF;
    c.len = 64;
    c.flags = 1; /* GNTCOPY_source_gref */
    c.status = 99;
    rc = H3(HYPERVISOR_grant_table_op, 5, &c, 1);
    check(rc == 0 && c.status == 0 && !scmp((char *)copy_page, (char *)data_page),
          "GNTTABOP_copy (24-byte layout) status %d: \"%s\"", c.status, (char *)copy_page);

    struct gnttab_map_grant_ref m = {(u64)MAP_GFN << 12, 1u << 1 /* host_map */, 9, DOMID_SELF, 99, 0, 0};
    rc = H3(HYPERVISOR_grant_table_op, 0, &m, 1);
    int mapped = rc == 0 && m.status == 0;
    check(mapped && (g[9].flags & 0x18) == 0x18, "map_grant_ref of our gref 9 at 0x%x: status %d flags 0x%x",
          MAP_GFN << 12, m.status, g[9].flags);
    if (mapped) {
        volatile char *view = (volatile char *)(MAP_GFN << 12);
        view[100] = 'Z';
        check(data_page[100] == 'Z' && view[0] == 'g', "the mapping is the granted page");
        struct gnttab_unmap_grant_ref u = {(u64)MAP_GFN << 12, 0, m.handle, 99};
        rc = H3(HYPERVISOR_grant_table_op, 1, &u, 1);
        check(rc == 0 && u.status == 0 && !(g[9].flags & 0x18), "unmap_grant_ref status %d", u.status);
    }
}

static void xenstore(u16 me)
{
    struct xen_hvm_param p = {DOMID_SELF, 1 /* STORE_PFN */, 0};
    long rc = H2(HYPERVISOR_hvm_op, 1, &p);
    struct xen_hvm_param e = {DOMID_SELF, 2 /* STORE_EVTCHN */, 0};
    long rc2 = H2(HYPERVISOR_hvm_op, 1, &e);
    if (!check(rc == 0 && rc2 == 0 && p.value, "XenStore ring at pfn 0x%X, port %u", p.value, (u32)e.value))
        return;
    xs = (volatile struct xs_ring *)(uptr)(p.value << 12);
    xs_port = (u32)e.value;
    char out[64];
    long n = xs_call(2 /* XS_READ */, "domid", 0, out, sizeof(out));
    char want[16];
    fmt(want, sizeof(want), "%u", me);
    check(n > 0 && !scmp(out, want), "XS_READ domid = \"%s\"", n > 0 ? out : "?");
    n = xs_call(11 /* XS_WRITE */, "data/xen32", "written in 32-bit mode", 0, 0);
    long m = xs_call(2, "data/xen32", 0, out, sizeof(out));
    check(n >= 0 && m > 0 && !scmp(out, "written in 32-bit mode"), "XS_WRITE then XS_READ data/xen32 = \"%s\"",
          m > 0 ? out : "?");
}

static void multicall_and_runstate(void)
{
    static struct multicall_entry mc[2];
    mset(mc, 0, sizeof(mc));
    mc[0].op = HYPERVISOR_xen_version;
    mc[1].op = HYPERVISOR_xen_version;
    mc[1].args[0] = 7; /* XENVER_pagesize */
    long rc = H2(HYPERVISOR_multicall, mc, 2);
    check(rc == 0 && mc[0].result == (4u << 16 | 11) && mc[1].result == 4096,
          "multicall of two 32-byte entries: 0x%x, %u", mc[0].result, mc[1].result);
    mset(runstate, 0xa5, sizeof(runstate));
    u64 addr = (u32)runstate;
    rc = H3(HYPERVISOR_vcpu_op, 5 /* register_runstate_memory_area */, 0, &addr);
    struct vcpu_runstate_info *r = (struct vcpu_runstate_info *)runstate;
    check(rc == 0 && r->state == 0 && runstate[44] == 0xa5, "runstate area: 44 bytes, state %d", r->state);
}

void main32(u32 start_info);
void main32(u32 start_info)
{
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0x07);
    const char *cmdline = (const char *)(uptr) * (volatile u64 *)(start_info + 24);
    if (cmdline && has(cmdline, "paging=pse"))
        mode = "pse";
    else if (cmdline && has(cmdline, "paging=pae"))
        mode = "pae";
    printf_("xenopus test guest: xen32 (32-bit protected mode, paging %s)\n", mode);
    interrupts_init(); /* first: an exception while paging is switched on gets reported */
    paging_on(mode);
    if (!discover()) {
        printf_("RESULT: FAIL xen32 no-xen\n");
        /* No Xen to shut us down: a triple fault (an empty IDT) ends the run, as the kit's
         * last resort does; under QEMU -no-reboot makes that an exit. */
        struct { u16 limit; u32 base; } __attribute__((packed)) none = {0, 0};
        __asm__ volatile("lidt %0; int3" ::"m"(none));
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    u32 a, b, c, d;
    cpuid(xen_base + 4, &a, &b, &c, &d);
    u16 me = (u16)c;
    printf_("domid %u\n", me);
    version_and_console();
    memory();
    events();
    grants(me);
    xenstore(me);
    multicall_and_runstate();
    finish(mode);
}
