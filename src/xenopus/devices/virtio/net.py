"""virtio-net over a tap (virtio 1.2 §5.1), and MAC addresses in Xen's range.

Frames cross between guest RAM and the tap fd without a copy in this process: the tap
is set to a 12-byte vnet header, the very `struct virtio_net_hdr` of §5.1.6 (num_buffers
included, as with VIRTIO_F_VERSION_1 it always is), so a transmit chain's readable
buffers go to `writev` as they are, and a received frame is `readv`ed straight into the
guest's writable buffers; the device then only fills in num_buffers.

Receive buffers the guest posts are popped into a small cache and used for the next
frame; with VIRTIO_NET_F_MRG_RXBUF one frame may span several of them. When the guest
has posted too little, the tap fd leaves the worker's poll set until the guest kicks
receiveq: no busy loop, and frames wait in the tap's queue (which drops, as a NIC does,
only when it is full).
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from dataclasses import dataclass

from xenopus.devices.mac import MacError
from xenopus.devices.tap import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    VNET_HDR_LEN,
    Tap,
    TapError,
)
from xenopus.devices.virtio.device import VIRTIO_ID_NET, VirtioDevice, bit
from xenopus.devices.virtio.queue import Chain

log = logging.getLogger("xenopus.virtio.net")

# §5.1.3 feature bits.
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16

# §5.1.4 status field.
VIRTIO_NET_S_LINK_UP = 1

# §5.1.4 struct virtio_net_config: mac[6], le16 status, le16 max_virtqueue_pairs (the
# later fields belong to features we do not offer).
NET_CONFIG = struct.Struct("<6sHH")

# §5.1.6 struct virtio_net_hdr: u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size,
# le16 csum_start, le16 csum_offset, le16 num_buffers.
NET_HDR = struct.Struct("<BBHHHHH")
NET_HDR_FLAGS = 0
NET_HDR_NUM_BUFFERS = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

# §5.1.6.3.1: the receive buffer sizes a driver provides, header included: 65562 when
# it accepts GSO frames, 1526 (an untagged 1514-byte frame) otherwise.
RX_BUF_GSO = 65562
RX_BUF_PLAIN = 1526
# The largest frame a guest may send: the GSO maximum plus the header.
TX_MAX = RX_BUF_GSO

IOV_MAX = os.sysconf("SC_IOV_MAX")  # readv/writev take at most this many buffers

RECEIVEQ = 0
TRANSMITQ = 1
QUEUE_SIZE = 256

assert NET_HDR.size == VNET_HDR_LEN

@dataclass
class NetStats:
    """Frame and byte counters of one virtio-net device."""

    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0  # frames the guest had no room for
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0  # malformed chains and frames the tap refused


class VirtioNet(VirtioDevice):
    """virtio-net (device ID 1): receiveq 0 and transmitq 1, backed by `tap`."""

    device_id = VIRTIO_ID_NET
    name = "net"

    def __init__(self, tap: Tap, mac: bytes, *, queue_size: int = QUEUE_SIZE):
        if len(mac) != 6:
            raise MacError(f"MAC address must be 6 bytes, not {len(mac)}")
        if tap.vnet_hdr_len != VNET_HDR_LEN:
            raise TapError(f"tap {tap.name}: virtio-net needs a {VNET_HDR_LEN}-byte vnet header")
        features = (
            bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_STATUS)
        )
        if _tap_takes_ufo(tap):  # UFO left Linux in 4.14 and came back for tap only
            features |= bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO)
        config = NET_CONFIG.pack(mac, VIRTIO_NET_S_LINK_UP, 1)
        super().__init__(features=features, queue_sizes=(queue_size, queue_size), config=config)
        self.tap = tap
        self.mac = mac
        self.stats = NetStats()
        self._rx: deque[Chain] = deque()  # posted receive chains not used yet
        self._rx_cap = 0  # their total writable bytes
        self._rx_need = RX_BUF_PLAIN
        self._tap_polled = True

    # -- config --------------------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Change the link state the guest sees (§5.1.4 status) with a config interrupt."""
        NET_CONFIG.pack_into(self.config, 0, self.mac, VIRTIO_NET_S_LINK_UP if up else 0, 1)
        self.config_changed()

    def restore_state(self, state: object) -> None:
        """The saved config space, but this device's MAC: the MAC is configuration (a
        clone, built under a new name, gets a new one), not state. A changed config space
        has a new generation (§2.5.1), so a driver that reads it again sees the change."""
        super().restore_state(state)
        if bytes(self.config[:6]) != self.mac:
            self.config[:6] = self.mac
            self.config_generation = (self.config_generation + 1) & 0xFF

    # -- lifecycle -----------------------------------------------------------------

    def offloads(self) -> int:
        """The TUN_F_* set matching what the driver accepts on receive (§5.1.3.1: every
        GSO feature needs GUEST_CSUM, ECN needs TSO)."""
        if not self.has(VIRTIO_NET_F_GUEST_CSUM):
            return 0
        flags = TUN_F_CSUM
        if self.has(VIRTIO_NET_F_GUEST_TSO4):
            flags |= TUN_F_TSO4
        if self.has(VIRTIO_NET_F_GUEST_TSO6):
            flags |= TUN_F_TSO6
        if flags & (TUN_F_TSO4 | TUN_F_TSO6) and self.has(VIRTIO_NET_F_GUEST_ECN):
            flags |= TUN_F_TSO_ECN
        if self.has(VIRTIO_NET_F_GUEST_UFO):
            flags |= TUN_F_UFO
        return flags

    def on_activate(self) -> None:
        self._rx.clear()  # chains of an earlier activation are gone with its queues
        self._rx_cap = 0
        flags = self.offloads()
        try:
            self.tap.set_offload(flags)
        except TapError as e:  # the guest then just never sees partial frames
            log.warning("virtio-net: %s; receiving without offloads", e)
            self.tap.set_offload(0)
        gso = self.tap.offload & (TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO)
        self._rx_need = RX_BUF_GSO if gso else RX_BUF_PLAIN
        self._tap_polled = True
        self.watch(self.tap.fd, self._on_tap)

    def held(self, queue_index: int) -> int:
        return len(self._rx) if queue_index == RECEIVEQ else 0

    def on_reset(self) -> None:
        self._rx.clear()
        self._rx_cap = 0
        self._tap_polled = True
        if self.tap.fd >= 0:
            self.tap.set_offload(0)

    def close(self) -> None:
        super().close()
        self.tap.close()

    # -- work ----------------------------------------------------------------------

    def process(self, queue_index: int) -> None:
        if queue_index == RECEIVEQ:
            self._poll_tap(True)  # the guest posted buffers: frames can flow again
            self._receive()
        elif queue_index == TRANSMITQ:
            self._transmit()

    def _on_tap(self) -> None:
        self._receive()
        self.interrupt(RECEIVEQ)

    def _poll_tap(self, on: bool) -> None:
        """Put the tap fd in, or take it out of, the worker's poll set."""
        if on != self._tap_polled and self.tap.fd >= 0:
            self.set_watch(self.tap.fd, on)
            self._tap_polled = on

    # -- transmitq (§5.1.6.2) ------------------------------------------------------

    def _transmit(self) -> None:
        q = self.queues[TRANSMITQ]
        stats = self.stats
        while (chain := self.pop(TRANSMITQ)) is not None:
            n = chain.readable_len
            if chain.writable or not VNET_HDR_LEN <= n <= TX_MAX:
                # §5.1.6.2: header then frame, all device-readable, at most a GSO frame
                self.log_once("transmit chain refused: not a header and a frame, all readable")
                stats.tx_errors += 1
            else:
                try:
                    self.tap.write(chain.readable)
                    stats.tx_frames += 1
                    stats.tx_bytes += n - VNET_HDR_LEN
                except OSError as e:  # e.g. EINVAL for a GSO header the kernel rejects
                    self.log_once(f"tap {self.tap.name} refused a transmitted frame: {e.strerror}")
                    stats.tx_errors += 1
            q.push(chain, 0)

    # -- receiveq (§5.1.6.3, §5.1.6.4) ---------------------------------------------

    def _take_rx_buffers(self) -> bool:
        """Pop posted buffers into the cache until a frame of `_rx_need` fits (mergeable)
        or one chain is there (not mergeable). False if the guest has too little posted."""
        mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF)

        def short() -> bool:
            return self._rx_cap < self._rx_need if mergeable else not self._rx

        while short():
            chain = self.pop(RECEIVEQ)
            if chain is None:
                break
            if chain.readable or chain.writable_len < VNET_HDR_LEN:
                # §5.1.6.3.1: receive buffers are device-writable and hold a header at least
                self.log_once("receive chain refused: not writable, or shorter than the header")
                self.queues[RECEIVEQ].push(chain, 0)
                continue
            self._rx.append(chain)
            self._rx_cap += chain.writable_len
        if mergeable:
            # Short of a full GSO frame but the ring is dry: an MTU-sized frame still fits.
            return self._rx_cap >= min(self._rx_need, RX_BUF_PLAIN)
        return bool(self._rx)

    def _receive(self) -> None:
        q = self.queues[RECEIVEQ]
        if not q.ready or q.broken:
            self._poll_tap(False)  # level-triggered: an unread tap would spin the worker
            return
        mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF)
        while True:
            if not self._take_rx_buffers():
                self._poll_tap(False)  # until the guest kicks receiveq
                return
            views: list[memoryview] = []
            cap = 0
            for chain in self._rx if mergeable else (self._rx[0],):
                for v in chain.writable[: IOV_MAX - len(views)]:
                    views.append(v)
                    cap += len(v)
            try:
                n = self.tap.read_into(views)
            except OSError as e:
                self.log_once(f"tap {self.tap.name}: read failed: {e.strerror}")
                self._poll_tap(False)
                return
            if n is None:
                return  # drained; keep the buffers for the next frame
            if n >= cap and cap < self._rx_need:
                # tun truncates to the buffers it is given: this frame may be cut short.
                self.stats.rx_dropped += 1
                self.log_once("guest posted too few receive buffers: frame dropped")
                continue
            if n < VNET_HDR_LEN:
                self.log_once(f"tap {self.tap.name}: read shorter than the vnet header")
                continue
            self._deliver(n)

    def _deliver(self, n: int) -> None:
        """Hand the first chains of the cache holding `n` bytes back to the driver."""
        used: list[tuple[Chain, int]] = []
        left = n
        for chain in self._rx:
            take = min(chain.writable_len, left)
            used.append((chain, take))
            left -= take
            if left == 0:
                break
        head = used[0][0].writable
        # §5.1.6.4: num_buffers is the number of buffers the frame spans (1 without
        # MRG_RXBUF); without GUEST_CSUM the flags must be 0 (tun may set DATA_VALID).
        _put_u16(head, NET_HDR_NUM_BUFFERS, len(used))
        if not self.has(VIRTIO_NET_F_GUEST_CSUM):
            _put_u8(head, NET_HDR_FLAGS, 0)
        q = self.queues[RECEIVEQ]
        for chain, take in used:
            self._rx.popleft()
            self._rx_cap -= chain.writable_len
            q.push(chain, take)
        self.stats.rx_frames += 1
        self.stats.rx_bytes += n - VNET_HDR_LEN


def _tap_takes_ufo(tap: Tap) -> bool:
    try:
        tap.set_offload(TUN_F_CSUM | TUN_F_UFO)
    except TapError:
        return False
    finally:
        tap.set_offload(0)
    return True


def _put_u8(views: list[memoryview], offset: int, value: int) -> None:
    _put(views, offset, bytes((value,)))


def _put_u16(views: list[memoryview], offset: int, value: int) -> None:
    _put(views, offset, value.to_bytes(2, "little"))


def _put(views: list[memoryview], offset: int, data: bytes) -> None:
    """Write `data` at byte `offset` of a buffer list (the header may be split across
    descriptors: §2.6.4 says framing is the driver's choice)."""
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        k = min(len(v) - offset, len(data))
        v[offset : offset + k] = data[:k]
        data = data[k:]
        offset = 0
        if not data:
            return
