"""Guest RAM in and out of a save stream (PAGE_DATA records, docs/snapshot-stream.md).

Saving skips the memfds' holes and all-zero pages and hands the writer views of the memfd mappings, so page
contents go from guest RAM to the file with no copy in between. Restoring first discards
the target's RAM (every page reads as zero again, as it did in the saved guest for the
pages not in the stream), then reads each run of consecutive pages straight into the
mapping.

A clone (`map_clone`, `map_pages`) reads no page: its RAM becomes private zero pages and
each run of a PAGE_DATA record is mapped copy-on-write from the image file, where
version 2 of the stream puts page contents at page-aligned offsets.
"""

from __future__ import annotations

import errno
import functools
import mmap
import operator
import os
from collections.abc import Iterator

from xenopus.memory.guest import PAGE_SIZE, GuestMemory, GuestMemoryError
from xenopus.stream import PAGE_DATA_BATCH, Record, StreamRecordError, StreamWriter

PAGE_SHIFT = 12
# Zero pages are found a chunk at a time first: one compare clears 64 pages of an
# untouched range (slicing an mmap and comparing bytes is a memcpy and a memcmp in C).
_CHUNK = 64 * PAGE_SIZE
_ZERO_CHUNK = bytes(_CHUNK)
_ZERO_PAGE = bytes(PAGE_SIZE)


def _populated(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each range of the memfd that has pages (lseek(2) SEEK_DATA and
    SEEK_HOLE on tmpfs): holes, never touched by the guest, are skipped without reading
    them, which would allocate them."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after `off`
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        off = end


def nonzero_pages(memory: GuestMemory, *, extra: bool = False) -> list[int]:
    """Guest-physical addresses of every page of RAM (with `extra`: of the regions
    added outside RAM instead) that is not all zeros."""
    out = []
    regions = sorted(memory.extra.values(), key=lambda r: r.gpa) if extra else memory.regions
    for region in regions:
        m = region.map
        # A private region (a clone's) has no memfd to ask for its holes: every page is read.
        spans = [(0, region.size)] if region.private else _populated(region.fd, region.size)
        for start, end in spans:
            for chunk in range(start, end, _CHUNK):
                stop = min(chunk + _CHUNK, end)
                if m[chunk:stop] == _ZERO_CHUNK[: stop - chunk]:
                    continue
                out += [region.gpa + off for off in range(chunk, stop, PAGE_SIZE)
                        if m[off : off + PAGE_SIZE] != _ZERO_PAGE]
    return out


def _runs(pages: list[int], step: int = PAGE_SIZE) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive pages in `pages`: addresses (`step` the
    page size) or frame numbers (`step` 1).

    A list that is one run (a record of a stretch of RAM the guest wrote: the common
    case) is recognised by comparing it with that run at C speed. Pages in increasing
    order with no repeat (what every caller passes: `sorted` and `set` check it) are split
    in halves until each part spans as many pages as it holds, which for such pages means
    consecutive: a few comparisons per run, not a Python step per page. Any other order
    is walked page by page."""
    n = len(pages)
    if not n:
        return
    first = pages[0]
    if pages[-1] - first == (n - 1) * step and pages == list(range(first, first + n * step, step)):
        yield first, n
        return
    aligned = step == 1 or not functools.reduce(operator.or_, pages) % step
    if not (aligned and pages == sorted(pages) and len(set(pages)) == n):
        i = 0
        while i < n:
            j = i + 1
            while j < n and pages[j] == pages[j - 1] + step:
                j += 1
            yield pages[i], j - i
            i = j
        return
    start, count = first, 0  # the run being gathered
    todo = [(0, n)]
    while todo:
        i, j = todo.pop()
        if pages[j - 1] - pages[i] == (j - 1 - i) * step:
            if pages[i] == start + count * step:
                count += j - i
            else:
                yield start, count
                start, count = pages[i], j - i
        else:
            mid = (i + j) // 2
            todo += [(mid, j), (i, mid)]  # the left half first
    yield start, count


def _frame_runs(frames: list[int]) -> Iterator[tuple[int, int]]:
    """(guest-physical address, page count) of each run of consecutive frames."""
    for frame, n in _runs(frames, 1):
        yield frame << PAGE_SHIFT, n


def save_pages(memory: GuestMemory, writer: StreamWriter) -> int:
    """Write every non-zero page as PAGE_DATA records; returns how many pages. Each run of
    consecutive pages is one view, so the file sees one write per run."""
    return send_pages(memory, writer, nonzero_pages(memory))


def send_pages(memory: GuestMemory, writer: StreamWriter, pages: list[int], *,
               live: bool = False) -> int:
    """Write `pages` (guest-physical addresses, in order; zero ones too: in a live save a
    page the guest cleared must reach the other side) as PAGE_DATA records. `live`: the
    guest runs and writes on, so each batch is copied first (the record's CRC must match
    what is written); what it writes meanwhile is in the dirty logs for the next round."""
    for i in range(0, len(pages), PAGE_DATA_BATCH):
        batch = pages[i : i + PAGE_DATA_BATCH]
        data: list[memoryview | bytes] = [memory.view(gpa, n * PAGE_SIZE) if not live
                                          else memory.read(gpa, n * PAGE_SIZE)
                                          for gpa, n in _runs(batch)]
        writer.pages([gpa >> PAGE_SHIFT for gpa in batch], data)
    return len(pages)


def discard(memory: GuestMemory) -> None:
    """Give every page of RAM back to the kernel (MADV_REMOVE punches a hole in the memfd,
    which the seals allow); the pages read as zero afterwards. Only while no vCPU runs."""
    for region in memory.regions:
        if region.private:
            region.zero(0, region.size)
        else:
            region.map.madvise(mmap.MADV_REMOVE, 0, region.size)


def map_clone(memory: GuestMemory) -> None:
    """Make every RAM region private zero pages (its memfd closed), for `map_pages` to map
    an image over: what a clone's process writes stays its own. Only while no vCPU runs."""
    for region in memory.regions:
        region.make_private()


def map_pages(memory: GuestMemory, record: Record, fd: int, *, verified: bool = False) -> int:
    """Map one PAGE_DATA record's pages copy-on-write from the image file `fd` (whose
    offsets are the stream's) into a clone's private RAM (`map_clone`), instead of reading
    them into it; the record's CRC is checked over the file's octets, unless `verified`
    (the whole image was, before). Returns how many pages."""
    frames = record.page_frames()
    offset = record.data_offset
    if offset % PAGE_SIZE:
        raise record.error(StreamRecordError,
                           "a version 1 image cannot be cloned: its pages are not "
                           "page-aligned in the file (save the domain again)")
    end = offset + len(frames) * PAGE_SIZE
    if os.lseek(fd, 0, os.SEEK_CUR) != offset or os.fstat(fd).st_size < end:
        raise record.error(StreamRecordError,
                           "pages cannot be mapped: the file is not the stream from its "
                           "start, or ends before them")
    for gpa, n in _frame_runs(frames):
        try:
            view = memory.view(gpa, n * PAGE_SIZE)
        except GuestMemoryError as e:
            raise record.error(StreamRecordError, str(e)) from None
        if memory.is_ram(gpa, n * PAGE_SIZE):
            region = next(r for r in memory.regions if r.gpa <= gpa < r.end)
            region.map_private_file(gpa - region.gpa, n * PAGE_SIZE, fd, offset)
            if verified:  # the caller checked the whole image once, for every clone
                record.skip(n * PAGE_SIZE)
            else:
                # The CRC over the file's octets there (pread: the mapping is not touched,
                # so no page is faulted into this process until the guest uses it).
                data = os.pread(fd, n * PAGE_SIZE, offset)
                if len(data) != n * PAGE_SIZE:
                    raise record.error(StreamRecordError, "the file ends inside its pages")
                record.skip(data)
        else:  # a page added outside RAM (Xen's p2m: its own memfd slot): copied
            record.readinto(view)
        offset += n * PAGE_SIZE
    record.finish()
    return len(frames)


def restore_pages(memory: GuestMemory, record: Record) -> int:
    """Read one PAGE_DATA record into guest RAM; returns how many pages. A frame outside
    the guest's RAM is refused by name (the record's index and offset)."""
    frames = record.page_frames()
    for gpa, n in _frame_runs(frames):
        try:
            view = memory.view(gpa, n * PAGE_SIZE)  # a run is one read into one view
        except GuestMemoryError as e:
            raise record.error(StreamRecordError, str(e)) from None
        record.readinto(view)
    record.finish()
    return len(frames)
