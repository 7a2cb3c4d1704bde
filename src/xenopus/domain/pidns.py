"""Forking into a new PID namespace: what the zygote needs of the jail before anything else.

Apart from `jail.py` (which owns every other layer of a domain process's jail) because the
zygote starts its first spare domain processes before it imports any layer: this module
imports nothing of xenopus, so a fresh daemon's first domain waits for one Python's
imports, not two in a row.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWPID = 0x20000000  # <linux/sched.h>

_libc = ctypes.CDLL(None, use_errno=True)


def _call(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


class PidNamespaceForker:
    """`fork()` into a new PID namespace (the child is its pid 1) where the host allows it
    (unshare(2), setns(2)).

    A process may have only one pending namespace for its children (a second unshare is
    EINVAL), so after each fork the parent goes back to its own."""

    def __init__(self) -> None:
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def fork(self) -> int:
        try:
            _call(_libc.unshare(CLONE_NEWPID), "unshare")
        except OSError:
            return os.fork()  # the child reports the layer missing (it is not pid 1)
        pid = os.fork()
        if pid == 0:
            os.close(self.own)
        else:
            _call(_libc.setns(self.own, CLONE_NEWPID), "setns")
        return pid
