"""The save/restore stream (docs/snapshot-stream.md): layout, round trips, and a reader that
refuses every damaged stream with an error naming the record."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

import pytest

from xenopus import stream as s


def _image(records: list[tuple[int, bytes]], *, end: bool = True) -> bytes:
    out = io.BytesIO()
    w = s.StreamWriter(out)
    for rtype, body in records:
        w.record(rtype, body)
    if end:
        w.end()
    return out.getvalue()


def _read_all(data: bytes, **kw: object) -> list[tuple[int, bytes]]:
    r = s.StreamReader(io.BytesIO(data), **kw)
    return [(rec.type, rec.body()) for rec in r]


class _Pipe(io.RawIOBase):
    """A non-seekable file that reads and writes at most 7 octets per call, as a pipe may."""

    def __init__(self, data: bytes = b""):
        self.data = bytearray(data)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:
        n = min(len(b), 7, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def write(self, b: memoryview) -> int:
        n = min(len(b), 7)
        self.data += bytes(b[:n])
        return n

    def seek(self, *a: object) -> int:
        raise io.UnsupportedOperation("a pipe does not seek")


def test_image_header_layout_is_big_endian_as_documented():
    data = _image([])
    assert len(data) == 24 + 16  # image header + an END record
    assert data[:8] == b"XENOPUS\x00"
    version, options, arch, page_shift = struct.unpack(">IHHB", data[8:17])
    assert (version, options, arch, page_shift) == (2, 0, 1, 12)
    assert data[17:20] == bytes(3)
    assert struct.unpack(">I", data[20:24])[0] == zlib.crc32(data[:20])


def test_record_layout_header_crc_and_padding():
    data = _image([(s.REC_PART, b"abc")])[24:]
    rtype, length, crc, reserved = struct.unpack("<IIII", data[:16])
    assert (rtype, length, reserved) == (s.REC_PART, 3, 0)
    assert crc == zlib.crc32(struct.pack("<II", rtype, length) + b"abc")
    assert data[16:24] == b"abc" + bytes(5)  # padded to 8 octets
    assert data[24:] == struct.pack("<IIII", 0, 0, zlib.crc32(bytes(8)), 0)  # END


def test_round_trip_through_a_pipe_that_cannot_seek():
    pipe = _Pipe()
    w = s.StreamWriter(pipe)
    w.part("legacy", "serial0", {"version": 1, "regs": b"\x00\x01\xff", "fifo": [1, 2]})
    page = bytearray(os.urandom(4096))
    w.pages([5], [memoryview(page)])
    w.end()
    r = s.StreamReader(_Pipe(bytes(pipe.data)))
    recs = iter(r)
    kind, name, state = next(recs).part()
    assert (kind, name, state) == ("legacy", "serial0",
                                   {"version": 1, "regs": b"\x00\x01\xff", "fifo": [1, 2]})
    rec = next(recs)
    assert rec.page_frames() == [5]
    dest = bytearray(4096)
    rec.readinto(dest)
    rec.finish()
    assert dest == page
    assert list(recs) == []
    assert r.ended


def test_unknown_optional_records_are_skipped_unknown_mandatory_refused():
    optional = s.OPTIONAL | 0x42
    data = _image([(optional, b"from the future"), (s.REC_PART, b"x")])
    assert _read_all(data) == [(s.REC_PART, b"x")]
    with pytest.raises(s.StreamRecordError, match=r"record 0 unknown \(type 0x42\) at offset 24: unknown mandatory"):
        _read_all(_image([(0x42, b"")]))


def test_a_checksum_error_in_a_skipped_optional_record_is_still_caught():
    data = bytearray(_image([(s.OPTIONAL | 7, b"12345678")]))
    data[24 + 16] ^= 1
    with pytest.raises(s.StreamChecksumError, match="record 0"):
        _read_all(bytes(data))


@pytest.mark.parametrize(
    ("patch", "error", "message"),
    [
        (lambda d: d.__setitem__(slice(0, 8), b"NOTXENOP"), s.StreamHeaderError, "not a xenopus"),
        (lambda d: d.__setitem__(slice(8, 12), struct.pack(">I", 1)), s.StreamHeaderError, "checksum"),
    ],
)
def test_header_errors(patch, error, message):
    data = bytearray(_image([]))
    patch(data)
    with pytest.raises(error, match=message):
        _read_all(bytes(data))


def _with_header(version: int = 2, options: int = 0, arch: int = 1, shift: int = 12) -> bytes:
    head = struct.pack(">8sIHHB3x", b"XENOPUS\x00", version, options, arch, shift)
    return head + struct.pack(">I", zlib.crc32(head)) + _image([])[24:]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 3}, "stream version 3; this xenopus reads versions 1, 2"),
        ({"version": 0}, "stream version 0"),
        ({"options": 1}, "big-endian"),
        ({"options": 4}, "unknown image options"),
        ({"arch": 9}, "unknown architecture 9"),
        ({"shift": 40}, "page shift 40"),
    ],
)
def test_wrong_version_byte_order_or_architecture(fields, message):
    with pytest.raises(s.StreamHeaderError, match=message):
        _read_all(_with_header(**fields))
    assert s.StreamReader(io.BytesIO(_with_header(arch=2))).header.arch == s.ARCH_ARM64


def test_truncated_stream_names_the_record_and_offset():
    data = _image([(s.REC_PART, b"0123456789")])
    with pytest.raises(s.StreamTruncatedError, match=r"record 0 PART \(type 0x2\) at offset 24"):
        _read_all(data[:24 + 16 + 4])
    with pytest.raises(s.StreamTruncatedError, match="no END record"):
        _read_all(data[:24 + 16 + 16])
    with pytest.raises(s.StreamTruncatedError):
        _read_all(data[:10])


def test_oversize_length_is_refused_before_reading():
    head = struct.pack("<IIII", s.REC_PART, s.MAX_BODY_LENGTH + 1, 0, 0)
    data = _image([], end=False) + head
    with pytest.raises(s.StreamRecordError, match="exceeds the maximum"):
        _read_all(data)


def test_nothing_is_read_after_end():
    data = _image([]) + b"trailing garbage"
    f = io.BytesIO(data)
    r = s.StreamReader(f)
    assert list(r) == []
    assert f.tell() == 40  # the reader stops at END: a pipe can carry more after it


def test_malformed_bodies_name_the_record():
    w_out = io.BytesIO()
    w = s.StreamWriter(w_out)
    w.record(s.REC_PART, b"{not json")
    w.record(s.REC_PAGE_DATA, struct.pack("<II", 0, 0))
    w.end()
    recs = iter(s.StreamReader(io.BytesIO(w_out.getvalue())))
    with pytest.raises(s.StreamRecordError, match="record 0 PART.*malformed body"):
        next(recs).part()
    with pytest.raises(s.StreamRecordError, match="record 1 PAGE_DATA.*bad PAGE_DATA count 0"):
        next(recs).page_frames()


def test_state_encoding_round_trips_and_refuses_what_it_cannot_represent():
    value = {"a": [1, -2, 3.5, "x", None, True, b"\x00" * 3], "b": {"c": b""}}
    assert s.decode_state(s.encode_state(value)) == value
    with pytest.raises(TypeError):
        s.encode_state({1: 2})
    with pytest.raises(TypeError):
        s.encode_state({"x": object()})
    with pytest.raises(ValueError):
        s.decode_state(b'{"$b": "not base64!"}')
    with pytest.raises(ValueError):
        s.decode_state(b"[" * 100000)


def test_fuzzed_corruption_never_passes_silently():
    """Flip, truncate or overwrite random octets of a valid stream: the reader either
    raises a StreamError or returns exactly the original records (a flip that hit
    nothing checked, e.g. never happens: every octet is covered by a CRC or a check)."""
    rng = random.Random(1234)
    records = [(s.REC_PART, s.encode_state({"n": i, "blob": rng.randbytes(rng.randrange(40))}))
               for i in range(6)]
    records.insert(3, (s.OPTIONAL | 9, b"skip me"))
    good = _image(records)
    expected = [r for r in records if r[0] == s.REC_PART]
    assert _read_all(good) == expected
    for trial in range(2000):
        data = bytearray(good)
        how = trial % 3
        if how == 0:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif how == 1:
            data = data[: rng.randrange(len(data))]
        else:
            i = rng.randrange(len(data) - 4)
            data[i : i + 4] = rng.randbytes(4)
        if data == good:
            continue
        with pytest.raises(s.StreamError):
            _read_all(bytes(data))


def test_page_data_contents_must_be_whole_pages_matching_the_frames():
    w = s.StreamWriter(io.BytesIO())
    w.pages([1, 2], [bytes(8192)])  # one piece for a run of two pages
    with pytest.raises(ValueError, match="not 2 pages"):
        w.pages([1, 2], [bytes(4096)])
    with pytest.raises(ValueError, match="1..1024 pages"):
        w.pages([], [])


def test_page_contents_start_page_aligned_in_the_stream_whatever_came_before():
    out = io.BytesIO()
    w = s.StreamWriter(out)
    w.record(s.REC_PART, b"x" * 13)  # the next record starts at no page boundary
    w.pages([7, 8, 100], [bytes([1]) * 8192, bytes([2]) * 4096])
    w.pages([3], [bytes([3]) * 4096])
    w.end()
    data = out.getvalue()
    r = s.StreamReader(io.BytesIO(data))
    recs = iter(r)
    next(recs).body()
    seen = []
    for rec in recs:
        frames = rec.page_frames()
        assert rec.data_offset % 4096 == 0
        page = rec.read(4096)
        assert data[rec.data_offset : rec.data_offset + 4096] == page  # really there
        seen.append((frames, page[0]))
        rec.finish()
    assert seen == [([7, 8, 100], 1), ([3], 3)]


def _v1_page_record(frames: list[int], pages: bytes) -> bytes:
    """A PAGE_DATA record as version 1 wrote it: the pages right after the frames."""
    body = struct.pack("<II", len(frames), 0) + struct.pack(f"<{len(frames)}Q", *frames) + pages
    crc = zlib.crc32(struct.pack("<II", s.REC_PAGE_DATA, len(body)) + body)
    return struct.pack("<IIII", s.REC_PAGE_DATA, len(body), crc, 0) + body


def test_a_version_1_stream_is_still_read():
    data = _with_header(version=1)[:24] + _v1_page_record([5], b"\x09" * 4096) + _image([])[24:]
    r = s.StreamReader(io.BytesIO(data))
    assert r.header.version == 1
    rec = r.next_record()
    assert rec.page_frames() == [5]
    assert rec.data_offset == 24 + 16 + 8 + 8  # not aligned: such an image cannot be cloned
    assert rec.read(4096) == b"\x09" * 4096
    rec.finish()
    assert r.next_record().type == s.REC_END
    # position()/resume carry the version: a resumed reader reads version 1 records too
    r = s.StreamReader(io.BytesIO(data))
    pos = r.position()
    assert pos.version == 1
    f = io.BytesIO(data)
    f.seek(pos.offset)
    assert s.StreamReader.resume(f, pos).next_record().page_frames() == [5]


def test_a_version_1_page_record_with_padding_is_refused():
    body = struct.pack("<II", 1, 8) + struct.pack("<Q", 5) + bytes(8) + bytes(4096)
    crc = zlib.crc32(struct.pack("<II", s.REC_PAGE_DATA, len(body)) + body)
    data = (_with_header(version=1)[:24] + struct.pack("<IIII", s.REC_PAGE_DATA, len(body), crc, 0)
            + body + _image([])[24:])
    with pytest.raises(s.StreamRecordError, match="reserved PAGE_DATA field"):
        s.StreamReader(io.BytesIO(data)).next_record().page_frames()


def test_version_2_padding_must_be_zero_and_align_the_pages():
    out = io.BytesIO()
    w = s.StreamWriter(out)
    w.pages([1], [bytes(4096)])
    w.end()
    good = out.getvalue()
    bad = bytearray(good)
    bad[24 + 16 + 16] = 1  # a padding octet
    with pytest.raises(s.StreamRecordError, match="non-zero PAGE_DATA padding"):
        s.StreamReader(io.BytesIO(bytes(bad))).next_record().page_frames()
    # the same record 16 octets later (after an empty optional record): the pages it
    # carries would no longer be page-aligned
    rec_len = struct.unpack("<I", good[28:32])[0]
    record = good[24 : 24 + 16 + rec_len]
    shifted = good[:24] + _image([(s.OPTIONAL | 9, b"")])[24:40] + record + good[24 + 16 + rec_len:]
    with pytest.raises(s.StreamRecordError, match="not page-aligned"):
        it = iter(s.StreamReader(io.BytesIO(shifted)))
        next(it).page_frames()


def test_the_documented_record_types_are_the_code_s():
    """docs/snapshot-stream.md's record-type table names every type the code writes, with
    its number, and no other; the ROUND body is the 16 octets it draws; the title's
    version is the one written."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "snapshot-stream.md").read_text()
    table = doc.split("### Record types", 1)[1].split("\n\n", 2)[1]
    documented = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1]:  # a named type, not a reserved range
            documented[int(cells[0], 16)] = cells[1]
    assert documented == s.RECORD_NAMES
    assert s.ROUND_BODY.size == 16
    assert doc.startswith(f"# The xenopus save stream, version {s.VERSION}\n")
    assert s.READ_VERSIONS == (1, 2)  # "reads versions 1 and 2"
