/*
 * The test-guest kit's Xen runtime: what a PVH guest needs to talk to Xen (xenopus) the way
 * Linux's arch/x86/xen and drivers/xen do. Numbers and layouts are those of Xen's public
 * headers (xen/include/public/...), cited per block; the _Static_asserts in xen.c pin every
 * offset to the header's layout on x86-64. Everything runs in ring 0. See guests/README.md.
 */
#ifndef XEN_H
#define XEN_H
#include "platform.h"

typedef signed char i8;
typedef short i16;
typedef int i32;
typedef u16 domid_t;
typedef u32 evtchn_port_t;
typedef u32 grant_ref_t;

/* ---- errno values Xen returns, negated (public/errno.h) ---- */
#define XEN_EPERM 1
#define XEN_ENOENT 2
#define XEN_EIO 5
#define XEN_E2BIG 7
#define XEN_EAGAIN 11
#define XEN_ENOMEM 12
#define XEN_EACCES 13
#define XEN_EFAULT 14
#define XEN_EBUSY 16
#define XEN_EEXIST 17
#define XEN_EINVAL 22
#define XEN_ENOSPC 28
#define XEN_ENOSYS 38
#define XEN_EOPNOTSUPP 95
#define XEN_ETIME 62
#define XEN_EQUOTA 122 /* EDQUOT */

/* ---- hypercall numbers (public/xen.h) ---- */
#define HYPERVISOR_memory_op 12
#define HYPERVISOR_multicall 13
#define HYPERVISOR_set_timer_op 15
#define HYPERVISOR_xen_version 17
#define HYPERVISOR_console_io 18
#define HYPERVISOR_grant_table_op 20
#define HYPERVISOR_vcpu_op 24
#define HYPERVISOR_sched_op 29
#define HYPERVISOR_event_channel_op 32
#define HYPERVISOR_physdev_op 33
#define HYPERVISOR_hvm_op 34
#define DOMID_SELF 0x7ff0

/* ---- CPUID (public/arch-x86/cpuid.h) ---- */
#define XEN_CPUID_FIRST_LEAF 0x40000000
#define XEN_CPUID_SIGNATURE_EBX 0x566e6558 /* "XenV" */
#define XEN_CPUID_SIGNATURE_ECX 0x65584d4d /* "MMXe" */
#define XEN_CPUID_SIGNATURE_EDX 0x4d4d566e /* "nVMM" */
#define XEN_HVM_CPUID_VCPU_ID_PRESENT (1u << 3)
#define XEN_HVM_CPUID_DOMID_PRESENT (1u << 4)
#define XEN_HVM_CPUID_EXT_DEST_ID (1u << 5)
#define XEN_HVM_CPUID_UPCALL_VECTOR (1u << 6) /* HVMOP_set_evtchn_upcall_vector works */

/* ---- xen_version (public/version.h) ---- */
#define XENVER_version 0
#define XENVER_extraversion 1 /* char[16] */
#define XENVER_capabilities 3 /* char[1024] */
#define XENVER_changeset 4    /* char[64] */
#define XENVER_platform_parameters 5
#define XENVER_get_features 6
#define XENVER_pagesize 7
#define XENVER_guest_handle 8 /* 16 bytes */
struct xen_feature_info {
    u32 submap_idx, submap;
};

/* ---- console_io (public/xen.h) ---- */
#define CONSOLEIO_write 0
#define CONSOLEIO_read 1

/* ---- memory_op (public/memory.h) ---- */
#define XENMEM_decrease_reservation 1
#define XENMEM_current_reservation 3
#define XENMEM_maximum_reservation 4
#define XENMEM_populate_physmap 6
#define XENMEM_add_to_physmap 7
#define XENMEM_memory_map 9
#define XENMEM_remove_from_physmap 15
struct xen_memory_reservation {
    u64 *extent_start; /* XEN_GUEST_HANDLE(xen_pfn_t) */
    u64 nr_extents;    /* xen_ulong_t */
    u32 extent_order;
    u32 mem_flags;
    domid_t domid;
};
struct xen_remove_from_physmap {
    domid_t domid;
    u64 gpfn;
};
struct xen_memory_map {
    u32 nr_entries;
    void *buffer; /* XEN_GUEST_HANDLE(void): struct e820entry[] */
};
struct e820entry {
    u64 addr, size;
    u32 type;
} __attribute__((packed));
#define XENMAPSPACE_shared_info 0
#define XENMAPSPACE_grant_table 1
struct xen_add_to_physmap {
    domid_t domid;
    u16 size;
    u32 space;
    u64 idx;  /* xen_ulong_t */
    u64 gpfn; /* xen_pfn_t */
};

/* ---- hvm_op (public/hvm/hvm_op.h, public/hvm/params.h) ---- */
#define HVMOP_set_param 0
#define HVMOP_get_param 1
#define HVMOP_pagetable_dying 9
#define HVMOP_set_evtchn_upcall_vector 23
struct xen_hvm_pagetable_dying {
    domid_t domid;
    u16 pad[3];
    u64 gpa;
};
#define HVM_PARAM_CALLBACK_IRQ 0
#define HVM_PARAM_STORE_PFN 1
#define HVM_PARAM_STORE_EVTCHN 2
#define HVM_PARAM_CONSOLE_PFN 17
#define HVM_PARAM_CONSOLE_EVTCHN 18
#define HVM_PARAM_CALLBACK_TYPE_VECTOR 2 /* val[63:56] = 2, val[7:0] = vector */
struct xen_hvm_param {
    domid_t domid;
    u32 index;
    u64 value;
};
struct xen_hvm_evtchn_upcall_vector {
    u32 vcpu;
    u8 vector;
};

/* ---- vcpu_op (public/vcpu.h) ---- */
#define VCPUOP_initialise 0
#define VCPUOP_up 1
#define VCPUOP_down 2
#define VCPUOP_is_up 3
#define VCPUOP_set_periodic_timer 6
#define VCPUOP_stop_periodic_timer 7
#define VCPUOP_set_singleshot_timer 8
#define VCPUOP_stop_singleshot_timer 9
#define VCPUOP_register_vcpu_info 10
/* VCPUOP_initialise's argument for HVM/PVH vCPUs (public/hvm/hvm_vcpu.h), 64-bit mode. */
#define VCPU_HVM_MODE_64B 1
struct vcpu_hvm_context {
    u32 mode, pad;
    struct {
        u64 rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, rip, rflags, cr0, cr3, cr4, efer;
    } x86_64; /* union cpu_regs: the 32-bit layout is as large */
    u8 pad2[24];
};
#define VCPUOP_register_vcpu_time_memory_area 13
struct vcpu_register_time_memory_area {
    u64 addr; /* union { handle; struct vcpu_time_info *v; u64 p; } */
};
#define XEN_PVCLOCK_TSC_STABLE_BIT (1u << 0)
#define VCPU_SSHOTTMR_future (1u << 0)
struct vcpu_set_singleshot_timer {
    u64 timeout_abs_ns;
    u32 flags;
};
struct vcpu_register_vcpu_info {
    u64 mfn;
    u32 offset, rsvd;
};

/* ---- sched_op (public/sched.h) ---- */
#define SCHEDOP_yield 0
#define SCHEDOP_block 1
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll 3
#define SCHEDOP_watchdog 6
struct sched_watchdog {
    u32 id;      /* 0: claim a free watchdog; else the id it returned */
    u32 timeout; /* seconds; 0 with an id: release it */
};
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_reboot 1
#define SHUTDOWN_suspend 2
#define SHUTDOWN_crash 3
struct sched_shutdown {
    u32 reason;
};
struct sched_poll {
    evtchn_port_t *ports;
    u32 nr_ports;
    u64 timeout;
};

/* ---- shared_info / vcpu_info, 2-level event channels (public/xen.h, arch-x86/xen.h) ---- */
#define XEN_LEGACY_MAX_VCPUS 32
#define EVTCHN_2L_NR_CHANNELS (64 * 64)
struct vcpu_time_info {
    u32 version, pad0;
    u64 tsc_timestamp, system_time;
    u32 tsc_to_system_mul;
    i8 tsc_shift;
    u8 flags, pad1[2];
};
struct vcpu_info {
    u8 evtchn_upcall_pending;
    u8 evtchn_upcall_mask;
    u64 evtchn_pending_sel;
    u64 arch_cr2, arch_pad; /* struct arch_vcpu_info */
    struct vcpu_time_info time;
};
struct shared_info {
    struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
    u64 evtchn_pending[64];
    u64 evtchn_mask[64];
    u32 wc_version, wc_sec, wc_nsec, wc_sec_hi;
    /* struct arch_shared_info follows; unused here */
};

/* ---- event_channel_op (public/event_channel.h) ---- */
#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_bind_virq 1
#define EVTCHNOP_close 3
#define EVTCHNOP_send 4
#define EVTCHNOP_status 5
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_bind_ipi 7
#define EVTCHNOP_bind_vcpu 8
#define EVTCHNOP_unmask 9
#define EVTCHNOP_reset 10
#define EVTCHNOP_init_control 11
#define EVTCHNOP_expand_array 12
struct evtchn_init_control { /* the FIFO ABI's per-vCPU control block */
    u64 control_gfn;
    u32 offset, vcpu;
    u8 link_bits, pad[7];
};
#define EVTCHNSTAT_closed 0
#define EVTCHNSTAT_unbound 1
#define EVTCHNSTAT_interdomain 2
#define EVTCHNSTAT_pirq 3
#define EVTCHNSTAT_virq 4
#define EVTCHNSTAT_ipi 5
#define VIRQ_TIMER 0
#define VIRQ_CONSOLE 2
struct evtchn_alloc_unbound {
    domid_t dom, remote_dom;
    evtchn_port_t port;
};
struct evtchn_bind_interdomain {
    domid_t remote_dom;
    evtchn_port_t remote_port, local_port;
};
struct evtchn_bind_virq {
    u32 virq, vcpu;
    evtchn_port_t port;
};
struct evtchn_bind_ipi {
    u32 vcpu;
    evtchn_port_t port;
};
struct evtchn_port_arg { /* evtchn_close, evtchn_send, evtchn_unmask: just the port */
    evtchn_port_t port;
};
struct evtchn_status {
    domid_t dom;
    evtchn_port_t port;
    u32 status, vcpu;
    union {
        struct {
            domid_t dom;
        } unbound;
        struct {
            domid_t dom;
            evtchn_port_t port;
        } interdomain;
        u32 pirq, virq;
    } u;
};

/* ---- grant_table_op, v1 (public/grant_table.h) ---- */
#define GNTTABOP_map_grant_ref 0
#define GNTTABOP_unmap_grant_ref 1
#define GNTTABOP_setup_table 2
#define GNTTABOP_copy 5
#define GNTTABOP_query_size 6
#define GNTTABOP_set_version 8
#define GNTTABOP_get_version 10
#define GTF_permit_access 1
#define GTF_readonly (1u << 2)
#define GTF_reading (1u << 3)
#define GTF_writing (1u << 4)
#define GNTCOPY_source_gref (1u << 0)
#define GNTCOPY_dest_gref (1u << 1)
#define GNTST_okay 0
#define GNTST_general_error (-1)
#define GNTST_bad_domain (-2)
#define GNTST_bad_gntref (-3)
#define GNTST_bad_handle (-4)
#define GNTST_bad_virt_addr (-5)
#define GNTST_bad_dev_addr (-6)
#define GNTST_no_device_space (-7)
#define GNTST_permission_denied (-8)
#define GNTST_bad_page (-9)
#define GNTST_bad_copy_arg (-10)
#define GNTST_address_too_big (-11)
#define GNTST_eagain (-12)
#define GNTTAB_NR_RESERVED 8 /* refs 0-7 belong to the toolstack (console 0, xenstore 1) */
struct grant_entry_v1 {
    u16 flags;
    domid_t domid;
    u32 frame;
};
struct gnttab_setup_table {
    domid_t dom;
    u32 nr_frames;
    i16 status;
    u64 *frame_list;
};
struct gnttab_query_size {
    domid_t dom;
    u32 nr_frames, max_nr_frames;
    i16 status;
};
struct gnttab_get_version {
    domid_t dom;
    u16 pad;
    u32 version;
};
struct gnttab_set_version {
    u32 version;
};
struct gnttab_copy_ptr {
    union {
        grant_ref_t ref;
        u64 gmfn;
    } u;
    domid_t domid;
    u16 offset;
};
struct gnttab_copy {
    struct gnttab_copy_ptr source, dest;
    u16 len, flags;
    i16 status;
};
/* map_grant_ref / unmap_grant_ref (a mapper's side; GNTMAP_host_map: host_addr is where) */
#define GNTMAP_host_map (1u << 1)
struct gnttab_map_grant_ref {
    u64 host_addr;
    u32 flags;
    grant_ref_t ref;
    domid_t dom;
    i16 status;
    u32 handle;
    u64 dev_bus_addr;
};
struct gnttab_unmap_grant_ref {
    u64 host_addr, dev_bus_addr;
    u32 handle;
    i16 status;
};
_Static_assert(sizeof(struct gnttab_map_grant_ref) == 32, "grant_table.h layout");
_Static_assert(sizeof(struct gnttab_unmap_grant_ref) == 24, "grant_table.h layout");

/* ---- XenStore wire (public/io/xs_wire.h, docs/misc/xenstore.txt) ---- */
#define XS_CONTROL 0
#define XS_DIRECTORY 1
#define XS_READ 2
#define XS_GET_PERMS 3
#define XS_WATCH 4
#define XS_UNWATCH 5
#define XS_TRANSACTION_START 6
#define XS_TRANSACTION_END 7
#define XS_GET_DOMAIN_PATH 10
#define XS_WRITE 11
#define XS_MKDIR 12
#define XS_RM 13
#define XS_SET_PERMS 14
#define XS_WATCH_EVENT 15
#define XS_ERROR 16
#define XS_GET_FEATURE 23
#define XS_GET_QUOTA 25
#define XENSTORE_RING_SIZE 1024
/* xenstore-ring.txt: server feature bits and the connection state */
#define XENSTORE_SERVER_FEATURE_RECONNECTION 1
#define XENSTORE_SERVER_FEATURE_ERROR 2
#define XENSTORE_CONNECTED 0
#define XENSTORE_RECONNECT 1
#define XENSTORE_PAYLOAD_MAX 4096
#define MASK_XENSTORE_IDX(i) ((i) & (XENSTORE_RING_SIZE - 1))
struct xsd_sockmsg {
    u32 type, req_id, tx_id, len;
};
struct xenstore_domain_interface {
    char req[XENSTORE_RING_SIZE];
    char rsp[XENSTORE_RING_SIZE];
    u32 req_cons, req_prod;
    u32 rsp_cons, rsp_prod;
    u32 server_features, connection, error;
};

/* ---- xenbus states (public/io/xenbus.h) ---- */
#define XenbusStateUnknown 0
#define XenbusStateInitialising 1
#define XenbusStateInitWait 2
#define XenbusStateInitialised 3
#define XenbusStateConnected 4
#define XenbusStateClosing 5
#define XenbusStateClosed 6

/* ---- PV console (public/io/console.h) ---- */
struct xencons_interface {
    char in[1024];
    char out[2048];
    u32 in_cons, in_prod;
    u32 out_cons, out_prod;
};

/* ---- shared rings (public/io/ring.h): a 64-byte header, then the entries ---- */
struct sring_header {
    u32 req_prod, req_event;
    u32 rsp_prod, rsp_event;
    u8 pvt[4], pad[44];
};

/* ---- block (public/io/blkif.h) ---- */
#define BLKIF_OP_READ 0
#define BLKIF_OP_WRITE 1
#define BLKIF_OP_FLUSH_DISKCACHE 3
#define BLKIF_MAX_SEGMENTS_PER_REQUEST 11
#define BLKIF_RSP_EOPNOTSUPP (-2)
#define BLKIF_RSP_ERROR (-1)
#define BLKIF_RSP_OKAY 0
struct blkif_request_segment {
    grant_ref_t gref;
    u8 first_sect, last_sect;
};
struct blkif_request {
    u8 operation, nr_segments;
    u16 handle;
    u64 id;
    u64 sector_number;
    struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct blkif_response {
    u64 id;
    u8 operation;
    i16 status;
};
union blkif_sring_entry {
    struct blkif_request req;
    struct blkif_response rsp;
};
struct blkif_sring {
    struct sring_header h;
    union blkif_sring_entry ring[32]; /* __RD32((4096 - 64) / 112) = 32 */
};

/* ---- network (public/io/netif.h) ---- */
#define NETTXF_csum_blank (1u << 0)
#define NETTXF_data_validated (1u << 1)
#define NETIF_RSP_DROPPED (-2)
#define NETIF_RSP_ERROR (-1)
#define NETIF_RSP_OKAY 0
struct netif_tx_request {
    grant_ref_t gref;
    u16 offset, flags, id, size;
};
struct netif_tx_response {
    u16 id;
    i16 status;
};
struct netif_rx_request {
    u16 id, pad;
    grant_ref_t gref;
};
struct netif_rx_response {
    u16 id, offset, flags;
    i16 status;
};
union netif_tx_sring_entry {
    struct netif_tx_request req;
    struct netif_tx_response rsp;
};
union netif_rx_sring_entry {
    struct netif_rx_request req;
    struct netif_rx_response rsp;
};
#define NET_TX_RING_SIZE 256 /* __RD32((4096 - 64) / 12) */
#define NET_RX_RING_SIZE 256 /* __RD32((4096 - 64) / 8) */
struct netif_tx_sring {
    struct sring_header h;
    union netif_tx_sring_entry ring[NET_TX_RING_SIZE];
};
struct netif_rx_sring {
    struct sring_header h;
    union netif_rx_sring_entry ring[NET_RX_RING_SIZE];
};

/* ======================================================================================== */
/* The runtime                                                                              */
/* ======================================================================================== */

struct xen_info {
    int present;
    u32 base;             /* CPUID leaf of the signature: 0x40000000 + n * 0x100 */
    char signature[13];   /* what the first hypervisor leaf said (for the no-Xen report) */
    u32 max_leaf;
    u16 major, minor;     /* CPUID base+1 */
    u32 hypercall_pages;  /* base+2 EAX */
    u32 hypercall_msr;    /* base+2 EBX */
    u32 hvm_features;     /* base+4 EAX */
    int domid;            /* base+4 ECX when DOMID_PRESENT, else -1 */
    int vcpu_id;
};
extern struct xen_info xen;
extern u8 *hypercall_page; /* page_alloc'd: non-Xen guests carry no Xen .bss */

/* CPUID discovery and the hypercall page (MSR write). Returns 1 when Xen is there; else
 * prints "no Xen: CPUID 0x40000000 signature is ..." and returns 0. */
int xen_init(void);
/* xen_init, and on failure the FAIL line: "RESULT: FAIL <guest_name> no-xen". */
int xen_require(void);

/* The 64-bit hypercall ABI: call hypercall_page + nr * 32 with rdi, rsi, rdx, r10, r8;
 * the result comes back in rax. Clobbers rcx and r11 too (as SYSCALL-style stubs may). */
static inline long hypercall5(unsigned nr, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    register u64 r10 __asm__("r10") = a4;
    register u64 r8 __asm__("r8") = a5;
    long ret;
    __asm__ volatile("call *%[entry]"
                     : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : [entry] "r"((u64)hypercall_page + nr * 32)
                     : "rcx", "r9", "r11", "memory", "cc");
    return ret;
}
#define hypercall1(nr, a) hypercall5(nr, (u64)(a), 0, 0, 0, 0)
#define hypercall2(nr, a, b) hypercall5(nr, (u64)(a), (u64)(b), 0, 0, 0)
#define hypercall3(nr, a, b, c) hypercall5(nr, (u64)(a), (u64)(b), (u64)(c), 0, 0)
#define hypercall4(nr, a, b, c, d) hypercall5(nr, (u64)(a), (u64)(b), (u64)(c), (u64)(d), 0)

static inline long xen_version(int cmd, void *arg) { return hypercall2(HYPERVISOR_xen_version, cmd, arg); }
static inline long memory_op(int cmd, void *arg) { return hypercall2(HYPERVISOR_memory_op, cmd, arg); }
static inline long hvm_op(int cmd, void *arg) { return hypercall2(HYPERVISOR_hvm_op, cmd, arg); }
static inline long evtchn_op(int cmd, void *arg) { return hypercall2(HYPERVISOR_event_channel_op, cmd, arg); }
static inline long sched_op(int cmd, void *arg) { return hypercall2(HYPERVISOR_sched_op, cmd, arg); }
static inline long vcpu_op(int cmd, u32 vcpu, void *arg) { return hypercall3(HYPERVISOR_vcpu_op, cmd, vcpu, arg); }
static inline long gnttab_op(int cmd, void *arg, u32 count) { return hypercall3(HYPERVISOR_grant_table_op, cmd, arg, count); }
static inline long console_io(int cmd, u32 count, const void *buf) { return hypercall3(HYPERVISOR_console_io, cmd, count, buf); }

/* "(dN) " host-log output through console_io; returns the hypercall's result. */
long xen_console_write(const char *s);
/* Our domain id: CPUID base+4 ECX when XEN_HVM_CPUID_DOMID_PRESENT, else XenStore "domid". */
long xen_domid(void);
/* Prints "ok <what>" or "FAIL <what>"; failures are counted in xen_failures. Returns ok. */
extern int xen_failures;
int xcheck(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
long hvm_get_param(u32 index, u64 *value);
long hvm_set_param(u32 index, u64 value);
/* The end of RAM (highest E820_RAM byte + 1) in XENMEM_memory_map's map; 0 if refused. */
u64 xen_ram_end(void);
/* SCHEDOP_shutdown; returns (with the error) only if Xen refused. */
long xen_shutdown(u32 reason);
/* Print the RESULT line, then SCHEDOP_shutdown(poweroff), then the runtime's shutdown(). */
__attribute__((noreturn)) void xen_finish(int pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- shared_info + events ---- */
extern volatile struct shared_info *shared_info;
extern volatile struct vcpu_info *vcpu0;
/* XENMEM_add_to_physmap(shared_info) onto a page of ours; vcpu_info is shared_info's slot 0.
 * Returns the hypercall result. */
long xen_map_shared_info(void);
/* Xen system time (ns) from vcpu0's vcpu_time_info (the version-odd retry protocol). */
u64 xen_system_time(void);

#define XEN_UPCALL_VECTOR 62 /* one of the kit's LAPIC vectors (48-63) */
/* How events reach us: "vector" = HVMOP_set_evtchn_upcall_vector (what Linux PVH uses when
 * CPUID advertises XEN_HVM_CPUID_UPCALL_VECTOR), "param" = HVM_PARAM_CALLBACK_IRQ of the
 * vector type. `how` NULL: the command line's upcall=vector|param, else the CPUID choice.
 * Also maps shared_info if not done. Returns the hypercall result; *chosen says which. */
long xen_events_init(const char *how, const char **chosen);
typedef void (*evtchn_fn)(evtchn_port_t port);
/* Per-port callback (called from the upcall with the pending bit already cleared). */
void evtchn_bind(evtchn_port_t port, evtchn_fn fn);
extern volatile u32 evtchn_upcalls; /* upcall interrupts taken */
extern volatile int *evtchn_count; /* [EVTCHN_2L_NR_CHANNELS] events delivered per port */
/* Wait (sti;hlt, bounded) until evtchn_count[port] > `seen`. Returns 1 when it got there. */
int evtchn_wait(evtchn_port_t port, int seen, unsigned ms);
/* The mask bit in shared_info (guest-side mask, as Linux's mask_evtchn). */
void evtchn_mask(evtchn_port_t port);
int evtchn_is_pending(evtchn_port_t port);
int evtchn_is_masked(evtchn_port_t port);

/* EVTCHNOP_* wrappers: >= 0 is the port (or 0), < 0 is -errno. */
long evtchn_alloc_unbound(domid_t remote);
long evtchn_bind_interdomain(domid_t remote, evtchn_port_t remote_port);
long evtchn_bind_virq(u32 virq, u32 vcpu);
long evtchn_bind_ipi(u32 vcpu);
long evtchn_send(evtchn_port_t port);
long evtchn_close(evtchn_port_t port);
long evtchn_unmask(evtchn_port_t port);
long evtchn_status(evtchn_port_t port, struct evtchn_status *st);
const char *evtchn_status_name(u32 status);

/* ---- grant tables ---- */
extern volatile struct grant_entry_v1 *gnttab; /* frame 0, 512 entries */
#define GNTTAB_ENTRIES (4096 / sizeof(struct grant_entry_v1))
long gnttab_init(void); /* XENMEM_add_to_physmap(grant_table, idx 0) onto a page of ours */
/* Grants `gfn` to `domid`: frame and domid are written before flags (grant_table.h). Returns
 * the reference, or -1 when the table is full. */
long gnttab_grant(domid_t domid, u64 gfn, int readonly);
/* Revokes a grant unless the peer holds it (GTF_reading/GTF_writing): 1 revoked, 0 busy. */
int gnttab_end(grant_ref_t ref);
/* One GNTTABOP_copy; returns the hypercall result, *status the entry's GNTST_*. */
long gnttab_copy1(struct gnttab_copy *op);
const char *gntst_name(int status);
static inline u64 virt_to_gfn(const void *p) { return (u64)p >> 12; }

/* ---- XenStore (a xenbus client on the ring) ---- */
/* Finds the ring (HVM params STORE_PFN/STORE_EVTCHN) and binds its event channel. 0 or -err */
long xs_init(void);
extern volatile struct xenstore_domain_interface *xs_ring;
extern evtchn_port_t xs_port;
/* Every call: 0 (or a length) on success, -XEN_E* for an XS_ERROR reply (the error string
 * mapped by xs_errno), -XEN_ETIME when no reply came within the timeout (xs_timeout_ms). */
extern unsigned xs_timeout_ms;
/* The raw exchange: sends type/tx/payload (len bytes), copies the reply (NUL-terminated) into
 * out (cap bytes); returns the reply length or a negative error. */
long xs_request(u32 type, u32 tx, const void *payload, u32 len, char *out, u32 cap);
long xs_read(u32 tx, const char *path, char *out, u32 cap);
long xs_write(u32 tx, const char *path, const char *value);
long xs_mkdir(u32 tx, const char *path);
long xs_rm(u32 tx, const char *path);
/* NUL-separated names into out; returns the byte count. */
long xs_directory(u32 tx, const char *path, char *out, u32 cap);
long xs_watch(const char *path, const char *token);
long xs_unwatch(const char *path, const char *token);
/* Perms as in xenstore.txt: a list of "<r|w|b|n><domid>" joined by NULs (nul-separated). */
long xs_set_perms(u32 tx, const char *path, const char *const *perms, unsigned n);
long xs_transaction_start(u32 *tx);
long xs_transaction_end(u32 tx, int commit);
/* A watch event seen (queued while waiting for replies): waits up to ms. 1 got, 0 none. */
int xs_wait_watch(char *path, u32 path_cap, char *token, u32 token_cap, unsigned ms);
long xs_read_u64(const char *path, u64 *v);
/* The ring, unframed (for hostile guests): queue bytes / take one reply message. */
long xs_send_raw(const void *data, u32 len);
long xs_recv_msg(struct xsd_sockmsg *hdr, char *out, u32 cap, unsigned ms);
int xs_errno(const char *name); /* "EAGAIN" -> XEN_EAGAIN ... */
const char *xen_errname(long err); /* -11 -> "EAGAIN" */
/* xenstore-ring.txt's ring reconnection: sets the connection state to RECONNECT, signals,
 * waits (bounded by xs_timeout_ms) until the server has set it back to CONNECTED, and
 * forgets queued watch events. 0, -XEN_EOPNOTSUPP without the feature, -XEN_ETIME. */
long xs_reconnect(void);
/* Polls `path` until its value parses to a number >= want (xenbus states), bounded. */
long xs_wait_state(const char *path, u64 want, unsigned ms, u64 *got);

/* ---- PV console ring ---- */
long xencons_init(void);
extern volatile struct xencons_interface *xencons;
extern evtchn_port_t xencons_port;
long xencons_write(const char *s); /* \n -> \r\n; bytes written or -err */
/* Reads one line (without its end) from the in ring, bounded by ms. Returns its length or -1. */
long xencons_readline(char *out, u32 cap, unsigned ms);
/* The same on any console ring (a channel's: device/console/N); crlf: \n goes out as \r\n. */
struct xencons_ring {
    volatile struct xencons_interface *intf;
    evtchn_port_t port;
    int crlf;
};
long xencons_ring_write(struct xencons_ring *r, const char *s);
long xencons_ring_readline(struct xencons_ring *r, char *out, u32 cap, unsigned ms);

/* ---- a xenbus frontend's common steps ---- */
struct xenbus_dev {
    char node[64];     /* device/vbd/51712 */
    char backend[128]; /* from <node>/backend */
    u64 backend_id;
    evtchn_port_t port;
};
/* Finds device/<type>/<id> (id NULL: the first), its backend path and backend-id. */
long xenbus_find(struct xenbus_dev *d, const char *type, const char *id);
/* Wait (a watch on device/<type>) until device/<type>/<id>/backend exists: a device the
 * toolstack attaches while the guest runs (xl block-attach, network-attach). 0 or -err. */
long xenbus_wait_for(const char *type, const char *id, unsigned ms);
long xenbus_switch_state(struct xenbus_dev *d, u32 state);
/* <node>/<key> = v in decimal (ring-ref, event-channel, feature-*): 0 or -err. */
long xenbus_write_u64(struct xenbus_dev *d, const char *key, u64 v);
/* xs_init, gnttab_init and xen_events_init in turn: 0, or the first failure. */
long xen_pv_init(void);
/* A frontend test's start: xen_pv_init, then xenbus_find(d, type, id), each checked with
 * xcheck; a failure ends the test (xen_finish "setup" / "no <type>"). */
void xenbus_frontend_start(struct xenbus_dev *d, const char *type, const char *id);
/* A two-domain test's start (role=a|b peer=DOMID timeout_ms=N [30000]): the command line
 * read (usage ends the test), *timeout_ms set, xen_pv_init checked, a line naming `what`,
 * the role and both domains; then role_a (if a) and role_b, each given (self, peer). */
__attribute__((noreturn)) void xen_pair_run(const char *what, unsigned *timeout_ms,
                                            void (*role_a)(domid_t self, domid_t peer),
                                            void (*role_b)(domid_t self, domid_t peer));
/* Role a's offer: data/<name>-gref then data/<name>-port (last: b waits for it), owned by
 * `self` and readable by `peer`; a failure ends the test. */
void xen_pair_offer(const char *name, domid_t self, domid_t peer, long port, long gref);
/* Role b's side of it: the peer's data/<name>-port and -gref (polled for up to
 * `timeout_ms`), the port bound (bind_interdomain) and the event that binding raises taken
 * (event_channel.h: "EVTCHNOP_bind_interdomain always sets the local event channel
 * pending"; counted as a's answer, b could end before a had looked). The local port;
 * *gref the peer's grant. A failure ends the test. */
evtchn_port_t xen_pair_accept(const char *name, domid_t peer, unsigned timeout_ms, u64 *gref);

#endif
