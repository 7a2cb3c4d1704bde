"""The disk image backend shared by virtio-blk and the Xen block backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenopus.devices.disk import DiskError, DiskImage

SIZE = 64 * 1024


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    return path


def test_reads_and_writes_go_straight_into_the_views(image: Path) -> None:
    disk = DiskImage(str(image))
    assert disk.size == SIZE
    a, b = bytearray(100), bytearray(412)
    assert disk.read_into([memoryview(a), memoryview(b)], 512) == 512
    assert bytes(a + b) == image.read_bytes()[512:1024]
    assert disk.write_from([memoryview(b"x" * 300), memoryview(b"y" * 212)], 4096) == 512
    disk.close()
    assert image.read_bytes()[4096:4608] == b"x" * 300 + b"y" * 212


def test_a_read_past_the_end_stops_there(image: Path) -> None:
    disk = DiskImage(str(image))
    buf = bytearray(1024)
    assert disk.read_into([memoryview(buf)], SIZE - 512) == 512
    disk.close()


def test_discard_leaves_a_hole_that_reads_as_zeroes(image: Path) -> None:
    disk = DiskImage(str(image))
    disk.discard(8192, 16384)
    disk.write_zeroes(0, 512)
    disk.close()
    data = image.read_bytes()
    assert len(data) == SIZE  # KEEP_SIZE
    assert data[8192:24576] == bytes(16384) and data[:512] == bytes(512)
    assert data[512:8192] == (bytes(range(256)) * (SIZE // 256))[512:8192]


def test_flush_is_fdatasync_and_read_only_has_nothing_to_flush(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    rw, ro = DiskImage(str(image)), DiskImage(str(image), read_only=True)
    rw.flush()
    ro.flush()
    assert synced == [rw.fd]
    with pytest.raises(OSError):
        ro.write_from([memoryview(b"z" * 512)], 0)  # opened O_RDONLY, as mode r asks
    assert ro.describe()["mode"] == "r" and rw.describe()["mode"] == "w"
    rw.close()
    ro.close()


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="missing.img"):
        DiskImage(str(tmp_path / "missing.img"))
