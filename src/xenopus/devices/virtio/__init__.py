"""virtio 1.x devices (virtio 1.2 spec): split virtqueues, the device base, the modern
PCI transport, and the block, console, entropy (and network) devices."""

from xenopus.devices.virtio.device import InterruptSink, VirtioDevice
from xenopus.devices.virtio.queue import Chain, DescriptorError, SplitQueue

__all__ = ["Chain", "DescriptorError", "InterruptSink", "SplitQueue", "VirtioDevice"]
