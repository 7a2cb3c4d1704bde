"""The network backend (xen/include/public/io/netif.h) on a tap.

Transmit (guest → tap): a packet is a chain of `netif_tx_request` slots — the first
carries the whole packet's size, each NETTXF_more_data slot one more fragment —
possibly followed (NETTXF_extra_info) by `netif_extra_info` slots (GSO). Each slot's
page is mapped read-only through the grant mapper and the views go to the tap with one
`writev`, after a vnet header that carries the checksum and GSO state:
NETTXF_csum_blank → VIRTIO_NET_HDR_F_NEEDS_CSUM (csum_start/offset from the packet's
IPv4/IPv6 and TCP/UDP headers), NETTXF_data_validated → DATA_VALID, a GSO extra →
gso_type/gso_size. Every slot gets a response, in ring order: the packet's status for
its request slots, NETIF_RSP_NULL for extra slots.

Receive (tap → guest): `feature-rx-copy` only (no page flipping); a frame is copied into
the granted pages of consecutive `netif_rx_request`s, a page each from offset 0, each
response's status the bytes in its page. Offloads toward the guest follow the frontend's
own nodes, as Linux's netback reads them: with `feature-sg` a frame may take several slots
(NETRXF_more_data); checksum offload unless `feature-no-csum-offload` (and with
`feature-ipv6-csum-offload`) lets the tap hand over frames with a partial checksum
(TUN_F_CSUM → NETRXF_csum_blank); `feature-gso-tcpv4`/`-tcpv6` with SG let it hand over
TCP segments of up to 64 KiB (TUN_F_TSO4/6), announced by a GSO `netif_extra_info` slot
after the first response (NETRXF_extra_info), as netif.h orders them. One 64 KiB segment
then costs one tap read and one guest interrupt instead of ~45 of each. A frame is read
only when enough requests are posted for the largest one (else an event is asked for at
that many). Without those nodes the tap has no offloads and a frame is one page at most;
a frame that does not fit, or a request whose grant is bad, is answered NETIF_RSP_ERROR.

One queue: `multi-queue-max-queues` is not advertised and a frontend asking for more
queues is refused. One event channel (no `feature-split-event-channels`).
"""

from __future__ import annotations

import contextlib
import ctypes
import struct

from xenopus.devices.mac import format_mac
from xenopus.devices.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, TapError
from xenopus.devices.virtio.net import (
    NET_HDR,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
)
from xenopus.stream import StateError, check_state
from xenopus.xen import abi
from xenopus.xen.backends.xenbus import (
    Backend,
    BackRing,
    EventPort,
    FrontendError,
    Host,
    Mapping,
    RingError,
)
from xenopus.xen.xenstore.client import XsClient

# netif.h XEN_NETIF_NR_SLOTS_MIN: the slots per packet every backend must accept; we
# accept no more (a longer chain is an error, as for Linux netback's default).
MAX_TX_SLOTS = abi.XEN_NETIF_NR_SLOTS_MIN
MAX_EXTRAS = 4  # one of each extra type netif.h defines is all a packet can use
ETH_HLEN = 14
RX_BUF = 65536 + 64  # a tap frame is at most this (IP's 64 KiB and the L2 headers) after the vnet header
# Slots a received frame may take: its pages and one GSO extra (Linux's netback allows
# MAX_SKB_FRAGS + 2); within netfront's limit of XEN_NETIF_NR_SLOTS_MIN data slots + 1.
RX_MAX_SLOTS = -(-RX_BUF // abi.PAGE_SIZE) + 1

_TXREQ = abi.netif_tx_request
_EXTRA = abi.netif_extra_info
_RXREQ = abi.netif_rx_request
_TX_ENTRY = ctypes.sizeof(_TXREQ)  # the union's largest member (12 bytes)
_RX_ENTRY = ctypes.sizeof(abi.netif_rx_response)  # 8, as netif_rx_request

_GSO_TYPES = {
    abi.XEN_NETIF_GSO_TYPE_TCPV4: VIRTIO_NET_HDR_GSO_TCPV4,
    abi.XEN_NETIF_GSO_TYPE_TCPV6: VIRTIO_NET_HDR_GSO_TCPV6,
}
_XEN_GSO = {v: k for k, v in _GSO_TYPES.items()}
# Ethertypes (IEEE 802 numbers), IP protocol numbers and checksum field offsets
# (RFC 793 TCP: 16, RFC 768 UDP: 6) for finding where a partial checksum goes.
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x86DD, 0x8100
IPPROTO_TCP, IPPROTO_UDP = 6, 17
_CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}


class BadPacket(Exception):
    """One transmitted packet is malformed: its slots are answered NETIF_RSP_ERROR."""


def checksum_place(frame: bytes) -> tuple[int, int]:
    """(csum_start, csum_offset) of a TCP/UDP packet in an Ethernet frame, which is what
    a NEEDS_CSUM vnet header needs; BadPacket for anything else."""
    if len(frame) < ETH_HLEN:
        raise BadPacket("frame shorter than an Ethernet header")
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    l3 = ETH_HLEN
    if ethertype == ETH_P_8021Q and len(frame) >= l3 + 4:
        (ethertype,) = struct.unpack_from("!H", frame, 16)
        l3 += 4
    if ethertype == ETH_P_IP and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0xF) * 4
        proto, l4 = frame[l3 + 9], l3 + ihl
        if ihl < 20:
            raise BadPacket("IPv4 header length below 20")
    elif ethertype == ETH_P_IPV6 and len(frame) >= l3 + 40:
        proto, l4 = frame[l3 + 6], l3 + 40  # extension headers: not offloaded by frontends
    else:
        raise BadPacket(f"checksum offload for ethertype {ethertype:#06x}")
    if proto not in _CSUM_OFFSET:
        raise BadPacket(f"checksum offload for IP protocol {proto}")
    return l4, _CSUM_OFFSET[proto]


class NetBack(Backend):
    """A `vif` backend carrying the guest's frames to and from `tap`."""

    kind = "vif"
    # The frontend's nodes `xl network-list` shows besides the backend's path
    # (libxl_device_nic_getinfo).
    listed_nodes = ("state", "event-channel", "tx-ring-ref", "rx-ring-ref")

    def __init__(
        self,
        xs: XsClient,
        host: Host,
        domid: int,
        devid: int,
        tap: Tap,
        mac: bytes,
        *,
        bridge: str = "",
    ):
        super().__init__(xs, host, domid, devid)
        self.tap = tap
        self.mac = mac
        self.bridge = bridge
        self.tx: BackRing | None = None
        self.rx: BackRing | None = None
        self._maps: list[Mapping] = []
        self.port: EventPort | None = None
        self._rx_buf = bytearray(tap.vnet_hdr_len + RX_BUF)
        self._tap_on = False
        self._rx_sg = False  # the frontend takes a frame in several slots
        self.stats = {"tx_packets": 0, "tx_errors": 0, "tx_dropped": 0,
                      "rx_packets": 0, "rx_dropped": 0}
        # A restored connection (`restore_state`): taken by the next `connect`.
        self._resumed: dict | None = None

    def describe(self) -> dict[str, object]:
        """What this backend serves: the vif's index, the guest's MAC, the tap and bridge."""
        return {"devid": self.devid, "mac": format_mac(self.mac), "tap": self.tap.name,
                "bridge": self.bridge or "-"}

    # -- xenbus -----------------------------------------------------------------------

    def backend_nodes(self) -> dict[str, str]:
        nodes = {"mac": format_mac(self.mac), "handle": str(self.devid), "type": "vif"}
        if self.bridge:
            nodes["bridge"] = self.bridge
        return nodes

    def frontend_nodes(self) -> dict[str, str]:
        return {"mac": format_mac(self.mac), "handle": str(self.devid)}

    def features(self) -> dict[str, str]:
        return {
            "feature-rx-copy": "1",
            "feature-rx-flip": "0",
            "feature-sg": "1",
            "feature-gso-tcpv4": "1",
            "feature-gso-tcpv6": "1",
            "feature-ipv6-csum-offload": "1",
            "feature-no-csum-offload": "0",
        }

    def connect(self) -> dict[str, str]:
        if self.fe_int("request-rx-copy", 2, default=0) != 1:
            raise FrontendError("frontend does not request rx-copy (page flipping is not supported)")
        if self.fe_int("multi-queue-num-queues", 1 << 16, default=1) != 1:
            raise FrontendError("multiple queues are not supported")
        for name in ("tx-ring-ref", "rx-ring-ref"):
            mapping = self.map_grant(self.fe_int(name, 1 << 32), write=True)
            self._maps.append(mapping)
        self.tx = BackRing(self._maps[0].view, _TX_ENTRY)
        self.rx = BackRing(self._maps[1].view, _RX_ENTRY)
        self.port = self.bind_event()
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            self._resume_rings(resumed)
        self._rx_offloads()
        if self.worker is not None:
            self.worker.watch_fd(self.tap.fd, self._on_tap)
            self._tap_on = True
        return {}

    def _rx_offloads(self) -> None:
        """The offloads the frontend accepts (its own nodes, netif.h; Linux's netback
        reads them in connect_data_rings/read_xenbus_vif_flags), set on the tap."""
        def flag(name: str) -> bool:
            return self.fe_int(name, 2, default=0) == 1

        self._rx_sg = flag("feature-sg")
        flags = 0
        if (self.tap.vnet_hdr_len and not flag("feature-no-csum-offload")
                and flag("feature-ipv6-csum-offload")):  # TUN_F_CSUM covers both
            flags = TUN_F_CSUM
            if self._rx_sg:
                flags |= (TUN_F_TSO4 if flag("feature-gso-tcpv4") else 0) | (
                    TUN_F_TSO6 if flag("feature-gso-tcpv6") else 0)
        try:
            self.tap.set_offload(flags)
        except TapError as e:
            self.log_once(f"{e}: receiving without offloads")
            self.tap.set_offload(0)

    def disconnect(self) -> None:
        if self.worker is not None and self._tap_on:
            self.worker.unwatch_fd(self.tap.fd)
        self._tap_on = False
        self._rx_sg = False
        with contextlib.suppress(TapError, OSError):
            self.tap.set_offload(0)  # a frontend connecting next may take none
        port, self.port = self.port, None
        if port is not None:
            port.close()
        self.tx = self.rx = None
        maps, self._maps = self._maps, []
        for m in maps:
            m.unmap()

    # -- work ------------------------------------------------------------------------

    def service(self) -> None:
        """A kick: the frontend queued packets or posted receive buffers."""
        try:
            notify = self._transmit()
            if self.rx is not None and self.rx.unconsumed():
                self._set_tap(True)  # buffers again: frames can flow
                notify |= self._receive()
        except RingError as e:
            raise FrontendError(f"ring broken: {e}") from e
        if notify and self.port is not None:
            self.port.notify()

    def _on_tap(self) -> None:
        if not self.connected:
            return
        try:
            notify = self._receive()
        except RingError as e:
            self.fail(f"ring broken: {e}")
            return
        if notify and self.port is not None:
            self.port.notify()

    def _set_tap(self, on: bool) -> None:
        if on != self._tap_on and self.worker is not None:
            self.worker.set_fd(self.tap.fd, on)
            self._tap_on = on

    # -- transmit --------------------------------------------------------------------

    def _transmit(self) -> bool:
        ring = self.tx
        if ring is None:
            return False
        notify = False
        while True:
            while (avail := ring.unconsumed()) and self._one_packet(ring, avail):
                pass
            notify |= ring.push()
            if not ring.final_check() or not self._complete_packet_waiting(ring):
                return notify

    def _complete_packet_waiting(self, ring: BackRing) -> bool:
        return self._scan(ring, ring.unconsumed()) is not None

    def _scan(
        self, ring: BackRing, avail: int
    ) -> tuple[list[abi.netif_tx_request], list[abi.netif_extra_info], int] | None:
        """The slots of the next packet, or None while its chain is still incomplete."""
        slots = [_TXREQ.from_buffer_copy(ring.peek(0))]
        extras: list[abi.netif_extra_info] = []
        used = 1
        if slots[0].flags & abi.NETTXF_extra_info:
            while True:
                if used >= avail:
                    return self._incomplete(ring, used)
                extra = _EXTRA.from_buffer_copy(ring.peek(used)[: ctypes.sizeof(_EXTRA)])
                used += 1
                extras.append(extra)
                if not extra.flags & abi.XEN_NETIF_EXTRA_FLAG_MORE or len(extras) > MAX_EXTRAS:
                    break
        while slots[-1].flags & abi.NETTXF_more_data and len(slots) <= MAX_TX_SLOTS:
            if used >= avail:
                return self._incomplete(ring, used)
            slots.append(_TXREQ.from_buffer_copy(ring.peek(used)))
            used += 1
        return slots, extras, used

    def _incomplete(self, ring: BackRing, used: int) -> None:
        if used >= ring.size:
            raise RingError("a packet's slot chain fills the whole ring")
        ring.request_event(used)  # an event when the rest of the chain is pushed
        return None

    def _one_packet(self, ring: BackRing, avail: int) -> bool:
        scanned = self._scan(ring, avail)
        if scanned is None:
            return False  # the frontend has not pushed the rest of the chain yet
        slots, extras, used = scanned
        ring.skip(used)
        try:
            status = self._send(slots, extras)
        except BadPacket as e:
            self.log_once(str(e))
            status = abi.NETIF_RSP_ERROR
        self.stats["tx_packets" if status == abi.NETIF_RSP_OKAY else "tx_errors"] += 1
        ring.put(bytes(abi.netif_tx_response(id=slots[0].id, status=status)))
        for _ in extras:
            ring.put(bytes(abi.netif_tx_response(id=0, status=abi.NETIF_RSP_NULL)))
        for s in slots[1:]:
            ring.put(bytes(abi.netif_tx_response(id=s.id, status=status)))
        return True

    def _send(self, slots: list[abi.netif_tx_request], extras: list[abi.netif_extra_info]) -> int:
        if len(slots) > MAX_TX_SLOTS:
            raise BadPacket(f"packet of more than {MAX_TX_SLOTS} slots")
        if len(extras) > MAX_EXTRAS:
            raise BadPacket("too many extra-info slots")
        total = slots[0].size
        first_len = total - sum(s.size for s in slots[1:])
        if total < ETH_HLEN or first_len < 0:
            raise BadPacket(f"packet size {total} is too small for its fragments")
        lengths = [first_len] + [s.size for s in slots[1:]]
        for s, n in zip(slots, lengths, strict=True):
            if s.offset + n > abi.PAGE_SIZE:
                raise BadPacket(f"slot of grant {s.gref}: offset {s.offset} + {n} crosses the page")
        maps: list[Mapping] = []
        try:
            views: list[memoryview] = []
            for s, n in zip(slots, lengths, strict=True):
                try:
                    m = self.host.map_grant(self.domid, s.gref, False)
                except Exception as e:
                    raise BadPacket(f"grant {s.gref}: {e}") from e
                maps.append(m)
                views.append(m.view[s.offset : s.offset + n])
            out: list[memoryview | bytes] = list(views)
            if self.tap.vnet_hdr_len:
                out.insert(0, self._vnet_header(slots[0].flags, extras, views))
            try:
                self.tap.write(out)
            except BlockingIOError:
                self.stats["tx_dropped"] += 1  # the tap's queue is full: a NIC drops too
            except OSError as e:
                raise BadPacket(f"tap {self.tap.name} refused a frame: {e.strerror}") from e
        finally:
            for m in maps:
                m.unmap()
        return abi.NETIF_RSP_OKAY

    def _vnet_header(
        self, flags: int, extras: list[abi.netif_extra_info], views: list[memoryview]
    ) -> bytes:
        gso_type, gso_size = VIRTIO_NET_HDR_GSO_NONE, 0
        for extra in extras:
            if extra.type == abi.XEN_NETIF_EXTRA_TYPE_GSO:
                gso = extra.u.gso
                if gso.type not in _GSO_TYPES or gso.size == 0:
                    raise BadPacket(f"GSO type {gso.type} size {gso.size}")
                gso_type, gso_size = _GSO_TYPES[gso.type], gso.size
            # multicast-control extras: we filter nothing, so there is nothing to do
        hdr_flags = csum_start = csum_offset = 0
        if flags & abi.NETTXF_csum_blank or gso_type != VIRTIO_NET_HDR_GSO_NONE:
            head = b"".join(bytes(v[:128]) for v in views)[:128]
            csum_start, csum_offset = checksum_place(head)
            hdr_flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        elif flags & abi.NETTXF_data_validated:
            hdr_flags = VIRTIO_NET_HDR_F_DATA_VALID
        hdr = NET_HDR.pack(hdr_flags, gso_type, 0, gso_size, csum_start, csum_offset, 0)
        return hdr[: self.tap.vnet_hdr_len]

    # -- receive ---------------------------------------------------------------------

    def _receive(self) -> bool:
        ring = self.rx
        if ring is None:
            return False
        hlen = self.tap.vnet_hdr_len
        buf = memoryview(self._rx_buf)
        need = RX_MAX_SLOTS if self._rx_sg else 1
        while True:
            if ring.unconsumed() < need:
                ring.request_event(need - 1)  # an event once `need` requests are posted
                if ring.unconsumed() < need:
                    self._set_tap(False)  # until the frontend posts buffers and kicks
                    break
            n = self.tap.read_into([buf])
            if n is None:
                break
            self._receive_frame(ring, buf, hlen, n)
        return ring.push()

    def _receive_frame(self, ring: BackRing, buf: memoryview, hlen: int, n: int) -> None:
        """One frame from the tap (vnet header first) into the next requests' pages."""
        length = n - hlen
        flags, gso = 0, None
        if hlen:
            vflags, vgso, _, gso_size = struct.unpack_from("<BBHH", buf)
            if vflags & (VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_NEEDS_CSUM):
                flags |= abi.NETRXF_data_validated
            if vflags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                flags |= abi.NETRXF_csum_blank
            vgso &= ~VIRTIO_NET_HDR_GSO_ECN
            if vgso != VIRTIO_NET_HDR_GSO_NONE:
                gso = abi.netif_extra_info(type=abi.XEN_NETIF_EXTRA_TYPE_GSO)
                gso.u.gso.type, gso.u.gso.size = _XEN_GSO.get(vgso, 0), gso_size
        limit = abi.PAGE_SIZE * (RX_MAX_SLOTS - 1 if self._rx_sg else 1)
        if length <= 0 or length > limit or (gso is not None and not gso.u.gso.type):
            self.log_once(f"dropping a {length}-byte frame (gso {gso is not None})")
            req = _RXREQ.from_buffer_copy(ring.take())
            ring.put(bytes(abi.netif_rx_response(id=req.id, status=abi.NETIF_RSP_ERROR)))
            self.stats["rx_dropped"] += 1
            return
        pieces = range(hlen, n, abi.PAGE_SIZE)
        ok = True
        for i, start in enumerate(pieces):
            req = _RXREQ.from_buffer_copy(ring.take())
            size = min(abi.PAGE_SIZE, n - start)
            status = size
            try:
                m = self.host.map_grant(self.domid, req.gref, True)
            except Exception as e:
                self.log_once(f"rx grant {req.gref}: {e}")
                status, ok = abi.NETIF_RSP_ERROR, False
            else:
                try:
                    m.view[:size] = buf[start : start + size]
                finally:
                    m.unmap()
            more = abi.NETRXF_more_data if i < len(pieces) - 1 else 0
            extra = abi.NETRXF_extra_info if i == 0 and gso is not None else 0
            ring.put(bytes(abi.netif_rx_response(
                id=req.id, offset=0, flags=(flags if i == 0 else 0) | more | extra,
                status=status)))
            if extra:  # the extra takes the next request's slot (netif.h)
                ring.take()
                ring.put(bytes(gso))
        self.stats["rx_packets" if ok else "rx_dropped"] += 1

    def stop(self, remove: bool = True) -> None:
        super().stop(remove)
        with contextlib.suppress(OSError):
            self.tap.close()

    # -- save/restore -----------------------------------------------------------------
    # Both shared rings' pages are guest RAM and travel with it; the backend's own are the
    # back rings' private indexes. Nothing is half-done: the backend is paused between two
    # runs of its worker, and every run answers and pushes every slot it takes (a TX
    # packet whose chain is incomplete is not taken). The tap is the receiving host's own
    # (opened from the config): frames the source's tap held and had not handed over are
    # lost, as on a real link while a cable moves (docs/snapshot-stream.md).
    saveable = True
    STATE_VERSION = 1

    def save_state(self) -> object:
        tx, rx = self.tx, self.rx
        on = self.connected and tx is not None and rx is not None
        return {
            "version": self.STATE_VERSION, "state": int(self.state), "connected": on,
            "tx": [tx.req_cons, tx.rsp_prod_pvt] if on and tx is not None else None,
            "rx": [rx.req_cons, rx.rsp_prod_pvt] if on and rx is not None else None,
        }

    def restore_state(self, state: object) -> None:
        """Keep a connected backend's ring indexes for the `connect` that follows when the
        frontend's nodes come back Connected (XenStore import), after the grant table and
        event channels are restored."""
        s = check_state(state, f"vif {self.devid}", self.STATE_VERSION)
        if not s["connected"]:
            self._resumed = None
            return
        for key in ("tx", "rx"):
            v = s[key]
            if (not isinstance(v, list) or len(v) != 2
                    or not all(isinstance(i, int) and 0 <= i < 1 << 32 for i in v)):
                raise StateError(f"vif {self.devid}: {key} ring indexes {str(v)[:40]}")
        self._resumed = dict(s)

    def _resume_rings(self, saved: dict) -> None:
        for ring, key in ((self.tx, "tx"), (self.rx, "rx")):
            assert ring is not None
            ring.req_cons, ring.rsp_prod_pvt = saved[key]
            try:
                ring.unconsumed()  # RING_REQUEST_PROD_OVERFLOW against the saved indexes
            except RingError as e:
                raise FrontendError(f"restored {key} ring: {e}") from e
