"""A domain's Xen guest interface, wired: hypercalls, event channels, grant tables, the
XenStore and PV console rings, and the PV block and network backends.

One `XenGuest` exists per incarnation of a domain that shows Xen (`xen_platform`). The
XenStore itself lives in the daemon: the guest's ring is proxied over the socket pair the
daemon made for this domain (`StoreProxy`, which outlives incarnations), and the backends
talk to the daemon's XenStore as dom0 clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from xenopus.boot import BootInfo
from xenopus.devices import platform as layout
from xenopus.devices.bus import Bus
from xenopus.domain.channel import ChannelEnd, close_channels, open_channels
from xenopus.domain.config import DomainConfig
from xenopus.domain.config.keys import uuid_bytes
from xenopus.domain.devspec import DiskSpec, vif_devids
from xenopus.domain.interdomain_port import InterdomainPort
from xenopus.domain.vif import VifTaps, open_vif
from xenopus.kvm import Kvm
from xenopus.memory import GuestMemory, MiB
from xenopus.stream import StateError, check_state
from xenopus.vm import Machine
from xenopus.vm.machine import MachineHooks
from xenopus.xen import abi, kernel_events
from xenopus.xen.backends.console import PVConsole
from xenopus.xen.domain import XenDomain
from xenopus.xen.grant import GrantMapper
from xenopus.xen.hypercall import (
    HYPERCALL_PORT,
    XEN_VERSION,
    HypercallTable,
    KernelPath,
    TrapPath,
    choose_path,
    kernel_config,
    kernel_flags,
    make_cpuid_fixup,
    vmcall_for,
)
from xenopus.xen.kernel_events import KernelEvents
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.ring import RingTransport

if TYPE_CHECKING:
    # Imported where a guest has them (disks, vifs, channels: start_backends and the
    # hotplug steps), not by every domain process: ~6 ms of CPU and 0.6 MiB per spare.
    from xenopus.devices.tap import Tap
    from xenopus.xen.backends.blkback import BlkBack
    from xenopus.xen.backends.netback import NetBack
    from xenopus.xen.backends.xenbus import Backend, DomainHost
    from xenopus.xen.xenstore.client import XsClient

log = logging.getLogger("xenopus.xen")
B = TypeVar("B", bound="Backend")  # a hot-plugged backend, returned as its own type

XEN_STATE_VERSION = 1  # of XenGuest.save_state's dict
# The XenStore ring features we serve (xenstore-ring.txt); xl.cfg's xenstore_feature_mask
# may hide some from the guest.
STORE_RING_FEATURES = wire.XENSTORE_SERVER_FEATURE_ERROR | wire.XENSTORE_SERVER_FEATURE_RECONNECTION
XEN_VBD_MAJOR = 202  # docs/misc/vbd-interface.txt: xvd disks are major 202


def vbd_id(index: int, prefix: str = "xvd") -> int:
    """The xenstore device id of whole disk `index` of a vdev family (docs/misc/
    vbd-interface.txt): xvd 202 << 8 | disk << 4 (the extended form past disk 15); sd
    8 << 8 | disk << 4; hd 3 << 8 | disk << 6 for hda/hdb, 22 << 8 for hdc/hdd. Linux's
    blkfront names every one xvd* (sdX from xvde on, as it emulates them)."""
    if prefix == "sd":
        return SCSI_DISK0_MAJOR << 8 | index << 4
    if prefix == "hd":
        return (IDE0_MAJOR if index < 2 else IDE1_MAJOR) << 8 | (index % 2) << 6
    return XEN_VBD_MAJOR << 8 | index << 4 if index < 16 else 1 << 28 | index << 8


SCSI_DISK0_MAJOR, IDE0_MAJOR, IDE1_MAJOR = 8, 3, 22  # vbd-interface.txt


def decide(config: DomainConfig, boot: BootInfo, kvm: Kvm) -> tuple[str, str]:
    """("trap" | "kernel" | "off", why) for this domain and image."""
    return choose_path(
        kernel_flags(kvm),
        hypercall_page_note=bool(boot.details.get("hypercall_page_note")),
        linux=boot.details.get("guest_os") == "linux",
        xen_platform=config.xen_platform,
        vmcall_only=bool(config.pvshim),
        hypercall_path=config.xen_hypercall_path,
    )


RESET_REQ_ID = 0xFFFFFFFF  # the proxy's own requests (a guest numbers its requests from 0)
REPLAY_REQ_ID = 0xFFFFFFFE
# The guest's watches the proxy remembers for a restarted daemon (the daemon's quota
# refuses a connection more than its default 128 anyway: xenstored's quota-nb-watch).
MAX_REPLAYED_WATCHES = 1024
# What the proxy holds for a guest, each way, before it stops taking more: the replies
# and events the guest has not read stay in the daemon, charged to the domain there, which
# drops watch events past the domain's memory quota and stops reading its requests at
# its outstanding-replies quota (xenstored's send_event/domain_can_read); the requests
# the daemon has not read stay in the guest's ring, which the guest sees full (xenbus
# waits). Nothing is dropped here, and the ring is never broken for a slow reader.
PROXY_BACKLOG = 4 * wire.XENSTORE_RING_SIZE


class _InFlight(NamedTuple):
    """A guest request not answered yet, in ring order: sent to the daemon, or answered
    by the proxy itself (`reply`) once every earlier one has been."""

    message: bytes
    reply: bytes | None = None


class StoreProxy:
    """The guest's XenStore ring ↔ the daemon, for the life of the domain process.

    A daemon that dies costs the guest nothing (xs_wire.h: every request gets exactly one
    reply, in order): the requests it had not answered are sent again on the restarted
    daemon's stream, after the guest's watches, and until then the guest's new requests
    wait in its ring. A request in a transaction the dead daemon had opened is answered
    EAGAIN, as xenstored answers a transaction that cannot commit, so xenbus starts it
    again; a write, mkdir or rm sent again is harmless against the restored store."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None):
        self.loop = loop
        self.sock = sock
        self.ring: RingTransport | None = None
        self.notify: Callable[[], None] = lambda: None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._lost = False  # the daemon's stream ended: requests wait in the ring
        self._rings = 0  # incarnations attached so far
        self._stale: bytearray | None = None  # the old incarnation's traffic, until the reset
        # The guest's watches ((path, token) of each XS_WATCH the store acked, less those
        # it took back), set again on a restarted daemon's store: that store is new.
        self.watches: dict[tuple[bytes, bytes], None] = {}
        self._inflight: deque[_InFlight] = deque()
        # The transactions the current daemon opened, by the number the guest knows (the
        # daemon's, unless that is a dead daemon's the guest may still name), and the
        # numbers of those a lost daemon had.
        self._open_tx: dict[int, int] = {}
        self._dead_tx: set[int] = set()
        self._replaying = 0  # replies to those still to drop (the guest asked none)
        self._resets = 0  # XS_RESET_WATCHES of ours not answered yet
        self._room = asyncio.Event()  # the guest has read enough to take more from the daemon
        self._room.set()
        self._draining: asyncio.Task | None = None  # waits for the daemon to take requests

    async def start(self) -> None:
        if self.sock is None:
            return
        # The stream buffers little of its own (limit: pause reading past twice this), so
        # a guest that does not read leaves its output queued in the daemon.
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock,
                                                                  limit=PROXY_BACKLOG)
        self._writer.transport.set_write_buffer_limits(high=PROXY_BACKLOG)
        self._lost = False
        self._task = asyncio.create_task(self._from_daemon(reader))

    async def reconnect(self, sock: socket.socket) -> None:
        """A restarted daemon's stream replaces the lost one: the guest's watches are set
        on it again (their replies dropped; their first events, which XS_WATCH fires,
        reach the guest, which takes any event as "look again": xenbus's contract, and
        stand in for the events the dead daemon had not sent), then the guest's
        unanswered requests are sent again, in order."""
        await self.close()
        self._connection_lost()
        self.sock = sock
        await self.start()
        if self._writer is None:
            return
        for path, token in self.watches:
            self._writer.write(wire.pack(wire.XS_WATCH, REPLAY_REQ_ID, 0,
                                         path + b"\0" + token + b"\0"))
        self._replaying = len(self.watches)
        self._inflight = deque(self._send(entry) for entry in self._inflight)
        self._to_guest(self._answered_here())
        self._pump()  # what the guest wrote meanwhile

    def _send(self, entry: _InFlight) -> _InFlight:
        """A guest request to the daemon, or answered here in its turn (xs_wire.h: in
        order) if it names a transaction of a lost daemon: EAGAIN, as xenstored ends a
        transaction that cannot commit (xenbus starts it again)."""
        head = wire.unpack_header(entry.message)
        if entry.reply is not None or self._writer is None:
            return entry
        if head.tx_id in self._dead_tx:
            if head.type == wire.XS_TRANSACTION_END:
                self._dead_tx.discard(head.tx_id)  # the guest is done with it
            return _InFlight(entry.message, wire.error_reply(head.req_id, head.tx_id, "EAGAIN"))
        tx = self._open_tx.get(head.tx_id, head.tx_id)  # the daemon's number for it
        message = entry.message
        if tx != head.tx_id:
            message = wire.pack(head.type, head.req_id, tx, message[wire.HEADER_SIZE:])
        self._writer.write(message)
        return entry

    def _connection_lost(self) -> None:
        """The daemon's stream ended: what it owed us will not come (resets, replayed
        watches: a new stream starts clean) and its transactions are gone."""
        self._lost = True
        self._stale, self._resets, self._replaying = None, 0, 0
        self._dead_tx |= self._open_tx.keys()
        self._open_tx.clear()

    def _answer(self, request: bytes, reply: bytes) -> bytes:
        """The daemon's reply to `request` as the guest gets it; the guest's watches and
        transactions remembered from it."""
        head, rhead = wire.unpack_header(request), wire.unpack_header(reply)
        body = reply[wire.HEADER_SIZE:]
        renumbered = False
        if head.type == wire.XS_TRANSACTION_END:
            self._open_tx.pop(head.tx_id, None)  # ended even if refused (EAGAIN)
        if rhead.type == wire.XS_ERROR:
            pass
        elif head.type == wire.XS_RESET_WATCHES:
            self.watches.clear()
        elif head.type == wire.XS_TRANSACTION_START:
            with contextlib.suppress(ValueError):
                tx = ours = int(body.rstrip(b"\0"))
                while ours in self._dead_tx or ours in self._open_tx or not ours:
                    ours = ours % 0xFFFFFFFF + 1  # the new daemon gave a dead one's number
                self._open_tx[ours] = tx
                if ours != tx:
                    body, renumbered = b"%d\0" % ours, True
        elif head.type in (wire.XS_WATCH, wire.XS_UNWATCH):
            parts = request[wire.HEADER_SIZE:].split(b"\0")
            key = (parts[0], parts[1]) if len(parts) >= 2 else None
            if key and head.type == wire.XS_UNWATCH:
                self.watches.pop(key, None)
            elif key and len(self.watches) < MAX_REPLAYED_WATCHES:
                self.watches[key] = None
        if rhead.tx_id == head.tx_id and not renumbered:
            return reply
        return wire.pack(rhead.type, rhead.req_id, head.tx_id, body)

    def attach(self, ring: RingTransport | None, notify: Callable[[], None] = lambda: None) -> None:
        self.ring, self.notify = ring, notify
        with contextlib.suppress(RuntimeError):  # (any thread) a waiting reader looks again
            self.loop.call_soon_threadsafe(self._room.set)
        if ring is None:
            return
        self._rings += 1
        if self._rings > 1:
            # A restarted guest is a new domain to XenStore (Xen builds one).
            self._forget()

    def _forget(self) -> None:
        """What the guest watched and had open goes (XS_RESET_WATCHES: xenstored drops
        the connection's watches and transactions), and what the daemon still owed it
        (replies to in-flight requests, watch events) is dropped up to the reset's
        reply."""
        self.watches.clear()  # (none to set again on a restarted daemon's store)
        self._inflight.clear()
        self._open_tx.clear()
        self._dead_tx.clear()
        if self._writer is not None and not self._lost:
            self._writer.write(wire.pack(wire.XS_RESET_WATCHES, RESET_REQ_ID, 0, b""))
            self._resets += 1
            if self._stale is None:
                self._stale = bytearray()

    def kick(self) -> None:
        """The guest signalled the store port (any thread)."""
        self.loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        ring = self.ring
        if ring is None:
            return
        if ring.reconnect_requested:
            # xenstore-ring.txt's ring reconnection: the connection restarts on a packet
            # boundary with nothing in flight, no watches, no transactions.
            self._forget()
            ring.reset()
            self.notify()
        if ring.broken:
            return
        # Without a daemon the guest's requests wait in its ring (full: xenbus waits).
        messages = [] if self._lost or self._daemon_busy() else ring.read_messages()
        if messages and ring.more:  # a guest that keeps writing: the loop's other work first
            self.loop.call_soon(self._pump)
        for message in messages:
            if self._writer is not None:  # (none: a domain built without a daemon)
                self._inflight.append(self._send(_InFlight(message)))
        self._to_guest(self._answered_here())
        if ring.flush() or messages:
            self.notify()
        if ring.pending < PROXY_BACKLOG:
            self._room.set()

    def _answered_here(self) -> bytes:
        """The proxy's own answers at the head of the in-flight queue (their turn)."""
        out = bytearray()
        while self._inflight and self._inflight[0].reply is not None:
            out += self._inflight.popleft().reply or b""
        return bytes(out)

    def _daemon_busy(self) -> bool:
        """The daemon has not taken PROXY_BACKLOG of the guest's requests: leave the rest
        in the guest's ring (a full ring is the guest's back-pressure under Xen too), and
        look again once it has."""
        writer = self._writer
        if writer is None or writer.transport.get_write_buffer_size() <= PROXY_BACKLOG:
            return False
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drained(writer))
        return True

    async def _drained(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        self._pump()

    def _from_store(self, message: bytes) -> bytes:
        """What of one whole message from the daemon goes to the guest."""
        head = wire.unpack_header(message)
        if self._stale is not None:  # the old incarnation's, up to the reset's reply
            if head.type == wire.XS_RESET_WATCHES and head.req_id == RESET_REQ_ID:
                self._resets -= 1
                if not self._resets:  # the last reset asked for has been answered
                    self._stale = None
            return b""
        if (self._replaying and head.req_id == REPLAY_REQ_ID
                and head.type in (wire.XS_WATCH, wire.XS_ERROR)):
            self._replaying -= 1  # a replayed watch's ack (or the new store's refusal)
            return b""
        if head.type == wire.XS_WATCH_EVENT or not self._inflight:
            return message
        request = self._inflight.popleft()
        return self._answer(request.message, message) + self._answered_here()

    async def _from_daemon(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()  # a message the daemon has not finished (dropped if it dies)
        try:
            while data := await reader.read(PROXY_BACKLOG):
                buf += data
                out = bytearray()
                while len(buf) >= wire.HEADER_SIZE:
                    end = wire.HEADER_SIZE + wire.unpack_header(bytes(buf[:wire.HEADER_SIZE])).len
                    if len(buf) < end:
                        break
                    out += self._from_store(bytes(buf[:end]))
                    del buf[:end]
                ring = self._to_guest(bytes(out))
                while ring is not None and ring is self.ring and not ring.broken \
                        and ring.pending >= PROXY_BACKLOG:
                    self._room.clear()  # the guest is not reading: neither do we
                    await self._room.wait()
        except ConnectionError:
            pass
        self._connection_lost()

    def _to_guest(self, data: bytes) -> RingTransport | None:
        ring = self.ring
        if not data or ring is None or ring.broken:
            return None  # no guest ring (yet): nothing to answer
        ring.write(data)
        if ring.flush():
            self.notify()
        return ring

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._draining is not None:
            self._draining.cancel()
        if self._writer is not None:
            self._writer.close()


class XenGuest:
    """Everything Xen about one incarnation. Build it before the Machine (it supplies the
    CPUID leaves, the MSR handler and the hypercall entry paths: `machine_hooks`), `attach`
    it once the Machine exists (that builds the `XenDomain`, the special pages, the PV
    console and the XenStore ring), `close` it at the end."""

    def __init__(
        self,
        config: DomainConfig,
        memory: GuestMemory,
        boot: BootInfo,
        pio: Bus,
        *,
        domid: int,
        path: str,
        hv_log: Callable[[str], None],
        pv_console_out: Callable[[bytes], None],
        store: StoreProxy,
        xenstore_path: str | None,
        taps: VifTaps | None = None,
        channels: list[ChannelEnd] | None = None,
    ):
        self.config = config
        self.taps = taps
        # The channels' host ends (the process's, kept across incarnations); None: made
        # here and closed with this guest.
        self.channels = channels
        self._own_channels: list[ChannelEnd] = []
        self.domid = domid
        self.memory = memory
        self.path = path
        self.store = store
        self.xenstore_path = xenstore_path
        self.e820 = [(e.addr, e.size, e.type) for e in boot.e820]
        self.hv_log = hv_log
        self.pv_console_out = pv_console_out
        # How hypercalls arrive: both paths dispatch to `table`, which the XenDomain fills.
        self.table = HypercallTable()
        self.trap = TrapPath(self.table, memory)
        self.kernel = KernelPath(self.table, memory) if path == "kernel" else None
        pio.register(HYPERCALL_PORT, 1, self.trap, "xen-hypercall")
        self.domain: XenDomain | None = None  # from `attach` on
        self.console: PVConsole | None = None
        self.store_port = self.console_port = 0
        self.interdomain: InterdomainPort | None = None
        self.backends: list[Backend] = []
        self.xs: XsClient | None = None
        self._host: DomainHost | None = None
        self._input = bytearray()
        self._input_lock = threading.Lock()

    # -- the Machine -------------------------------------------------------------------
    def machine_hooks(self) -> MachineHooks:
        """Keyword arguments for `Machine(...)`."""
        hooks: MachineHooks = {
            "cpuid_fixup": make_cpuid_fixup(self.domid),
            "msr_handler": self.trap,
            "msr_filter": self.trap.msr_filter(),
            "port_out_handlers": self.trap.port_out_handlers(),
        }
        if self.kernel is not None:
            hooks["exit_handlers"] = self.kernel.exit_handlers()
        return hooks

    def attach(self, machine: Machine) -> None:
        """The Machine exists: build the domain's Xen state and its PV plumbing."""
        kernel = None
        if self.kernel is not None:
            # vmcall/vmmcall now arrive as KVM_EXIT_XEN, the hypercall page's too (its
            # stubs are the CPU's call instruction; the MSR filter keeps the page ours).
            assert machine.vm is not None
            flags = kernel_flags(machine.kvm)
            vendor = machine.cpu_policy.vendor if machine.cpu_policy else ""
            self.trap.insn = vmcall_for(vendor)
            if kernel_events.offered(flags):
                kernel = KernelEvents(machine.vm, [v.fd for v in machine.vcpus],
                                      machine.on_vcpu_thread)
                major, minor = XEN_VERSION
                kernel.start(major << 16 | minor)
            else:
                cfg = kernel_config(flags)
                machine.vm.xen_hvm_config(cfg.msr, cfg.flags)
        fifo = self.config.evtchn_fifo
        domain = self.domain = XenDomain(
            self.domid, machine, self.table, console_out=self.hv_log, e820=self.e820,
            max_pages=self.config.maxmem * MiB // abi.PAGE_SIZE if self.config.maxmem else 0,
            handle=uuid_bytes(self.config.uuid) if self.config.uuid else bytes(16),
            max_evtchn_port=self.config.max_event_channels,
            kernel=kernel, evtchn_fifo=fifo == "1" or (fifo == "auto" and kernel is None),
            **({"max_grant_frames": self.config.max_grant_frames}
               if self.config.max_grant_frames else {}),
        )
        self.trap.on_page = domain.hypercall_page_written
        if kernel is not None:
            log.info("d%d: KVM delivers 2-level events in-kernel (FIFO %s)", self.domid,
                     "offered" if domain.evtchn.fifo_allowed else "withheld")
        memory, evtchn = self.memory, domain.evtchn
        # The special pages (Xen puts them near the top of low memory, reserved in the
        # map): ours sit in the reserved legacy hole.
        memory.fill(layout.XEN_STORE_PAGE, abi.PAGE_SIZE)
        memory.fill(layout.XEN_CONSOLE_PAGE, abi.PAGE_SIZE)
        self.store_port = evtchn.bind_local(self.store.kick)
        self.console = PVConsole.at_pfn(
            memory, layout.XEN_CONSOLE_PAGE >> 12, self.pv_console_out,
            lambda: evtchn.notify(self.console_port),
        )
        self.console_port = evtchn.bind_local(self._console_kick)
        ring = RingTransport(memory.view(layout.XEN_STORE_PAGE, abi.PAGE_SIZE, kept=True),
                             features=STORE_RING_FEATURES & self.config.xenstore_feature_mask)
        self.store.attach(ring, lambda: evtchn.notify(self.store_port))
        for param, value in (
            (abi.HVM_PARAM_STORE_PFN, layout.XEN_STORE_PAGE >> 12),
            (abi.HVM_PARAM_STORE_EVTCHN, self.store_port),
            (abi.HVM_PARAM_CONSOLE_PFN, layout.XEN_CONSOLE_PAGE >> 12),
            (abi.HVM_PARAM_CONSOLE_EVTCHN, self.console_port),
        ):
            domain.set_param(param, value)

    # -- save/restore (docs/snapshot-stream.md, the "xen" part) ---------------------------
    def save_state(self) -> dict[str, object]:
        """The hypercall path and page, the XenDomain's state, and PV console input the
        guest has not taken yet; rings and pages are guest RAM."""
        with self._input_lock:
            pending = bytes(self._input)
        return {"version": XEN_STATE_VERSION, "path": self.path,
                "hypercall_pages": self.trap.save_state(),
                "domain": self._attached().save_state(), "console_input": pending}

    def pause(self) -> None:
        """While a save writes: nothing of ours writes guest RAM on its own (the timers)."""
        self._attached().timers.pause()

    def resume(self) -> None:
        self._attached().timers.resume()

    def restore_state(self, state: object) -> None:
        s = check_state(state, "xen", XEN_STATE_VERSION)
        if s["path"] != self.path:
            # A guest that made vmcalls on the in-kernel path cannot go on without it.
            raise StateError(f"xen: saved with the {s['path']} hypercall path, this domain "
                             f"has {self.path}")
        self.trap.restore_state(s["hypercall_pages"])
        self._attached().restore_state(s["domain"])
        with self._input_lock:
            self._input[:0] = s["console_input"]

    def _attached(self) -> XenDomain:
        if self.domain is None:
            raise RuntimeError("XenGuest used before attach(machine)")
        return self.domain

    def connect_interdomain(self, port: InterdomainPort) -> None:
        """Channels and grant copies to other xenopus domains, brokered by the daemon.
        Call before the vCPUs run; `close` detaches."""
        domain = self._attached()
        self.interdomain = port
        domain.evtchn.broker = port
        domain.grants.foreign = port.foreign
        domain.grants.on_frames = port.publish_frames
        port.attach(domain.evtchn, domain.grants, self.memory)

    # -- consoles ----------------------------------------------------------------------
    def _console_kick(self) -> None:
        if self.console is not None:
            self.console.kick()
        self._feed()

    def receive(self, data: bytes) -> None:
        """Host keyboard input for the PV console; what does not fit waits for the guest."""
        with self._input_lock:
            self._input += data
        self._feed()

    def _feed(self) -> None:
        with self._input_lock:
            if self._input and self.console is not None:
                sent = self.console.send(bytes(self._input))
                del self._input[:sent]

    # -- backends ----------------------------------------------------------------------
    def start_backends(self) -> None:
        """The Xen PV disks and vifs (`kind_for`: every one virtio was not asked for), as
        dom0 clients of the daemon's XenStore."""
        disks = [(i, d) for i, d in enumerate(self.config.disks) if d.kind_for(True) == "xen"]
        vifs = [(devid, v) for devid, v in zip(vif_devids(self.config.vifs), self.config.vifs,
                                               strict=True) if v.kind_for(True) == "xen"]
        if not (disks or vifs or self.config.channels):
            return
        from xenopus.xen.backends.blkback import BlkBack
        from xenopus.xen.backends.channel import ChannelBack
        from xenopus.xen.backends.netback import NetBack

        host = self._backend_host()
        for _, disk in disks:
            be = BlkBack(
                self.xs, host, self.domid,
                vbd_id(disk.vdev_index, "xvd" if disk.vdev.startswith("xvd") else disk.vdev[:2]),
                disk.target,
                read_only=disk.read_only, vdev=disk.vdev,
            )
            self.backends.append(be)
            be.start()
        for i, vif in vifs:
            tap, mac = (self.taps.open if self.taps else open_vif)(self.config.name, vif, self.domid, i)
            try:
                be = NetBack(self.xs, host, self.domid, i, tap, mac, bridge=vif.bridge or "")
            except BaseException:
                tap.close()
                raise
            self.backends.append(be)
            be.start()
        ends = self.channels
        if ends is None:
            ends = self._own_channels = open_channels(self.config.channels)
        for end in ends:
            be = ChannelBack(self.xs, host, self.domid, end.devid, name=end.spec.name,
                             listener=end.listener, path=end.spec.path, master=end.master,
                             tty=end.tty)
            self.backends.append(be)
            be.start()

    def _backend_host(self) -> DomainHost:
        """The backends' XenStore client and their `Host` (made with the first backend)."""
        if self.xenstore_path is None:
            raise ValueError("Xen PV devices need the daemon's XenStore")
        from xenopus.xen.backends.xenbus import DomainHost
        from xenopus.xen.xenstore.client import XsClient

        domain = self._attached()
        if self.xs is None:
            self.xs = XsClient(self.xenstore_path)
        if self._host is None:
            grants = domain.grants
            self._host = DomainHost(domain.evtchn,
                                    GrantMapper(lambda d: grants if d == self.domid else None))
        return self._host

    def reconnect_backends(self, sock: socket.socket) -> int:
        """A restarted daemon handed us the backends' new XenStore connection (`sock`,
        scoped to this domain by the daemon): every backend writes its device's nodes
        again and keeps serving; the lost connection is closed. How many backends."""
        from xenopus.xen.xenstore.client import XsClient

        old, self.xs = self.xs, XsClient(sock)
        for be in self.backends:
            be.reconnect(self.xs)
        if old is not None:
            old.close()
        return len(self.backends)

    # -- hotplug (xl block-attach / block-detach) ----------------------------------------
    def attach_disk(self, disk: DiskSpec, fd: int) -> BlkBack:
        """A PV disk added while the domain runs (libxl_device_disk_add): its backend
        serves the image open at `fd` (now ours), its nodes appear in one transaction and
        the guest's xenbus finds device/vbd/N. Refused: a virtio vdev, a taken one."""
        from xenopus.devices.disk import DiskImage
        from xenopus.xen.backends.blkback import BlkBack

        try:
            if disk.kind_for(True) != "xen":
                raise ValueError(f"{disk.vdev}: a virtio-blk disk (a vd* vdev or"
                                 " specification=virtio) cannot be attached to a running"
                                 " domain (no PCI hotplug)")
            devid = vbd_id(disk.vdev_index)
            if any(isinstance(b, BlkBack) and b.devid == devid for b in self.backends):
                raise ValueError(f"{disk.vdev} (device {devid}) is already attached")
            host = self._backend_host()
            image = DiskImage.from_fd(fd, disk.target, read_only=disk.read_only)
        except BaseException:
            os.close(fd)
            raise
        try:
            be = BlkBack(self.xs, host, self.domid, devid, disk.target,
                         read_only=disk.read_only, vdev=disk.vdev, image=image)
        except BaseException:
            image.close()
            raise
        return self._start_hotplugged(be)

    def attach_nic(self, devid: int, tap: Tap, mac: bytes, bridge: str) -> NetBack:
        """A PV NIC added while the domain runs (libxl_device_nic_add): a netback on a tap
        the daemon made (a jailed process cannot); the guest finds device/vif/N."""
        from xenopus.xen.backends.netback import NetBack

        try:
            if any(isinstance(b, NetBack) and b.devid == devid for b in self.backends):
                raise ValueError(f"vif {devid} is already attached")
            host = self._backend_host()
            be = NetBack(self.xs, host, self.domid, devid, tap, mac, bridge=bridge)
        except BaseException:
            tap.close()
            raise
        return self._start_hotplugged(be)

    def _start_hotplugged(self, be: B) -> B:
        """Start a backend added while the domain runs; on failure it is gone again."""
        self.backends.append(be)
        try:
            be.start()
        except BaseException:
            self.backends.remove(be)
            be.stop()
            raise
        return be

    def detach(self, be: Backend, force: bool, timeout: float) -> bool:
        """Remove a PV device: unless `force`, ask the frontend to close first (False if
        it did not within `timeout` s: the device stays, Closing); then its nodes go."""
        if not force and not be.close(timeout):
            return False
        be.stop(remove=True)
        if be in self.backends:
            self.backends.remove(be)
        return True

    def store_nodes(self) -> dict[str, str]:
        """The XenStore ring's event channel and frame, as libxl__build_post writes them
        under /local/domain/N/store (HVM_PARAM_STORE_EVTCHN / _PFN tell the guest)."""
        return {"port": str(self.store_port), "ring-ref": str(layout.XEN_STORE_PAGE >> 12)}

    def console_nodes(self) -> dict[str, str]:
        """What xenconsoled reads (libxl__build_post): the ring's frame and event channel;
        the daemon writes them under /local/domain/N/console."""
        return {
            "ring-ref": str(layout.XEN_CONSOLE_PAGE >> 12),
            "port": str(self.console_port),
            "type": "xenconsoled",
            "limit": "1048576",
        }

    def close(self) -> None:
        if self.interdomain is not None:
            self.interdomain.detach()  # the other domains' ends go unbound, views drop
            self.interdomain = None
        for be in self.backends:
            with contextlib.suppress(Exception):
                be.stop()
        self.backends.clear()
        close_channels(self._own_channels)
        self._own_channels = []
        if self.xs is not None:
            self.xs.close()
            self.xs = None
        self._host = None
        self.store.attach(None)
        if self.domain is not None:
            self.domain.close()
