"""A raw disk image (file or block device) as the backend of a guest disk: the one place
virtio-blk (`devices/virtio/blk.py`) and the Xen block backend (`xen/backends/blkback.py`)
do their file I/O.

Data moves between the image and guest memory with `os.preadv`/`os.pwritev` straight on
the frontend's memoryviews (guest RAM, or granted pages mapped into ours): nothing is
copied in between. A flush is `fdatasync(2)`; a discard punches a hole and write-zeroes
zeroes a range with `fallocate(2)`, falling back as filesystems allow. Every failure to
open names the file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Sequence

from xenopus import held_files

SECTOR_SIZE = 512  # virtio-blk (§5.2.6) and blkif address images in 512-byte sectors
# O_DIRECT wants buffers, offsets and lengths aligned; a page satisfies every filesystem.
DIRECT_ALIGNMENT = 4096

# fallocate(2) modes (<linux/falloc.h>).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int

# Errors that mean "this filesystem has no such fallocate mode", not an I/O failure.
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS)
_ZEROES_CHUNK = 1 << 20


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class DiskError(Exception):
    """The image cannot be used as asked (missing, unreadable, O_DIRECT refused, a size
    the frontend cannot use); the message names the file."""


Io = Callable[[int, Sequence[memoryview], int], int]


class DiskImage:
    """An open image: read-only or read-write as the `disk=` spec's mode says, through the
    page cache, or also with O_DIRECT when the spec says `direct-io-safe`."""

    def __init__(self, path: str, *, read_only: bool = False, direct: bool = False):
        self.path = path
        self.read_only = read_only
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = held_files.open_fd(path, flags)
        except OSError as e:
            raise DiskError(f"disk image {path}: {e.strerror}") from e
        # O_DIRECT needs aligned buffers, offsets and lengths; requests that are not aligned
        # go through `self.fd` (the page cache) instead of failing.
        self.direct_fd: int | None = None
        if direct:
            try:
                self.direct_fd = held_files.open_fd(path, flags | os.O_DIRECT)
            except OSError as e:
                os.close(self.fd)
                raise DiskError(
                    f"disk image {path}: the filesystem refuses O_DIRECT ({e.strerror}); "
                    "use it without direct I/O"
                ) from e
        try:
            self.size = _size(self.fd)
        except OSError as e:
            self.close()
            raise DiskError(f"disk image {path}: cannot tell its size: {e.strerror}") from e

    @classmethod
    def from_fd(cls, fd: int, path: str, *, read_only: bool) -> DiskImage:
        """An image someone else opened, now ours (a disk attached while the domain runs:
        the CLI opened it as its user; a jailed domain process cannot open it by path).
        Page-cache I/O only: O_DIRECT would need the path again."""
        image = cls.__new__(cls)
        image.path, image.read_only, image.fd, image.direct_fd = path, read_only, fd, None
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
            if not read_only and not writable:
                raise DiskError(f"disk image {path}: opened read-only, attached writable")
            image.size = _size(fd)
        except OSError as e:
            image.close()
            raise DiskError(f"disk image {path}: {e.strerror}") from e
        except DiskError:
            image.close()
            raise
        return image

    def describe(self) -> dict[str, object]:
        return {"target": self.path, "mode": "r" if self.read_only else "w",
                "size": self.size, "direct": self.direct_fd is not None}

    # -- data ---------------------------------------------------------------------------

    def read_into(self, views: Sequence[memoryview], offset: int) -> int:
        """Fill `views` from the image at byte `offset`; returns the bytes read, fewer than
        asked only where the image ends (it shrank under us)."""
        return self._transfer(os.preadv, views, offset)

    def write_from(self, views: Sequence[memoryview], offset: int) -> int:
        """Write `views` to the image at byte `offset`; returns the bytes written."""
        return self._transfer(os.pwritev, views, offset)

    def _transfer(self, io: Io, views: Sequence[memoryview], offset: int) -> int:
        """One preadv/pwritev, resumed after short transfers (signals, a shrunken end);
        stops early, returning what was done, when the image ends."""
        length = sum(len(v) for v in views)
        fd = self._fd_for(offset, views)
        done = io(fd, views, offset) if length else 0
        while done < length:
            n = io(fd, _advance(views, done), offset + done)
            if n == 0:
                break
            done += n
        return done

    def _fd_for(self, offset: int, views: Sequence[memoryview]) -> int:
        """The O_DIRECT fd when the request satisfies its alignment, else the cached one."""
        if self.direct_fd is None or offset % DIRECT_ALIGNMENT:
            return self.fd
        for v in views:
            if len(v) % SECTOR_SIZE or v.readonly:
                return self.fd
            if ctypes.addressof(ctypes.c_char.from_buffer(v)) % DIRECT_ALIGNMENT:
                return self.fd
        return self.direct_fd

    # -- flush, discard, zeroes ---------------------------------------------------------

    def flush(self) -> None:
        """Make written data stable (a read-only image has none to flush)."""
        if not self.read_only:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Give [offset, offset+length) back: a hole reads back as zeroes, which is what
        both virtio-blk DISCARD and blkif DISCARD allow; where holes cannot be punched the
        range is zeroed instead."""
        self._zero(offset, length, punch=True)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero [offset, offset+length) keeping it allocated where the filesystem can."""
        self._zero(offset, length, punch=False)

    def _zero(self, offset: int, length: int, *, punch: bool) -> None:
        modes = [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE]
        if punch:
            modes.reverse()
        for mode in modes:
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
        self._write_zeroes(offset, length)

    def _write_zeroes(self, offset: int, length: int) -> None:
        """Last resort when the filesystem has no fallocate modes: write zeroes."""
        chunk = memoryview(bytes(min(length, _ZEROES_CHUNK)))
        while length:
            n = os.pwrite(self.fd, chunk[: min(length, len(chunk))], offset)
            offset += n
            length -= n

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.direct_fd = -1, None


def _size(fd: int) -> int:
    """Bytes in the image: st_size for a file; a block device's size is where it ends."""
    return os.lseek(fd, 0, os.SEEK_END)


def _advance(views: Sequence[memoryview], n: int) -> list[memoryview]:
    """`views` without their first `n` bytes."""
    out = list(views)
    while out and n >= len(out[0]):
        n -= len(out[0])
        out.pop(0)
    if n:
        out[0] = out[0][n:]
    return out
