"""HYPERVISOR_multicall (xen.h): a batch of hypercalls through the same table, each
entry's result written back into it."""

from __future__ import annotations

import ctypes
from functools import partial
from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_multicall, partial(multicall, table))


def multicall(table: HypercallTable, call: Call) -> int:
    base, count = call.args[0], call.args[1] & 0xFFFFFFFF
    if count > abi.MULTICALL_MAX_ENTRIES:
        return -abi.XEN_E2BIG
    entry_t = abi.multicall_entry if call.long_mode else abi.multicall_entry_32
    size = ctypes.sizeof(entry_t)
    mask = (1 << 64) - 1 if call.long_mode else 0xFFFFFFFF
    for i in range(count):
        gva = base + i * size
        entry = call.access.read(gva, entry_t)
        sub = Call(call.vcpu, tuple(entry.args), call.access, call.long_mode, call.cpl)
        if entry.op == abi.HYPERVISOR_multicall:
            result = -abi.XEN_ENOSYS  # not nestable
        else:
            result = table.dispatch(entry.op & 0xFFFFFFFF, sub)
        entry.result = result & mask
        call.access.write_field(gva, entry, "result")
    return 0
