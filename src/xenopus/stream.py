"""The save/restore stream: a versioned, record-based, checksummed format (docs/snapshot-stream.md).

Modelled on Xen's domain image format (xen.git docs/specs/libxc-migration-stream.pandoc):
an image header, then typed, length-prefixed records padded to 8 octets, closed by an END
record. Unlike Xen's, every record header carries a CRC-32 of its type, length and body.
Record types with bit 31 set are optional: a reader that does not know one skips it;
an unknown mandatory record is an error.

Pure data over any binary file object: the writer never seeks (a pipe works) and writes
page contents from `memoryview`s without copying them; the reader trusts nothing it reads
and names the record (type, index, offset) in every error. It imports nothing from the
rest of xenopus, so any layer may use it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

Buffer = bytes | bytearray | memoryview

MAGIC = b"XENOPUS\x00"
# 2: PAGE_DATA pads its frame list so that page contents start at a stream offset that
# is a multiple of the page size (a file's pages can be mapped copy-on-write: clones).
# Version 1 streams (contents right after the frames) are still read.
VERSION = 2
READ_VERSIONS = (1, 2)

# Image header options (bit 0: the byte order of everything after the image header).
OPTION_BIG_ENDIAN = 1 << 0

# Image header architectures: what the vCPU and platform records describe.
ARCH_X86_64 = 1
ARCH_ARM64 = 2
ARCH_NAMES = {ARCH_X86_64: "x86_64", ARCH_ARM64: "arm64"}

# The image header is big-endian whatever the options say (as Xen's is), so a reader can
# learn the byte order before it depends on it: magic, version, options, arch,
# page_shift, 3 reserved octets, CRC-32 of the preceding 20 octets.
_IMAGE_HEADER = struct.Struct(">8sIHHB3xI")
IMAGE_HEADER_SIZE = _IMAGE_HEADER.size  # 24
# A record header: type, body_length, CRC-32 (of type, body_length and body), reserved.
_RECORD_HEADER = struct.Struct("<IIII")
RECORD_HEADER_SIZE = _RECORD_HEADER.size  # 16
_TYPE_AND_LENGTH = struct.Struct("<II")
ALIGN = 8

OPTIONAL = 1 << 31
# Mandatory record types.
REC_END = 0x0000_0000
REC_PAGE_DATA = 0x0000_0001
REC_PART = 0x0000_0002
REC_DOMAIN_CONFIG = 0x0000_0003
# Optional record types (a reader may skip them).
REC_ROUND = OPTIONAL | 0x0000_0001
RECORD_NAMES = {REC_END: "END", REC_PAGE_DATA: "PAGE_DATA", REC_PART: "PART",
                REC_DOMAIN_CONFIG: "DOMAIN_CONFIG", REC_ROUND: "ROUND"}

# A body larger than a full PAGE_DATA batch (the largest record written) is refused before
# it is read: a corrupt length must not make the reader allocate or wait for gigabytes.
PAGE_DATA_BATCH = 1024


def max_body_length(page_size: int) -> int:
    """A full PAGE_DATA batch, with the most alignment padding (version 2) a body can have."""
    return 8 + PAGE_DATA_BATCH * (8 + page_size) + page_size - ALIGN


MAX_BODY_LENGTH = max_body_length(4096)
# ROUND: the pre-copy round about to be sent (0: the stop-and-copy round), reserved, and
# how many pages it sends.
ROUND_BODY = struct.Struct("<IIQ")
# PAGE_DATA: count, padding octets (version 1: reserved, zero), then `count` page frame
# numbers, the padding, then the pages.
_PAGE_DATA_HEAD = struct.Struct("<II")


def record_name(rtype: int) -> str:
    name = RECORD_NAMES.get(rtype)
    if name is None:
        name = "optional" if rtype & OPTIONAL else "unknown"
    return f"{name} (type {rtype:#x})"


class StreamError(Exception):
    """The stream cannot be read; `record_type`, `index` and `offset` (of the record's
    header in the stream) say where, when a record was involved."""

    def __init__(
        self,
        problem: str,
        *,
        record_type: int | None = None,
        index: int | None = None,
        offset: int | None = None,
    ):
        self.problem = problem
        self.record_type = record_type
        self.index = index
        self.offset = offset
        where = ""
        if index is not None:
            what = record_name(record_type) if record_type is not None else "header"
            where = f"record {index} {what} at offset {offset}: "
        elif offset is not None:
            where = f"offset {offset}: "
        super().__init__(where + problem)


class StreamHeaderError(StreamError):
    """Not a xenopus stream, or one of a version, byte order or architecture not read here."""


class StreamTruncatedError(StreamError):
    """The stream ended before its END record."""


class StreamChecksumError(StreamError):
    """A record's CRC-32 does not match its contents."""


class StreamRecordError(StreamError):
    """A record that cannot be accepted: oversize, unknown mandatory, or malformed body."""


@dataclass(frozen=True)
class StreamHeader:
    """The stream's header (`version`, the `arch` code, `page_shift`)."""

    version: int
    arch: int
    page_shift: int

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift


@dataclass(frozen=True)
class StreamPosition:
    """A point between two records of a stream, with what a reader resuming there must
    know of its header."""

    offset: int
    index: int
    arch: int
    page_shift: int
    version: int = VERSION


def read_domain_config(inp: BinaryIO) -> tuple[object, StreamReader]:
    """The image header and the DOMAIN_CONFIG record (which must come first) of a save
    image: the config as plain data, and the reader, positioned after it."""
    reader = StreamReader(inp)
    record = reader.next_record()
    if record.type != REC_DOMAIN_CONFIG:
        raise record.error(StreamRecordError,
                           "a save image starts with its DOMAIN_CONFIG record")
    return record.decoded(), reader


def _pad(length: int) -> int:
    return -length % ALIGN


_ZEROS = bytes(ALIGN)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # writev's limit
_PAGE_ZEROS = bytes(1 << 16)  # the largest page size a stream may have


def _page_padding(n: int) -> memoryview:
    return memoryview(_PAGE_ZEROS)[:n]


class StreamWriter:
    """Writes an image header, then records, then END. Every write goes straight to `out`
    (no seeking, so a pipe or socket file works); pieces are passed through as given."""

    def __init__(self, out: BinaryIO, *, arch: int = ARCH_X86_64, page_shift: int = 12):
        self.out = out
        # An unbuffered file (a pipe, a socket's file, the save file): each record goes
        # out in one writev(2), header, pieces and padding together, instead of a write
        # per piece.
        self._fd = out.fileno() if isinstance(out, io.FileIO) else None
        self.offset = 0
        self.records = 0
        self.page_size = 1 << page_shift
        self.max_body = max_body_length(self.page_size)
        head = _IMAGE_HEADER.pack(MAGIC, VERSION, 0, arch, page_shift, 0)
        crc = zlib.crc32(head[: IMAGE_HEADER_SIZE - 4])
        self._write(_IMAGE_HEADER.pack(MAGIC, VERSION, 0, arch, page_shift, crc))

    def _write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.out.write(view)
            if n is None:  # a non-blocking file with no room: not something we drive
                raise BlockingIOError("the stream's file would block")
            view = view[n:]
            self.offset += n

    def record(self, rtype: int, *pieces: Buffer) -> None:
        """One record whose body is `pieces` back to back (bytes or memoryviews)."""
        views = [memoryview(p).cast("B") for p in pieces]
        length = sum(len(v) for v in views)
        if length > self.max_body:
            raise ValueError(f"{record_name(rtype)} body of {length} bytes exceeds the maximum")
        crc = zlib.crc32(_TYPE_AND_LENGTH.pack(rtype, length))
        for v in views:
            crc = zlib.crc32(v, crc)
        out = [memoryview(_RECORD_HEADER.pack(rtype, length, crc, 0)), *views]
        if pad := _pad(length):
            out.append(memoryview(_ZEROS)[:pad])
        if self._fd is None:
            for v in out:
                self._write(v)
        else:
            self._writev(out)
        self.records += 1

    def _writev(self, views: list[memoryview]) -> None:
        """All of `views`, in order, in as few writev(2) calls as the file takes."""
        i = 0
        while i < len(views):
            n = os.writev(self._fd, views[i : i + _IOV_MAX])  # type: ignore[arg-type]
            self.offset += n
            while i < len(views) and n >= len(views[i]):  # the views written whole
                n -= len(views[i])
                i += 1
            if n:  # one written in part: the rest of it first
                views[i] = views[i][n:]

    def part(self, kind: str, name: str, state: object) -> None:
        """A PART record: one inventory part's saved state (see `encode_state`)."""
        self.record(REC_PART, encode_state({"kind": kind, "name": name, "state": state}))

    def domain_config(self, config: object) -> None:
        """The DOMAIN_CONFIG record, first after the header: the domain's configuration
        as plain data (`DomainConfig.to_dict()`), from which the restoring side builds it."""
        if self.records:
            raise ValueError("DOMAIN_CONFIG must be the stream's first record")
        self.record(REC_DOMAIN_CONFIG, encode_state(config))

    def pages(self, frames: list[int], data: list[Buffer]) -> None:
        """A PAGE_DATA record: the pages numbered `frames` (guest-physical address >> page
        shift); `data` is their contents in that order, in pieces of any whole number of
        pages (a run of consecutive pages can be one view)."""
        if not 0 < len(frames) <= PAGE_DATA_BATCH:
            raise ValueError(f"a PAGE_DATA record holds 1..{PAGE_DATA_BATCH} pages")
        if sum(memoryview(d).nbytes for d in data) != len(frames) * self.page_size:
            raise ValueError(f"PAGE_DATA contents are not {len(frames)} pages")
        # Zeros after the frames so the first page starts at a multiple of the page size.
        before = self.offset + RECORD_HEADER_SIZE + _PAGE_DATA_HEAD.size + 8 * len(frames)
        pad = -before % self.page_size
        head = _PAGE_DATA_HEAD.pack(len(frames), pad)
        self.record(REC_PAGE_DATA, head, struct.pack(f"<{len(frames)}Q", *frames),
                    _page_padding(pad), *data)

    def round(self, number: int, pages: int) -> None:
        """A ROUND record: live pre-copy round `number` (0: stop-and-copy) sends `pages`
        pages next. A hint for whoever watches the stream go by (a progress bar)."""
        self.record(REC_ROUND, ROUND_BODY.pack(number, 0, pages))

    def end(self) -> None:
        self.record(REC_END)
        self.out.flush()


class Record:
    """A record being read: its header fields, and its body read piece by piece (`read`,
    `readinto`) or whole (`body`). `finish` (called by the reader before it moves on)
    consumes the rest and checks the padding and the CRC."""

    def __init__(self, reader: StreamReader, rtype: int, length: int, crc: int, index: int,
                 offset: int):
        self._reader = reader
        self.type = rtype
        self.length = length
        self.index = index
        self.offset = offset
        self.remaining = length
        self._expected = crc
        self._crc = zlib.crc32(_TYPE_AND_LENGTH.pack(rtype, length))
        self.finished = False
        self.data_offset = -1  # PAGE_DATA: where the page contents start (page_frames)
        self.unchecked = False  # some of the body was skipped unread: no CRC to compare

    @property
    def optional(self) -> bool:
        return bool(self.type & OPTIONAL)

    def error(self, cls: type[StreamError], problem: str) -> StreamError:
        return cls(problem, record_type=self.type, index=self.index, offset=self.offset)

    def readinto(self, buf: Buffer) -> None:
        """Fill `buf` (e.g. a view of guest memory) with the next len(buf) body octets."""
        view = memoryview(buf).cast("B")
        if len(view) > self.remaining:
            raise self.error(StreamRecordError,
                             f"body too short: {len(view)} more octets needed, "
                             f"{self.remaining} left")
        self._reader._fill(view, self)
        self._crc = zlib.crc32(view, self._crc)
        self.remaining -= len(view)

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def body(self) -> bytes:
        """The rest of the body; the record is then finished (its CRC checked)."""
        data = self.read(self.remaining)
        self.finish()
        return data

    def finish(self) -> None:
        if self.finished:
            return
        if self.remaining:
            self.readinto(bytearray(self.remaining))
        pad = bytearray(_pad(self.length))
        self._reader._fill(memoryview(pad), self)
        self.finished = True
        if self._crc != self._expected and not self.unchecked:
            raise self.error(StreamChecksumError,
                             f"checksum mismatch (stored {self._expected:#010x}, "
                             f"computed {self._crc:#010x})")
        if any(pad):
            raise self.error(StreamRecordError, "non-zero padding")

    # --- typed bodies ----------------------------------------------------------------------
    def part(self) -> tuple[str, str, object]:
        """A PART record's (kind, name, state); the record is finished."""
        value = self.decoded()
        if not (isinstance(value, dict) and isinstance(value.get("kind"), str)
                and isinstance(value.get("name"), str) and "state" in value):
            raise self.error(StreamRecordError, "a PART body needs kind, name and state")
        return value["kind"], value["name"], value["state"]

    def decoded(self) -> object:
        """The body as `encode_state` wrote it; the record is finished first."""
        body = self.body()
        try:
            return decode_state(body)
        except ValueError as e:
            raise self.error(StreamRecordError, f"malformed body: {e}") from None

    def page_frames(self) -> list[int]:
        """A PAGE_DATA record's frame numbers; the page contents follow (read them with
        `readinto`, or `skip` them where they are mapped from the file, then `finish`),
        starting at stream offset `data_offset`."""
        count, pad = _PAGE_DATA_HEAD.unpack(self.read(_PAGE_DATA_HEAD.size))
        header = self._reader.header
        page_size = header.page_size
        if not 0 < count <= PAGE_DATA_BATCH:
            raise self.error(StreamRecordError, f"bad PAGE_DATA count {count}")
        if header.version == 1 and pad:
            raise self.error(StreamRecordError, f"reserved PAGE_DATA field is {pad:#x}")
        if self.length != _PAGE_DATA_HEAD.size + 8 * count + pad + count * page_size:
            raise self.error(StreamRecordError,
                             f"PAGE_DATA of {count} pages cannot be {self.length} octets")
        frames = list(struct.unpack(f"<{count}Q", self.read(8 * count)))
        if pad:
            if pad >= page_size:
                raise self.error(StreamRecordError, f"PAGE_DATA padding of {pad} octets")
            if self.read(pad) != _page_padding(pad):  # at C speed: up to a page of zeros
                raise self.error(StreamRecordError, "non-zero PAGE_DATA padding")
        self.data_offset = self._reader.offset
        if header.version >= 2 and self.data_offset % page_size:
            raise self.error(StreamRecordError,
                             f"PAGE_DATA contents at offset {self.data_offset}, not "
                             "page-aligned")
        return frames

    def skip(self, data: Buffer | int) -> None:
        """Seek past the next body octets instead of reading them (pages mapped from the
        file there): `data` is those octets, read elsewhere, to checksum; or their number,
        unchecked: the record's CRC is then not compared (a caller that verified the
        whole stream before, once for many readers)."""
        n = data if isinstance(data, int) else memoryview(data).nbytes
        if n > self.remaining:
            raise self.error(StreamRecordError,
                             f"body too short: {n} more octets needed, {self.remaining} left")
        self._reader.inp.seek(n, 1)
        self._reader.offset += n
        if isinstance(data, int):
            self.unchecked = True
        else:
            self._crc = zlib.crc32(memoryview(data).cast("B"), self._crc)
        self.remaining -= n


class StreamReader:
    """Reads and checks the image header at once, then hands out records (`next_record`,
    or iterate: every record before END, unknown optional ones skipped and unknown
    mandatory ones refused). `known` is the set of record types the caller handles."""

    def __init__(self, inp: BinaryIO, *,
                 known: frozenset[int] | set[int] = frozenset(RECORD_NAMES)):
        self._start(inp, known, offset=0, index=0)
        raw = bytearray(IMAGE_HEADER_SIZE)
        self._fill(memoryview(raw), None)
        magic, version, options, arch, page_shift, crc = _IMAGE_HEADER.unpack(raw)
        if magic != MAGIC:
            raise StreamHeaderError(f"not a xenopus stream (magic {bytes(magic)!r})", offset=0)
        if zlib.crc32(raw[: IMAGE_HEADER_SIZE - 4]) != crc:
            raise StreamHeaderError("image header checksum mismatch", offset=0)
        if version not in READ_VERSIONS:
            raise StreamHeaderError(
                f"stream version {version}; this xenopus reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}", offset=0)
        if options & OPTION_BIG_ENDIAN:
            raise StreamHeaderError("big-endian stream; this xenopus reads little-endian",
                                    offset=0)
        if options:
            raise StreamHeaderError(f"unknown image options {options:#x}", offset=0)
        if arch not in ARCH_NAMES:
            raise StreamHeaderError(f"unknown architecture {arch}", offset=0)
        if not 12 <= page_shift <= 16:
            raise StreamHeaderError(f"unsupported page shift {page_shift}", offset=0)
        self.header = StreamHeader(version, arch, page_shift)
        self.max_body = max_body_length(self.header.page_size)

    def _start(self, inp: BinaryIO, known: frozenset[int] | set[int], *, offset: int,
               index: int) -> None:
        self.inp = inp
        self.known = frozenset(known) | {REC_END}
        self.offset = offset
        self.index = index
        self.ended = False
        self._current: Record | None = None

    @classmethod
    def resume(cls, inp: BinaryIO, position: StreamPosition, *,
               known: frozenset[int] | set[int] = frozenset(RECORD_NAMES)) -> StreamReader:
        """A reader that takes over a stream another reader (perhaps in another process,
        sharing the file) has read up to `position`, between two records."""
        reader = cls.__new__(cls)
        reader._start(inp, known, offset=position.offset, index=position.index)
        if position.version not in READ_VERSIONS:
            raise StreamHeaderError(f"stream version {position.version}", offset=0)
        reader.header = StreamHeader(position.version, position.arch, position.page_shift)
        reader.max_body = max_body_length(reader.header.page_size)
        return reader

    def position(self) -> StreamPosition:
        """Where this reader is, between two records (see `resume`)."""
        if self._current is not None:
            self._current.finish()
            self._current = None
        return StreamPosition(self.offset, self.index, self.header.arch,
                              self.header.page_shift, self.header.version)

    def _fill(self, view: memoryview, record: Record | None) -> None:
        got = 0
        while got < len(view):
            n = self.inp.readinto(view[got:])
            if not n:  # StreamError names the record, if any
                raise StreamTruncatedError(
                    f"stream ends at offset {self.offset + got}, "
                    f"{len(view) - got} more octets expected",
                    record_type=record.type if record else None,
                    index=record.index if record else None,
                    offset=record.offset if record else self.offset + got,
                )
            got += n
        self.offset += got

    def next_record(self) -> Record:
        """The next record, after finishing the previous one. Refuses to read past END."""
        if self._current is not None:
            self._current.finish()
            self._current = None
        if self.ended:
            raise StreamError("no records after END")
        offset = self.offset
        raw = bytearray(RECORD_HEADER_SIZE)
        try:
            self._fill(memoryview(raw), None)
        except StreamTruncatedError:
            raise StreamTruncatedError(
                f"stream ends at offset {offset} with no END record (after {self.index} "
                "records)", index=self.index, offset=offset) from None
        rtype, length, crc, reserved = _RECORD_HEADER.unpack(raw)
        rec = Record(self, rtype, length, crc, self.index, offset)
        self.index += 1
        if length > self.max_body:
            raise rec.error(StreamRecordError,
                            f"body length {length} exceeds the maximum {self.max_body}")
        if reserved:
            raise rec.error(StreamRecordError, f"reserved header field is {reserved:#x}")
        if rtype == REC_END:
            if length:
                raise rec.error(StreamRecordError, "END record with a body")
            rec.finish()
            self.ended = True
        self._current = rec
        return rec

    def __iter__(self) -> Iterator[Record]:
        while True:
            rec = self.next_record()
            if rec.type == REC_END:
                return
            if rec.type not in self.known:
                if rec.optional:
                    rec.finish()  # skipped, but still checked
                    continue
                raise rec.error(StreamRecordError, "unknown mandatory record")
            yield rec


# --- state encoding -------------------------------------------------------------------------
# A part's state is a tree of dicts (str keys), lists, ints, floats, str, bool, None and
# bytes, written as JSON with bytes as {"$b": base64}: self-describing, so a newer device
# version can add fields, and safe to read from an untrusted stream (no pickle).
_BYTES_KEY = "$b"


def _to_json(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or k == _BYTES_KEY:
                raise TypeError(f"state key {k!r} is not a plain string")
            out[k] = _to_json(v)
        return out
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} cannot be saved as state")


def _from_json(obj: dict[str, object]) -> object:
    if _BYTES_KEY in obj:
        if len(obj) != 1 or not isinstance(obj[_BYTES_KEY], str):
            raise ValueError("malformed bytes value")
        return base64.b64decode(obj[_BYTES_KEY], validate=True)
    return obj


def encode_state(value: object) -> bytes:
    return json.dumps(_to_json(value), separators=(",", ":")).encode()


def decode_state(data: bytes) -> object:
    """Inverse of `encode_state`; ValueError on anything it did not write."""
    try:
        return json.loads(data, object_hook=_from_json)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, binascii.Error, bad UTF-8
        raise ValueError(str(e)) from None


class StateError(ValueError):
    """A part's saved state that it cannot take: another version, or fields missing."""


def check_state(state: object, what: str, version: int) -> dict:
    """`state` as a dict of version `version`, or StateError naming `what`. A part bumps
    its version whenever a field's meaning changes; an older stream is refused by name
    rather than half-applied."""
    if not isinstance(state, dict):
        raise StateError(f"{what}: saved state is {type(state).__name__}, not a mapping")
    if state.get("version") != version:
        raise StateError(f"{what}: saved state version {state.get('version')!r}, "
                         f"this xenopus restores version {version}")
    return state
