"""Guest RAM through a save stream (PAGE_DATA): only non-zero pages travel, they land
where they were, and the pages left out read as zero on the restored side."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import pytest

from xenopus.memory import image
from xenopus.memory.guest import MMIO_HOLE_END, PAGE_SIZE, GuestMemory
from xenopus.stream import REC_PAGE_DATA, StreamError, StreamReader, StreamRecordError, StreamWriter


@pytest.fixture
def mems():
    a, b = GuestMemory.create(8 << 20), GuestMemory.create(8 << 20)
    yield a, b
    a.close()
    b.close()


def _restore(mem: GuestMemory, data: bytes) -> int:
    image.discard(mem)
    return sum(image.restore_pages(mem, rec) for rec in StreamReader(io.BytesIO(data)))


def test_pages_round_trip_and_zero_pages_stay_out(mems) -> None:
    a, b = mems
    a.write(0x1000, b"first page")
    a.write(0x7FF000, b"\xff" * PAGE_SIZE)  # the last page
    a.write(0x3000, bytes(PAGE_SIZE))  # written, but all zeros: not sent
    for i in range(1100):  # a run longer than one PAGE_DATA record
        a.write_u32(0x100000 + i * PAGE_SIZE, i + 1)
    b.write(0x5000, b"stale contents of the target")
    out = io.BytesIO()
    w = StreamWriter(out)
    assert image.save_pages(a, w) == 2 + 1100
    w.end()
    assert _restore(b, out.getvalue()) == 1102
    assert b.read(0, 8 << 20) == a.read(0, 8 << 20)  # the stale page is zero again


def test_memory_above_4g_is_addressed_by_frame(monkeypatch) -> None:
    monkeypatch.setattr("xenopus.memory.guest.MMIO_HOLE_START", 4 << 20)
    a, b = GuestMemory.create(8 << 20), GuestMemory.create(8 << 20)
    try:
        assert a.regions[1].gpa == MMIO_HOLE_END
        a.write(MMIO_HOLE_END + 0x2000, b"high")
        out = io.BytesIO()
        w = StreamWriter(out)
        image.save_pages(a, w)
        w.end()
        _restore(b, out.getvalue())
        assert b.read(MMIO_HOLE_END + 0x2000, 4) == b"high"
    finally:
        a.close()
        b.close()


def test_a_frame_outside_ram_is_refused_by_record(mems) -> None:
    _, b = mems
    out = io.BytesIO()
    w = StreamWriter(out)
    w.pages([0x1000], [bytes(PAGE_SIZE)])  # 16 MiB: outside the 8 MiB of RAM
    w.end()
    with pytest.raises(StreamRecordError, match=r"record 0 PAGE_DATA .* not in guest RAM"):
        _restore(b, out.getvalue())


def test_a_page_data_length_that_disagrees_with_its_count_is_refused(mems) -> None:
    _, b = mems
    out = io.BytesIO()
    w = StreamWriter(out)
    w.record(REC_PAGE_DATA, struct.pack("<IIQ", 2, 0, 1), bytes(PAGE_SIZE))
    w.end()
    with pytest.raises(StreamRecordError, match="PAGE_DATA of 2 pages cannot be"):
        _restore(b, out.getvalue())


# -- clones: RAM mapped copy-on-write from the image file ------------------------------
def _image_file(tmp_path, mem: GuestMemory) -> tuple[str, int]:
    path = tmp_path / "ram.img"
    with open(path, "wb") as out:
        w = StreamWriter(out)
        w.record(0x80000009, b"a record that unaligns what follows")  # optional
        image.save_pages(mem, w)
        w.end()
    return str(path), path.stat().st_size


def _clone(path: str, size: int = 8 << 20, *, verified: bool = False) -> GuestMemory:
    mem = GuestMemory.create(size)
    image.map_clone(mem)
    with open(path, "rb", buffering=0) as f:
        for rec in StreamReader(f):
            if rec.type == REC_PAGE_DATA:
                image.map_pages(mem, rec, f.fileno(), verified=verified)
    return mem


def test_a_clone_of_a_verified_image_reads_no_page(mems, tmp_path) -> None:
    a, _ = mems
    for i in range(300):
        a.write_u32(0x100000 + i * PAGE_SIZE, i + 1)
    path, _ = _image_file(tmp_path, a)
    clone = _clone(path, verified=True)
    try:
        assert _rss_kib(clone) == (0, 0)  # mapped, and nothing faulted in
        assert clone.read(0, 8 << 20) == a.read(0, 8 << 20)
    finally:
        clone.close()


def _rss_kib(mem: GuestMemory) -> tuple[int, int]:
    """(Rss, Anonymous) in KiB of the mappings behind `mem`'s first RAM region, summed
    over the pieces a clone's file mappings split it into (/proc/self/smaps)."""
    region = mem.regions[0]
    lo, hi = region.host_address, region.host_address + region.size
    rss = dirty = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = lo <= int(m[1], 16) and int(m[2], 16) <= hi
        elif inside and line.startswith(("Rss:", "Anonymous:")):
            kib = int(line.split()[1])
            if line.startswith("Rss:"):
                rss += kib
            else:
                dirty += kib
    return rss, dirty


def test_a_clone_maps_the_image_copy_on_write(mems, tmp_path) -> None:
    a, _ = mems
    a.write(0x1000, b"first page")
    for i in range(1100):  # runs across two PAGE_DATA records
        a.write_u32(0x100000 + i * PAGE_SIZE, i + 1)
    path, _ = _image_file(tmp_path, a)
    one, two = _clone(path), _clone(path)
    try:
        assert one.read(0, 8 << 20) == a.read(0, 8 << 20) == two.read(0, 8 << 20)
        assert all(r.private and r.fd == -1 for r in one.regions)
        one.write(0x1000, b"one's own")  # copy-on-write: neither the file nor the other sees it
        assert two.read(0x1000, 10) == b"first page"
        assert _clone(path).read(0x1000, 10) == b"first page"
        one.discard(0x100000, PAGE_SIZE)  # a private range discards to zeros, not the file
        assert one.read_u32(0x100000) == 0
        assert two.read_u32(0x100000) == 1
        # later saves of a clone (no memfd holes to skip) see every page as it is now
        out = io.BytesIO()
        w = StreamWriter(out)
        assert image.save_pages(one, w) == 1 + 1099
    finally:
        one.close()
        two.close()


def test_clones_share_the_pages_they_only_read(mems, tmp_path) -> None:
    a, _ = mems
    for i in range(512):  # 2 MiB of pages
        a.write_u32(i * PAGE_SIZE, i + 1)
    path, _ = _image_file(tmp_path, a)
    clone = _clone(path)
    try:
        assert sum(clone.read_u32(i * PAGE_SIZE) for i in range(512)) == 512 * 513 // 2
        rss, dirty = _rss_kib(clone)
        assert rss >= 2048 and dirty == 0  # read: the page cache's pages, no copy of its own
        for i in range(16):
            clone.write_u32(i * PAGE_SIZE, 0)
        assert _rss_kib(clone)[1] == 16 * 4  # only what it wrote is its own
    finally:
        clone.close()


def test_a_damaged_or_unmappable_image_is_refused_by_record(mems, tmp_path) -> None:
    a, _ = mems
    a.write(0x1000, b"page")
    path, size = _image_file(tmp_path, a)
    data = bytearray(Path(path).read_bytes())
    page = data.index(b"page")
    data[page] ^= 1
    bad = tmp_path / "bad.img"
    bad.write_bytes(data)
    with pytest.raises(StreamError, match="PAGE_DATA.*checksum") as e:
        _clone(str(bad)).close()
    assert "record 1" in str(e.value)
    # a version 1 image (pages not page-aligned in the file) cannot be mapped
    body = struct.pack("<IIQ", 1, 0, 1) + b"x" * PAGE_SIZE
    v1 = bytearray(b"XENOPUS\x00" + struct.pack(">IHHB3x", 1, 0, 1, 12))
    v1 += struct.pack(">I", zlib.crc32(v1))
    v1 += struct.pack("<IIII", REC_PAGE_DATA, len(body),
                      zlib.crc32(struct.pack("<II", REC_PAGE_DATA, len(body)) + body), 0) + body
    old = tmp_path / "v1.img"
    old.write_bytes(bytes(v1) + struct.pack("<IIII", 0, 0, zlib.crc32(bytes(8)), 0))
    with pytest.raises(StreamRecordError, match="version 1 image cannot be cloned"):
        _clone(str(old)).close()
    # a file cut inside the page contents: refused before anything is mapped past its end
    cut = tmp_path / "cut.img"
    cut.write_bytes(Path(path).read_bytes()[: page + 10])
    with pytest.raises(StreamRecordError, match="ends before them"):
        _clone(str(cut)).close()


def _runs_page_by_page(pages: list[int]) -> list[tuple[int, int]]:
    """The definition: a run ends where the next page is not the one after."""
    out: list[tuple[int, int]] = []
    for p in pages:
        if out and p == out[-1][0] + out[-1][1] * PAGE_SIZE:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def test_runs_split_pages_as_walking_them_one_by_one_does() -> None:
    import random

    rng = random.Random(7)
    cases = [[], [0x1000], list(range(0, 1024 * PAGE_SIZE, PAGE_SIZE)),
             [0, PAGE_SIZE, 3 * PAGE_SIZE, 4 * PAGE_SIZE, 9 * PAGE_SIZE],
             [5 * PAGE_SIZE, 0, PAGE_SIZE],  # not in order: walked page by page
             [0, 0, PAGE_SIZE, 2 * PAGE_SIZE],  # a repeat
             [0, 2 * PAGE_SIZE - 1, 2 * PAGE_SIZE]]  # not page-aligned
    for _ in range(200):
        frames = sorted(rng.sample(range(4096), rng.randint(1, 600)))
        if rng.random() < 0.5:  # long stretches with a few holes, as a guest writes
            frames = sorted(set(range(rng.randint(0, 100), rng.randint(200, 3000)))
                            - set(rng.sample(range(3000), rng.randint(0, 5))))
        cases.append([f * PAGE_SIZE for f in frames])
    for pages in cases:
        assert list(image._runs(pages)) == _runs_page_by_page(pages), pages[:20]


def test_frame_runs_are_the_runs_of_the_frames_addresses() -> None:
    for frames in ([7], list(range(100, 1124)), [1, 2, 3, 10, 11, 40], [3, 1, 2], [4, 4, 5]):
        want = [(gpa, n) for gpa, n in _runs_page_by_page([f * PAGE_SIZE for f in frames])]
        assert list(image._frame_runs(frames)) == want, frames
