"""The port-I/O/MMIO bus: routing, overlap refusal, unclaimed accesses."""

from __future__ import annotations

import logging

import pytest

from xenopus.devices.bus import Bus, BusConflictError, NullDevice


class Recorder:
    """A device that answers reads with a fixed value and records every access."""

    def __init__(self, value: int = 0x12345678) -> None:
        self.value = value
        self.calls: list[tuple] = []

    def read(self, base: int, offset: int, size: int) -> int:
        self.calls.append(("r", base, offset, size))
        return self.value

    def write(self, base: int, offset: int, size: int, value: int) -> None:
        self.calls.append(("w", base, offset, size, value))


def test_routes_with_base_and_offset() -> None:
    bus = Bus("pio")
    com1, kbd = Recorder(0x41), Recorder(0x55)
    bus.register(0x3F8, 8, com1, "com1")
    bus.register(0x60, 1, kbd, "i8042-data")
    assert bus.read(0x3FD, 1) == 0x41
    bus.write(0x3F8, 1, 0x68)
    assert bus.read(0x60, 1) == 0x55
    assert com1.calls == [("r", 0x3F8, 5, 1), ("w", 0x3F8, 0, 1, 0x68)]
    assert kbd.calls == [("r", 0x60, 0, 1)]


def test_same_device_two_ranges_sees_which_base() -> None:
    bus = Bus("pio")
    dev = Recorder()
    bus.register(0x60, 1, dev, "i8042-data")
    bus.register(0x64, 1, dev, "i8042-cmd")
    bus.read(0x64, 1)
    bus.read(0x60, 1)
    assert dev.calls == [("r", 0x64, 0, 1), ("r", 0x60, 0, 1)]


@pytest.mark.parametrize(
    ("base", "length"),
    [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3FA, 2), (0x3F0, 0x20)],
)
def test_overlap_refused_naming_both(base: int, length: int) -> None:
    bus = Bus("pio")
    bus.register(0x3F8, 8, Recorder(), "com1")
    with pytest.raises(BusConflictError) as err:
        bus.register(base, length, Recorder(), "intruder")
    msg = str(err.value)
    assert "com1" in msg and "0x3f8-0x3ff" in msg
    assert "intruder" in msg and f"{base:#x}-{base + length - 1:#x}" in msg
    assert bus.read(0x3F8, 1) == 0x78  # the original mapping is untouched


def test_adjacent_ranges_allowed() -> None:
    bus = Bus("pio")
    low, mid, high = Recorder(1), Recorder(2), Recorder(3)
    bus.register(0x3F8, 8, mid, "com1")
    bus.register(0x3F0, 8, low, "below")  # ends at 0x3f7
    bus.register(0x400, 4, high, "above")  # starts right after 0x3ff
    assert [bus.read(a, 1) for a in (0x3F7, 0x3F8, 0x3FF, 0x400)] == [1, 2, 2, 3]


def test_bad_range_rejected() -> None:
    bus = Bus("pio")
    with pytest.raises(ValueError):
        bus.register(0x80, 0, NullDevice(), "empty")


@pytest.mark.parametrize(("size", "ones"), [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_read_is_all_ones(size: int, ones: int) -> None:
    bus = Bus("pio")
    assert bus.read(0x2F8, size) == ones


def test_access_running_past_the_end_is_unclaimed() -> None:
    bus = Bus("pio")
    dev = Recorder()
    bus.register(0x70, 2, dev, "rtc")
    assert bus.read(0x71, 2) == 0xFFFF  # 0x71..0x72: only 0x71 is the device's
    bus.write(0x70, 4, 0)
    assert dev.calls == []
    assert bus.unclaimed[0x71] == 1 and bus.unclaimed[0x70] == 1
    assert bus.read(0x70, 2) == 0x5678  # fits exactly: routed, masked to the size
    assert dev.calls == [("r", 0x70, 0, 2)]


def test_unclaimed_counted_and_logged_once_per_address(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus("pio")
    with caplog.at_level(logging.DEBUG, logger="xenopus.devices"):
        for _ in range(3):
            bus.read(0x2F9, 1)
        bus.write(0x2F9, 1, 0)
        bus.write(0x378, 1, 0)
    assert bus.unclaimed == {0x2F9: 4, 0x378: 1}
    records = [r for r in caplog.records if r.name == "xenopus.devices"]
    assert len(records) == 2
    assert "0x2f9" in records[0].getMessage() and "pio" in records[0].getMessage()
    assert "0x378" in records[1].getMessage()


def test_unclaimed_write_is_ignored() -> None:
    bus = Bus("pio")
    dev = Recorder()
    bus.register(0x3F8, 8, dev, "com1")
    bus.write(0x3F7, 1, 0xAA)
    bus.write(0x400, 1, 0xAA)
    assert dev.calls == []


def test_unregister_drops_the_mapping_even_after_lookups() -> None:
    bus = Bus("pio")
    dev = Recorder(0x11)
    bus.register(0x3F8, 8, dev, "com1")
    assert bus.read(0x3F8, 1) == 0x11  # now in the lookup cache
    assert bus.unregister(0x3F8) is dev
    assert bus.read(0x3F8, 1) == 0xFF
    with pytest.raises(KeyError):
        bus.unregister(0x3F8)
    bus.register(0x3F8, 8, Recorder(0x22), "com1-again")
    assert bus.read(0x3F8, 1) == 0x22


def test_unregister_needs_the_exact_base() -> None:
    bus = Bus("pio")
    bus.register(0x3F8, 8, Recorder(), "com1")
    with pytest.raises(KeyError):
        bus.unregister(0x3F9)


def test_many_ranges_lookup() -> None:
    bus = Bus("mmio")
    devs = [Recorder(i) for i in range(64)]
    for i, dev in enumerate(reversed(devs)):  # registration order must not matter
        bus.register(0x1000 * (63 - i), 0x800, dev, f"dev{63 - i}")
    for i in range(64):
        assert bus.read(0x1000 * i + 0x7FC, 4) == i
        assert bus.read(0x1000 * i + 0x800, 1) == 0xFF  # the gap after each one


def test_null_device_for_post_codes() -> None:
    bus = Bus("pio")
    bus.register(0x80, 1, NullDevice(), "post")
    bus.write(0x80, 1, 0x42)
    assert bus.read(0x80, 1) == 0xFF
    assert not bus.unclaimed
