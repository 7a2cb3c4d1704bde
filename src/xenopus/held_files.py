"""Files a domain process keeps open for its whole life, for rebuilds it can no longer open.

A domain whose action is "restart" builds its guest again in the same process, reading
its kernel and ramdisk and opening its disk images anew; but by then the jail has
switched the process to an unprivileged uid, which may not be allowed to open them (a
root-only kernel, a 0600 image). So before the switch the process `hold`s each of them,
and every later open of the same file through `open_fd` gets a duplicate of the held
descriptor instead of a fresh open: the rights it had at first stay with the file, not
with the process.

A duplicate shares the file offset of the held descriptor: readers seek or use pread.
"""

from __future__ import annotations

import fcntl
import os

# What an open must match to share a held descriptor: the access mode, and O_DIRECT
# (a status flag of the open file description, which every duplicate shares).
_MODE = os.O_ACCMODE | os.O_DIRECT

_held: dict[tuple[str, int], int] = {}


def _key(path: str | os.PathLike[str], flags: int) -> tuple[str, int]:
    return os.path.abspath(os.fspath(path)), flags & _MODE


def hold(path: str | os.PathLike[str], flags: int) -> None:
    """Open `path` now (with `flags`) and keep it open for later `open_fd` calls."""
    key = _key(path, flags)
    if key not in _held:
        _held[key] = os.open(path, flags | os.O_CLOEXEC)


def keep(path: str | os.PathLike[str], fd: int) -> None:
    """Hold `fd`, already open on `path` (a disk image the CLI opened for xl
    block-attach), for later `open_fd` calls with its access mode; `fd` stays the
    caller's."""
    key = _key(path, fcntl.fcntl(fd, fcntl.F_GETFL))
    release(path)
    _held[key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)


def release(path: str | os.PathLike[str]) -> None:
    """Stop holding `path` (its disk was detached): a later open is a fresh one."""
    name = os.path.abspath(os.fspath(path))
    for key in [k for k in _held if k[0] == name]:
        os.close(_held.pop(key))


def open_fd(path: str | os.PathLike[str], flags: int) -> int:
    """A new descriptor for `path`: a duplicate of a held one, else `os.open`."""
    held = _held.get(_key(path, flags))
    if held is None:
        return os.open(path, flags | os.O_CLOEXEC)
    return os.dup(held)  # close-on-exec, as os.dup makes it


def held() -> list[str]:
    return sorted({path for path, _ in _held})
