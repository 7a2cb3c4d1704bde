"""HYPERVISOR_physdev_op (physdev.h): registered so that its answer is a deliberate one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain


def register(table: HypercallTable, domain: XenDomain) -> None:
    table.register(abi.HYPERVISOR_physdev_op, physdev_op)


def physdev_op(call: Call) -> int:
    # Without XENFEAT_hvm_pirqs Linux routes no interrupt through pirqs; the ops it
    # tries anyway (pirq_eoi_gmfn, get_free_pirq, ...) are optional to it.
    return -abi.XEN_ENOSYS
