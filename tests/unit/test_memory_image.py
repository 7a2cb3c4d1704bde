"""Guest RAM through a save stream (PAGE_DATA): only non-zero pages travel, they land
where they were, and the pages left out read as zero on the restored side."""

from __future__ import annotations

import io
import struct

import pytest

from xenopus.memory import image
from xenopus.memory.guest import MMIO_HOLE_END, PAGE_SIZE, GuestMemory
from xenopus.stream import REC_PAGE_DATA, StreamReader, StreamRecordError, StreamWriter


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
