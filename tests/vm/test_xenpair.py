"""Two xenopus domains exchanging data through an interdomain event channel and a granted
page, brokered by the daemon; and a peer dying mid-way.

The first tests drive the broker in-process (the daemon's `InterdomainBroker` and two
domain-side `InterdomainPort`s over real socket pairs, eventfds and memfds; no KVM): Xen's
permission checks and error codes, and what a dead or silent peer costs. The rest boot
the kit's xenpair guests through the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_result, read_until
from xenopus import ipc
from xenopus.domain.interdomain_port import InterdomainPort
from xenopus.memory import GuestMemory
from xenopus.toolstack import broker as broker_mod
from xenopus.toolstack.broker import InterdomainBroker
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels, State
from xenopus.xen.grant import GrantTable
from xenopus.xen.xenstore.client import XsClient

kvm = pytest.mark.kvm
SHARED_INFO = 0x1000
GRANT_FRAME = 2  # gpfn of grant frame 0
GRANTED = 5  # gpfn of the page granted


class Dom:
    """One domain's Xen state and its process's broker end, in this process."""

    def __init__(self, domid: int, broker: InterdomainBroker, loop: asyncio.AbstractEventLoop):
        self.domid = domid
        self.memory = GuestMemory.create(1 << 20)
        self.upcall = asyncio.Event()
        self.evtchn = EventChannels(domid, self.memory, 1,
                                    lambda _vcpu: loop.call_soon_threadsafe(self.upcall.set))
        self.evtchn.set_shared_info(SHARED_INFO)
        self.grants = GrantTable(domid, self.memory)
        assert self.grants.map_frame(0, GRANT_FRAME) == 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        broker.add(domid, ours)
        self.port = InterdomainPort(loop, theirs, domid, timeout=1.0)
        self.port.attach(self.evtchn, self.grants, self.memory)
        self.evtchn.broker = self.port
        self.grants.foreign = self.port.foreign
        self.closed = asyncio.Event()
        remote_closed = self.evtchn.remote_closed

        def closed(port: int) -> None:
            remote_closed(port)
            self.closed.set()
        self.evtchn.remote_closed = closed  # type: ignore[method-assign]

    def grant(self, gref: int, to: int, flags: int = abi.GTF_permit_access) -> None:
        entry = abi.grant_entry_v1(flags=flags, domid=to, frame=GRANTED)
        self.memory.write(GRANT_FRAME * abi.PAGE_SIZE + gref * ctypes.sizeof(entry), bytes(entry))

    def consume(self) -> None:
        """What the guest's upcall handler does: take every pending event."""
        si = abi.shared_info
        self.memory.fill(SHARED_INFO + si.evtchn_pending.offset, si.evtchn_pending.size)
        vi = SHARED_INFO + si.vcpu_info.offset  # vCPU 0's slot
        self.memory.write_u8(vi + abi.vcpu_info.evtchn_upcall_pending.offset, 0)
        self.memory.write_u64(vi + abi.vcpu_info.evtchn_pending_sel.offset, 0)
        self.upcall.clear()

    def pending(self, port: int) -> bool:
        return self.evtchn.atomics.test_bit(SHARED_INFO + abi.shared_info.evtchn_pending.offset, port)


def copy_from(dom: int, gref: int) -> abi.gnttab_copy:
    op = abi.gnttab_copy(len=64, flags=abi.GNTCOPY_source_gref)
    op.source.u.ref, op.source.domid = gref, dom
    op.dest.u.gmfn, op.dest.domid = 9, abi.DOMID_SELF
    return op


async def vcpu(fn: Callable, *args: object) -> object:
    """A hypercall: on a thread of its own, as on a vCPU (the loop must keep running)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_broker_channels_grants_and_a_dying_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_mod, "PEER_TIMEOUT", 0.3)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        broker = InterdomainBroker()
        a, b, c = Dom(1, broker, loop), Dom(2, broker, loop), Dom(3, broker, loop)
        port = a.evtchn.alloc_unbound(abi.DOMID_SELF, 2)
        assert port > 0
        # event_channel.c evtchn_bind_interdomain: no such domain -ESRCH; a port that is
        # not unbound for the binder -EINVAL (here: allocated for domain 2, bound by 3).
        assert await vcpu(b.evtchn.bind_interdomain, 9, port) == -abi.XEN_ESRCH
        assert await vcpu(b.evtchn.bind_interdomain, 1, port + 1) == -abi.XEN_EINVAL
        assert await vcpu(c.evtchn.bind_interdomain, 1, port) == -abi.XEN_EINVAL
        assert a.evtchn.port_state(port) == State.UNBOUND
        lport = await vcpu(b.evtchn.bind_interdomain, 1, port)
        assert lport > 0 and a.evtchn.port_state(port) == State.INTERDOMAIN
        # Each end's send raises the other's port (through the other's eventfd).
        a.consume()
        b.consume()  # b's port was raised at bind, as Xen does
        assert await vcpu(b.evtchn.send, lport) == 0
        await asyncio.wait_for(a.upcall.wait(), 5)
        assert a.pending(port)
        assert not b.pending(lport)
        assert await vcpu(a.evtchn.send, port) == 0
        await asyncio.wait_for(b.upcall.wait(), 5)
        assert b.pending(lport)

        # Grant copies from another domain's memory; the entry decides (grant_table.c).
        a.memory.write(GRANTED * abi.PAGE_SIZE, b"hello from domain 1".ljust(64, b"\0"))
        a.grant(8, to=2)
        a.grant(9, to=3)
        op = copy_from(1, 8)
        assert await vcpu(b.grants.copy_one, op) == abi.GNTST_okay
        assert b.memory.read(9 * abi.PAGE_SIZE, 19) == b"hello from domain 1"
        assert await vcpu(b.grants.copy_one, copy_from(1, 9)) == abi.GNTST_general_error
        assert await vcpu(b.grants.copy_one, copy_from(1, 1 << 20)) == abi.GNTST_bad_gntref
        assert await vcpu(b.grants.copy_one, copy_from(9, 8)) == abi.GNTST_bad_domain
        assert a.memory.read_u16(GRANT_FRAME * abi.PAGE_SIZE + 8 * 8) == abi.GTF_permit_access

        # Closing one end: the other goes back to unbound, still for the same domain.
        assert await vcpu(b.evtchn.close, lport) == 0
        await asyncio.wait_for(a.closed.wait(), 5)
        st = a.evtchn.status(abi.DOMID_SELF, port)
        assert not isinstance(st, int) and st[1].status == abi.EVTCHNSTAT_unbound
        assert st[1].u.unbound.dom == 2
        lport = await vcpu(b.evtchn.bind_interdomain, 1, port)
        assert lport > 0

        # A silent peer (its process stuck): the binder gets -ESRCH, not a hang.
        silent, _held = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        broker.add(4, silent)
        assert await vcpu(b.evtchn.bind_interdomain, 4, 1) == -abi.XEN_ESRCH
        assert await vcpu(b.grants.copy_one, copy_from(4, 8)) == abi.GNTST_bad_domain

        # Domain 1's process dies: b's port is unbound again, its view of 1 is dropped.
        b.closed.clear()
        broker.remove(1)
        await asyncio.wait_for(b.closed.wait(), 5)
        assert b.evtchn.port_state(lport) == State.UNBOUND
        assert await vcpu(b.evtchn.send, lport) == 0  # dropped, as Xen drops it
        assert await vcpu(b.grants.copy_one, copy_from(1, 8)) == abi.GNTST_bad_domain
        for d in (a, b, c):
            d.port.shutdown()
        for d in (2, 3, 4):
            broker.remove(d)

    asyncio.run(main())


def test_links_and_views_survive_a_daemon_restart() -> None:
    """The daemon dies and a new one adopts the domains: each process gets a new broker
    pair and says which links and views it holds. A link both ends name is the new
    broker's again (a peer's death still unbinds the other end; events still flow); an
    end whose peer was lost with the old daemon goes back to unbound; binds made after
    get numbers past the old links'. (The new broker knew none of them: a dead peer
    left its partner bound for ever, and its first new link took an old one's number.)"""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        old = InterdomainBroker()
        a, b, c, lost = (Dom(d, old, loop) for d in (1, 2, 3, 4))
        port = a.evtchn.alloc_unbound(abi.DOMID_SELF, 2)
        lport = await vcpu(b.evtchn.bind_interdomain, 1, port)
        cport = c.evtchn.alloc_unbound(abi.DOMID_SELF, 4)
        assert await vcpu(lost.evtchn.bind_interdomain, 3, cport) > 0
        a.memory.write(GRANTED * abi.PAGE_SIZE, b"granted before".ljust(64, b"\0"))
        a.grant(8, to=2)
        assert await vcpu(b.grants.copy_one, copy_from(1, 8)) == abi.GNTST_okay  # b views a
        old_ids = set(old.links)
        for sock in old.socks.values():  # the daemon is killed: its ends close
            loop.remove_reader(sock.fileno())
            sock.close()
        lost.port.shutdown()  # and domain 4 is not adopted

        new = InterdomainBroker()
        new.hold()
        for d in (a, b, c):  # the adoption: a new pair each
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            new.add(d.domid, ours)
            d.port.reconnect(theirs)
        new.release()
        assert set(new.links) == old_ids - {lid for lid, k in old.links.items() if 4 in (k.a, k.b)}
        assert new.viewers == {1: {2}}
        # c's peer was lost: its port is unbound again, still for domain 4.
        await asyncio.wait_for(c.closed.wait(), 5)
        assert c.evtchn.port_state(cport) == State.UNBOUND
        # The surviving link carries events as before.
        a.consume()
        assert await vcpu(b.evtchn.send, lport) == 0
        await asyncio.wait_for(a.upcall.wait(), 5)
        assert a.pending(port)
        # A new bind goes through the new broker, numbered past the old links.
        port2 = a.evtchn.alloc_unbound(abi.DOMID_SELF, 3)
        assert await vcpu(c.evtchn.bind_interdomain, 1, port2) > 0
        assert max(new.links) > max(old_ids)
        # Domain 2's process dies under the new daemon: a's port is unbound.
        a.closed.clear()
        new.remove(2)
        await asyncio.wait_for(a.closed.wait(), 5)
        assert a.evtchn.port_state(port) == State.UNBOUND
        for d in (a, b, c):
            d.port.shutdown()
        for d in (1, 3):
            new.remove(d)

    asyncio.run(main())


class ReportingLast(selectors.EpollSelector):
    """Reports the descriptors in `last` after every other ready one: one order the loop
    may see an eventfd and a socket message that arrived in the same wait."""

    def __init__(self) -> None:
        super().__init__()
        self.last: set[int] = set()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(timeout)
        return sorted(ready, key=lambda event: event[0].fd in self.last)


def test_an_event_sent_just_before_the_peer_dies_stays_pending() -> None:
    """Xen's EVTCHNOP_send marks the far port pending at once, and closing the sender's end
    leaves it pending (event_channel.c evtchn_send, evtchn_close). Here the send travels in
    the far end's eventfd and the daemon's unlink in its socket: a dying sender's event is
    still delivered when the loop reports the unlink first."""
    selector = ReportingLast()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        broker = InterdomainBroker()
        a, b = Dom(1, broker, loop), Dom(2, broker, loop)
        port = a.evtchn.alloc_unbound(abi.DOMID_SELF, 2)
        lport = await vcpu(b.evtchn.bind_interdomain, 1, port)
        assert lport > 0 and a.evtchn.port_state(port) == State.INTERDOMAIN
        assert not a.pending(port)
        selector.last.update(link.fd_in for link in a.port.links.values())
        # Both in one step of the loop: b's send (an eventfd write, never blocking), then
        # its process dies and the daemon tells a.
        assert b.evtchn.send(lport) == 0
        broker.remove(2)
        await asyncio.wait_for(a.closed.wait(), 5)
        assert a.evtchn.port_state(port) == State.UNBOUND
        assert a.pending(port)
        for d in (a, b):
            d.port.shutdown()
        broker.remove(1)

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        runner.run(main())


def create_paused(x: Xenopus, name: str, cmdline: str) -> int:
    cfg = x.config(name, "xenpair.elf", xen_platform=1, memory=64, cmdline=cmdline)
    r = x.run("create", "-q", "-p", str(cfg))
    assert r.returncode == 0, r.stderr
    return int(x.domains()[name][1])


def pair_ids(x: Xenopus, tag: str) -> tuple[int, int]:
    """The domids the next two domains will get. Each guest's command line names its peer
    and is fixed at create, so one of them must be predicted: domids count up by one per
    create (a probe shows the next), and the callers assert that the prediction held."""
    probe = create_paused(x, f"probe-{tag}", "role=a peer=0")
    assert x.run("destroy", f"probe-{tag}").returncode == 0
    return probe + 1, probe + 2


def console(x: Xenopus, name: str) -> subprocess.Popen:
    """The serial console (the kit prints there), history included."""
    return x.popen("console", "-t", "serial", name)


def result_line(stream) -> bytes:
    """The guest's RESULT line (every kit guest prints one)."""
    seen = read_result(stream)
    return seen[seen.index(b"RESULT: "):].split(b"\n")[0]


def domain_pid(x: Xenopus, name: str) -> int:
    chan = ipc.Channel.connect(str(x.run_dir / "xenopus.sock"))
    try:
        domains = chan.request({"op": "list"})["domains"]
    finally:
        chan.close()
    return next(d["pid"] for d in domains if d["name"] == name)


@kvm
def test_two_domains_exchange_data(xenopus: Xenopus) -> None:
    a, b = pair_ids(xenopus, "ok")
    assert create_paused(xenopus, "pair-a", f"role=a peer={b}") == a
    assert create_paused(xenopus, "pair-b", f"role=b peer={a}") == b
    cons = {n: console(xenopus, n) for n in ("pair-a", "pair-b")}
    try:
        for name in ("pair-b", "pair-a"):
            assert xenopus.run("unpause", name).returncode == 0
        # Each console ends when its domain is gone.
        out = {n: c.communicate(timeout=120)[0].decode(errors="replace") for n, c in cons.items()}
    finally:
        for c in cons.values():
            c.kill()
    assert f"pair b: got from domain {a}: hello from domain {a}" in out["pair-b"], out["pair-b"]
    assert f"pair a: reply from domain {b}: ack from domain {b}: hello from domain {a}" in out["pair-a"], out["pair-a"]
    assert "RESULT: PASS xenpair role=a" in out["pair-a"], out["pair-a"]
    assert "RESULT: PASS xenpair role=b" in out["pair-b"], out["pair-b"]
    daemon_log = xenopus.log()
    assert f"event channel: domain {a} port" in daemon_log and f"<-> domain {b} port" in daemon_log


@kvm
def test_b_waits_for_the_answer_not_for_its_bind_event(xenopus: Xenopus) -> None:
    """bind_interdomain raises b's own new port (public/event_channel.h); that event is not
    a's answer. a is held paused from publishing until b has sent: a b that took its bind
    event for the answer would end then, and its end of the channel with it, so a would
    find its port unbound (EVTCHNOP_status) and its answer going nowhere."""
    a, b = pair_ids(xenopus, "wait")
    assert create_paused(xenopus, "wait-a", f"role=a peer={b}") == a
    assert create_paused(xenopus, "wait-b", f"role=b peer={a}") == b
    con_a, con_b = console(xenopus, "wait-a"), console(xenopus, "wait-b")
    try:
        assert con_a.stdout is not None and con_b.stdout is not None
        assert xenopus.run("unpause", "wait-a").returncode == 0
        read_until(con_a.stdout, b"pair a: port")  # published, now waiting for b
        assert xenopus.run("pause", "wait-a").returncode == 0
        assert xenopus.run("unpause", "wait-b").returncode == 0
        read_until(con_b.stdout, f"ok event to domain {a}".encode())
        assert xenopus.run("unpause", "wait-a").returncode == 0
        out_a = con_a.communicate(timeout=120)[0].decode(errors="replace")
        out_b = con_b.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        con_a.kill()
        con_b.kill()
    assert re.search(rf"ok port \d+ bound to domain {b} port [1-9]", out_a), out_a
    assert "RESULT: PASS xenpair role=a" in out_a, out_a
    assert f"ok domain {a} answered" in out_b, out_b
    assert "RESULT: PASS xenpair role=b" in out_b, out_b


class HalfDone(NamedTuple):
    a: int
    b: int
    con_a: subprocess.Popen
    log_a: Path


@contextlib.contextmanager
def b_answered_paused_a(x: Xenopus, tag: str) -> Iterator[HalfDone]:
    """a publishes and is paused, waiting for its event. b binds a's port, copies a's
    grant, copies its reply into a's page, sends, and stops without waiting for a's answer
    (wait=0; on_poweroff = preserve keeps its process, and so its end of the channel)."""
    a, b = pair_ids(x, tag)
    assert create_paused(x, f"{tag}-a", f"role=a peer={b} timeout_ms=60000") == a
    cfg = x.config(f"{tag}-b", "xenpair.elf", xen_platform=1, memory=64,
                   cmdline=f"role=b peer={a} wait=0", on_poweroff="preserve")
    assert x.run("create", "-q", "-p", str(cfg)).returncode == 0
    assert int(x.domains()[f"{tag}-b"][1]) == b
    con_a, con_b = console(x, f"{tag}-a"), console(x, f"{tag}-b")
    try:
        assert con_a.stdout is not None and con_b.stdout is not None
        assert x.run("unpause", f"{tag}-a").returncode == 0
        read_until(con_a.stdout, b"pair a: port")  # published, now waiting for b
        assert x.run("pause", f"{tag}-a").returncode == 0
        assert x.run("unpause", f"{tag}-b").returncode == 0
        result_b = result_line(con_b.stdout)  # preserved: its console stays open
        assert result_b.startswith(b"RESULT: PASS xenpair role=b"), result_b
        yield HalfDone(a, b, con_a, x.run_dir / "log" / f"{tag}-a.log")
    finally:
        con_a.kill()
        con_b.kill()


def assert_a_saw_b_go(half: HalfDone, out_a: str) -> None:
    """b's event and the reply it copied into a's page arrived before b went; then a's
    port became unbound (EVTCHNOP_status), as Xen does when the far end closes."""
    a, b = half.a, half.b
    assert f"pair a: reply from domain {b}: ack from domain {b}: hello from domain {a}" in out_a, out_a
    assert re.search(r"FAIL port \d+ bound to domain", out_a), out_a
    assert "RESULT: FAIL xenpair role=a" in out_a, out_a
    assert re.search(rf"d{a}: port \d+: domain {b} closed its end", half.log_a.read_text())


@kvm
def test_destroying_one_side_midway_leaves_the_other_running(xenopus: Xenopus) -> None:
    """b answers a paused a and stops (b_answered_paused_a). Destroying b leaves a paused
    and its process untouched; a's port goes back to unbound, which a's guest sees once it
    runs again."""
    with b_answered_paused_a(xenopus, "die") as half:
        pid_a = domain_pid(xenopus, "die-a")
        assert "die-b" in xenopus.domains()  # preserved: its process holds its end
        assert "closed its end" not in half.log_a.read_text()

        assert xenopus.run("destroy", "die-b").returncode == 0
        assert "die-b" not in xenopus.domains()
        assert xenopus.domains()["die-a"][4] == "--p---"
        assert domain_pid(xenopus, "die-a") == pid_a
        os.kill(pid_a, 0)  # alive

        assert xenopus.run("unpause", "die-a").returncode == 0
        out_a = half.con_a.communicate(timeout=120)[0].decode(errors="replace")
    assert_a_saw_b_go(half, out_a)


@kvm
def test_a_link_made_before_a_daemon_restart_is_the_new_daemons(xenopus: Xenopus) -> None:
    """As above, with the daemon killed (kill -9) once b has bound a's port and sent: the
    next daemon adopts both; destroying b then unbinds a's port, which only a broker that
    knows the link can do (a restarted daemon used to know none, and a stayed bound to a
    dead domain)."""
    from tests.vm.test_jail import kill_daemon

    with b_answered_paused_a(xenopus, "rj") as half:
        kill_daemon(xenopus)
        assert xenopus.run("list").returncode == 0  # a new daemon adopts both
        assert "rejoined" in xenopus.log()
        assert "closed its end" not in half.log_a.read_text()
        assert xenopus.run("destroy", "rj-b").returncode == 0
        deadline = time.monotonic() + 30
        while "closed its end" not in half.log_a.read_text():
            assert time.monotonic() < deadline, half.log_a.read_text()
            time.sleep(0.05)  # polling the domain's log for the unlink
        assert xenopus.run("unpause", "rj-a").returncode == 0
        out_a = half.con_a.communicate(timeout=120)[0].decode(errors="replace")
    assert_a_saw_b_go(half, out_a)


def _rebind_round(x: Xenopus, tag: str, move: Callable[[str], None]) -> None:
    """a and b exchange a round; a is moved by `move` (its name) to a new domid while it
    waits for a second round: b must see its end go unbound for a's old domid, as Xen
    leaves the surviving end of a closed channel (common/event_channel.c evtchn_close), and
    once told a's new domid rebinds to a's port, which a's new incarnation kept unbound for
    b (docs/snapshot-stream.md, "The Xen state"); the second round then goes through."""
    a, b = pair_ids(x, tag)
    name_a, name_b = f"{tag}-a", f"{tag}-b"
    for name, line in ((name_a, f"role=a peer={b}"), (name_b, f"role=b peer={a}")):
        # preserve: a restored a may finish before its console is attached
        cfg = x.config(name, "xenpair.elf", xen_platform=1, memory=64, on_poweroff="preserve",
                       cmdline=f"{line} again=1 timeout_ms=60000")
        assert x.run("create", "-q", "-p", str(cfg)).returncode == 0
    assert [int(x.domains()[n][1]) for n in (name_a, name_b)] == [a, b]
    con_a, con_b = console(x, name_a), console(x, name_b)
    con_a2 = None
    try:
        assert con_a.stdout is not None and con_b.stdout is not None
        for name in (name_b, name_a):
            assert x.run("unpause", name).returncode == 0
        before = read_until(con_a.stdout, b"pair a: round 1 done")
        move(name_a)
        before += con_a.communicate(timeout=60)[0]  # the old incarnation is gone
        assert b"RESULT" not in before, before
        out_b = read_until(con_b.stdout, f"unbound: domain {a} went away".encode())
        new_a = int(x.domains()[name_a][1])
        assert new_a not in (a, b)
        client = XsClient(str(x.run_dir / "xenstored.sock"))
        try:
            client.write(f"/local/domain/{b}/data/pair-peer", str(new_a))
        finally:
            client.close()
        con_a2 = console(x, name_a)
        assert con_a2.stdout is not None
        after = read_result(con_a2.stdout)
        out_b += read_result(con_b.stdout)
        out_a = (before + after).decode(errors="replace")
    finally:
        for c in (con_a, con_b, con_a2):
            if c is not None:
                c.kill()
        for name in (name_a, name_b):
            x.run("destroy", name)
    text_b = out_b.decode(errors="replace")
    assert f"pair a: reply from domain {b}: ack from domain {b}: hello from domain {a}" in out_a, out_a
    assert re.search(rf"ok port \d+ bound again to domain {b} port [1-9]", out_a), out_a
    want = f"again from domain {b}: hello from domain {a}"
    assert f"pair a: second reply from domain {b}: {want}" in out_a, out_a
    assert "RESULT: PASS xenpair role=a" in out_a, out_a
    assert re.search(rf"ok port \d+ unbound for domain {a} ", text_b), text_b
    assert f"pair b: sent again to domain {new_a}: {want}" in text_b, text_b
    assert f"ok domain {new_a} answered again" in text_b, text_b
    assert "RESULT: PASS xenpair role=b" in text_b, text_b


@kvm
def test_a_pair_carries_on_after_one_side_is_saved_and_restored(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    image = tmp_path / "pair-a.save"

    def save_and_restore(name: str) -> None:
        saved = xenopus.run("save", name, str(image))
        assert saved.returncode == 0, saved.stderr
        restored = xenopus.run("restore", str(image))
        assert restored.returncode == 0, restored.stderr

    _rebind_round(xenopus, "psr", save_and_restore)


@kvm
def test_a_pair_carries_on_after_one_side_is_live_migrated_on_this_host(
    xenopus: Xenopus,
) -> None:
    """xl migrate DOM localhost: the receiver restores NAME--incoming beside the source,
    which becomes NAME--migratedaway before the receiver is told to go (xl_migrate.c); the
    pair's peer then rebinds as after a restore."""
    from tests.vm.test_save_restore import _migrate

    def migrate(name: str) -> None:
        moved = _migrate(xenopus, xenopus, name, "--debug")
        assert moved.returncode == 0, moved.stderr
        assert f"({name})" in moved.stderr, moved.stderr

    _rebind_round(xenopus, "pmig", migrate)
