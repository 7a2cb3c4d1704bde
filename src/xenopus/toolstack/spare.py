"""A spare domain process: exec'd afresh, so with an address-space layout of its own.

Every process forked from one zygote has the zygote's layout: ASLR would randomise the
host once, not each domain, and a leak of one domain's addresses would tell an attacker
every other domain's. So the zygote keeps a few spares: each a new Python, exec'd as pid 1
of its own PID namespace, that has already imported every layer and waits for one domain.
A create consumes a spare (it becomes that domain's process, with no further fork) and
the zygote starts its replacement in the background.

Its argument: the socket to the zygote. (`--write-methods` instead: write the table of
the dataclass methods its imports generate, xenopus/codecache.py, afresh and exit; `make
compile` does.)

On the socket the zygote gives it (`xenopus.ipc` framing):
  spare → zygote  one byte, READY, once its imports are done
  zygote → spare  `Spawn` + 2 or 3 fds, exactly as the zygote received them, and, when
                  the message says `"seccomp": true`, last the sealed memfd holding the
                  seccomp filter (domain/seccomp_policy.py) its jail loads
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from xenopus import codecache
from xenopus.ipc import Channel
from xenopus.trace import mark

if TYPE_CHECKING:  # imported by `warm`: the zygote imports this module before any layer
    from xenopus.domain.protocol import Spawn
    from xenopus.kvm import Kvm

READY = b"R"
# gc.set_threshold's first-generation threshold while `warm` imports (the default 700).
IMPORT_GC_THRESHOLD = 20000


def warm(write_methods: bool | None = None) -> None:
    """Import every layer a domain process runs (with seccomp_policy, whose loader the
    jail uses on the zygote's compiled filter): a spare does before READY, the zygote
    after it has started its first spares (their start-up is the long pole of a first
    domain on a fresh daemon: they import while it does). Their dataclasses' methods
    come compiled from `xenopus.codecache` (`write_methods`: see `generated_methods`).

    asyncio imports ssl when it can; a domain process never speaks TLS through asyncio,
    and ssl with OpenSSL's libraries is ~1.3 MiB of private memory in every one. None in
    sys.modules makes asyncio's `import ssl` fail as on a Python built without it (its
    own fallback) while the layers are imported; then ssl is importable again for what
    does need it (pyroute2, when a vif's tap is made)."""
    blocked = "ssl" not in sys.modules
    if blocked:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    # The cyclic collector finds next to nothing to free among what imports create (about
    # a hundred objects of some 300 000) but walks them, again and again as they pile
    # up: ~15% of a spare's import CPU. Rarer passes while importing, the usual after.
    thresholds = gc.get_threshold()
    gc.set_threshold(IMPORT_GC_THRESHOLD, *thresholds[1:])
    try:
        with codecache.generated_methods(write=write_methods):
            import xenopus.domain.process  # noqa: F401
            import xenopus.domain.seccomp_policy  # noqa: F401
    finally:
        gc.set_threshold(*thresholds)
        if blocked:
            del sys.modules["ssl"]


PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """A zygote's process is useless without its parent: have the kernel end it then."""
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def open_kvm() -> Kvm | None:
    """/dev/kvm opened, and on x86 asked what every build asks of it (its CPUID and MSR
    lists: a few ms on nested KVM), while the spare waits rather than on a domain's start
    path; None where it cannot be (the domain then opens it itself and says why not)."""
    from xenopus import host
    from xenopus.kvm import Kvm, KvmError

    try:
        kvm = Kvm()
    except (KvmError, OSError):
        return None
    if host.architecture() == "x86_64":
        with contextlib.suppress(KvmError, OSError):  # the build asks again, and says
            kvm.warm_up()
    return kvm


def become_domain(spawn: Spawn, fds: list[int], *, fresh_layout: bool,
                  seccomp_fd: int | None = None, kvm: Kvm | None = None) -> None:
    """Run the domain in this process and exit with its status; never returns."""
    from xenopus.domain import process as domain_process  # warm: imported already

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        code = domain_process.run_domain(
            spawn, fds[0], xenstore_fd=fds[1], interdomain_fd=fds[2] if len(fds) == 3 else None,
            fresh_layout=fresh_layout, seccomp_fd=seccomp_fd, kvm=kvm,
        )
    except BaseException:  # noqa: BLE001 - report, then exit: never return into a caller's loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def write_methods() -> None:
    """`make compile`: the table of every dataclass method a domain process generates,
    afresh (entries of classes changed since are dropped)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(codecache.PATH)
    warm(write_methods=True)
    print(f"xenopus spare: {len(codecache.load())} dataclass methods in {codecache.PATH}")


def main() -> None:
    if sys.argv[1:] == ["--write-methods"]:
        write_methods()
        return
    mark("spare: started")
    die_with_parent()
    warm()
    kvm = open_kvm()
    gc.freeze()  # as in the zygote: imported objects live as long as the process
    # What importing freed goes back to the host before the spare waits (about 1 MiB).
    ctypes.CDLL(None).malloc_trim(0)
    sock = socket.socket(fileno=int(sys.argv[1]))
    mark("spare: ready")
    try:
        sock.sendall(READY)
    except OSError:  # the zygote is gone (a daemon that did not start, or stopped)
        os._exit(0)
    chan = Channel(sock)
    msg, fds = chan.recv_with_fds(4)
    chan.close()
    mark("spare: claimed")
    if msg is None:
        os._exit(0)  # the zygote retired this spare
    seccomp_fd = fds.pop() if msg.get("seccomp") and len(fds) > 2 else None
    from xenopus.domain.protocol import Spawn  # warm: imported already

    # The zygote checked the request.
    become_domain(Spawn.from_wire(msg), fds, fresh_layout=True, seccomp_fd=seccomp_fd, kvm=kvm)


if __name__ == "__main__":
    main()
