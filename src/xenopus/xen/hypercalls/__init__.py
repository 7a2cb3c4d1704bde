"""The hypercalls, one module per family (its public header in xen/include/public/).

Each module has ``register(table, domain)``, which `XenDomain`'s constructor calls for
every module in `FAMILIES`: it registers the family's handlers (``Call -> int``) with the
domain's `HypercallTable`, keeping whatever state only that family needs. A new hypercall
goes into its family's module; a new family is a new module here, listed in `FAMILIES`.
"""

from xenopus.xen.hypercalls import (
    console,
    event_channel,
    grant_table,
    hvm,
    memory,
    multicall,
    physdev,
    sched,
    vcpu,
    version,
)

FAMILIES = (
    version, memory, hvm, vcpu, sched, event_channel, grant_table, console, physdev,
    multicall,
)

__all__ = ["FAMILIES"]
