"""PV backends run in a domain's process: the xenbus state machine and the console,
block (`vbd`) and network (`vif`) backends.

The names below are imported on first use (PEP 562), not with the package: a domain
without disks, vifs or channels runs only the console backend, and each domain process
imports what its guest uses (the xenbus state machine, the block and network backends
and the XenStore client they bring are ~6 ms of CPU and 0.6 MiB in every spare)."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xenopus.xen.backends.blkback import BlkBack
    from xenopus.xen.backends.console import PVConsole
    from xenopus.xen.backends.netback import NetBack
    from xenopus.xen.backends.xenbus import Backend, DomainHost, FrontendError, State

_WHERE = {"BlkBack": "blkback", "PVConsole": "console", "NetBack": "netback", "Backend": "xenbus",
          "DomainHost": "xenbus", "FrontendError": "xenbus", "State": "xenbus"}

__all__ = ["Backend", "BlkBack", "DomainHost", "FrontendError", "NetBack", "PVConsole", "State"]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
