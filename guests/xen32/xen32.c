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
 *   back); the PV console ring (a line out, consumed by the backend); a multicall of 32-byte entries; the runstate area in its 44-byte layout;
 *   ballooning (decrease_reservation in its 20-byte layout, again: 0 extents, populate_physmap
 *   back); the pvclock time area; SCHEDOP_watchdog; vCPU 1 brought up from a 32-bit
 *   vcpu_hvm_context (initialise, up, its own down, up again, down); and last, FIFO event
 *   channels (init_control's checks, the switch, expand_array, an event linked at priority 3).
 *   Needs vcpus = 2.
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
struct xen_memory_reservation { u32 extent_start, nr_extents, extent_order, mem_flags; u16 domid; };
struct vcpu_time_info { u32 version, pad0; u64 tsc_timestamp, system_time; u32 mul; signed char shift; u8 flags, pad1[2]; }
    __attribute__((packed, aligned(4)));
struct sched_watchdog { u32 id, timeout; };
struct evtchn_init_control { u64 control_gfn; u32 offset, vcpu; u8 link_bits, pad[7]; } __attribute__((packed, aligned(4)));
struct evtchn_expand_array { u64 array_gfn; } __attribute__((packed, aligned(4)));
struct evtchn_set_priority { u32 port, priority; };
struct vcpu_hvm_x86_32 {
    u32 eax, ecx, edx, ebx, esp, ebp, esi, edi, eip, eflags, cr0, cr3, cr4, pad1;
    u64 efer;
    u32 cs_base, ds_base, ss_base, es_base, tr_base;
    u32 cs_limit, ds_limit, ss_limit, es_limit, tr_limit;
    u16 cs_ar, ds_ar, ss_ar, es_ar, tr_ar, pad2[3];
} __attribute__((packed, aligned(4)));
struct vcpu_hvm_context { u32 mode, pad; union { struct vcpu_hvm_x86_32 x86_32; u64 x86_64[14]; } regs; }
    __attribute__((packed, aligned(4)));
/* The i386 sizes (the same numbers tests/unit/test_compat.py checks the host against). */
_Static_assert(sizeof(struct xen_memory_reservation) == 20, "memory.h");
_Static_assert(sizeof(struct vcpu_time_info) == 32, "xen.h");
_Static_assert(sizeof(struct evtchn_init_control) == 24, "event_channel.h");
_Static_assert(sizeof(struct vcpu_hvm_x86_32) == 120, "hvm_vcpu.h");
_Static_assert(sizeof(struct vcpu_hvm_context) == 128, "hvm_vcpu.h");
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

/* XenStore's domid: checked against CPUID's where Xen gives it (`known`), else taken from
 * here (returned) for the checks that need our own domid. */
static u16 xenstore(u16 me, int known)
{
    struct xen_hvm_param p = {DOMID_SELF, 1 /* STORE_PFN */, 0};
    long rc = H2(HYPERVISOR_hvm_op, 1, &p);
    struct xen_hvm_param e = {DOMID_SELF, 2 /* STORE_EVTCHN */, 0};
    long rc2 = H2(HYPERVISOR_hvm_op, 1, &e);
    if (!check(rc == 0 && rc2 == 0 && p.value, "XenStore ring at pfn 0x%X, port %u", p.value, (u32)e.value))
        return me;
    xs = (volatile struct xs_ring *)(uptr)(p.value << 12);
    xs_port = (u32)e.value;
    char out[64];
    long n = xs_call(2 /* XS_READ */, "domid", 0, out, sizeof(out));
    u32 stored = 0;
    int digits = n > 0;
    for (long i = 0; i < n && out[i]; i++) {
        digits &= out[i] >= '0' && out[i] <= '9';
        stored = stored * 10 + (u32)(out[i] - '0');
    }
    check(digits && stored < 0x7ff0 && (!known || stored == me), "XS_READ domid = \"%s\"%s", n > 0 ? out : "?",
          known ? "" : " (CPUID gives none to compare)");
    if (!known && digits)
        me = (u16)stored;
    n = xs_call(11 /* XS_WRITE */, "data/xen32", "written in 32-bit mode", 0, 0);
    long m = xs_call(2, "data/xen32", 0, out, sizeof(out));
    check(n >= 0 && m > 0 && !scmp(out, "written in 32-bit mode"), "XS_WRITE then XS_READ data/xen32 = \"%s\"",
          m > 0 ? out : "?");
    return me;
}

/* The PV console ring (io/console.h xencons_interface: in[1024], out[2048], then the four
 * u32 indexes; layout-neutral): a line into the out half, the event, and the backend's
 * out_cons catching up with out_prod. */
struct xencons_interface { char in[1024], out[2048]; u32 in_cons, in_prod, out_cons, out_prod; };
static void pv_console(void)
{
    struct xen_hvm_param p = {DOMID_SELF, 17 /* CONSOLE_PFN */, 0};
    long rc = H2(HYPERVISOR_hvm_op, 1, &p);
    struct xen_hvm_param e = {DOMID_SELF, 18 /* CONSOLE_EVTCHN */, 0};
    long rc2 = H2(HYPERVISOR_hvm_op, 1, &e);
    if (!check(rc == 0 && rc2 == 0 && p.value, "PV console ring at pfn 0x%X, port %u", p.value, (u32)e.value))
        return;
    volatile struct xencons_interface *c = (volatile struct xencons_interface *)(uptr)(p.value << 12);
    const char *line = "hello from the 32-bit PV console\r\n";
    u32 prod = c->out_prod, n = slen(line);
    for (u32 i = 0; i < n; i++)
        c->out[(prod + i) & 2047] = line[i];
    barrier();
    c->out_prod = prod + n;
    send((u32)e.value);
    u64 end = now_ns() + 5000000000ull;
    while (c->out_cons != c->out_prod && now_ns() < end)
        H2(HYPERVISOR_sched_op, 0, 0);
    check(c->out_cons == prod + n, "PV console: %u bytes written, the backend consumed them (out_cons %u)", n,
          c->out_cons);
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

/* Ballooning (memory.h, the 20-byte compat xen_memory_reservation and 32-bit frame lists):
 * a page out, out again (0 extents: it is already gone), back in, and the reservation
 * following it. */
static u8 balloon_page[4096] __attribute__((aligned(4096)));
static long reservation(u32 op, u32 *gfns, u32 n)
{
    struct xen_memory_reservation r = {(u32)gfns, n, 0, 0, DOMID_SELF};
    return H2(HYPERVISOR_memory_op, op, &r);
}
static void balloon(void)
{
    u16 dom = DOMID_SELF;
    long before = H2(HYPERVISOR_memory_op, 3 /* current_reservation */, &dom);
    long max = H2(HYPERVISOR_memory_op, 4 /* maximum_reservation */, &dom);
    u32 gfn[1] = {(u32)balloon_page >> 12};
    balloon_page[0] = 0x5a;
    long out = reservation(1 /* decrease_reservation */, gfn, 1);
    long during = H2(HYPERVISOR_memory_op, 3, &dom);
    long again = reservation(1, gfn, 1);
    check(out == 1 && during == before - 1 && again == 0,
          "XENMEM_decrease_reservation (20-byte layout): %d extent, %d -> %d pages; again: %d extents", (int)out,
          (int)before, (int)during, (int)again);
    long in = reservation(6 /* populate_physmap */, gfn, 1);
    long after = H2(HYPERVISOR_memory_op, 3, &dom);
    check(in == 1 && after == before && max >= before && gfn[0] == (u32)balloon_page >> 12 && balloon_page[0] == 0,
          "XENMEM_populate_physmap: %d extent, %d pages (maximum %d), a fresh zero page", (int)in, (int)after, (int)max);
}

/* pvclock: VCPUOP_register_vcpu_time_memory_area (vcpu.h; what Linux's vDSO reads). */
static struct vcpu_time_info time_area __attribute__((aligned(64)));
static void pvclock(void)
{
    u64 addr = (u32)&time_area;
    long rc = H3(HYPERVISOR_vcpu_op, 13, 0, &addr);
    u32 version = time_area.version;
    check(rc == 0 && !(version & 1) && time_area.mul && time_area.system_time > 0,
          "VCPUOP_register_vcpu_time_memory_area: version %u, system_time 0x%X, mul 0x%x shift %d flags 0x%x",
          version, time_area.system_time, time_area.mul, time_area.shift, time_area.flags);
}

/* SCHEDOP_watchdog (sched.h): a new one gets an id, timeout 0 with that id removes it. */
static void watchdog(void)
{
    struct sched_watchdog w = {0, 60};
    long id = H2(HYPERVISOR_sched_op, 6, &w);
    struct sched_watchdog off = {(u32)id, 0};
    long rc = id > 0 ? H2(HYPERVISOR_sched_op, 6, &off) : -1;
    check(id > 0 && rc == 0, "SCHEDOP_watchdog: id %d, removed: %d", (int)id, (int)rc);
}

/* vCPU bring-up through Xen (vcpu.h, hvm/hvm_vcpu.h) with a 32-bit vcpu_hvm_context, as
 * xenvcpu does with a 64-bit one: vCPU 1 starts at the context's eip in protected mode,
 * takes itself down, resumes after its VCPUOP_down when brought up again. */
static u8 ap_stack[4096] __attribute__((aligned(16)));
static volatile int ap_started, ap_resumed;
static volatile long ap_down_rc = 1;
static void __attribute__((noreturn, used)) ap_main32(void)
{
    ap_started = 1;
    ap_down_rc = H3(HYPERVISOR_vcpu_op, 2 /* down */, 1, 0);
    ap_resumed = 1;
    for (;;)
        __asm__ volatile("cli; hlt");
}
static int spin_for(volatile int *flag, u32 ms)
{
    u64 end = now_ns() + (u64)ms * 1000000ull;
    while (!*flag && now_ns() < end)
        H2(HYPERVISOR_sched_op, 0 /* yield */, 0);
    return *flag;
}
static void vcpus(void)
{
    long rc = H3(HYPERVISOR_vcpu_op, 3 /* is_up */, 1, 0);
    if (!check(rc == 0, "VCPUOP_is_up(1) before bring-up: %d (the config gives 2 vCPUs)", (int)rc))
        return;
    static struct vcpu_hvm_context ctx;
    mset(&ctx, 0, sizeof(ctx));
    ctx.mode = 0; /* VCPU_HVM_MODE_32B */
    struct vcpu_hvm_x86_32 *r = &ctx.regs.x86_32;
    r->eip = (u32)ap_main32;
    r->esp = (u32)(ap_stack + sizeof(ap_stack)) - 16;
    r->eflags = 2;
    __asm__ volatile("mov %%cr0, %0; mov %%cr3, %1; mov %%cr4, %2" : "=r"(r->cr0), "=r"(r->cr3), "=r"(r->cr4));
    r->cs_limit = r->ds_limit = r->ss_limit = r->es_limit = 0xffffffffu;
    r->cs_ar = 0xc9b; /* present, DPL 0, code, 32-bit, 4 KiB granularity */
    r->ds_ar = r->ss_ar = r->es_ar = 0xc93;
    r->tr_ar = 0x8b;
    r->tr_limit = 0x67;
    rc = H3(HYPERVISOR_vcpu_op, 0 /* initialise */, 1, &ctx);
    long again = H3(HYPERVISOR_vcpu_op, 0, 1, &ctx);
    check(rc == 0 && again == -17 /* EEXIST */, "VCPUOP_initialise (32-bit context): %d, then %d", (int)rc, (int)again);
    rc = H3(HYPERVISOR_vcpu_op, 1 /* up */, 1, 0);
    check(rc == 0 && spin_for(&ap_started, 5000), "VCPUOP_up: vCPU 1 runs at the context's eip in 32-bit mode");
    u64 end = now_ns() + 5000000000ull;
    while (H3(HYPERVISOR_vcpu_op, 3, 1, 0) != 0 && now_ns() < end)
        H2(HYPERVISOR_sched_op, 0, 0);
    check(H3(HYPERVISOR_vcpu_op, 3, 1, 0) == 0, "vCPU 1 took itself down (is_up 0)");
    rc = H3(HYPERVISOR_vcpu_op, 1, 1, 0);
    int resumed = spin_for(&ap_resumed, 5000);
    long down_rc = ap_down_rc;
    check(rc == 0 && resumed && down_rc == 0, "VCPUOP_up again: it resumes after its VCPUOP_down (which returned %d)",
          (int)down_rc);
    rc = H3(HYPERVISOR_vcpu_op, 2 /* down */, 1, 0);
    check(rc == 0 && H3(HYPERVISOR_vcpu_op, 3, 1, 0) == 0, "VCPUOP_down of vCPU 1: %d, is_up 0", (int)rc);
}

/* FIFO event channels (event_channel.h, Xen's event_fifo.c) last, since the switch ends
 * 2-level delivery: Xen's argument checks, then the switch, a page of event words and an
 * event linked into its priority queue in the control block. */
static u8 fifo_control[4096] __attribute__((aligned(4096)));
static u32 fifo_events[1024] __attribute__((aligned(4096)));
static void fifo(void)
{
    struct evtchn_init_control ic = {(u32)fifo_control >> 12, 0, 5 /* no such vCPU */, 0, {0}};
    long bad_vcpu = evtchn_op(11, &ic);
    if (bad_vcpu == -38) {
        check(1, "FIFO event channels withheld here (EVTCHNOP_init_control -ENOSYS: 2-level stays)");
        return;
    }
    ic.vcpu = 0;
    ic.offset = 4096 - 8; /* the control block would cross the page */
    long bad_offset = evtchn_op(11, &ic);
    ic.offset = 0;
    ic.control_gfn = 0xfffff000ull; /* not RAM */
    long bad_gfn = evtchn_op(11, &ic);
    check(bad_vcpu == -2 /* ENOENT */ && bad_offset == -XEN_EINVAL && bad_gfn == -XEN_EINVAL,
          "EVTCHNOP_init_control checks: bad vCPU %d, bad offset %d, bad gfn %d", (int)bad_vcpu, (int)bad_offset,
          (int)bad_gfn);
    struct evtchn_expand_array ea = {(u32)fifo_events >> 12};
    long early = evtchn_op(12, &ea);
    ic.control_gfn = (u32)fifo_control >> 12;
    long rc = evtchn_op(11, &ic);
    long rc2 = evtchn_op(12, &ea);
    check(early == -95 /* EOPNOTSUPP */ && rc == 0 && ic.link_bits == 17 && rc2 == 0,
          "FIFO: expand_array before init_control %d; init_control %d (link_bits %u); expand_array %d", (int)early,
          (int)rc, ic.link_bits, (int)rc2);
    struct evtchn_bind_ipi ipi = {0, 0};
    rc = evtchn_op(7, &ipi);
    struct evtchn_set_priority sp = {ipi.port, 3};
    rc2 = evtchn_op(13, &sp);
    __asm__ volatile("" ::: "memory");
    long sent = send(ipi.port);
    u32 word = fifo_events[ipi.port];
    u32 ready = *(volatile u32 *)fifo_control;
    u32 head3 = ((volatile u32 *)fifo_control)[2 + 3];
    check(rc == 0 && rc2 == 0 && sent == 0 && (word >> 31 & 1) && (word >> 29 & 1) && (ready >> 3 & 1) &&
              head3 == ipi.port,
          "FIFO event: port %u at priority 3, word 0x%x (PENDING, LINKED), READY 0x%x, HEAD[3] %u", ipi.port, word,
          ready, head3);
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
    /* xen/include/public/arch-x86/cpuid.h: ECX holds the domid only with
     * XEN_HVM_CPUID_DOMID_PRESENT (bit 4) in EAX (QEMU's emulation leaves it clear). */
    int known = (a & 1u << 4) != 0;
    u16 me = known ? (u16)c : 0;
    if (known)
        printf_("domid %u\n", me);
    else
        printf_("domid: not in CPUID leaf 4 (XEN_HVM_CPUID_DOMID_PRESENT clear), XenStore's\n");
    version_and_console();
    memory();
    events();
    me = xenstore(me, known); /* before grants, which need our domid */
    grants(me);
    pv_console();
    multicall_and_runstate();
    balloon();
    pvclock();
    watchdog();
    vcpus();
    fifo();
    finish(mode);
}
