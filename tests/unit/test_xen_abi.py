"""Xen ABI layouts against the numbers the public headers imply for x86_64.

Each expected value is derived in a comment from the header it cites (xen/include/public/),
not from our own structs.
"""

from __future__ import annotations

import ctypes

from xenopus.xen import abi


def size(t: type) -> int:
    return ctypes.sizeof(t)


def test_vcpu_info_and_shared_info() -> None:
    # xen.h: vcpu_info = u8 pending, u8 mask, (pad to 8) xen_ulong_t sel @8,
    # arch_vcpu_info {cr2, pad} (16) @16, vcpu_time_info (32) @32 -> 64 bytes.
    assert size(abi.vcpu_time_info) == 32
    assert size(abi.arch_vcpu_info) == 16
    assert size(abi.vcpu_info) == 64
    assert abi.vcpu_info.evtchn_upcall_mask.offset == 1
    assert abi.vcpu_info.evtchn_pending_sel.offset == 8
    assert abi.vcpu_info.time.offset == 32
    # shared_info: vcpu_info[32] = 2048, evtchn_pending[64] and evtchn_mask[64] of 8 bytes,
    # then wc_version, wc_sec, wc_nsec, wc_sec_hi (4 x u32) and arch_shared_info (6 x 8).
    assert abi.shared_info.evtchn_pending.offset == 2048
    assert abi.shared_info.evtchn_mask.offset == 2048 + 512
    assert abi.shared_info.wc_version.offset == 3072
    assert abi.shared_info.wc_sec_hi.offset == 3084
    assert abi.shared_info.arch.offset == 3088
    assert size(abi.shared_info) == 3088 + 48
    assert size(abi.shared_info) <= abi.PAGE_SIZE
    assert abi.EVTCHN_2L_NR_CHANNELS == 4096  # 64 words x 64 bits


def test_grant_table_structs() -> None:
    # grant_table.h: grant_entry_v1 {u16 flags; domid_t domid; u32 frame} = 8
    assert size(abi.grant_entry_v1) == 8
    assert abi.grant_entry_v1.frame.offset == 4
    assert abi.GRANT_ENTRIES_PER_FRAME_V1 == 512
    # grant_entry_v2: hdr (flags, domid), then page_off/length (or pad0), the 64-bit frame
    assert ctypes.sizeof(abi.grant_entry_v2) == 16 and abi.grant_entry_v2.frame.offset == 8
    assert abi.GRANT_ENTRIES_PER_FRAME_V2 == 256 and abi.GRANT_STATUS_PER_FRAME == 2048
    assert ctypes.sizeof(abi.gnttab_get_status_frames) == 16  # frame_list at 8
    # gnttab_setup_table: domid_t @0, u32 nr_frames @4, i16 status @8, handle @16 -> 24
    assert abi.gnttab_setup_table.frame_list.offset == 16 and size(abi.gnttab_setup_table) == 24
    # gnttab_query_size: dom @0, nr_frames @4, max_nr_frames @8, status @12 -> 16
    assert abi.gnttab_query_size.status.offset == 12 and size(abi.gnttab_query_size) == 16
    # gnttab_copy: two {union{ref, gmfn (8)}, domid @8, offset @10} (16) then len, flags, status
    assert size(abi.gnttab_copy_ptr) == 16
    assert abi.gnttab_copy.len.offset == 32 and abi.gnttab_copy.status.offset == 36
    assert size(abi.gnttab_copy) == 40
    # map: host_addr @0, flags @8, ref @12, dom @16, status @18, handle @20, dev_bus_addr @24
    assert abi.gnttab_map_grant_ref.handle.offset == 20 and size(abi.gnttab_map_grant_ref) == 32
    assert (abi.GTF_readonly, abi.GTF_reading, abi.GTF_writing) == (4, 8, 16)
    assert abi.GNTTABOP_copy == 5 and abi.GNTTABOP_get_version == 10


def test_event_channel_structs() -> None:
    assert size(abi.evtchn_alloc_unbound) == 8
    # bind_interdomain: domid_t remote_dom, (pad) port remote_port @4, local_port @8
    assert abi.evtchn_bind_interdomain.local_port.offset == 8
    assert size(abi.evtchn_bind_virq) == 12
    # evtchn_status: dom @0, port @4, status @8, vcpu @12, union (max {domid, port} = 8) @16
    assert abi.evtchn_status.u.offset == 16 and size(abi.evtchn_status) == 24
    assert abi.EVTCHNOP_send == 4 and abi.EVTCHNOP_alloc_unbound == 6
    assert abi.EVTCHNOP_reset == 10


def test_xenstore_and_console_rings() -> None:
    # io/xs_wire.h: xsd_sockmsg = 4 x u32; the ring page: req[1024], rsp[1024], 4 indices...
    assert size(abi.xsd_sockmsg) == 16
    assert abi.xenstore_domain_interface.req_cons.offset == 2048
    assert abi.xenstore_domain_interface.rsp_prod.offset == 2060
    assert abi.xenstore_domain_interface.server_features.offset == 2064
    assert abi.xenstore_domain_interface.connection.offset == 2068
    assert (abi.XS_DIRECTORY, abi.XS_WATCH_EVENT, abi.XS_ERROR) == (1, 15, 16)
    assert (abi.XS_RESET_WATCHES, abi.XS_DIRECTORY_PART) == (21, 22)
    # io/console.h: in[1024], out[2048], then in_cons, in_prod, out_cons, out_prod
    assert abi.xencons_interface.out.offset == 1024
    assert abi.xencons_interface.in_cons.offset == 3072
    assert abi.xencons_interface.out_prod.offset == 3084


def test_block_and_network_rings() -> None:
    # io/blkif.h (x86_64): op, nr_segments, handle, (pad) id @8, sector @16,
    # seg[11] of {gref, first_sect, last_sect} (8 each) @24 -> 112
    assert size(abi.blkif_request_segment) == 8
    assert abi.blkif_request.seg.offset == 24 and size(abi.blkif_request) == 112
    assert size(abi.blkif_response) == 16
    assert abi.blkif_request_indirect.indirect_grefs.offset == 28
    assert size(abi.blkif_request_indirect) == 64
    # io/ring.h: 64-byte header; entries rounded down to a power of two:
    # blkif (4096-64)/112 = 36 -> 32; netif tx (4032/12 = 336) -> 256, rx (4032/8) -> 256
    assert size(abi.sring_header) == 64
    assert abi.BLKIF_RING_SIZE == 32
    assert (abi.NETIF_TX_RING_SIZE, abi.NETIF_RX_RING_SIZE) == (256, 256)
    assert size(abi.netif_tx_request) == 12 and size(abi.netif_rx_response) == 8
    assert size(abi.netif_extra_info) == 8


def test_argument_structs() -> None:
    # memory.h
    assert size(abi.xen_memory_reservation) == 32
    assert abi.xen_memory_reservation.domid.offset == 24
    assert abi.xen_add_to_physmap.idx.offset == 8 and size(abi.xen_add_to_physmap) == 24
    assert size(abi.xen_memory_map) == 16 and size(abi.e820entry) == 20
    # hvm_op.h, vcpu.h, sched.h
    assert size(abi.xen_hvm_param) == 16 and abi.xen_hvm_param.value.offset == 8
    assert size(abi.vcpu_runstate_info) == 48
    assert size(abi.vcpu_register_vcpu_info) == 16
    assert size(abi.vcpu_set_singleshot_timer) == 16
    assert abi.sched_poll.timeout.offset == 16 and size(abi.sched_poll) == 24
    assert size(abi.sched_remote_shutdown) == 8
    assert size(abi.multicall_entry) == 64 and size(abi.multicall_entry_32) == 32
    # version.h
    assert size(abi.xen_extraversion_t) == 16 and size(abi.xen_capabilities_info_t) == 1024
    assert size(abi.xen_changeset_info_t) == 64 and size(abi.xen_compile_info) == 144
    # hvm_vcpu.h: 14 x u64 for 64-bit; the context is mode, pad, union
    assert size(abi.vcpu_hvm_x86_64) == 112 and abi.vcpu_hvm_context.cpu_regs.offset == 8


def test_numbers() -> None:
    # xen.h hypercall numbers and errno.h values
    assert (abi.HYPERVISOR_memory_op, abi.HYPERVISOR_multicall) == (12, 13)
    assert (abi.HYPERVISOR_set_timer_op, abi.HYPERVISOR_xen_version) == (15, 17)
    assert (abi.HYPERVISOR_console_io, abi.HYPERVISOR_grant_table_op) == (18, 20)
    assert (abi.HYPERVISOR_vcpu_op, abi.HYPERVISOR_sched_op) == (24, 29)
    assert (abi.HYPERVISOR_event_channel_op, abi.HYPERVISOR_hvm_op) == (32, 34)
    assert (abi.XEN_EPERM, abi.XEN_ENOENT, abi.XEN_E2BIG, abi.XEN_EAGAIN) == (1, 2, 7, 11)
    assert (abi.XEN_EFAULT, abi.XEN_EINVAL, abi.XEN_ENOSPC, abi.XEN_ENOSYS) == (14, 22, 28, 38)
    assert (abi.HVM_PARAM_STORE_PFN, abi.HVM_PARAM_STORE_EVTCHN) == (1, 2)
    assert (abi.HVM_PARAM_CONSOLE_PFN, abi.HVM_PARAM_CONSOLE_EVTCHN) == (17, 18)
    assert abi.HVMOP_set_evtchn_upcall_vector == 23
    assert abi.VCPUOP_register_vcpu_info == 10 and abi.SCHEDOP_shutdown_code == 5
    assert abi.XEN_ELFNOTE_HYPERCALL_PAGE == 2
    assert abi.XEN_CPUID_SIGNATURE == b"XenV" b"MMXe" b"nVMM"
    assert abi.XEN_CPUID_SIGNATURE_EBX.to_bytes(4, "little") == b"XenV"
    assert abi.XEN_CPUID_SIGNATURE_EDX.to_bytes(4, "little") == b"nVMM"
