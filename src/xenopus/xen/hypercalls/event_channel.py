"""HYPERVISOR_event_channel_op (event_channel.h): served by the domain's `EventChannels`
(xen/evtchn.py), which owns every EVTCHNOP_*."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenopus.xen import abi
from xenopus.xen.hypercall import Call, HypercallTable

if TYPE_CHECKING:
    from xenopus.xen.domain import XenDomain


def register(table: HypercallTable, domain: XenDomain) -> None:
    evtchn = domain.evtchn

    def event_channel_op(call: Call) -> int:
        return int(evtchn.op(call.args[0], call.access, call.args[1]))

    table.register(abi.HYPERVISOR_event_channel_op, event_channel_op)
