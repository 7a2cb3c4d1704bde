"""PV backends run in a domain's process: the xenbus state machine and the console,
block (`vbd`) and network (`vif`) backends."""

from xenopus.xen.backends.blkback import BlkBack
from xenopus.xen.backends.console import PVConsole
from xenopus.xen.backends.netback import NetBack
from xenopus.xen.backends.xenbus import Backend, DomainHost, FrontendError, State

__all__ = ["Backend", "BlkBack", "DomainHost", "FrontendError", "NetBack", "PVConsole", "State"]
