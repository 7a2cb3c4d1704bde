/* A small virtio 1.2 driver for the PCI modern transport (virtio 1.2 4.1) with split
 * virtqueues (2.7). The vq_* ring operations touch only memory and one MMIO doorbell, so
 * they also run in ring 3 (run_user) against the user-accessible identity map. */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "platform.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5

/* 2.1 Device Status Field */
#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER 2
#define VIRTIO_S_DRIVER_OK 4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_NEEDS_RESET 64
#define VIRTIO_S_FAILED 128

/* 6 Reserved Feature Bits */
#define VIRTIO_F_INDIRECT_DESC (1ul << 28)
#define VIRTIO_F_EVENT_IDX (1ul << 29)
#define VIRTIO_F_VERSION_1 (1ul << 32)

/* 2.7.5 The Virtqueue Descriptor Table; 2.7.6 Available Ring; 2.7.8 Used Ring */
struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
struct vring_avail {
    u16 flags, idx;
    u16 ring[]; /* then le16 used_event */
};
#define VRING_AVAIL_F_NO_INTERRUPT 1
struct vring_used_elem {
    u32 id, len;
};
struct vring_used {
    u16 flags, idx;
    struct vring_used_elem ring[]; /* then le16 avail_event */
};

struct virtq {
    u16 size, index;
    struct vring_desc *desc;
    volatile struct vring_avail *avail;
    volatile struct vring_used *used;
    u64 notify;           /* doorbell address: write the queue index (4.1.4.4) */
    u16 free_head, num_free, last_used;
    u16 msix;
    u16 kicked;    /* avail idx at the last doorbell (for EVENT_IDX) */
    u8 event_idx;  /* VIRTIO_F_EVENT_IDX negotiated: honour avail_event (2.7.10) */
};

#define VIRTIO_MAX_QUEUES 4
struct virtio_dev {
    struct pci_fn *pci;
    u16 type;                     /* device type: VIRTIO_ID_* */
    u64 common, isr, device, notify_base;
    u32 notify_mult;
    u64 offered, features;        /* device features; negotiated features */
    u16 num_queues;
    struct virtq vq[VIRTIO_MAX_QUEUES];
    const char *error;            /* why the last virtio_* call failed */
};

/* Device type of a virtio PCI function (modern id 0x1040 + type, or transitional
 * 0x1000-0x103f with the type in the subsystem id, 4.1.2.1), else 0. */
unsigned virtio_type(const struct pci_fn *f);
/* The nth (0-based) function of `type` among fns[0..n), or NULL. */
struct pci_fn *virtio_find(struct pci_fn *fns, unsigned n, unsigned type, unsigned nth);

/* 3.1.1 Driver Requirements: Device Initialization, up to FEATURES_OK: reset, ACKNOWLEDGE,
 * DRIVER, features = offered & (want | VERSION_1), FEATURES_OK (checked). 0 or -1. */
int virtio_init(struct virtio_dev *d, struct pci_fn *f, u64 want);
/* 4.1.5.1.3 Virtqueue Configuration; size = min(device's, max_size); msix 0xffff = none. */
int virtio_queue(struct virtio_dev *d, unsigned qi, u16 max_size, u16 msix);
void virtio_driver_ok(struct virtio_dev *d);
u8 virtio_status(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d); /* write 0, wait until it reads 0 (bounded) */
u8 virtio_cfg8(struct virtio_dev *d, unsigned off);
u16 virtio_cfg16(struct virtio_dev *d, unsigned off);
u32 virtio_cfg32(struct virtio_dev *d, unsigned off);
u64 virtio_cfg64(struct virtio_dev *d, unsigned off); /* config_generation-consistent */

/* Common configuration structure offsets (4.1.4.3). */
#define VCC_DFSELECT 0
#define VCC_DF 4
#define VCC_GFSELECT 8
#define VCC_GF 12
#define VCC_MSIX 16
#define VCC_NUMQ 18
#define VCC_STATUS 20
#define VCC_GENERATION 21
#define VCC_Q_SELECT 22
#define VCC_Q_SIZE 24
#define VCC_Q_MSIX 26
#define VCC_Q_ENABLE 28
#define VCC_Q_NOFF 30
#define VCC_Q_DESC 32
#define VCC_Q_DRIVER 40
#define VCC_Q_DEVICE 48
#define VIRTIO_NO_VECTOR 0xffff

/* ---- split ring operations (ring-0 or ring-3) ---- */
struct vbuf {
    const void *addr;
    u32 len;
    int write; /* device-writable */
};
/* Puts a chain of n buffers on the available ring (not yet notified): head, or -1 if the
 * descriptor table is full. */
int vq_submit(struct virtq *q, const struct vbuf *b, unsigned n);
void vq_notify(struct virtq *q);
/* One used element: its head id (its chain returned to the free list), *len bytes written;
 * -1 if none. */
int vq_poll(struct virtq *q, u32 *len);
/* vq_poll until an element arrives or `ms` milliseconds of TSC pass: head or -1. */
int vq_wait(struct virtq *q, u32 *len, u64 ms);
/* Submit, notify and wait for this chain (other completions are dropped): len or -1. */
i64 vq_transfer(struct virtq *q, const struct vbuf *b, unsigned n, u64 ms);
/* Rewinds the queue's driver-side state (after a device reset). */
void vq_rewind(struct virtq *q);

#endif
