"""The control protocol (`xenopus.control`, `xenopus.domain.protocol`): every message survives its trip through the
framing unchanged, a malformed or unknown one is refused with a message naming the
problem, and neither the daemon nor a domain process stops over one."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from xenopus import client, ipc
from xenopus.control import ProtocolError, Reply, Request
from xenopus.domain import process
from xenopus.domain.config import DomainConfig
from xenopus.domain.devspec import DiskSpec, VifSpec
from xenopus.domain.protocol import (
    Exited,
    Finished,
    LogLine,
    Ready,
    Spawn,
    Spawned,
    StartFailed,
    StateChanged,
    Stopped,
    decode_from_domain,
    decode_from_zygote,
)
from xenopus.toolstack import cli, daemon


def wire(msg: dict[str, Any]) -> dict[str, object]:
    """What the other end decodes: one framed line."""
    line = ipc.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return ipc.decode(line)


def test_request_round_trip() -> None:
    req = Request("vcpu-pin", {"dom": "guest", "vcpu": "all", "cpus": [0, 2]}, seq=9)
    assert req.to_wire() == {"op": "vcpu-pin", "dom": "guest", "vcpu": "all", "cpus": [0, 2], "seq": 9}
    assert Request.from_wire(wire(req.to_wire())) == req
    assert Request.from_wire(wire(Request("list").to_wire())) == Request("list")
    assert Request("pause", {"dom": 3}).dom == "3"


def test_reply_round_trip() -> None:
    for reply in (Reply.success(domains=[{"domid": 1}]), Reply.failure("domain 'x' does not exist"),
                  Reply(True, {"vcpus": []}, seq=4), Reply.success()):
        assert Reply.from_wire(wire(reply.to_wire())) == reply
    assert Reply.failure("no").to_wire() == {"ok": False, "error": "no"}


@pytest.mark.parametrize("event", [
    Ready(1234, "pvh", "trap", "pv", {"ring-ref": "1048573", "port": "2"}),
    Ready(1234, None, "off", "serial", {}),
    StartFailed("kernel: no such file"),
    StateChanged("paused"),
    LogLine("(d1) hello"),
    Stopped("crash", "triple fault", "preserve"),
    Finished(0, 51200, 1.25),
])
def test_domain_events_round_trip(event: Any) -> None:
    assert decode_from_domain(wire(event.to_wire())) == event


@pytest.mark.parametrize("event", [Spawned(3, 4321), Exited(3, 4321, -9, 40960, 0.5)])
def test_zygote_events_round_trip(event: Any) -> None:
    assert decode_from_zygote(wire(event.to_wire())) == event


def test_a_whole_number_fits_a_float_field() -> None:
    # JSON writes 2.0 as 2.0, but a peer may send 2: both are seconds of CPU.
    assert decode_from_domain({"event": "finished", "exit_code": 0, "maxrss_kib": 1, "cpu": 2}) \
        == Finished(0, 1, 2)


def test_spawn_carries_the_config_losslessly(tmp_path: Path) -> None:
    config = DomainConfig(
        name="full", kernel="/k/vmlinuz", type="pvh", memory=256, maxmem=512, vcpus=2,
        maxvcpus=4, ramdisk="/k/initrd", cmdline="console=ttyS0 root=/dev/vda",
        on_poweroff="preserve", on_reboot="destroy", on_crash="restart", path="/etc/full.cfg",
        disks=[DiskSpec(target="/img/a.raw", vdev="xvda"),
               DiskSpec(target="/img/b.iso", vdev="xvdb", read_only=True, devtype="cdrom",
                        discard=False, trusted=True)],
        vifs=[VifSpec(mac="00:16:3e:01:02:03", bridge="br0", vifname="vif7.0", mtu=9000)],
        cpus=[[0, 1], None, [3]], virtio_console=1, virtio_rng=1, xen_platform="1",
    )
    spawn = Spawn(7, config, str(tmp_path), paused=True)
    back = Spawn.from_wire(wire(spawn.to_wire()))
    assert back == spawn
    assert back.config is not config  # rebuilt (and validated) on the far side
    assert back.first is None
    first = Request("restore", {"files": 3, "position": {"offset": 96, "index": 1}}, seq=4)
    restoring = Spawn(7, config, str(tmp_path), paused=True, first=first)
    assert Spawn.from_wire(wire(restoring.to_wire())).first == first


@pytest.mark.parametrize(("msg", "complaint"), [
    ({}, "needs an operation name"),
    ({"op": 5}, "needs an operation name"),
    ({"op": ""}, "needs an operation name"),
    ({"op": "list", "seq": "1"}, "'seq' is not a number"),
    ({"op": "list", "seq": True}, "'seq' is not a number"),
])
def test_malformed_requests_are_refused(msg: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        Request.from_wire(msg)


@pytest.mark.parametrize(("msg", "complaint"), [
    ({"seq": 1}, "needs 'ok'"),
    ({"ok": "yes", "seq": 1}, "needs 'ok'"),
    ({"ok": False, "error": 3}, "'error' is not text"),
    ({"ok": True, "seq": [1]}, "'seq' is not a number"),
    ({"event": "teleported"}, "unknown event 'teleported'"),
    ({"event": 1}, "unknown event 1"),
    ({"event": "state"}, "missing 'state'"),
    ({"event": "state", "state": 5}, "'state' is not"),
    ({"event": "finished", "exit_code": True, "maxrss_kib": 1, "cpu": 0.0}, "'exit_code' is not"),
    ({"event": "spawned", "domid": 1, "pid": 2}, "the zygote's, not a domain's"),
])
def test_malformed_domain_messages_are_refused(msg: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        decode_from_domain(msg)


def test_malformed_spawn_requests_are_refused() -> None:
    good = Spawn(1, DomainConfig("a", "/k"), "/run/x").to_wire()
    with pytest.raises(ProtocolError, match="only spawns"):
        Spawn.from_wire({**good, "op": "exec"})
    with pytest.raises(ProtocolError, match="needs a domid"):
        Spawn.from_wire({**good, "domid": "1"})
    with pytest.raises(ProtocolError, match="'config' is not an object"):
        Spawn.from_wire({**good, "config": "name=a"})
    with pytest.raises(ProtocolError, match="spawn: .*vcpus"):
        Spawn.from_wire({**good, "config": {**good["config"], "vcpus": 0}})
    with pytest.raises(ProtocolError, match="'first' is not a request"):
        Spawn.from_wire({**good, "first": "restore"})
    with pytest.raises(ProtocolError, match="needs an operation name"):
        Spawn.from_wire({**good, "first": {"seq": 1}})
    with pytest.raises(ProtocolError, match="the first request has no seq"):
        Spawn.from_wire({**good, "first": {"op": "restore"}})
    with pytest.raises(ProtocolError, match="the zygote's, not a domain's|a domain's, not the zygote's"):
        decode_from_zygote(StateChanged("running").to_wire())


def test_every_verb_sends_a_request_someone_answers() -> None:
    """A verb's op is a daemon step or a domain step the daemon forwards (`help`, which
    asks nobody, has none)."""
    for verb in cli.VERBS:
        if verb.name == "help":
            assert verb.op is None
            continue
        assert verb.op in daemon.STEPS or verb.op in process.STEPS, verb.name
        args = cli.fast_parse([verb.name, *["x"] * sum(p.nargs in (None, "+") for p in verb.pos)])
        assert args is not None and args.op == verb.op, verb.name


def test_the_daemon_answers_malformed_requests_and_serves_on(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, object]]:
        d = daemon.Daemon(tmp_path)
        path = str(tmp_path / "xenopus.sock")
        server = await asyncio.start_unix_server(d._client, path=path)
        reader, writer = await asyncio.open_unix_connection(path)
        for line in (b"not json\n", b"[1]\n", b'{"op": 5}\n', b'{"op": "frobnicate"}\n',
                     b'{"op": "frobnicate", "dom": "nosuch"}\n', b'{"op": "create"}\n',
                     b'{"op": "ping"}\n'):
            writer.write(line)
        replies = [await ipc.read_message(reader) for _ in range(7)]
        writer.close()
        server.close()
        return [r for r in replies if r is not None]

    replies = asyncio.run(scenario())
    assert [(r["ok"], r.get("error")) for r in replies[:-1]] == [
        (False, "malformed request: Expecting value: line 1 column 1 (char 0)"),
        (False, "malformed request: message is not a JSON object"),
        (False, "malformed request: a request needs an operation name ('op'), got 5"),
        (False, "unknown operation 'frobnicate'"),
        (False, "domain 'nosuch' does not exist"),
        (False, "create needs a config file"),
    ]
    assert replies[-1]["ok"] is True and isinstance(replies[-1]["pid"], int)


def test_a_domain_process_answers_malformed_requests_and_serves_on(tmp_path: Path) -> None:
    async def scenario() -> list[Reply]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = process.DomainProcess(3, DomainConfig("d", "/k"), theirs, tmp_path)
        _, proc._writer = await asyncio.open_unix_connection(sock=theirs)
        requests = asyncio.StreamReader()
        for line in (b"{\n", b'{"seq": 1}\n', b'{"op": "frobnicate", "seq": 2}\n',
                     b'{"op": "pause", "seq": 3}\n', b'{"op": "devices", "seq": 4}\n'):
            requests.feed_data(line)
        requests.feed_eof()
        await asyncio.wait_for(proc._serve_control(requests), 5)
        await proc._writer.drain()
        replies, _ = await asyncio.open_unix_connection(sock=ours)
        got = [Reply.from_wire(await ipc.read_message(replies) or {}) for _ in range(5)]
        proc._writer.close()
        return got

    replies = asyncio.run(scenario())
    assert replies[0].seq is None and replies[0].error is not None
    assert replies[0].error.startswith("malformed request: ")
    assert replies[1] == Reply(False, error="malformed request: a request needs an operation"
                                            " name ('op'), got None")
    assert replies[2] == Reply(False, error="unknown operation 'frobnicate'", seq=2)
    assert replies[3] == Reply(False, error="domain is starting", seq=3)  # no guest yet
    assert replies[4] == Reply(True, {"devices": []}, seq=4)


def test_wire_format_is_one_compact_json_line() -> None:
    assert ipc.encode(Request("pause", {"dom": "a"}).to_wire()) == b'{"op":"pause","dom":"a"}\n'
    assert json.loads(ipc.encode(Reply.success(lines=["x"]).to_wire())) == {"ok": True, "lines": ["x"]}


def test_the_cli_names_a_malformed_reply() -> None:
    with pytest.raises(client.XenopusError,
                       match="the daemon sent a malformed reply: a reply needs 'ok'"):
        client.decode_reply({"error": "no ok"})
    assert client.decode_reply({"ok": True, "lines": []}) == Reply.success(lines=[])


# Lines ipc.decode must answer exactly as json.loads does (it calls json's C scanner
# itself): the value, or a ValueError where json raises one.
JSON_LINES = [
    b'{"op":"create","args":{"x":[1,2.5,-0.0,1e400,null,true,false,"\\u00e9\\ud800"]}}',
    b' \t{"a": {"b": [[], {}]}}\r\n', b'{"big":123456789012345678901234567890}',
    b'{"n":NaN,"i":-Infinity}', b'{"s":"caf\xc3\xa9"}', b'\xef\xbb\xbf{"bom":1}',
    b'', b'\n', b'[1]', b'"x"', b'{"a" 1}', b'{}x', b'{} {}', b'{"a":1,}', b'\xff{}',
    b'{"a":"\x01"}', b"{'a':1}", b'{"a":01}', b'\x00{}', b'{"a":"\\x"}', b'{"a":tru}',
]


@pytest.mark.parametrize("line", JSON_LINES)
def test_decode_answers_as_json_loads(line: bytes) -> None:
    try:
        want: object = json.loads(line)
    except ValueError:
        want = ValueError
    try:
        got: object = ipc.decode(line)
    except ValueError:
        got = ValueError
    if isinstance(want, dict):
        assert repr(got) == repr(want)  # repr: NaN is not equal to itself
    else:  # not an object, or malformed: refused
        assert got is ValueError


def test_encode_is_json_dumps() -> None:
    msgs: list[dict[str, Any]] = [
        {"op": "x", "args": {"u": "é\u2028\ud800\"\\", "f": [0.1, -0.0, float("inf"), 10**30],
                             "n": None, "b": [True, False], 1: "int key", None: "null key"}},
        {},
    ]
    for msg in msgs:
        assert ipc.encode(msg) == json.dumps(msg, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(TypeError, match="not JSON serializable"):
        ipc.encode({"a": object()})
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        ipc.encode(loop)
    shared = [1]
    # After an error the next message still encodes (the encoder's markers start afresh).
    assert ipc.encode({"a": shared, "b": shared}) == b'{"a":[1],"b":[1]}\n'
