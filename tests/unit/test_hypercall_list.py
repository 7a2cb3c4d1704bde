"""README's table of Xen hypercalls (## Xen hypercalls) against Xen's public headers and
against the dispatch code: every hypercall and sub-op has its place in the table, and each
is called (with a zeroed argument, from 64-bit and from 32-bit mode) on a stand-in domain:
an op the table says is implemented does not answer -ENOSYS, one it names only as refused
answers exactly the error it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_hypercall import DOMID, A, FakeMachine, call
from xenopus.memory.guest import GuestMemory
from xenopus.xen import abi
from xenopus.xen.domain import XenDomain
from xenopus.xen.hypercall import HypercallTable

README = Path(__file__).resolve().parents[2] / "README.md"

# xen-project/xen c447b7308b13 (2026-08-20), xen/include/public/xen.h: __HYPERVISOR_*.
HYPERCALLS = {
    "set_trap_table": 0, "mmu_update": 1, "set_gdt": 2, "stack_switch": 3,
    "set_callbacks": 4, "fpu_taskswitch": 5, "sched_op_compat": 6, "platform_op": 7,
    "set_debugreg": 8, "get_debugreg": 9, "update_descriptor": 10, "memory_op": 12,
    "multicall": 13, "update_va_mapping": 14, "set_timer_op": 15,
    "event_channel_op_compat": 16, "xen_version": 17, "console_io": 18,
    "physdev_op_compat": 19, "grant_table_op": 20, "vm_assist": 21,
    "update_va_mapping_otherdomain": 22, "iret": 23, "vcpu_op": 24, "set_segment_base": 25,
    "mmuext_op": 26, "xsm_op": 27, "nmi_op": 28, "sched_op": 29, "callback_op": 30,
    "xenoprof_op": 31, "event_channel_op": 32, "physdev_op": 33, "hvm_op": 34, "sysctl": 35,
    "domctl": 36, "kexec_op": 37, "tmem_op": 38, "argo_op": 39, "xenpmu_op": 40, "dm_op": 41,
    "hypfs_op": 42, **{f"arch_{i}": 48 + i for i in range(8)},
}

# The same tree's sub-op numbers: version.h XENVER_*, memory.h XENMEM_* (the top-level
# ops), hvm/hvm_op.h HVMOP_*, vcpu.h VCPUOP_*, sched.h SCHEDOP_*, event_channel.h
# EVTCHNOP_*, grant_table.h GNTTABOP_*, xen.h CONSOLEIO_*, physdev.h PHYSDEVOP_*.
SUB_OPS: dict[str, dict[str, int]] = {
    "xen_version": {
        "version": 0, "extraversion": 1, "compile_info": 2, "capabilities": 3, "changeset": 4,
        "platform_parameters": 5, "get_features": 6, "pagesize": 7, "guest_handle": 8,
        "commandline": 9, "build_id": 10, "extraversion2": 11, "capabilities2": 12,
        "changeset2": 13, "commandline2": 14},
    "memory_op": {
        "increase_reservation": 0, "decrease_reservation": 1, "maximum_ram_page": 2,
        "current_reservation": 3, "maximum_reservation": 4, "machphys_mfn_list": 5,
        "populate_physmap": 6, "add_to_physmap": 7, "memory_map": 9,
        "machine_memory_map": 10, "exchange": 11, "machphys_mapping": 12,
        "set_memory_map": 13, "maximum_gpfn": 14, "remove_from_physmap": 15,
        "set_pod_target": 16, "get_pod_target": 17, "get_sharing_freed_pages": 18,
        "get_sharing_shared_pages": 19, "paging_op": 20, "access_op": 21, "sharing_op": 22,
        "add_to_physmap_batch": 23, "claim_pages": 24, "machphys_compat_mfn_list": 25,
        "get_vnumainfo": 26, "reserved_device_memory_map": 27, "acquire_resource": 28},
    "hvm_op": {
        "set_param": 0, "get_param": 1, "set_pci_intx_level": 2, "set_isa_irq_level": 3,
        "set_pci_link_route": 4, "flush_tlbs": 5, "pagetable_dying": 9, "get_time": 10,
        "xentrace": 11, "set_mem_access": 12, "get_mem_access": 13, "get_mem_type": 15,
        "set_evtchn_upcall_vector": 23, "guest_request_vm_event": 24, "altp2m": 25},
    "vcpu_op": {
        "initialise": 0, "up": 1, "down": 2, "is_up": 3, "get_runstate_info": 4,
        "register_runstate_memory_area": 5, "set_periodic_timer": 6,
        "stop_periodic_timer": 7, "set_singleshot_timer": 8, "stop_singleshot_timer": 9,
        "register_vcpu_info": 10, "send_nmi": 11, "get_physid": 12,
        "register_vcpu_time_memory_area": 13, "register_runstate_phys_area": 14,
        "register_vcpu_time_phys_area": 15},
    "sched_op": {
        "yield": 0, "block": 1, "shutdown": 2, "poll": 3, "remote_shutdown": 4,
        "shutdown_code": 5, "watchdog": 6, "pin_override": 7},
    "event_channel_op": {
        "bind_interdomain": 0, "bind_virq": 1, "bind_pirq": 2, "close": 3, "send": 4,
        "status": 5, "alloc_unbound": 6, "bind_ipi": 7, "bind_vcpu": 8, "unmask": 9,
        "reset": 10, "init_control": 11, "expand_array": 12, "set_priority": 13,
        "reset_cont": 14},
    "grant_table_op": {
        "map_grant_ref": 0, "unmap_grant_ref": 1, "setup_table": 2, "dump_table": 3,
        "transfer": 4, "copy": 5, "query_size": 6, "unmap_and_replace": 7, "set_version": 8,
        "get_status_frames": 9, "get_version": 10, "swap_grant_ref": 11, "cache_flush": 12},
    "console_io": {"write": 0, "read": 1},
    "physdev_op": {
        "irq_status_query": 5, "set_iopl": 6, "set_iobitmap": 7, "apic_read": 8,
        "apic_write": 9, "alloc_irq_vector": 10, "free_irq_vector": 11, "eoi": 12,
        "map_pirq": 13, "unmap_pirq": 14, "manage_pci_add": 15, "manage_pci_remove": 16,
        "pirq_eoi_gmfn_v1": 17, "restore_msi": 19, "manage_pci_add_ext": 20, "setup_gsi": 21,
        "get_free_pirq": 23, "pci_mmcfg_reserved": 24, "pci_device_add": 25,
        "pci_device_remove": 26, "restore_msi_ext": 27, "pirq_eoi_gmfn_v2": 28,
        "dbgp_op": 29, "prepare_msix": 30, "release_msix": 31, "pci_device_reset": 32},
}
_PREFIX = {"xen_version": "XENVER", "memory_op": "XENMEM", "hvm_op": "HVMOP",
           "vcpu_op": "VCPUOP", "sched_op": "SCHEDOP", "event_channel_op": "EVTCHNOP",
           "grant_table_op": "GNTTABOP", "console_io": "CONSOLEIO", "physdev_op": "PHYSDEVOP"}

TICKED = re.compile(r"`([^`]+)`")
ERRNO = re.compile(r"`-(E[A-Z0-9]+)`")


class Row:
    """One table row: its hypercalls, the sub-ops it says are implemented, and for each
    sub-op it names as refused, the error named with it."""

    def __init__(self, cells: list[str]) -> None:
        self.hypercalls = TICKED.findall(cells[0])
        self.implemented_text, self.refused_text = cells[1], cells[2]
        family = SUB_OPS.get(self.hypercalls[0], {})
        self.implemented = {t for t in TICKED.findall(cells[1]) if t in family}
        self.refused: dict[str, str | None] = {}
        for segment in cells[2].split("; "):
            err = ERRNO.search(segment)
            head = segment[:err.start()] if err else segment
            for t in TICKED.findall(head):
                if t in family:
                    self.refused[t] = err.group(1) if err else None


def rows() -> list[Row]:
    section = README.read_text().split("\n## Xen hypercalls\n", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            assert len(cells) == 3, line
            out.append(Row(cells))
    return out


def test_sub_op_numbers_agree_with_abi() -> None:
    for hc, ops in SUB_OPS.items():
        for name, nr in ops.items():
            const = getattr(abi, f"{_PREFIX[hc]}_{name}", nr)
            assert const == nr, f"abi.{_PREFIX[hc]}_{name}"
    for name, nr in HYPERCALLS.items():
        assert getattr(abi, f"HYPERVISOR_{name}", nr) == nr, name


def test_every_hypercall_and_sub_op_has_its_place() -> None:
    seen: list[str] = []
    for row in rows():
        assert row.hypercalls and set(row.hypercalls) <= set(HYPERCALLS), row.hypercalls
        seen += row.hypercalls
        if row.hypercalls[0] in SUB_OPS:
            assert len(row.hypercalls) == 1, "a hypercall with sub-ops has a row of its own"
            family = SUB_OPS[row.hypercalls[0]]
            missing = set(family) - row.implemented - set(row.refused)
            assert not missing, f"{row.hypercalls[0]}: {sorted(missing)} not in the table"
    assert sorted(seen) == sorted(HYPERCALLS), "each hypercall in exactly one row"


def _args(hc: str, op: int) -> tuple[int, ...]:
    if hc == "vcpu_op":
        return (op, 0, A)  # vCPU 0
    if hc in ("grant_table_op", "console_io"):
        return (op, A, 1) if hc == "grant_table_op" else (op, 0, A)
    return (op, A)


def _cases() -> list[tuple[str, str]]:
    out = []
    for row in rows():
        for hc in row.hypercalls:
            for op in SUB_OPS.get(hc, {None: 0}):
                out.append((hc, op))
    return out


@pytest.mark.parametrize("long_mode", [True, False], ids=["64", "32"])
@pytest.mark.parametrize(("hc", "op"), _cases(), ids=lambda v: str(v))
def test_the_table_says_what_the_call_answers(hc: str, op: str | None, long_mode: bool) -> None:
    row = next(r for r in rows() if hc in r.hypercalls)
    mem = GuestMemory.create(4 << 20)
    domain = XenDomain(DOMID, FakeMachine(mem), HypercallTable(), console_out=lambda _: None,
                       e820=[(0, 0x9F000, 1), (0x100000, (4 << 20) - 0x100000, 1)])
    try:
        nr = HYPERCALLS[hc]
        args = _args(hc, SUB_OPS[hc][op]) if op is not None else (A, 0)
        got = call(domain, mem, nr, *args, long_mode=long_mode)
    finally:
        domain.close()
        mem.close()
    enosys = -abi.XEN_ENOSYS
    if op is None:  # a hypercall without sub-ops: its row says implemented or the error
        if row.implemented_text == "—":
            err = ERRNO.search(row.refused_text)
            assert err and got == -getattr(abi, f"XEN_{err.group(1)}"), (hc, got)
        else:
            assert got != enosys, hc
    elif op in row.implemented:
        if row.refused.get(op) != "ENOSYS":  # unless also named as -ENOSYS in some case
            assert got != enosys, f"{hc} {op}: the README says implemented, got -ENOSYS"
    else:
        err = row.refused[op]
        assert err is not None, f"{hc} {op}: refused without an error code in the README"
        assert got == -getattr(abi, f"XEN_{err}"), f"{hc} {op}: README says -{err}, got {got}"
