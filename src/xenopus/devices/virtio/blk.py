"""virtio-blk (virtio 1.2 §5.2) on a raw image file.

The image is a `devices.disk.DiskImage`: data moves between it and guest RAM with
`os.preadv`/`os.pwritev` on memoryviews of the request's buffers, no copy in between.
FLUSH is a real `fdatasync`; DISCARD and WRITE_ZEROES punch holes (or zero ranges).
"""

from __future__ import annotations

import ctypes
import errno
import struct

from xenopus.devices.disk import SECTOR_SIZE, DiskError, DiskImage
from xenopus.devices.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice, bit
from xenopus.devices.virtio.queue import Chain, scatter, split_views

QUEUE_SIZE = 256

# §5.2.3 feature bits.
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

# §5.2.6 request types and status values.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

# §5.2.6 struct virtio_blk_req header: le32 type, le32 reserved, le64 sector.
BLK_REQ_HEADER = struct.Struct("<IIQ")
# §5.2.6 struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
BLK_DISCARD_SEG = struct.Struct("<QII")

# Discard/write-zeroes limits we announce (§5.2.4); 4 KiB alignment suits every filesystem.
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per segment
MAX_DISCARD_SEG = 32
DISCARD_ALIGNMENT = 8

class VirtioBlkConfig(ctypes.LittleEndianStructure):
    """§5.2.4 struct virtio_blk_config (fields up to write_zeroes_may_unmap + padding)."""

    _pack_ = 1
    _fields_ = [
        ("capacity", ctypes.c_uint64),
        ("size_max", ctypes.c_uint32),
        ("seg_max", ctypes.c_uint32),
        ("cylinders", ctypes.c_uint16),
        ("heads", ctypes.c_uint8),
        ("sectors", ctypes.c_uint8),
        ("blk_size", ctypes.c_uint32),
        ("physical_block_exp", ctypes.c_uint8),
        ("alignment_offset", ctypes.c_uint8),
        ("min_io_size", ctypes.c_uint16),
        ("opt_io_size", ctypes.c_uint32),
        ("writeback", ctypes.c_uint8),
        ("unused0", ctypes.c_uint8),
        ("num_queues", ctypes.c_uint16),
        ("max_discard_sectors", ctypes.c_uint32),
        ("max_discard_seg", ctypes.c_uint32),
        ("discard_sector_alignment", ctypes.c_uint32),
        ("max_write_zeroes_sectors", ctypes.c_uint32),
        ("max_write_zeroes_seg", ctypes.c_uint32),
        ("write_zeroes_may_unmap", ctypes.c_uint8),
        ("unused1", ctypes.c_uint8 * 3),
    ]


class VirtioBlk(VirtioDevice):
    device_id = VIRTIO_ID_BLOCK
    name = "blk"
    # The status byte's place is inside the malformed chain: no safe answer exists, and
    # returning it untouched would let the driver read a stale status as success.
    reset_on_malformed_chain = True

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        serial: str = "",
        direct: bool = False,
        queues: int = 1,
        queue_size: int = QUEUE_SIZE,
    ):
        if queues < 1:
            raise ValueError("a virtio-blk device needs at least one queue")
        self.path = path
        self.read_only = read_only
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        self.disk = DiskImage(path, read_only=read_only, direct=direct)
        if self.disk.size % SECTOR_SIZE:
            self.disk.close()
            raise DiskError(f"disk image {path}: size {self.disk.size} is not a multiple of 512")
        self.capacity = self.disk.size // SECTOR_SIZE

        features = (
            bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        )
        if queues > 1:
            features |= bit(VIRTIO_BLK_F_MQ)
        if read_only:
            features |= bit(VIRTIO_BLK_F_RO)
        cfg = VirtioBlkConfig(
            capacity=self.capacity,
            seg_max=queue_size - 2,  # header and status take a descriptor each
            blk_size=SECTOR_SIZE,
            num_queues=queues,
            max_discard_sectors=MAX_DISCARD_SECTORS,
            max_discard_seg=MAX_DISCARD_SEG,
            discard_sector_alignment=DISCARD_ALIGNMENT,
            max_write_zeroes_sectors=MAX_DISCARD_SECTORS,
            max_write_zeroes_seg=MAX_DISCARD_SEG,
            write_zeroes_may_unmap=1,
        )
        super().__init__(features=features, queue_sizes=[queue_size] * queues, config=bytes(cfg))

    def close(self) -> None:
        super().close()
        self.disk.close()

    # -- requests ------------------------------------------------------------------

    def process(self, queue_index: int) -> None:
        q = self.queues[queue_index]
        pop, push, handle = self.pop, q.push, self.handle
        while (chain := pop(queue_index)) is not None:
            push(chain, handle(chain))

    def handle(self, chain: Chain) -> int:
        """Carry out one request (§5.2.6.1); returns the bytes written to the driver."""
        writable = chain.writable
        in_len = chain.writable_len - 1  # device-writable bytes before the status byte
        if in_len < 0:
            # No status byte to answer in: return the buffers untouched.
            self.log_once("request without a device-writable status byte")
            return 0
        # Drivers put the status byte in a buffer of its own and the header in one of 16
        # bytes (Linux, and every driver we know); anything else is split generally.
        status_view = writable[-1]
        if len(status_view) == 1:
            data_in = writable[:-1]
        else:
            data_in, tail = split_views(writable, in_len)
            status_view = tail[0]
        readable = chain.readable
        out_len = chain.readable_len - BLK_REQ_HEADER.size  # device-readable data bytes
        if out_len < 0:
            self.log_once("request header is not in device-readable buffers")
            status, written = VIRTIO_BLK_S_IOERR, 0
        else:
            if len(readable[0]) == BLK_REQ_HEADER.size:
                kind, _, sector = BLK_REQ_HEADER.unpack(readable[0])
                payload = readable[1:]
            else:
                header, payload = split_views(readable, BLK_REQ_HEADER.size)
                kind, _, sector = BLK_REQ_HEADER.unpack(b"".join(header))
            status, written = self._dispatch(kind, sector, payload, out_len, data_in, in_len)
        status_view[0] = status
        return written + 1

    def _dispatch(
        self,
        kind: int,
        sector: int,
        payload: list[memoryview],
        out_len: int,
        data_in: list[memoryview],
        in_len: int,
    ) -> tuple[int, int]:
        # §5.2.6: the data of IN/GET_ID is device-writable, that of OUT/DISCARD/WRITE_ZEROES
        # device-readable. A buffer of the wrong kind (say, the target of a read marked
        # read-only) fails the request rather than being skipped.
        try:
            if kind == VIRTIO_BLK_T_IN:
                if out_len:
                    return self._wrong_direction(kind, "readable")
                return self._read(sector, data_in, in_len)
            if kind == VIRTIO_BLK_T_OUT:
                if in_len:
                    return self._wrong_direction(kind, "writable")
                return self._write(sector, payload, out_len), 0
            if kind == VIRTIO_BLK_T_FLUSH:
                self.disk.flush()
                return VIRTIO_BLK_S_OK, 0
            if kind == VIRTIO_BLK_T_GET_ID:
                if out_len:
                    return self._wrong_direction(kind, "readable")
                return self._get_id(data_in)
            if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                if in_len:
                    return self._wrong_direction(kind, "writable")
                return self._discard(kind, payload), 0
        except OSError as e:
            self.log_once(f"{self.path}: I/O error {errno.errorcode.get(e.errno, e.errno)}")
            return VIRTIO_BLK_S_IOERR, 0
        self.log_once(f"unsupported request type {kind}")
        return VIRTIO_BLK_S_UNSUPP, 0

    def _wrong_direction(self, kind: int, what: str) -> tuple[int, int]:
        self.log_once(f"request type {kind} brings device-{what} data buffers")
        return VIRTIO_BLK_S_IOERR, 0

    def _range_ok(self, sector: int, length: int) -> bool:
        if length % SECTOR_SIZE:
            self.log_once(f"data length {length} is not a multiple of 512")
            return False
        if sector + length // SECTOR_SIZE > self.capacity:
            self.log_once(
                f"sectors {sector}+{length // SECTOR_SIZE} beyond capacity {self.capacity}"
            )
            return False
        return True

    def _read(self, sector: int, views: list[memoryview], length: int) -> tuple[int, int]:
        if not self._range_ok(sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        done = self.disk.read_into(views, sector * SECTOR_SIZE)
        return (VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR), done

    def _write(self, sector: int, views: list[memoryview], length: int) -> int:
        if self.read_only:
            self.log_once("write to a read-only disk")
            return VIRTIO_BLK_S_IOERR
        if not self._range_ok(sector, length):
            return VIRTIO_BLK_S_IOERR
        done = self.disk.write_from(views, sector * SECTOR_SIZE)
        return VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR

    def _get_id(self, views: list[memoryview]) -> tuple[int, int]:
        # §5.2.6: 20 bytes, NUL-padded (no terminator when the serial fills all 20).
        done = scatter(views, self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0"))
        if done < VIRTIO_BLK_ID_BYTES:
            self.log_once("GET_ID buffer shorter than 20 bytes")
            return VIRTIO_BLK_S_IOERR, done
        return VIRTIO_BLK_S_OK, done

    def _discard(self, kind: int, payload: list[memoryview]) -> int:
        if self.read_only:
            self.log_once("discard or write-zeroes on a read-only disk")
            return VIRTIO_BLK_S_IOERR
        raw = b"".join(payload)  # at most MAX_DISCARD_SEG * 16 bytes
        if not raw or len(raw) % BLK_DISCARD_SEG.size:
            self.log_once(f"discard payload of {len(raw)} bytes is not whole segments")
            return VIRTIO_BLK_S_UNSUPP
        if len(raw) // BLK_DISCARD_SEG.size > MAX_DISCARD_SEG:
            self.log_once("more discard segments than max_discard_seg")
            return VIRTIO_BLK_S_UNSUPP
        segs = list(BLK_DISCARD_SEG.iter_unpack(raw))
        for sector, count, flags in segs:
            if count > MAX_DISCARD_SECTORS or not self._range_ok(sector, count * SECTOR_SIZE):
                return VIRTIO_BLK_S_IOERR
            # §5.2.6.2: discard has no flags; write-zeroes knows only UNMAP.
            allowed = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if kind == VIRTIO_BLK_T_WRITE_ZEROES else 0
            if flags & ~allowed:
                self.log_once(f"unknown discard/write-zeroes flags {flags:#x}")
                return VIRTIO_BLK_S_UNSUPP
        for sector, count, flags in segs:
            offset, length = sector * SECTOR_SIZE, count * SECTOR_SIZE
            if kind == VIRTIO_BLK_T_DISCARD or flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
                # A punched hole reads back as zeroes, so it also serves WRITE_ZEROES+UNMAP.
                self.disk.discard(offset, length)
            else:
                self.disk.write_zeroes(offset, length)
        return VIRTIO_BLK_S_OK
