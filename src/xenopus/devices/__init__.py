"""Layer 4: the I/O buses and the legacy PC devices on them."""

from xenopus.devices.bus import Bus, BusConflictError, BusDevice, NullDevice
from xenopus.devices.debugcon import DebugCon
from xenopus.devices.i8042 import I8042
from xenopus.devices.rtc import CmosRtc
from xenopus.devices.serial import Serial16550

__all__ = [
    "I8042",
    "Bus",
    "BusConflictError",
    "BusDevice",
    "CmosRtc",
    "DebugCon",
    "NullDevice",
    "Serial16550",
]
