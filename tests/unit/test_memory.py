"""GuestMemory: layout, bounds checks, zero-copy views, memfd backing, little-endian access."""

import ctypes
import fcntl
import os
from collections.abc import Iterator

import pytest

from xenopus.memory import (
    GiB,
    GuestMemory,
    GuestMemoryError,
    MemoryRegion,
    MiB,
)

HOLE = 0xC000_0000  # our 32-bit MMIO hole starts at 3 GiB...
FOUR_GIB = 0x1_0000_0000  # ...and RAM resumes at 4 GiB


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(16 * MiB) as m:
        yield m


@pytest.fixture
def big() -> Iterator[GuestMemory]:
    # 3.5 GiB of sparse memfd: nothing is touched, so nothing is allocated.
    with GuestMemory.create(3 * GiB + 512 * MiB) as m:
        yield m


def test_small_ram_is_one_region_from_zero(mem: GuestMemory) -> None:
    assert mem.ram_ranges() == [(0, 16 * 1024 * 1024)]
    assert mem.ram_size == 16 * 1024 * 1024
    assert mem.low_ram_end == 16 * 1024 * 1024


def test_ram_above_the_hole_moves_to_4gib(big: GuestMemory) -> None:
    assert big.ram_ranges() == [(0, HOLE), (FOUR_GIB, 0x2000_0000)]
    assert big.ram_size == 0xE000_0000
    assert big.low_ram_end == HOLE


def test_exactly_hole_sized_ram_is_one_region() -> None:
    with GuestMemory.create(3 * GiB) as m:
        assert m.ram_ranges() == [(0, HOLE)]


@pytest.mark.parametrize("size", [0, -4096, 4095, 4096 + 1])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError):
        GuestMemory.create(size)


def test_overlapping_regions_are_refused() -> None:
    a = MemoryRegion.create(0, 2 * 4096)
    b = MemoryRegion.create(4096, 4096)
    try:
        with pytest.raises(ValueError, match="overlap"):
            GuestMemory([a, b])
    finally:
        a.close()
        b.close()


def test_high_region_is_usable(big: GuestMemory) -> None:
    big.write(FOUR_GIB + 0x1000, b"high")
    assert big.read(FOUR_GIB + 0x1000, 4) == b"high"
    assert big.read(FOUR_GIB + 0x2000_0000 - 4, 4) == bytes(4)


@pytest.mark.parametrize(
    ("gpa", "length"),
    [
        (HOLE - 2, 4),  # crosses the end of the low region into the hole
        (HOLE, 1),  # first byte of the hole
        (0xFEE0_0000, 4),  # the LAPIC page, inside the hole
        (FOUR_GIB - 1, 2),  # from the hole into the high region
        (FOUR_GIB + 0x2000_0000, 1),  # just past the end of RAM
        (FOUR_GIB + 0x2000_0000 - 1, 2),  # crosses the end of the high region
        (0x1000, -1),  # negative length
        (-1, 1),  # negative address
    ],
)
def test_out_of_bounds_access_is_refused(big: GuestMemory, gpa: int, length: int) -> None:
    with pytest.raises(GuestMemoryError):
        big.view(gpa, length)
    assert not big.contains(gpa, length)


def test_in_bounds_edges(big: GuestMemory) -> None:
    assert len(big.view(HOLE - 4, 4)) == 4
    assert big.contains(0, HOLE)
    assert big.contains(FOUR_GIB, 0x2000_0000)
    assert len(big.view(HOLE, 0)) == 0  # an empty range at a region's end is still in it


def test_view_does_not_copy(mem: GuestMemory) -> None:
    v = mem.view(0x5000, 8)
    v[:] = b"abcdefgh"
    assert mem.read(0x5000, 8) == b"abcdefgh"
    mem.write(0x5002, b"XY")
    assert bytes(v) == b"abXYefgh"
    assert not v.readonly


def test_host_address_is_the_same_memory(mem: GuestMemory) -> None:
    # KVM_SET_USER_MEMORY_REGION is given this address: it must alias the region's bytes.
    mem.write(0x3000, b"kvm!")
    region = mem.regions[0]
    assert ctypes.string_at(region.host_address + 0x3000, 4) == b"kvm!"


def test_regions_are_cloexec_memfds(big: GuestMemory) -> None:
    for region in big.regions:
        assert os.readlink(f"/proc/self/fd/{region.fd}").startswith("/memfd:xenopus-ram")
        assert fcntl.fcntl(region.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.fstat(region.fd).st_size == region.size


def test_memfd_shares_the_bytes(mem: GuestMemory) -> None:
    # What a backend process mapping the same memfd would see.
    mem.write(0x2000, b"shared")
    assert os.pread(mem.regions[0].fd, 6, 0x2000) == b"shared"


def test_integers_are_little_endian(mem: GuestMemory) -> None:
    mem.write_u16(0x100, 0x1122)
    mem.write_u32(0x110, 0x11223344)
    mem.write_u64(0x120, 0x1122334455667788)
    mem.write_u8(0x130, 0xAB)
    assert mem.read(0x100, 2) == b"\x22\x11"
    assert mem.read(0x110, 4) == b"\x44\x33\x22\x11"
    assert mem.read(0x120, 8) == b"\x88\x77\x66\x55\x44\x33\x22\x11"
    assert mem.read(0x130, 1) == b"\xab"
    mem.write(0x140, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert mem.read_u8(0x140) == 0x01
    assert mem.read_u16(0x140) == 0x0201
    assert mem.read_u32(0x140) == 0x04030201
    assert mem.read_u64(0x140) == 0x0807060504030201


def test_integer_writes_are_truncated_to_their_width(mem: GuestMemory) -> None:
    mem.write_u64(0x200, 0xFFFF_FFFF_FFFF_FFFF)
    mem.write_u16(0x200, 0x12345)
    assert mem.read_u64(0x200) == 0xFFFF_FFFF_FFFF_2345
    mem.write_u32(0x208, -1)
    assert mem.read_u32(0x208) == 0xFFFF_FFFF


def test_fill(mem: GuestMemory) -> None:
    mem.fill(0x400, 16, 0xCC)
    assert mem.read(0x3FF, 18) == b"\x00" + b"\xcc" * 16 + b"\x00"


def test_integer_access_is_bounds_checked(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        mem.read_u64(16 * MiB - 4)
    with pytest.raises(GuestMemoryError):
        mem.write_u32(16 * MiB - 2, 0)


def test_close_releases_the_fds() -> None:
    m = GuestMemory.create(1 * MiB)
    fd = m.regions[0].fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    m.close()
    assert m.regions[0].fd == -1


def test_region_size_is_sealed() -> None:
    """Other processes map a domain's memfd; its size must not change under them
    (memfd_create(2): F_SEAL_SHRINK, F_SEAL_GROW, and no further seals)."""
    import fcntl

    with GuestMemory.create(1 << 20) as mem:
        fd = mem.regions[0].fd
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)
        # Holes can still be punched (ballooning, discard): FALLOC_FL_PUNCH_HOLE|KEEP_SIZE.
        mem.write(0x2000, b"\xAA" * 4096)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(0x2000), ctypes.c_long(4096)) == 0
        assert mem.read(0x2000, 4096) == bytes(4096)


def test_extra_regions_outside_ram() -> None:
    from xenopus.memory.guest import MemoryRegion

    with GuestMemory.create(1 << 20) as mem:
        page = MemoryRegion.create(0x200000, 4096)
        mem.attach(page)
        mem.write_u32(0x200000, 0xFEEDF00D)
        assert mem.read_u32(0x200000) == 0xFEEDF00D and mem.contains(0x200000, 4096)
        assert not mem.is_ram(0x200000) and mem.is_ram(0x1000)
        assert mem.ram_size == 1 << 20 and mem.ram_ranges() == [(0, 1 << 20)]
        assert mem.overlaps(0x1FF000, 0x2000) and not mem.overlaps(0x201000, 0x1000)
        with pytest.raises(GuestMemoryError):
            mem.attach(MemoryRegion.create(0xFF000, 0x2000))  # overlaps RAM's last page
        assert mem.detach(0x200000) is page
        page.close()
        assert not mem.contains(0x200000)


def test_discard_frees_host_memory_and_reads_zero() -> None:
    with GuestMemory.create(1 << 20) as mem:
        mem.fill(0x10000, 0x10000, 0xAB)
        held = os.fstat(mem.regions[0].fd).st_blocks
        mem.discard(0x10000, 0x10000)
        assert os.fstat(mem.regions[0].fd).st_blocks == held - 0x10000 // 512
        # Reading it back faults pages in again (shmem): counted before, read after.
        assert mem.read(0x10000, 0x10000) == bytes(0x10000)
        with pytest.raises(GuestMemoryError):
            mem.discard(0x10001, 4096)
