"""virtio-rng, the entropy device (virtio 1.2 §5.4): one requestq whose device-writable
buffers are filled from the host's getrandom(2)."""

from __future__ import annotations

import os

from xenopus.devices.virtio.device import VIRTIO_ID_RNG, VirtioDevice

QUEUE_SIZE = 64
# Per-request cap: the guest cannot make one chain cost the host unbounded entropy and time.
MAX_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    device_id = VIRTIO_ID_RNG
    name = "rng"

    def __init__(self, *, queue_size: int = QUEUE_SIZE):
        super().__init__(queue_sizes=[queue_size])  # §5.4.4: no device configuration

    def process(self, queue_index: int) -> None:
        q = self.queues[queue_index]
        while (chain := self.pop(queue_index)) is not None:
            # §5.4.6.1: the device writes random bytes into the writable buffers; readable
            # ones have no meaning and are ignored.
            done = 0
            for v in chain.writable:
                n = min(len(v), MAX_REQUEST - done)
                if n <= 0:
                    break
                v[:n] = os.getrandom(n)
                done += n
            q.push(chain, done)
