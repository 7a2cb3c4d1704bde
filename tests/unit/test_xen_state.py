"""The Xen state's save and restore without KVM: the event-channel table (every kind of
port, and what becomes of channels whose far end does not come along), the grant table's
frames, vcpu_op's vCPUs up and down, the watchdogs, and the stream's DOMAIN_CONFIG record
and resumed reader."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from xenopus import stream
from xenopus.memory import GuestMemory, MiB
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels, State
from xenopus.xen.grant import GrantTable

SI = 0x10000
DOMID_SELF = 0x7FF0
VIRQ_TIMER, VIRQ_DEBUG = 0, 1  # xen.h: VIRQ_TIMER is per-vCPU, VIRQ_DEBUG global


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.create(1 * MiB) as m:
        yield m


def _channels(mem: GuestMemory, upcalls: list[int]) -> tuple[EventChannels, list[str]]:
    """A table as a build makes it: a host backend's port (the XenStore ring's) first."""
    host_calls: list[str] = []
    ev = EventChannels(1, mem, 2, upcalls.append)
    assert ev.bind_local(lambda: host_calls.append("store")) == 1
    ev.set_shared_info(SI)
    return ev, host_calls


def test_every_kind_of_port_survives_and_far_ends_that_do_not_come_are_unbound(
    mem: GuestMemory,
) -> None:
    source, _ = _channels(mem, [])
    timer = source.bind_virq(VIRQ_TIMER, 1)
    debug = source.bind_virq(VIRQ_DEBUG, 0)
    ipi = source.bind_ipi(1)
    near = source.alloc_unbound(DOMID_SELF, DOMID_SELF)
    far = source.bind_interdomain(DOMID_SELF, near)
    for_backend = source.alloc_unbound(DOMID_SELF, 0)
    assert source.connect_local(for_backend, lambda: None) == 0  # a PV backend bound it
    for_peer = source.alloc_unbound(DOMID_SELF, 7)
    assert source.connect_remote(for_peer, 7, 3, lambda: None) == 0  # domain 7 bound it
    assert source.register_vcpu_info(1, SI + 0x800) == 0
    state = stream.decode_state(stream.encode_state(source.save_state()))

    upcalls: list[int] = []
    target, host_calls = _channels(mem, upcalls)
    target.restore_state(state)
    assert target.port_state(timer) == State.VIRQ and target.port_state(ipi) == State.IPI
    assert target.vcpu_info_gpa(1) == SI + 0x800
    # A VIRQ raises its port on its vCPU; a global one stays found on vCPU 0.
    assert target.raise_virq(1, VIRQ_TIMER) and target.raise_virq(0, VIRQ_DEBUG)
    assert target.bind_virq(VIRQ_TIMER, 1) < 0  # still bound: -EEXIST
    assert debug != timer
    # The loopback pair still reaches its other end.
    assert target.send(far) == 0 and mem.read_u8(SI + 2048 + near // 8) >> (near % 8) & 1
    # The build's own host port kept this incarnation's backend.
    assert target.send(1) == 0 and host_calls == ["store"]
    # A PV backend's channel waits, unbound for the backend domain, for it to reconnect.
    assert target.port_state(for_backend) == State.UNBOUND
    assert target.connect_local(for_backend, lambda: None) == 0
    # Another domain's end did not come along: unbound for that domain, as Xen leaves it.
    assert target.port_state(for_peer) == State.UNBOUND
    assert target.connect_remote(for_peer, 7, 4, lambda: None) == 0


def test_a_table_without_the_build_s_host_ports_is_refused(mem: GuestMemory) -> None:
    bare = EventChannels(1, mem, 2, lambda v: None)
    state = bare.save_state()
    target, _ = _channels(mem, [])
    with pytest.raises(ValueError, match="host ports"):
        target.restore_state(state)
    wrong = EventChannels(1, mem, 1, lambda v: None)
    with pytest.raises(ValueError, match="of 2 vCPUs"):
        wrong.restore_state(target.save_state())


def test_grant_frames_come_back_and_bad_ones_are_refused(mem: GuestMemory) -> None:
    source = GrantTable(1, mem)
    assert source.map_frame(0, 0x20) == 0 and source.map_frame(3, 0x21) == 0
    told: list[dict] = []
    target = GrantTable(1, mem)
    target.on_frames = told.append
    target.restore_state(source.save_state())
    assert target.entry_gpa(0) == 0x20000 and target.nr_frames == 4
    # viewers in other domains learn the frames
    assert told == [{"frames": {"0": 0x20, "3": 0x21}, "nr_frames": 4, "version": 1,
                     "status_frames": {}}]
    with pytest.raises(ValueError):
        target.restore_state({"nr_frames": 4, "frames": [[0, 1 << 40]]})


def test_domain_config_comes_first_and_a_reader_resumes_after_it() -> None:
    out = io.BytesIO()
    writer = stream.StreamWriter(out)
    writer.domain_config({"name": "d", "memory": 32})
    writer.part("k", "n", {"version": 1})
    writer.end()
    with pytest.raises(ValueError, match="first record"):
        writer.domain_config({})
    inp = io.BytesIO(out.getvalue())
    config, reader = stream.read_domain_config(inp)
    assert config == {"name": "d", "memory": 32}
    # Another process (sharing the file) takes over where this reader stopped.
    resumed = stream.StreamReader.resume(inp, reader.position())
    assert [r.part() for r in resumed] == [("k", "n", {"version": 1})]

    plain = io.BytesIO()
    w = stream.StreamWriter(plain)
    w.part("k", "n", None)
    w.end()
    with pytest.raises(stream.StreamRecordError, match="record 0 PART .*DOMAIN_CONFIG"):
        stream.read_domain_config(io.BytesIO(plain.getvalue()))


class _FakeMachine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, object]] = []

    def vcpu_down(self, index: int) -> None:
        self.calls.append(("down", index, None))

    def vcpu_up(self, index: int, state: object = None) -> None:
        self.calls.append(("up", index, state))


class _FakeDomain:
    """What vcpu_op and the watchdogs use of a XenDomain."""

    def __init__(self, mem: GuestMemory, now: int = 0) -> None:
        self.domid, self.memory, self.nr_vcpus = 1, mem, 4
        self.machine = _FakeMachine()
        self.now = now
        self.shutdowns: list[int] = []

    def started(self, vcpu: int) -> bool:
        return False  # no INIT/SIPI here: only VCPUOP_up starts a vCPU

    def system_time(self) -> int:
        return self.now

    def shutdown(self, reason: int) -> int:
        self.shutdowns.append(reason)
        return 0


def test_vcpus_up_and_down_and_runstate_areas_come_back(mem: GuestMemory) -> None:
    from xenopus.vm.cpu import CpuState
    from xenopus.xen.hypercalls.vcpu import VcpuOps

    source = VcpuOps(_FakeDomain(mem))  # type: ignore[arg-type]
    first, second = CpuState(rip=0x1000, rsp=0x2000), CpuState(rip=0x3000, cr3=0x5000)
    source.contexts = {1: first, 2: second}
    assert source.up(1, caller=0) == 0  # VCPUOP_up of an initialised vCPU
    assert source.down(1, caller=0) == 0  # ... and VCPUOP_down
    source.runstate = {0: 0x8000, 1: 0x8040}
    state = stream.decode_state(stream.encode_state(source.save_state()))

    domain = _FakeDomain(mem)
    target = VcpuOps(domain)  # type: ignore[arg-type]
    target.restore_state(state)
    assert domain.machine.calls == [("down", 1, None)]  # parked again before it runs
    assert not target.is_up(1, caller=0) and not target.is_up(2, caller=0)
    assert target.runstate == {0: 0x8000, 1: 0x8040}
    assert target.initialise(2, None, caller=0) == -abi.XEN_EEXIST  # type: ignore[arg-type]
    assert target.up(2, caller=0) == 0 and domain.machine.calls[-1] == ("up", 2, second)
    assert target.up(1, caller=0) == 0 and domain.machine.calls[-1] == ("up", 1, None)
    with pytest.raises(ValueError, match="lacks"):
        VcpuOps(_FakeDomain(mem)).restore_state({**state, "down": [7]})  # type: ignore[arg-type]


def test_an_armed_watchdog_has_as_long_left_after_restore(mem: GuestMemory) -> None:
    from xenopus.xen.hypercalls.sched import Watchdogs

    source = Watchdogs(_FakeDomain(mem, now=5_000_000_000))  # type: ignore[arg-type]
    try:
        assert source.watchdog(0, 100) == 1  # claims watchdog 1 for 100 s
        state = stream.decode_state(stream.encode_state(source.save_state()))
    finally:
        source.close()
    # The restored side's Xen system time (kvmclock) went on from the saved clock: 40 s
    # passed in the guest between arming and the save.
    domain = _FakeDomain(mem, now=45_000_000_000)
    target = Watchdogs(domain)  # type: ignore[arg-type]
    try:
        target.restore_state(state)
        assert target.deadlines == {0: 105_000_000_000}
        assert target.timers[0].interval == pytest.approx(60.0)
        assert target.watchdog(1, 0) == 0  # released like any armed one
        assert target.timers == {}
    finally:
        target.close()
    with pytest.raises(ValueError, match="watchdog ids"):
        Watchdogs(domain).restore_state({"watchdogs": [[9, 0]]})  # type: ignore[arg-type]


def test_a_v2_grant_table_comes_back_as_v2(mem: GuestMemory) -> None:
    source = GrantTable(1, mem)
    assert source.map_frame(0, 0x20) == 0 and source.set_version(2) == 0
    assert source.map_frame(0x8000_0000, 0x22) == 0  # status frame 0
    state = source.save_state()
    assert state["version"] == 2 and state["status_frames"] == [[0, 0x22]]
    target = GrantTable(1, mem)
    target.restore_state(state)
    assert target.version == 2 and target.status_gpa(3) == 0x22000 + 6
    assert target.entry_gpa(3) == 0x20000 + 48  # 16-byte entries
    with pytest.raises(ValueError):
        target.restore_state({**state, "status_frames": [[1, 0x22]]})  # one status frame only
    assert "version" not in GrantTable(1, mem).save_state()  # v1 streams stay as they were
