"""HYPERVISOR_grant_table_op (grant_table.h): served by the domain's `GrantTable`
(xen/grant.py), which owns every GNTTABOP_*."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain


def register(table: HypercallTable, domain: XenDomain) -> None:
    grants = domain.grants

    def grant_table_op(call: Call) -> int:
        return int(grants.op(call.args[0], call.access, call.args[1], call.args[2] & 0xFFFFFFFF))

    table.register(abi.HYPERVISOR_grant_table_op, grant_table_op)
