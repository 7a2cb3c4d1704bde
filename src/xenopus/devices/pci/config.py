"""A PCI function's configuration space (PCI Local Bus 3.0 §6.1, PCIe base spec §7.5).

4 KiB: the 256-byte PCI-compatible region (type 0 header + capability list) and the PCIe
extended region. Guest writes pass through per-byte masks: `wmask` (read/write bits) and
`w1c` (write-1-to-clear bits, e.g. the status register's error bits, §6.2.3); everything
else is read-only as the header fields of §6.2 require.
"""

from __future__ import annotations

import threading

SIZE = 4096
LEGACY_SIZE = 256

# Type 0 header (§6.1, figure 6-1).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_CODE = 0x09  # 3 bytes: programming interface, sub-class, base class
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
BAR_COUNT = 6
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITIES = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F
HEADER_END = 0x40  # capabilities start here

# Command register (§6.2.2).
CMD_IO = 1 << 0
CMD_MEMORY = 1 << 1
CMD_BUS_MASTER = 1 << 2
CMD_PARITY = 1 << 6
CMD_SERR = 1 << 8
CMD_INTX_DISABLE = 1 << 10
CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE

# Status register (§6.2.3).
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4
# Master data parity error, signalled/received target abort, received master abort,
# signalled system error, detected parity error: all RW1C.
STATUS_W1C = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15)

HEADER_TYPE_MULTIFUNCTION = 0x80

# Capability IDs (PCI Code and ID Assignment spec §2).
CAP_MSI = 0x05
CAP_VENDOR = 0x09
CAP_PCIE = 0x10
CAP_MSIX = 0x11


def _span(offset: int, size: int) -> None:
    if size not in (1, 2, 4) or offset < 0 or offset + size > SIZE:
        raise ValueError(f"bad config access: {size} byte(s) at {offset:#x}")


class PciConfig:
    """Config space bytes plus their write masks. `read`/`write` are the guest's view;
    `get`/`set` are the device model's (no masks)."""

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        *,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        header_type: int = 0,
    ):
        self.data = bytearray(SIZE)
        self.wmask = bytearray(SIZE)
        self.w1c = bytearray(SIZE)
        self.lock = threading.RLock()  # vCPU threads may access the same function at once
        self._last_cap = 0  # offset of the last capability in the chain, 0 if none
        self._next_free = HEADER_END
        self.set(VENDOR_ID, 2, vendor_id)
        self.set(DEVICE_ID, 2, device_id)
        self.set(REVISION_ID, 1, revision)
        self.set(CLASS_CODE, 1, class_code & 0xFF)
        self.set(CLASS_CODE + 1, 2, class_code >> 8)
        self.set(HEADER_TYPE, 1, header_type)
        self.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self.set(SUBSYSTEM_ID, 2, subsystem_id)
        self.set(INTERRUPT_PIN, 1, interrupt_pin)
        self.set_wmask(COMMAND, 2, CMD_WRITABLE)
        self.set_w1c(STATUS, 2, STATUS_W1C)
        self.set_wmask(CACHE_LINE_SIZE, 1, 0xFF)
        self.set_wmask(LATENCY_TIMER, 1, 0xFF)
        self.set_wmask(INTERRUPT_LINE, 1, 0xFF)

    # --- the device model's access -------------------------------------------------------
    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little"
        )

    def set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def set_w1c(self, offset: int, size: int, mask: int) -> None:
        self.w1c[offset : offset + size] = mask.to_bytes(size, "little")

    # --- the guest's access ---------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        _span(offset, size)
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Apply a guest write: RW bits take the value, RW1C bits clear where it has ones,
        read-only bits keep theirs."""
        _span(offset, size)
        with self.lock:
            data, wmask, w1c = self.data, self.wmask, self.w1c
            for i in range(size):
                b = (value >> (8 * i)) & 0xFF
                o = offset + i
                m = wmask[o]
                data[o] = ((data[o] & ~m) | (b & m)) & ~(b & w1c[o]) & 0xFF

    # --- named header fields --------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return self.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.get(DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.get(CLASS_CODE, 3)

    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)

    @property
    def status(self) -> int:
        return self.get(STATUS, 2)

    @property
    def interrupt_line(self) -> int:
        return self.get(INTERRUPT_LINE, 1)

    @property
    def interrupt_pin(self) -> int:
        return self.get(INTERRUPT_PIN, 1)

    # --- capabilities (§6.7) --------------------------------------------------------------
    def add_capability(self, cap_id: int, body: bytes | bytearray) -> int:
        """Append a capability: ID, next pointer, then `body`. Returns its offset (dword
        aligned, §6.7: "the bottom two bits are reserved"); the caller sets write masks
        within it with `set_wmask`."""
        length = 2 + len(body)
        offset = self._next_free
        if offset + length > LEGACY_SIZE:
            raise ValueError(f"no room for a {length}-byte capability {cap_id:#x}")
        with self.lock:
            self.data[offset] = cap_id
            self.data[offset + 1] = 0  # end of list
            self.data[offset + 2 : offset + length] = body
            if self._last_cap:
                self.data[self._last_cap + 1] = offset
            else:
                self.set(CAPABILITIES, 1, offset)
                self.set(STATUS, 2, self.get(STATUS, 2) | STATUS_CAP_LIST)
            self._last_cap = offset
            self._next_free = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(cap_id, offset) of every capability, walking the list as a driver would."""
        caps: list[tuple[int, int]] = []
        if not self.status & STATUS_CAP_LIST:
            return caps
        offset = self.get(CAPABILITIES, 1) & ~3
        while offset and len(caps) < 48:  # 48 dword-aligned slots above the header
            caps.append((self.data[offset], offset))
            offset = self.data[offset + 1] & ~3
        return caps
