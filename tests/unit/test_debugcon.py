"""Port 0xE9 debug console (Bochs "port E9 hack")."""

from __future__ import annotations

from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.debugcon import DebugCon


def test_port_number() -> None:
    assert platform.DEBUGCON_PORT == 0xE9


def test_read_returns_e9_for_detection() -> None:
    bus = Bus("pio")
    bus.register(platform.DEBUGCON_PORT, 1, DebugCon(lambda b: None), "debugcon")
    assert bus.read(0xE9, 1) == 0xE9


def test_writes_reach_output_in_order() -> None:
    out: list[bytes] = []
    bus = Bus("pio")
    bus.register(platform.DEBUGCON_PORT, 1, DebugCon(out.append), "debugcon")
    for ch in b"ok\n":
        bus.write(0xE9, 1, ch)
    assert b"".join(out) == b"ok\n"
    assert len(out) == 3
