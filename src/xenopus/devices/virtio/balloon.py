"""virtio-balloon, the traditional memory balloon (virtio 1.2 §5.5): the host asks for
`num_pages` 4 KiB pages; the driver gives them by their page frame numbers on the
inflateq (and takes them back on the deflateq) and reports `actual`.

Inflated pages go back to the host (`GuestMemory.discard`: MADV_REMOVE on the memfd) and
read as zeros until the guest uses them again. VIRTIO_BALLOON_F_MUST_TELL_HOST is not
offered, so a driver may reuse a page before its deflate is acknowledged (§5.5.6.1): a KVM
memory slot cannot be split per page, and touching a page gets it host memory again.
"""

from __future__ import annotations

import struct
import threading

from xenopus.devices.virtio.device import VIRTIO_ID_BALLOON, VirtioDevice
from xenopus.memory import PAGE_SIZE, GuestMemory
from xenopus.stream import StateError

QUEUE_SIZE = 64
INFLATEQ, DEFLATEQ = 0, 1
# §5.5.4: struct virtio_balloon_config { le32 num_pages; le32 actual; ... } (the fields
# after them exist only with the free-page-hint and page-poison features, not offered)
NUM_PAGES, ACTUAL = 0, 4
CONFIG_SIZE = 8
PFN_SHIFT = 12  # §5.5.6: VIRTIO_BALLOON_PFN_SHIFT, whatever the guest's page size


class VirtioBalloon(VirtioDevice):
    device_id = VIRTIO_ID_BALLOON
    name = "balloon"

    def __init__(self, memory: GuestMemory, *, queue_size: int = QUEUE_SIZE):
        super().__init__(queue_sizes=[queue_size, queue_size], config=bytes(CONFIG_SIZE))
        self.memory = memory
        self.inflated: set[int] = set()  # PFNs the driver gave (and has not taken back)
        self._lock = threading.Lock()

    # -- the host's side ----------------------------------------------------------------
    def set_target(self, pages: int) -> None:
        """Ask the driver to hold `pages` pages in the balloon (xl mem-set: RAM less the
        target); a config change interrupt tells it (§5.5.6)."""
        struct.pack_into("<I", self.config, NUM_PAGES, max(0, pages))
        self.config_changed()

    def ballooned_pages(self) -> int:
        with self._lock:
            return len(self.inflated)

    def describe_target(self) -> tuple[int, int]:
        """(num_pages, actual): what the host asked for and what the driver reports."""
        return (struct.unpack_from("<I", self.config, NUM_PAGES)[0],
                struct.unpack_from("<I", self.config, ACTUAL)[0])

    # -- the driver's side ----------------------------------------------------------------
    def config_write(self, offset: int, size: int, value: int) -> None:
        """§5.5.6: the driver writes `actual`; num_pages is the device's."""
        if offset == ACTUAL and size == 4:
            struct.pack_into("<I", self.config, ACTUAL, value & 0xFFFFFFFF)

    def process(self, queue_index: int) -> None:
        q = self.queues[queue_index]
        while (chain := self.pop(queue_index)) is not None:
            data = b"".join(bytes(v) for v in chain.readable)
            pfns = struct.unpack_from(f"<{len(data) // 4}I", data)
            with self._lock:
                for pfn in pfns:
                    gpa = pfn << PFN_SHIFT
                    if not self.memory.is_ram(gpa, PAGE_SIZE):
                        continue  # §5.5.6.1: the device may ignore a PFN (not RAM here)
                    if queue_index == INFLATEQ and pfn not in self.inflated:
                        self.memory.discard(gpa, PAGE_SIZE)
                        self.inflated.add(pfn)
                    elif queue_index == DEFLATEQ:
                        self.inflated.discard(pfn)
            q.push(chain, 0)

    def on_reset(self) -> None:
        # §5.5.6.1 after a reset the driver starts with an empty balloon (its pages are
        # its own again), and reports actual from 0
        with self._lock:
            self.inflated.clear()
        struct.pack_into("<I", self.config, ACTUAL, 0)

    def save_device_state(self) -> object:
        with self._lock:
            return {"inflated": sorted(self.inflated)}

    def restore_device_state(self, state: object) -> None:
        inflated = state.get("inflated") if isinstance(state, dict) else None
        if not isinstance(inflated, list) or not all(isinstance(p, int) for p in inflated):
            raise StateError("virtio-balloon: saved state has no list of inflated pages")
        with self._lock:
            self.inflated = set(inflated)
