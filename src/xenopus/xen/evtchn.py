"""Event channels: the 2-level ABI over shared_info/vcpu_info and every ``EVTCHNOP_*``.

Spec: xen/include/public/event_channel.h (the ops and their structs) and xen.h (the
``evtchn_pending``/``evtchn_mask`` bitmaps in shared_info, ``evtchn_pending_sel`` and
``evtchn_upcall_pending``/``_mask`` in vcpu_info). Error codes and edge cases follow Xen's
common/event_channel.c and common/event_2l.c, which define what guests rely on.

Ports come in these kinds (Xen's ECS_* states): free, reserved (port 0), unbound,
interdomain, virq, ipi. An interdomain port's far end is one of:

* a port of this same domain (loopback, handled here directly);
* a *host endpoint*: a backend running in this domain process (``bind_local`` /
  ``connect_local``); guest sends call its callback, ``notify`` raises the port;
* a port of another xenopus domain, reached through an ``InterdomainBroker`` (the daemon
  brokers it; ``connect_remote``/``remote_notify``/``remote_closed`` are its entry points
  on the other side). pirqs are not offered: ``bind_pirq`` gets -EINVAL as Xen gives a
  domain without pirqs.

Two ABIs deliver events, as in Xen: 2-level (here) until the guest's first
EVTCHNOP_init_control switches the domain to FIFO (xen/evtchn_fifo.py, which owns the
queues), and EVTCHNOP_reset switches it back. Where KVM delivers 2-level events itself
(`kernel`, xen/kernel_events.py) every raise goes through it, and the table tells it which
sends it may serve (IPIs, loopback pairs) and each vCPU's VIRQ_TIMER port; FIFO is then
withheld unless the domain's evtchn_fifo asks for it (`fifo_allowed`), and a switch to it
hands everything back to us (`on_fifo`).

A domain whose shared_info is latched 32-bit (`set_compat`; XenDomain latches it as Xen's
hvm_latch_shinfo_size does) has the compat layout: 32 pending and mask words of 32 bits
(1024 ports) and a 32-bit selector at vcpu_info offset 4 (xen.h for i386). The bitmaps'
bit numbering is the same either way (little-endian); only the selector differs.

Atomicity: the guest flips these bits from its vCPUs while we do, so every update of a
guest-visible word is a locked read-modify-write (``GuestAtomics``): a lost *set* would
be a lost event. We never clear a bit the guest owns except where Xen does (the mask bit
in EVTCHNOP_unmask, the pending bit of a closed port).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xenopus.memory import GuestMemory, GuestMemoryError
from xenopus.memory.shared import GuestAtomics
from xenopus.xen import abi
from xenopus.xen.evtchn_fifo import CONTROL_BLOCK_SIZE, FifoEvents
from xenopus.xen.guestmem import GuestAccess, XenError
from xenopus.xen.kernel_events import KernelEvents, Route

log = logging.getLogger(__name__)

NR_CHANNELS = abi.EVTCHN_2L_NR_CHANNELS
_WORD_BITS = 8 * ctypes.sizeof(abi.xen_ulong_t)
_PENDING = abi.shared_info.evtchn_pending.offset
_MASK = abi.shared_info.evtchn_mask.offset
_VI_SIZE = ctypes.sizeof(abi.vcpu_info)
_VI_PENDING = abi.vcpu_info.evtchn_upcall_pending.offset
_VI_SEL = abi.vcpu_info.evtchn_pending_sel.offset
# evtchn_upcall_pending and _mask share the vcpu_info's first 8-byte word.
_VI_MASK_BIT = 8 * (abi.vcpu_info.evtchn_upcall_mask.offset - _VI_PENDING)
_VI_UPCALL_MASK = abi.vcpu_info.evtchn_upcall_mask.offset
_VI_ALIGN = ctypes.alignment(abi.vcpu_info)
# Who a channel's far end was, in a saved table (`EventChannels.save_state`).
FAR_NONE, FAR_HOST, FAR_DOMAIN = 0, 1, 2  # loopback or none, a host backend, a domain


class State(enum.IntEnum):
    FREE = 0
    RESERVED = 1  # port 0, and a port being bound while the broker answers
    UNBOUND = 2
    INTERDOMAIN = 3
    VIRQ = 4
    IPI = 5


@dataclass
class Channel:
    """One event-channel port's state (evtchn_status_t's fields)."""

    state: State
    vcpu: int = 0  # the notify vCPU
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    # The far end when it is not a port of this domain: a host backend's callback or the
    # broker's notifier for another domain's port. None for loopback.
    far: Callable[[], None] | None = None
    remote_process: bool = False  # far end is another domain (tell the broker on close)


class InterdomainBroker(Protocol):
    """The daemon's side of channels between two xenopus domains.

    ``bind`` runs in the binding domain's process; it must call the other domain's
    ``EventChannels.connect_remote(remote_port, local_domid, local_port, notify)`` and
    return the callable that raises ``remote_port`` over there (the other end's eventfd),
    or that call's negative errno (-ESRCH for an unknown domain).
    """

    def bind(self, local_domid: int, local_port: int, remote_domid: int,
             remote_port: int) -> Callable[[], None] | int: ...

    def close(self, local_domid: int, local_port: int, remote_domid: int,
              remote_port: int) -> None: ...


class EventChannels:
    """One domain's event channels (2-level ABI, ``NR_CHANNELS`` ports; 0 is reserved)."""

    def __init__(self, domid: int, memory: GuestMemory, nr_vcpus: int,
                 deliver: Callable[[int], None], *, broker: InterdomainBroker | None = None,
                 backend_domid: int = 0, honour_upcall_mask: bool = False,
                 holds_memory: Callable[[int], bool] | None = None,
                 max_port: int = NR_CHANNELS - 1):
        """``deliver(vcpu)`` injects the upcall vector into that vCPU.

        ``honour_upcall_mask``: Xen suppresses the upcall while ``evtchn_upcall_mask`` is
        set only for PV vCPUs; for HVM/PVH it ignores the byte (Linux never clears it there,
        and Xen itself sets it when a vcpu_info is first registered). Off by default.
        """
        self.domid = domid
        self.memory = memory
        self.nr_vcpus = nr_vcpus
        # The toolstack's limit (xl.cfg max_event_channels → max_evtchn_port): Xen's
        # get_free_port answers -ENOSPC past it (common/event_channel.c).
        self.max_port = min(max_port, NR_CHANNELS - 1)
        self.deliver = deliver
        self.broker = broker
        self.backend_domid = backend_domid
        self.honour_upcall_mask = honour_upcall_mask
        self.holds_memory = holds_memory or (
            lambda gfn: memory.contains(gfn * abi.PAGE_SIZE, abi.PAGE_SIZE))
        self.atomics = GuestAtomics(memory)
        self.shared_info: int | None = None
        self._vcpu_info: list[int | None] = [None] * nr_vcpus
        self._ports: dict[int, Channel] = {0: Channel(State.RESERVED)}
        self._virqs: list[dict[int, int]] = [{} for _ in range(nr_vcpus)]
        self._early: set[int] = set()  # raised before shared_info was mapped
        self.fifo: FifoEvents | None = None  # the FIFO ABI, from EVTCHNOP_init_control on
        self.compat = False  # 32-bit shared_info/vcpu_info (set_compat)
        self._word_bits = _WORD_BITS
        self._mask = _MASK  # evtchn_mask's offset in shared_info (pending is at 2048 in both)
        self._lock = threading.RLock()
        self.kernel: KernelEvents | None = None  # KVM's in-kernel delivery, where used
        self.fifo_allowed = True  # EVTCHNOP_init_control answered (else -ENOSYS)
        self.on_fifo: Callable[[], None] | None = None  # told as the domain goes FIFO

    # --- shared_info / vcpu_info placement (decided by the XenDomain) -----------------------

    def set_shared_info(self, gpa: int) -> None:
        """shared_info now lives at ``gpa`` (XENMEM_add_to_physmap, XENMAPSPACE_shared_info).

        The page's content is the XenDomain's to initialise or move before this call;
        events raised while no shared_info was mapped are marked now.
        """
        with self._lock:
            self.shared_info = gpa
            early, self._early = self._early, set()
            for port in sorted(early):
                chn = self._ports.get(port)
                self._set_pending(port, chn.vcpu if chn else 0)

    def set_compat(self, compat: bool) -> None:
        """The layout of shared_info and vcpu_info from now on: 32-bit (compat) or native.
        As in Xen, nothing already in the pages is converted."""
        with self._lock:
            self.compat = compat
            self._word_bits = 32 if compat else _WORD_BITS
            self._mask = abi.compat_shared_info.evtchn_mask.offset if compat else _MASK

    def _selector(self, vi: int, word: int) -> tuple[int, int]:
        """(8-byte aligned GPA, bit) of selector bit `word` of the vcpu_info at `vi`: the
        32-bit selector is the upper half of the vcpu_info's first 8 bytes."""
        return (vi, 32 + word) if self.compat else (vi + _VI_SEL, word)

    def vcpu_info_gpa(self, vcpu: int) -> int | None:
        """Where ``vcpu``'s vcpu_info is: registered, or its slot in shared_info (vCPU < 32)."""
        gpa = self._vcpu_info[vcpu]
        if gpa is None and self.shared_info is not None and vcpu < abi.XEN_LEGACY_MAX_VCPUS:
            gpa = self.shared_info + vcpu * _VI_SIZE
        return gpa

    def register_vcpu_info(self, vcpu: int, gpa: int) -> int:
        """VCPUOP_register_vcpu_info (vcpu.h) with Xen's checks; returns 0 or -errno.

        As Xen does (common/domain.c map_vcpu_info): the current contents move to the new
        place (or start zeroed with the upcall masked), and every selector bit and
        ``evtchn_upcall_pending`` are set so that no event raised meanwhile is lost.
        """
        if not 0 <= vcpu < self.nr_vcpus:
            return -abi.XEN_ENOENT
        if gpa % _VI_ALIGN or gpa % abi.PAGE_SIZE > abi.PAGE_SIZE - _VI_SIZE:
            return -abi.XEN_ENXIO
        with self._lock:
            if self._vcpu_info[vcpu] is not None:
                return -abi.XEN_EINVAL
            if not self.memory.contains(gpa, _VI_SIZE):
                return -abi.XEN_EINVAL
            old = self.vcpu_info_gpa(vcpu)
            if old is not None and self.memory.contains(old, _VI_SIZE):
                self.memory.write(gpa, self.memory.read(old, _VI_SIZE))
            else:
                self.memory.fill(gpa, _VI_SIZE)
                self.memory.write_u8(gpa + abi.vcpu_info.evtchn_upcall_mask.offset, 1)
            self._vcpu_info[vcpu] = gpa
            if self.compat:
                self.atomics.fetch_or(gpa, 0xFFFFFFFF << 32)
            else:
                self.atomics.fetch_or(gpa + _VI_SEL, 2**64 - 1)
            self.atomics.fetch_or(gpa + _VI_PENDING, 1)
        self.deliver(vcpu)
        return 0

    # --- save/restore ----------------------------------------------------------------------
    # The pending and mask bits and the selectors live in guest RAM (shared_info,
    # vcpu_info) and travel with it; this is the table of ports and where those pages are.

    def save_state(self) -> dict[str, object]:
        with self._lock:
            ports = [
                {"port": port, "state": int(chn.state), "vcpu": chn.vcpu,
                 "remote_dom": chn.remote_dom, "remote_port": chn.remote_port,
                 "virq": chn.virq,
                 "far": FAR_DOMAIN if chn.remote_process else FAR_HOST if chn.far else FAR_NONE}
                for port, chn in sorted(self._ports.items()) if port
            ]
            return {"shared_info": self.shared_info, "vcpu_info": list(self._vcpu_info),
                    "early": sorted(self._early), "ports": ports,
                    "fifo": self.fifo.save_state() if self.fifo else None,
                    "compat": self.compat}

    def restore_state(self, state: dict[str, Any]) -> None:
        """The saved table into this one, built for the same config (its host backends'
        ports already bound, as at every build). A channel whose far end was a host
        backend is joined to this incarnation's backend on the same port, or, for a
        backend that binds when its frontend connects, left unbound for the backend
        domain as `disconnect_local` leaves it; a channel to another domain is left
        unbound for that domain, as Xen leaves the surviving end of a closed channel
        (its far end went with the saved domain's process)."""
        vcpu_info = state["vcpu_info"]
        if len(vcpu_info) != self.nr_vcpus:
            raise ValueError(f"event channels of {len(vcpu_info)} vCPUs, not {self.nr_vcpus}")
        with self._lock:
            fifo = None
            if state.get("fifo") is not None:
                fifo = self._new_fifo()
                fifo.restore_state(state["fifo"])
            self.set_compat(bool(state.get("compat", False)))
            limit = self._limit() if fifo is None else abi.EVTCHN_FIFO_NR_CHANNELS
            built = self._ports
            ports: dict[int, Channel] = {0: Channel(State.RESERVED)}
            virqs: list[dict[int, int]] = [{} for _ in range(self.nr_vcpus)]
            for entry in state["ports"]:
                port, kind = entry["port"], State(entry["state"])
                if not 0 < port < limit or port in ports or not self._vcpu_ok(entry["vcpu"]):
                    raise ValueError(f"event channel {port}")
                chn = Channel(kind, vcpu=entry["vcpu"], remote_dom=entry["remote_dom"],
                              remote_port=entry["remote_port"], virq=entry["virq"])
                here = built.get(port)
                if entry["far"] == FAR_HOST:
                    if here is not None and here.far is not None and not here.remote_process:
                        chn.far = here.far
                    else:
                        chn.state, chn.remote_dom, chn.remote_port = (
                            State.UNBOUND, self.backend_domid, 0)
                elif entry["far"] == FAR_DOMAIN:
                    chn.state, chn.remote_port = State.UNBOUND, 0
                if kind == State.VIRQ:
                    virqs[0 if chn.virq in abi.GLOBAL_VIRQS else chn.vcpu][chn.virq] = port
                ports[port] = chn
            lost = [p for p, c in built.items() if c.far is not None and ports.get(p) is None]
            if lost:
                raise ValueError(f"the image has no channel for host ports {lost}")
            self._ports, self._virqs, self.fifo = ports, virqs, fifo
            self._vcpu_info = list(vcpu_info)
            self._early = set(state["early"])
            self.shared_info = state["shared_info"]

    # --- the 2-level ABI (common/event_2l.c) ------------------------------------------------

    def _set_pending(self, port: int, vcpu: int) -> None:
        if self.fifo is not None:
            self.fifo.set_pending(port, vcpu)
            return
        si = self.shared_info
        if si is None:
            self._early.add(port)
            return
        kernel = self.kernel
        if kernel is not None and kernel.send(port, vcpu):
            return  # KVM set the bits and sent the upcall (api.rst 4.132)
        try:
            already = self.atomics.test_and_set_bit(si + _PENDING, port)
            if self.atomics.test_bit(si + self._mask, port):
                return
            if already:
                self._reassert(vcpu)
            else:
                self._mark_selector(vcpu, port // self._word_bits)
        except GuestMemoryError:
            log.warning("d%d: shared_info %#x is not guest RAM; event %d dropped",
                        self.domid, si, port)

    def _mark_selector(self, vcpu: int, word: int) -> None:
        vi = self.vcpu_info_gpa(vcpu)
        if vi is None:
            return
        if self.atomics.test_and_set_bit(*self._selector(vi, word)):
            self._reassert(vcpu)
            return
        old = self.atomics.fetch_or(vi + _VI_PENDING, 1)
        if old & 1:
            self._reassert(vcpu)
            return
        if self.honour_upcall_mask and old >> _VI_MASK_BIT & 1:
            return
        self.deliver(vcpu)

    def _mark_upcall(self, vcpu: int) -> None:
        """The FIFO ABI's vcpu_mark_events_pending: evtchn_upcall_pending, then the upcall
        unless one is on its way. Without a vcpu_info the guest sees only the upcall."""
        vi = self.vcpu_info_gpa(vcpu)
        if vi is not None:
            try:
                old = self.atomics.fetch_or(vi + _VI_PENDING, 1)
            except GuestMemoryError:
                old = 0
            if old & 1:
                self._reassert(vcpu)  # as the 2-level ABI does: an upcall not taken yet
                return
            if self.honour_upcall_mask and old >> _VI_MASK_BIT & 1:
                return
        self.deliver(vcpu)

    def _new_fifo(self) -> FifoEvents:
        return FifoEvents(self.atomics, self.nr_vcpus, self.holds_memory, self._mark_upcall)

    def _limit(self) -> int:
        """event_channel.h max_evtchns: the ports the domain's ABI can name."""
        if self.fifo is not None:
            return abi.EVTCHN_FIFO_NR_CHANNELS
        return abi.EVTCHN_2L_NR_CHANNELS_COMPAT if self.compat else NR_CHANNELS

    def _reassert(self, vcpu: int) -> None:
        """An unmasked event was raised while `vcpu`'s upcall may already be on its way:
        send the upcall again while evtchn_upcall_pending is still set (the guest has not
        taken it yet; once it has, it clears the flag and scans the bits itself).

        Xen's upcall cannot get lost: its callback vector is re-injected at every entry
        while the flag is set (hvm_vcpu_has_pending_irq), and a per-vCPU vector
        (HVMOP_set_evtchn_upcall_vector) is set in the vLAPIC's IRR even while the guest
        has not enabled its LAPIC yet. Ours is an MSI, which KVM drops at a software-
        disabled LAPIC (lapic.c, __apic_accept_irq) — Linux binds its event channels
        (xen_init_IRQ) before it sets its APIC up, so an event raised in between would
        leave the flag set with no upcall coming, and, sent only as the flag goes from 0
        to 1, none ever again. A second upcall is harmless: the guest's handler finds no
        more work (Linux's __xen_evtchn_do_upcall loops while the flag is set)."""
        vi = self.vcpu_info_gpa(vcpu)
        if vi is None:
            return
        if not self.memory.read_u8(vi + _VI_PENDING) & 1:
            return
        if self.honour_upcall_mask and self.memory.read_u8(vi + _VI_UPCALL_MASK):
            return
        self.deliver(vcpu)

    def _valid(self, port: int) -> bool:
        return 0 <= port < self._limit()

    # --- what KVM serves in-kernel (xen/kernel_events.py) ---------------------------------
    def _kernel_route(self, port: int) -> Route | None:
        """What EVTCHNOP_send on `port` raises, where KVM can do it alone: an IPI port
        itself, a loopback pair's other end (event_channel.c evtchn_send), a backend in
        this process (its callback, through an eventfd KVM signals)."""
        chn = self._ports.get(port)
        if chn is None or self.fifo is not None:
            return None
        if chn.state == State.IPI:
            return (abi.EVTCHNSTAT_ipi, port, chn.vcpu)
        if chn.state == State.INTERDOMAIN and chn.far is None:
            peer = self._ports.get(chn.remote_port)
            if peer is not None and peer.state == State.INTERDOMAIN:
                return (abi.EVTCHNSTAT_interdomain, chn.remote_port, peer.vcpu)
        if chn.state == State.INTERDOMAIN and not chn.remote_process:
            return chn.far
        return None

    def _sync_kernel(self, *ports: int) -> None:
        kernel = self.kernel
        if kernel is None:
            return
        for port in ports:
            if port > 0:
                kernel.route(port, self._kernel_route(port))

    def sync_kernel_all(self) -> None:
        """Tell KVM the whole table afresh (a restore): routes and VIRQ_TIMER ports."""
        kernel = self.kernel
        if kernel is None:
            return
        with self._lock:
            kernel.reset_routes()
            self._sync_kernel(*self._ports)
            for vcpu in range(self.nr_vcpus):
                kernel.timer_port(vcpu, self._virqs[vcpu].get(abi.VIRQ_TIMER, 0))

    def _alloc(self) -> int:
        # max_event_channels (xl.cfg) within what the ABI can name
        for port in range(1, min(self.max_port + 1, self._limit())):
            if port not in self._ports:
                if self.fifo is not None:
                    self.fifo.init_port(port)  # evtchn_port_init
                return port
        return -abi.XEN_ENOSPC

    def in_range(self, port: int) -> bool:
        """Whether the domain's ABI can name ``port`` (SCHEDOP_poll's check)."""
        return self._valid(port)

    def is_pending(self, port: int) -> bool:
        """Whether ``port``'s event is pending (SCHEDOP_poll), in the domain's ABI. Takes
        no lock: a blocked vCPU asks this while holding the domain's wake lock, which
        delivery takes under ours."""
        fifo, si = self.fifo, self.shared_info
        if not self._valid(port) or port not in self._ports:
            return False
        if fifo is not None:
            return fifo.is_pending(port)
        if port in self._early:
            return True
        try:
            return si is not None and self.atomics.test_bit(si + _PENDING, port)
        except GuestMemoryError:
            return False

    def _vcpu_ok(self, vcpu: int) -> bool:
        return 0 <= vcpu < self.nr_vcpus

    def _self(self, dom: int) -> bool:
        return dom in (abi.DOMID_SELF, self.domid)

    # --- EVTCHNOP_* -------------------------------------------------------------------------

    def op(self, cmd: int, access: GuestAccess, arg_gva: int) -> int:
        """HYPERVISOR_event_channel_op(cmd, arg): 0 (OUT fields written back) or -errno."""
        handler = self._handlers.get(cmd)
        if handler is None:
            return -abi.XEN_ENOSYS
        try:
            arg = access.read(arg_gva, abi.EVTCHNOP_STRUCTS[cmd])
        except XenError as e:  # GuestFault: -EFAULT
            return -e.errno
        rc = handler(self, arg)
        if rc == 0 and cmd in _WRITES_BACK:
            # Like Xen, a port bound before the copy-out faulted stays bound.
            try:
                access.write(arg_gva, arg)
            except XenError as e:
                return -e.errno
        return rc

    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        """A port for ``remote_dom`` to bind to; returns the port or -errno."""
        if not self._self(dom):
            return -abi.XEN_ESRCH  # other domains are not ours to see
        with self._lock:
            port = self._alloc()
            if port > 0:
                remote = self.domid if remote_dom == abi.DOMID_SELF else remote_dom
                self._ports[port] = Channel(State.UNBOUND, remote_dom=remote)
            return port

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        """Connect a new local port to ``remote_dom``'s unbound port; returns it or -errno."""
        rdom = self.domid if remote_dom == abi.DOMID_SELF else remote_dom
        with self._lock:
            lport = self._alloc()
            if lport < 0:
                return lport
            if rdom == self.domid:
                rchn = self._ports.get(remote_port) if self._valid(remote_port) else None
                if rchn is None or rchn.state != State.UNBOUND or rchn.remote_dom != self.domid:
                    return -abi.XEN_EINVAL
                rchn.state, rchn.remote_port = State.INTERDOMAIN, lport
                self._ports[lport] = Channel(State.INTERDOMAIN, remote_dom=rdom,
                                             remote_port=remote_port)
                self._sync_kernel(lport, remote_port)
                self._set_pending(lport, 0)
                return lport
            if self.broker is None or rdom >= abi.DOMID_FIRST_RESERVED:
                return -abi.XEN_ESRCH
            self._ports[lport] = Channel(State.RESERVED)  # held while the broker asks
        try:
            far = self.broker.bind(self.domid, lport, rdom, remote_port)
        except Exception:
            log.exception("d%d: broker failed binding to d%d port %d", self.domid, rdom,
                          remote_port)
            far = -abi.XEN_ESRCH
        with self._lock:
            if isinstance(far, int):
                del self._ports[lport]
                return far if far < 0 else -abi.XEN_EINVAL
            self._ports[lport] = Channel(State.INTERDOMAIN, remote_dom=rdom,
                                         remote_port=remote_port, far=far,
                                         remote_process=True)
            # Xen: notifications sent to the unbound end may have been lost; raise ours.
            self._set_pending(lport, 0)
            return lport

    def bind_virq(self, virq: int, vcpu: int) -> int:
        if not 0 <= virq < abi.NR_VIRQS:
            return -abi.XEN_EINVAL
        if virq in abi.GLOBAL_VIRQS and vcpu != 0:
            return -abi.XEN_EINVAL  # global VIRQs bind on vCPU 0, then move with bind_vcpu
        if not self._vcpu_ok(vcpu):
            return -abi.XEN_ENOENT
        with self._lock:
            if virq in self._virqs[vcpu]:
                return -abi.XEN_EEXIST
            port = self._alloc()
            if port > 0:
                self._ports[port] = Channel(State.VIRQ, vcpu=vcpu, virq=virq)
                self._virqs[vcpu][virq] = port
                if virq == abi.VIRQ_TIMER and self.kernel is not None and self.fifo is None:
                    self.kernel.timer_port(vcpu, port)
            return port

    def bind_ipi(self, vcpu: int) -> int:
        if not self._vcpu_ok(vcpu):
            return -abi.XEN_ENOENT
        with self._lock:
            port = self._alloc()
            if port > 0:
                self._ports[port] = Channel(State.IPI, vcpu=vcpu)
                self._sync_kernel(port)
            return port

    def close(self, port: int) -> int:
        if not self._valid(port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(port)
            if chn is None or chn.state == State.RESERVED:
                return -abi.XEN_EINVAL
            if chn.state == State.VIRQ:
                self._virqs[chn.vcpu if chn.virq not in abi.GLOBAL_VIRQS else 0].pop(
                    chn.virq, None)
                if chn.virq == abi.VIRQ_TIMER and self.kernel is not None:
                    self.kernel.timer_port(chn.vcpu, 0)
            elif chn.state == State.INTERDOMAIN and chn.far is None:
                peer = self._ports.get(chn.remote_port)
                if peer is not None and peer.state == State.INTERDOMAIN:
                    peer.state, peer.remote_dom = State.UNBOUND, self.domid
            del self._ports[port]
            self._sync_kernel(port, chn.remote_port if chn.far is None else 0)
            self._clear_pending(port)
        if chn.remote_process and self.broker is not None:
            try:
                self.broker.close(self.domid, port, chn.remote_dom, chn.remote_port)
            except Exception:
                log.exception("d%d: broker failed closing port %d", self.domid, port)
        return 0

    def _clear_pending(self, port: int) -> None:
        self._early.discard(port)
        if self.fifo is not None:
            self.fifo.clear_pending(port)
        elif self.shared_info is not None:
            with contextlib.suppress(GuestMemoryError):
                self.atomics.test_and_clear_bit(self.shared_info + _PENDING, port)

    def send(self, port: int) -> int:
        """EVTCHNOP_send: raise the far end of ``port``."""
        if not self._valid(port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(port)
            if chn is None:
                return -abi.XEN_EINVAL
            if chn.state == State.UNBOUND:
                return 0  # Xen drops it silently
            if chn.state == State.IPI:
                self._set_pending(port, chn.vcpu)
                return 0
            if chn.state != State.INTERDOMAIN:
                return -abi.XEN_EINVAL
            far = chn.far
            if far is None:
                peer = self._ports[chn.remote_port]
                self._set_pending(chn.remote_port, peer.vcpu)
                return 0
        try:
            far()  # outside the lock: a backend may answer with notify() right away
        except Exception:
            log.exception("d%d: far end of port %d failed", self.domid, port)
        return 0

    def status(self, dom: int, port: int) -> tuple[int, abi.evtchn_status] | int:
        if not self._self(dom):
            return -abi.XEN_ESRCH
        if not self._valid(port):
            return -abi.XEN_EINVAL
        st = abi.evtchn_status(dom=dom, port=port)
        with self._lock:
            chn = self._ports.get(port) or Channel(State.FREE)
            st.vcpu = chn.vcpu
            if chn.state in (State.FREE, State.RESERVED):
                st.status = abi.EVTCHNSTAT_closed
            elif chn.state == State.UNBOUND:
                st.status = abi.EVTCHNSTAT_unbound
                st.u.unbound.dom = chn.remote_dom
            elif chn.state == State.INTERDOMAIN:
                st.status = abi.EVTCHNSTAT_interdomain
                st.u.interdomain.dom = chn.remote_dom
                st.u.interdomain.port = chn.remote_port
            elif chn.state == State.VIRQ:
                st.status = abi.EVTCHNSTAT_virq
                st.u.virq = chn.virq
            else:
                st.status = abi.EVTCHNSTAT_ipi
        return 0, st

    def bind_vcpu(self, port: int, vcpu: int) -> int:
        if not self._vcpu_ok(vcpu):
            return -abi.XEN_ENOENT
        if not self._valid(port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(port)
            if chn is None:
                return -abi.XEN_EINVAL
            if chn.state in (State.UNBOUND, State.INTERDOMAIN) or (
                    chn.state == State.VIRQ and chn.virq in abi.GLOBAL_VIRQS):
                chn.vcpu = vcpu
                if chn.state == State.INTERDOMAIN and chn.far is None:
                    self._sync_kernel(chn.remote_port)  # the pair's sends now raise here
                return 0
            return -abi.XEN_EINVAL  # per-vCPU VIRQs and IPIs are tied to their vCPU

    def unmask(self, port: int) -> int:
        """EVTCHNOP_unmask (event_2l.c evtchn_2l_unmask): clear the mask bit and, if the
        port is pending, pass it on to its vCPU's selector and upcall."""
        if not self._valid(port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(port)
            if self.fifo is not None:
                self.fifo.unmask(port, chn.vcpu if chn else 0)
                return 0
            si = self.shared_info
            if si is None:
                return 0
            try:
                if (self.atomics.test_and_clear_bit(si + self._mask, port)
                        and self.atomics.test_bit(si + _PENDING, port)):
                    self._mark_selector(chn.vcpu if chn else 0, port // self._word_bits)
            except GuestMemoryError:
                pass
        return 0

    def reset(self, dom: int) -> int:
        """EVTCHNOP_reset: close every port (host and remote ends included); a domain on
        the FIFO ABI goes back to 2-level (event_channel.h)."""
        if not self._self(dom):
            return -abi.XEN_ESRCH
        with self._lock:
            ports = [p for p, c in self._ports.items() if c.state != State.RESERVED]
        for port in ports:
            self.close(port)
        with self._lock:
            self.fifo = None
        return 0

    # --- host side: VIRQs, backends in this process, the broker -----------------------------

    def raise_virq(self, vcpu: int, virq: int) -> bool:
        """Send ``virq`` (per-vCPU: to ``vcpu``; global: wherever it is bound)."""
        if virq in abi.GLOBAL_VIRQS:
            vcpu = 0
        if not self._vcpu_ok(vcpu):
            return False
        with self._lock:
            port = self._virqs[vcpu].get(virq)
            if port is None:
                return False
            self._set_pending(port, self._ports[port].vcpu)
            return True

    def bind_local(self, callback: Callable[[], None], vcpu: int = 0) -> int:
        """A port connected to a backend in this process (e.g. STORE_EVTCHN, CONSOLE_EVTCHN).

        The guest sees an interdomain port to ``backend_domid``; its sends call
        ``callback()`` and ``notify(port)`` raises it. Returns the port or -ENOSPC.
        """
        with self._lock:
            port = self._alloc()
            if port > 0:
                self._ports[port] = Channel(State.INTERDOMAIN, vcpu=vcpu,
                                            remote_dom=self.backend_domid, remote_port=port,
                                            far=callback)
                self._sync_kernel(port)
            return port

    def connect_local(self, port: int, callback: Callable[[], None]) -> int:
        """A backend here binds to the guest's unbound ``port`` (e.g. a frontend's
        ``event-channel`` node); the guest must have allocated it for ``backend_domid``."""
        if not self._valid(port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(port)
            if chn is None or chn.state != State.UNBOUND or chn.remote_dom != self.backend_domid:
                return -abi.XEN_EINVAL
            chn.state, chn.remote_port, chn.far = State.INTERDOMAIN, port, callback
            self._sync_kernel(port)
            return 0

    def disconnect_local(self, port: int) -> None:
        """The backend here closed its end of ``port``: as when Xen closes one end of an
        interdomain channel (common/event_channel.c evtchn_close), the guest's end goes
        back to unbound for ``backend_domid``, so a reconnecting backend can bind it again
        and the guest's sends meanwhile reach nobody."""
        with self._lock:
            chn = self._ports.get(port) if self._valid(port) else None
            if (chn is None or chn.state != State.INTERDOMAIN or chn.far is None
                    or chn.remote_process):
                return
            chn.state, chn.far = State.UNBOUND, None
            chn.remote_dom, chn.remote_port = self.backend_domid, 0
            self._sync_kernel(port)

    def notify(self, port: int) -> bool:
        """Host → guest on a port whose far end is a host backend or another domain."""
        with self._lock:
            chn = self._ports.get(port) if self._valid(port) else None
            if chn is None or chn.state != State.INTERDOMAIN or chn.far is None:
                return False
            self._set_pending(port, chn.vcpu)
            return True

    def connect_remote(self, local_port: int, remote_domid: int, remote_port: int,
                       notify_remote: Callable[[], None]) -> int:
        """Another domain binds to our unbound ``local_port`` (the broker calls this here)."""
        if not self._valid(local_port):
            return -abi.XEN_EINVAL
        with self._lock:
            chn = self._ports.get(local_port)
            if chn is None or chn.state != State.UNBOUND or chn.remote_dom != remote_domid:
                return -abi.XEN_EINVAL
            chn.state, chn.remote_port = State.INTERDOMAIN, remote_port
            chn.far, chn.remote_process = notify_remote, True
            return 0

    def remote_notify(self, local_port: int) -> bool:
        """The other domain sent on its end of ``local_port`` (its eventfd fired)."""
        with self._lock:
            chn = self._ports.get(local_port) if self._valid(local_port) else None
            if chn is None or chn.state != State.INTERDOMAIN or not chn.remote_process:
                return False
            self._set_pending(local_port, chn.vcpu)
            return True

    def remote_closed(self, local_port: int) -> None:
        """The other domain closed its end: ours becomes unbound again, as in Xen."""
        with self._lock:
            chn = self._ports.get(local_port) if self._valid(local_port) else None
            if chn is not None and chn.state == State.INTERDOMAIN and chn.remote_process:
                chn.state, chn.far, chn.remote_process = State.UNBOUND, None, False

    def port_state(self, port: int) -> State:
        with self._lock:
            chn = self._ports.get(port)
            return chn.state if chn else State.FREE

    # --- op adapters: struct in, result into its OUT field ----------------------------------

    def _op_alloc_unbound(self, a: abi.evtchn_alloc_unbound) -> int:
        return _out(a, "port", self.alloc_unbound(a.dom, a.remote_dom))

    def _op_bind_interdomain(self, a: abi.evtchn_bind_interdomain) -> int:
        return _out(a, "local_port", self.bind_interdomain(a.remote_dom, a.remote_port))

    def _op_bind_virq(self, a: abi.evtchn_bind_virq) -> int:
        return _out(a, "port", self.bind_virq(a.virq, a.vcpu))

    def _op_bind_ipi(self, a: abi.evtchn_bind_ipi) -> int:
        return _out(a, "port", self.bind_ipi(a.vcpu))

    def _op_bind_pirq(self, a: abi.evtchn_bind_pirq) -> int:
        return -abi.XEN_EINVAL  # no pirqs: Xen's answer for pirq >= d->nr_pirqs

    def _op_status(self, a: abi.evtchn_status) -> int:
        res = self.status(a.dom, a.port)
        if isinstance(res, int):
            return res
        ctypes.memmove(ctypes.addressof(a), ctypes.addressof(res[1]), ctypes.sizeof(a))
        return 0

    # --- the FIFO ABI's ops (event_fifo.c; the queues are xen/evtchn_fifo.py's) ----------
    def _op_init_control(self, a: abi.evtchn_init_control) -> int:
        """evtchn_fifo_init_control: the checks, then this vCPU's control block; the first
        one switches the domain to FIFO (events pending on 2-level wait for the event
        array page that holds them, every bound port gets the default priority)."""
        if not self.fifo_allowed:
            return -abi.XEN_ENOSYS  # evtchn_fifo = 0: as a Xen without FIFO support
        a.link_bits = abi.EVTCHN_FIFO_LINK_BITS
        if a.vcpu >= self.nr_vcpus:
            return -abi.XEN_ENOENT
        if a.offset > abi.PAGE_SIZE - CONTROL_BLOCK_SIZE or a.offset % 8:
            return -abi.XEN_EINVAL  # across a page boundary, or not 8-byte aligned
        with self._lock:
            if self.fifo is not None:
                return self.fifo.map_control_block(a.vcpu, a.control_gfn, a.offset)
            fifo = self._new_fifo()
            rc = fifo.map_control_block(a.vcpu, a.control_gfn, a.offset)
            if rc < 0:
                return rc
            if self.on_fifo is not None:
                self.on_fifo()  # KVM delivers 2-level only: it lets go of the ports
            fifo.adopt(p for p in self._ports if p and self.is_pending(p))
            for port in self._ports:
                if port:
                    fifo.init_port(port)
            self.fifo, self._early = fifo, set()
            return 0

    def _op_expand_array(self, a: abi.evtchn_expand_array) -> int:
        with self._lock:
            if self.fifo is None:
                return -abi.XEN_EOPNOTSUPP  # no control block was set up
            return self.fifo.expand_array(a.array_gfn, self._notify_vcpu)

    def _notify_vcpu(self, port: int) -> int | None:
        chn = self._ports.get(port)
        return chn.vcpu if chn is not None and chn.state != State.RESERVED else None

    def _op_set_priority(self, a: abi.evtchn_set_priority) -> int:
        """A port that does not exist is -EINVAL; 2-level has no priorities
        (event_channel.h evtchn_port_set_priority: -ENOSYS)."""
        with self._lock:
            if not (self._valid(a.port) and a.port in self._ports):
                return -abi.XEN_EINVAL
            if self.fifo is None:
                return -abi.XEN_ENOSYS
            return self.fifo.set_priority(a.port, a.priority)

    _handlers: dict[int, Callable[[EventChannels, Any], int]] = {
        abi.EVTCHNOP_init_control: _op_init_control,
        abi.EVTCHNOP_expand_array: _op_expand_array,
        abi.EVTCHNOP_set_priority: _op_set_priority,
        abi.EVTCHNOP_alloc_unbound: _op_alloc_unbound,
        abi.EVTCHNOP_bind_interdomain: _op_bind_interdomain,
        abi.EVTCHNOP_bind_virq: _op_bind_virq,
        abi.EVTCHNOP_bind_ipi: _op_bind_ipi,
        abi.EVTCHNOP_bind_pirq: _op_bind_pirq,
        abi.EVTCHNOP_status: _op_status,
        abi.EVTCHNOP_close: lambda self, a: self.close(a.port),
        abi.EVTCHNOP_send: lambda self, a: self.send(a.port),
        abi.EVTCHNOP_bind_vcpu: lambda self, a: self.bind_vcpu(a.port, a.vcpu),
        abi.EVTCHNOP_unmask: lambda self, a: self.unmask(a.port),
        abi.EVTCHNOP_reset: lambda self, a: self.reset(a.dom),
    }


_WRITES_BACK = frozenset({abi.EVTCHNOP_alloc_unbound, abi.EVTCHNOP_bind_interdomain,
                          abi.EVTCHNOP_bind_virq, abi.EVTCHNOP_bind_ipi, abi.EVTCHNOP_status,
                          abi.EVTCHNOP_init_control})


def _out(arg: ctypes.Structure, field: str, result: int) -> int:
    if result < 0:
        return result
    setattr(arg, field, result)
    return 0
