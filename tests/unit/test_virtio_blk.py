"""virtio-blk (virtio 1.2 §5.2) on a temporary raw image, requests built by hand per
§5.2.6: header {le32 type, le32 reserved, le64 sector}, data, then a status byte; request
types IN 0, OUT 1, FLUSH 4, GET_ID 8, DISCARD 11, WRITE_ZEROES 13; status OK 0,
IOERR 1, UNSUPP 2; discard/write-zeroes segments {le64 sector, le32 num_sectors,
le32 flags (bit 0 unmap)}."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tests.unit.test_virtqueue import VqDriver
from xenopus.devices.disk import DiskError
from xenopus.devices.virtio.blk import VirtioBlk
from xenopus.memory.guest import GuestMemory

IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES = 0, 1, 4, 8, 11, 13
OK, IOERR, UNSUPP = 0, 1, 2
IMAGE = 1 << 20  # 2048 sectors


@pytest.fixture
def mem():
    m = GuestMemory.create(16 << 20)
    yield m
    m.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * (IMAGE // 256))
    return p


def setup(mem: GuestMemory, blk: VirtioBlk) -> VqDriver:
    d = VqDriver(mem, size=16)
    assert blk.negotiate(blk.features)
    blk.queues = [d.queue(indirect=True)]
    return d


def request(
    d: VqDriver, kind: int, sector: int, out: bytes = b"", inlen: int = 0
) -> tuple[int, int]:
    """Post one request; returns (gpa of the data-in buffer, gpa of the status byte)."""
    hdr = d.buffer(struct.pack("<IIQ", kind, 0, sector))
    bufs = [(*hdr, False)]
    if out:
        bufs.append((*d.buffer(out), False))
    data = d.buffer(inlen) if inlen else (0, 0)
    if inlen:
        bufs.append((*data, True))
    status = d.buffer(b"\xff")
    bufs.append((*status, True))
    d.post(d.chain(bufs))
    return data[0], status[0]


def run(blk: VirtioBlk, d: VqDriver, mem: GuestMemory, status_gpa: int) -> tuple[int, int]:
    """Process the queue; (status byte, used length of the last used element)."""
    before = d.used_idx
    blk.process(0)
    assert d.used_idx == (before + 1) & 0xFFFF
    return mem.read_u8(status_gpa), d.used_elem(before)[1]


def test_config_layout(image: Path) -> None:
    blk = VirtioBlk(str(image), serial="s", queues=4)
    # §5.2.4: capacity le64 @0, seg_max le32 @12, blk_size le32 @20, num_queues le16 @34,
    # max_discard_sectors @36, max_discard_seg @40, discard_sector_alignment @44,
    # max_write_zeroes_sectors @48, max_write_zeroes_seg @52, write_zeroes_may_unmap u8 @56.
    assert blk.config_read(0, 8) == IMAGE // 512
    assert blk.config_read(12, 4) == 256 - 2
    assert blk.config_read(20, 4) == 512
    assert blk.config_read(34, 2) == 4
    assert blk.config_read(36, 4) > 0 and blk.config_read(40, 4) > 0
    assert blk.config_read(48, 4) > 0 and blk.config_read(52, 4) > 0
    assert blk.config_read(56, 1) == 1
    # §5.2.3 feature bits: SEG_MAX 2, BLK_SIZE 6, FLUSH 9, MQ 12, DISCARD 13, WRITE_ZEROES 14
    for b in (2, 6, 9, 12, 13, 14, 32):
        assert blk.features >> b & 1, b
    assert not blk.features >> 5 & 1  # RO
    assert len(blk.queue_sizes) == 4 and blk.device_id == 2
    blk.close()


def test_read(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    data, status = request(d, IN, 3, inlen=1024)
    assert run(blk, d, mem, status) == (OK, 1025)
    assert mem.read(data, 1024) == image.read_bytes()[3 * 512 : 5 * 512]
    blk.close()


def test_read_into_split_buffers_and_indirect(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    hdr = d.buffer(struct.pack("<IIQ", IN, 0, 1))
    a, b, st = d.buffer(100), d.buffer(412 + 512), d.buffer(1)
    d.post(d.indirect([(*hdr, False), (*a, True), (*b, True), (*st, True)]))
    assert run(blk, d, mem, st[0]) == (OK, 1025)
    want = image.read_bytes()[512:1536]
    assert mem.read(a[0], 100) + mem.read(b[0], 924) == want
    blk.close()


def test_write(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    payload = os.urandom(1536)
    _, status = request(d, OUT, 10, out=payload)
    assert run(blk, d, mem, status) == (OK, 1)
    disk = image.read_bytes()
    assert disk[10 * 512 : 13 * 512] == payload
    assert disk[9 * 512 : 10 * 512] == (bytes(range(256)) * 2)  # neighbours untouched
    blk.close()


def test_out_of_range_and_unaligned_are_ioerr(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    cap = IMAGE // 512
    _, s1 = request(d, IN, cap - 1, inlen=1024)  # one sector past the end
    _, s2 = request(d, OUT, cap, out=bytes(512))
    _, s3 = request(d, OUT, 0, out=bytes(100))  # not whole sectors
    _, s4 = request(d, IN, 1 << 62, inlen=512)  # absurd sector
    blk.process(0)
    assert [mem.read_u8(s) for s in (s1, s2, s3, s4)] == [IOERR] * 4
    assert image.read_bytes() == bytes(range(256)) * (IMAGE // 256)
    blk.close()


def test_flush_calls_fdatasync(
    mem: GuestMemory, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    _, status = request(d, FLUSH, 0)
    assert run(blk, d, mem, status) == (OK, 1)
    assert synced == [blk.disk.fd]
    blk.close()


def test_get_id(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image), serial="xenopus-disk-0")
    d = setup(mem, blk)
    data, status = request(d, GET_ID, 0, inlen=20)
    assert run(blk, d, mem, status) == (OK, 21)
    assert mem.read(data, 20) == b"xenopus-disk-0".ljust(20, b"\0")
    long = VirtioBlk(str(image), serial="x" * 30)  # §5.2.6: 20 bytes, no NUL if full
    d2 = setup(mem, long)
    data, status = request(d2, GET_ID, 0, inlen=20)
    long.process(0)
    assert mem.read(data, 20) == b"x" * 20
    blk.close()
    long.close()


def _allocated(path: Path, offset: int, length: int) -> bool:
    """Whether any byte of [offset, offset+length) is backed by data (not a hole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            return False  # ENXIO: no data after offset
        return data < offset + length
    finally:
        os.close(fd)


def test_discard_punches_holes(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    os.fsync(blk.disk.fd)
    blocks_before = os.stat(image).st_blocks
    seg = struct.pack("<QII", 64, 256, 0)  # 128 KiB at 32 KiB
    _, status = request(d, DISCARD, 0, out=seg)
    assert run(blk, d, mem, status) == (OK, 1)
    assert not _allocated(image, 64 * 512, 256 * 512)
    assert os.stat(image).st_blocks < blocks_before
    disk = image.read_bytes()
    assert len(disk) == IMAGE  # KEEP_SIZE
    assert disk[64 * 512 : 320 * 512] == bytes(256 * 512)
    assert disk[:512] == bytes(range(256)) * 2
    blk.close()


def test_discard_with_unmap_flag_is_unsupp(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    _, status = request(d, DISCARD, 0, out=struct.pack("<QII", 0, 8, 1))
    assert run(blk, d, mem, status) == (UNSUPP, 1)
    assert image.read_bytes()[:512] == bytes(range(256)) * 2
    blk.close()


@pytest.mark.parametrize("unmap", [0, 1])
def test_write_zeroes(mem: GuestMemory, image: Path, unmap: int) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    segs = struct.pack("<QII", 8, 8, unmap) + struct.pack("<QII", 104, 16, unmap)
    _, status = request(d, WRITE_ZEROES, 0, out=segs)
    assert run(blk, d, mem, status) == (OK, 1)
    disk = image.read_bytes()
    assert disk[8 * 512 : 16 * 512] == bytes(8 * 512)
    assert disk[104 * 512 : 120 * 512] == bytes(16 * 512)
    assert disk[16 * 512 : 17 * 512] == bytes(range(256)) * 2
    if unmap:
        assert not _allocated(image, 104 * 512, 16 * 512)  # 4 KiB aligned: whole blocks
    blk.close()


def test_read_only_disk(mem: GuestMemory, image: Path) -> None:
    before = image.read_bytes()
    blk = VirtioBlk(str(image), read_only=True)
    assert blk.features >> 5 & 1  # §5.2.3 VIRTIO_BLK_F_RO
    d = setup(mem, blk)
    _, s1 = request(d, OUT, 0, out=bytes(512))
    _, s2 = request(d, DISCARD, 0, out=struct.pack("<QII", 0, 8, 0))
    _, s3 = request(d, WRITE_ZEROES, 0, out=struct.pack("<QII", 0, 8, 0))
    data, s4 = request(d, IN, 0, inlen=512)
    blk.process(0)
    assert [mem.read_u8(s) for s in (s1, s2, s3, s4)] == [IOERR, IOERR, IOERR, OK]
    assert mem.read(data, 512) == before[:512]
    assert image.read_bytes() == before
    blk.close()


def test_unknown_request_is_unsupp(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    _, status = request(d, 77, 0)
    assert run(blk, d, mem, status) == (UNSUPP, 1)
    blk.close()


def test_header_in_writable_buffer_is_ioerr(mem: GuestMemory, image: Path) -> None:
    """A write-only descriptor where the device must read (the header): IOERR."""
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    hdr = d.buffer(struct.pack("<IIQ", OUT, 0, 0))
    st = d.buffer(1)
    d.post(d.chain([(*hdr, True), (*st, True)]))
    assert run(blk, d, mem, st[0]) == (IOERR, 1)
    assert image.read_bytes()[:16] == bytes(range(16))
    blk.close()


def test_request_without_status_byte_is_returned_untouched(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    hdr = d.buffer(struct.pack("<IIQ", OUT, 0, 0))
    d.post(d.chain([(*hdr, False), (*d.buffer(bytes(512)), False)]))
    blk.process(0)
    assert d.used_idx == 1 and d.used_elem(0)[1] == 0
    assert image.read_bytes()[:512] == bytes(range(256)) * 2
    blk.close()


def test_malformed_chain_sets_needs_reset(mem: GuestMemory, image: Path) -> None:
    """No status byte can be trusted in a malformed chain: the device goes NEEDS_RESET
    (§2.1.2) rather than hand back a request whose stale status reads as success."""
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    d.write_desc(d.desc_addr, 0, 1 << 40, 16, 0)  # header outside guest RAM
    d.next_free = 1
    d.post(0)
    _, status = request(d, OUT, 0, out=bytes(512))
    blk.process(0)
    assert blk.needs_reset_flag
    assert d.used_idx == 0 and mem.read_u8(status) == 0xFF  # the queue is left alone
    assert image.read_bytes()[:512] == bytes(range(256)) * 2
    blk.close()


def test_multiqueue(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image), queues=2)
    assert blk.negotiate(blk.features)
    d0, d1 = VqDriver(mem, size=16), VqDriver(mem, size=16, base=0x40000, buf_base=0x800000)
    blk.queues = [d0.queue(), d1.queue()]
    data, status = request(d1, IN, 2, inlen=512)
    blk.process(1)
    assert mem.read_u8(status) == OK and d1.used_idx == 1 and d0.used_idx == 0
    assert mem.read(data, 512) == image.read_bytes()[1024:1536]
    blk.close()


def test_broken_ring_sets_needs_reset(mem: GuestMemory, image: Path) -> None:
    blk = VirtioBlk(str(image))
    d = setup(mem, blk)
    mem.write_u16(d.avail_addr + 2, 100)  # avail idx jumps past the queue size
    blk.process(0)
    assert blk.needs_reset_flag
    assert d.used_idx == 0
    blk.close()


def test_missing_image_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="nope.img"):
        VirtioBlk(str(tmp_path / "nope.img"))
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(1000))
    with pytest.raises(DiskError, match="multiple of 512"):
        VirtioBlk(str(odd))


def test_direct_io(mem: GuestMemory, image: Path) -> None:
    try:
        blk = VirtioBlk(str(image), direct=True)
    except DiskError as e:
        pytest.skip(f"this filesystem refuses O_DIRECT: {e}")
    d = setup(mem, blk)
    payload = os.urandom(4096)
    _, s1 = request(d, OUT, 8, out=payload)  # page-aligned guest buffer: the O_DIRECT fd
    data, s2 = request(d, IN, 8, inlen=4096)
    blk.process(0)
    assert mem.read_u8(s1) == OK and mem.read_u8(s2) == OK
    assert mem.read(data, 4096) == payload
    assert image.read_bytes()[4096:8192] == payload
    blk.close()
