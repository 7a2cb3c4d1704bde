"""Layer 4: the I/O buses and the legacy PC devices on them."""

from xenopus.devices.bus import Bus, BusConflictError, BusDevice, NullDevice
from xenopus.devices.debugcon import DEBUGCON_PORT, DebugCon
from xenopus.devices.i8042 import I8042, I8042_COMMAND, I8042_DATA, I8042_IRQ
from xenopus.devices.rtc import RTC_DATA, RTC_INDEX, RTC_IRQ, CmosRtc
from xenopus.devices.serial import COM1_BASE, COM1_IRQ, COM_LENGTH, Serial16550

__all__ = [
    "COM1_BASE",
    "COM1_IRQ",
    "COM_LENGTH",
    "DEBUGCON_PORT",
    "I8042",
    "I8042_COMMAND",
    "I8042_DATA",
    "I8042_IRQ",
    "RTC_DATA",
    "RTC_INDEX",
    "RTC_IRQ",
    "Bus",
    "BusConflictError",
    "BusDevice",
    "CmosRtc",
    "DebugCon",
    "NullDevice",
    "Serial16550",
]
