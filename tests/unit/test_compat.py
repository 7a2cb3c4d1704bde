"""The compat ABI: 32-bit guests' structs, shared_info and vcpu_info.

Sizes and offsets are those of Xen 4.17's public headers compiled for i386 (what Xen's
generated xen/include/compat headers describe): `gcc -m32 -ffreestanding` on
xen/include/public/{xen,memory,grant_table,sched,vcpu,version,event_channel}.h and
hvm/{hvm_op,hvm_vcpu}.h, reading sizeof/offsetof. Written out here by hand, not taken from
our ctypes classes.
"""

from __future__ import annotations

import ctypes
import struct
from types import SimpleNamespace

import pytest

from xenopus.memory import GuestMemory, MiB
from xenopus.xen import abi
from xenopus.xen.compat import convert
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.guestmem import GuestAccess

# (compat class, size, {member: offset}) from the i386 compile
DIFFERING = [
    (abi.compat_xen_add_to_physmap, 16, {"space": 4, "idx": 8, "gpfn": 12}),
    (abi.compat_xen_remove_from_physmap, 8, {"gpfn": 4}),
    (abi.compat_xen_memory_map, 8, {"buffer": 4}),
    (abi.compat_xen_memory_reservation, 20,
     {"nr_extents": 4, "extent_order": 8, "mem_flags": 12, "domid": 16}),
    (abi.compat_sched_poll, 16, {"nr_ports": 4, "timeout": 8}),
    (abi.compat_vcpu_runstate_info, 44, {"state_entry_time": 4, "time": 12}),
    (abi.compat_vcpu_set_singleshot_timer, 12, {"flags": 8}),
    (abi.compat_gnttab_setup_table, 16, {"nr_frames": 4, "status": 8, "frame_list": 12}),
    (abi.compat_gnttab_copy, 24, {"dest": 8, "len": 16, "flags": 18, "status": 20}),
    (abi.compat_gnttab_get_status_frames, 12, {"dom": 4, "status": 6, "frame_list": 8}),
    (abi.compat_xen_platform_parameters, 4, {}),
    (abi.multicall_entry_32, 32, {"result": 4, "args": 8}),
    (abi.compat_vcpu_info, 64, {"evtchn_pending_sel": 4, "arch": 8, "time": 32}),
    (abi.compat_shared_info, 2344, {"evtchn_pending": 2048, "evtchn_mask": 2176,
                                    "wc_version": 2304, "wc_sec": 2308, "wc_nsec": 2312,
                                    "arch": 2316}),
]
# Structs of implemented calls whose i386 layout is the native one (size from the compile).
SAME = [(abi.evtchn_init_control, 24), (abi.evtchn_status, 24), (abi.gnttab_query_size, 16),
        (abi.xen_hvm_param, 16), (abi.vcpu_register_vcpu_info, 16),
        (abi.vcpu_hvm_context, 128), (abi.xen_hvm_pagetable_dying, 16),
        (abi.vcpu_register_runstate_memory_area, 8), (abi.xen_feature_info, 8),
        (abi.gnttab_get_version, 8), (abi.gnttab_map_grant_ref, 32),
        (abi.gnttab_unmap_grant_ref, 24)]


@pytest.mark.parametrize("cls,size,offsets", DIFFERING, ids=lambda v: getattr(v, "__name__", ""))
def test_compat_layouts_match_the_i386_headers(cls: type, size: int, offsets: dict) -> None:
    assert ctypes.sizeof(cls) == size
    for name, off in offsets.items():
        assert getattr(cls, name).offset == off, name


def test_the_rest_is_the_same_in_both_modes() -> None:
    for cls, size in SAME:
        assert ctypes.sizeof(cls) == size and cls not in abi.COMPAT, cls.__name__
    assert abi.compat_gnttab_copy_ptr.domid.offset == 4  # source.domid, source.offset
    assert abi.compat_gnttab_copy_ptr.offset.offset == 6
    assert abi.gnttab_map_grant_ref.handle.offset == 20  # i386: handle 20, dev_bus_addr 24
    assert abi.gnttab_map_grant_ref.dev_bus_addr.offset == 24
    # arch.wc_sec_hi of the i386 shared_info
    assert abi.compat_shared_info.arch.offset + abi.compat_arch_shared_info.wc_sec_hi.offset == 2340
    for native, compat in abi.COMPAT.items():
        assert [f[0] for f in native._fields_] == [f[0] for f in compat._fields_], native


def test_convert_both_ways_truncating_wide_values() -> None:
    op = abi.gnttab_copy()
    op.source.u.ref, op.source.domid, op.source.offset = 7, 3, 100
    op.dest.u.gmfn, op.dest.domid, op.len, op.flags = 0x1_2345_6789, 0x7FF0, 8, 1
    c = convert(op, abi.compat_gnttab_copy)
    raw = bytes(c)
    assert struct.unpack("<IHHIHHHHh2x", raw) == (7, 3, 100, 0x2345_6789, 0x7FF0, 0, 8, 1, 0)
    back = convert(abi.compat_gnttab_copy.from_buffer_copy(raw), abi.gnttab_copy)
    assert (back.source.u.ref, back.dest.u.gmfn, back.len) == (7, 0x2345_6789, 8)
    rs = abi.vcpu_runstate_info(state=1, state_entry_time=2**40)
    rs.time[3] = 5
    assert struct.unpack("<iQ4Q", bytes(convert(rs, abi.compat_vcpu_runstate_info))) == (
        1, 2**40, 0, 0, 0, 5)


def access32(mem: GuestMemory) -> GuestAccess:
    a = GuestAccess(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))
    a.compat = True
    return a


def test_guest_access_reads_and_writes_compat_layouts() -> None:
    with GuestMemory.create(1 * MiB) as mem:
        a = access32(mem)
        # A 32-bit add_to_physmap: 16 bytes, the last ones at the end of RAM.
        gva = 1 * MiB - 16
        mem.write(gva, struct.pack("<HHIII", 0x7FF0, 0, 0, 0, 0x123))
        x = a.read(gva, abi.xen_add_to_physmap)
        assert isinstance(x, abi.xen_add_to_physmap) and (x.domid, x.gpfn) == (0x7FF0, 0x123)
        mem.write(0x100, struct.pack("<H2xIh2xI", 0x7FF0, 2, 99, 0x2000))  # gnttab_setup_table
        st = a.read(0x100, abi.gnttab_setup_table)
        assert (st.nr_frames, st.frame_list) == (2, 0x2000)
        st.status = -3
        a.write_field(0x100, st, "status")
        assert struct.unpack_from("<h", mem.read(0x108, 2)) == (-3,)
        a.write(0x200, abi.xen_platform_parameters(virt_start=0))
        assert a.sizeof(abi.gnttab_copy) == 24 and a.sizeof(abi.evtchn_send) == 4
        assert a.pfn_size == 4
        native = GuestAccess(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))
        assert native.sizeof(abi.gnttab_copy) == 40 and native.pfn_size == 8


def test_2_level_events_on_a_32_bit_shared_info() -> None:
    """compat shared_info: pending and mask are 32 words of 32 bits at 2048 and 2176;
    vcpu_info's selector is a 32-bit word at 4 (selector bit = port / 32)."""
    with GuestMemory.create(1 * MiB) as mem:
        upcalls: list[int] = []
        ev = EventChannels(1, mem, 1, upcalls.append)
        ev.set_compat(True)
        si = 0x10000
        ev.set_shared_info(si)
        ports = [ev.bind_ipi(0) for _ in range(40)]
        assert ev.send(ports[-1]) == 0  # port 40
        assert mem.read_u32(si + 2048 + 4) == 1 << 8  # word 1, bit 8
        assert mem.read_u32(si + 4) == 1 << 1 and mem.read_u8(si) == 1  # selector bit 1
        assert upcalls == [0]
        assert not ev.in_range(1024) and ev.in_range(1023)
        assert mem.read_u32(si + 8) == 0  # arch.cr2 untouched
        # The mask is the 32-bit one at 2176: a masked port stays pending, unmask passes it on.
        mem.write_u32(si + 4, 0)
        mem.write_u8(si, 0)
        port = ports[0]
        mem.write_u32(si + 2176, 1 << port)
        ev.send(port)
        assert mem.read_u32(si + 2048) >> port & 1 and mem.read_u32(si + 4) == 0
        assert ev.unmask(port) == 0
        assert mem.read_u32(si + 2176) == 0 and mem.read_u32(si + 4) == 1 and upcalls == [0, 0]


# --- a 32-bit caller end to end through the hypercall table ---------------------------------
def test_a_32_bit_domain_through_the_table() -> None:
    from tests.unit.test_hypercall import DOMID, FakeMachine, call
    from xenopus.xen.domain import XenDomain
    from xenopus.xen.hypercall import HypercallTable

    A = 0x10000
    with GuestMemory.create(4 * MiB) as mem:
        d = XenDomain(DOMID, FakeMachine(mem), HypercallTable(), console_out=lambda line: None)
        try:
            def c32(nr: int, *args: int) -> int:
                return call(d, mem, nr, *args, long_mode=False)

            # XENMEM_add_to_physmap in its 16-byte layout (a native read would take
            # idx = gpfn << 32 and refuse it): shared_info at gfn 0x20.
            mem.write(A, struct.pack("<HHIII", 0x7FF0, 0, abi.XENMAPSPACE_shared_info, 0, 0x20))
            assert c32(abi.HYPERVISOR_memory_op, abi.XENMEM_add_to_physmap, A) == 0
            si = 0x20000
            # HVM_PARAM_CALLBACK_IRQ from 32-bit mode latches the 32-bit layout: the
            # wallclock is at the i386 offsets (wc_version 2304, wc_sec 2308).
            mem.write(A, struct.pack("<HxxIQ", 0x7FF0, abi.HVM_PARAM_CALLBACK_IRQ,
                                     2 << 56 | 0xF3))
            assert c32(abi.HYPERVISOR_hvm_op, abi.HVMOP_set_param, A) == 0
            assert d.compat_shinfo and d.evtchn.compat
            assert mem.read_u32(si + 2308) > 1_600_000_000 and mem.read_u32(si + 2304) % 2 == 0
            port = d.evtchn.bind_ipi(0)
            d.evtchn.send(port)
            assert mem.read_u32(si + 2048) == 1 << port and mem.read_u32(si + 4) == 1
            # The runstate area in its 44-byte layout.
            mem.fill(0x30000, 64, 0xA5)
            mem.write(A, struct.pack("<Q", 0x30000))
            assert c32(abi.HYPERVISOR_vcpu_op, abi.VCPUOP_register_runstate_memory_area, 0, A) == 0
            assert mem.read_u32(0x30000) == abi.RUNSTATE_running and mem.read_u8(0x30000 + 44) == 0xA5
            # decrease_reservation with 4-byte extents.
            mem.write(A + 0x100, struct.pack("<II", 0x300, 0x301))
            mem.write(A, struct.pack("<IIIIH2x", A + 0x100, 2, 0, 0, 0x7FF0))
            assert c32(abi.HYPERVISOR_memory_op, abi.XENMEM_decrease_reservation, A) == 2
            assert d.p2m.ballooned == {0x300, 0x301}
            # A 32-bit multicall: 32-byte entries, results in 32 bits.
            mem.write(A, struct.pack("<8I", abi.HYPERVISOR_xen_version, 0, 0, 0, 0, 0, 0, 0)
                      + struct.pack("<8I", abi.HYPERVISOR_xen_version, 0, abi.XENVER_pagesize,
                                    0, 0, 0, 0, 0))
            assert c32(abi.HYPERVISOR_multicall, A, 2) == 0
            assert struct.unpack_from("<I", mem.read(A + 4, 4)) == (4 << 16 | 11,)
            assert struct.unpack_from("<I", mem.read(A + 36, 4)) == (4096,)
            # The same callback set from 64-bit mode latches the native layout again.
            mem.write(A, struct.pack("<HxxIQ", 0x7FF0, abi.HVM_PARAM_CALLBACK_IRQ,
                                     2 << 56 | 0xF3))
            assert call(d, mem, abi.HYPERVISOR_hvm_op, abi.HVMOP_set_param, A) == 0
            assert not d.compat_shinfo and mem.read_u32(si + 3076) > 1_600_000_000
        finally:
            d.close()
