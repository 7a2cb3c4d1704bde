"""PV channels (xl.cfg channel=, xen-pv-channel(7)): a named console device/console/N
whose host end is a Unix socket the backend listens on, or a pty; `channel-list` as xl
prints it (xl_console.c). The guest is guests/xenchan.c, hvc_xen's steps in small."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_result, read_until
from xenopus import api
from xenopus.client import XenopusError

pytestmark = pytest.mark.kvm

NAME = "org.xenopus.test.0"
LINES = 200  # ~5 KB: more than the 2048-byte out ring, so the backend must hold back


def channel_list(x: Xenopus, name: str) -> list[str]:
    r = x.run("channel-list", name)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_socket_channel_carries_both_ways_without_loss(xenopus: Xenopus) -> None:
    path = xenopus.tmp / "chan.sock"
    cfg = xenopus.config("chan-sock", "xenchan.elf", xen_platform=1, memory=64,
                         cmdline=f"lines={LINES} timeout_ms=60000",
                         channel=[f" connection = socket, name={NAME}, path={path}"])
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "chan-sock")
    out = read_until(con.stdout, b"xenchan: connected")
    assert f"device/console/1 name {NAME} backend /local/domain/0/backend/console/".encode() in out
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(path))
        stream = s.makefile("rb")
        got = read_until(stream, f"line {LINES - 1} of {NAME}\n".encode())
        # Every line, in order: what the guest wrote before anyone connected waited.
        assert got.decode().splitlines() == [f"line {i} of {NAME}" for i in range(LINES)]
        header, row = channel_list(xenopus, "chan-sock")
        # xl_console.c: "%-3s %-2s %-5s %-6s %8s %-10s %-30s"; rows "%-3d %-2d %-5d %-6d %-8d %-10s "
        assert header == "Idx BE state evt-ch ring-ref connection " + " " * 30
        assert re.fullmatch(r"1   0  4     \d+ +\d+ +socket     ", row), row
        s.sendall(b"ping over the channel\n")
        assert read_until(stream, b"\n") == b"pong: ping over the channel\n"
    out = con.communicate(timeout=60)[0]
    assert b"xenchan: got ping over the channel" in out and b"RESULT: PASS xenchan" in out
    # The console ends before the daemon has forgotten the domain: wait for that (a domain
    # already forgotten is "does not exist"), then its socket must be gone.
    with contextlib.suppress(XenopusError):
        api.connect(str(xenopus.run_dir), autostart=False).wait("chan-sock")
    assert not path.exists()  # removed with the domain, as QEMU removes its socket


def test_pty_channel_and_refusals(xenopus: Xenopus) -> None:
    cfg = xenopus.config("chan-pty", "xenchan.elf", xen_platform=1, memory=64,
                         cmdline="lines=3", channel=[f"connection=pty,name={NAME}"])
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "chan-pty")
    read_until(con.stdout, b"xenchan: connected")
    row = channel_list(xenopus, "chan-pty")[1]
    tty = row.split()[-1]
    assert row.split()[5] == "pty" and tty.startswith("/dev/pts/"), row
    fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
    with open(fd, "r+b", buffering=0) as pty:
        seen = b""
        while b"line 2 of" not in seen:
            seen += pty.read(4096)
        assert seen.splitlines()[:3] == [f"line {i} of {NAME}".encode() for i in range(3)]
        pty.write(b"hello pty\n")
        assert b"RESULT: PASS xenchan" in con.communicate(timeout=60)[0]

    # xl_parse.c's refusals, and a path that is not ours to replace
    for spec, message in (("name=x", "channel has unknown 'connection'"),
                          ("name=x,connection=socket", "channel connection 'socket' requires path=.."),
                          ("connection=tcp,name=x", "unknown channel connection 'tcp'"),
                          ("connection=pty", "channel has no name")):
        bad = xenopus.config("chan-bad", "xenchan.elf", xen_platform=1, channel=[spec])
        r = xenopus.run("create", "-q", str(bad))
        assert r.returncode == 1 and message in r.stderr, r.stderr
    taken = xenopus.tmp / "not-a-socket"
    taken.write_text("keep me")
    bad = xenopus.config("chan-bad", "xenchan.elf", xen_platform=1,
                         channel=[f"connection=socket,name=x,path={taken}"])
    r = xenopus.run("create", "-q", str(bad))
    assert r.returncode == 1 and "exists and is not a socket" in r.stderr, r.stderr
    assert taken.read_text() == "keep me"


def test_a_domain_with_a_socket_channel_refuses_clone(xenopus: Xenopus) -> None:
    """Every clone would listen on the one socket path: refused by channel, before any
    clone is made; the source runs on."""
    path = xenopus.tmp / "chan-clone.sock"
    cfg = xenopus.config("chan-src", "xenchan.elf", xen_platform=1, memory=64,
                         cmdline="lines=1 timeout_ms=60000",
                         channel=[f"connection=socket,name={NAME},path={path}"])
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "chan-src")
    try:
        read_until(con.stdout, b"xenchan: wrote 1 lines")
        r = xenopus.run("clone", "chan-src", "chan-copy")
        assert r.returncode == 1 and f"channel {NAME} listens on a socket" in r.stderr, r.stderr
        assert "chan-src" in xenopus.domains() and "chan-copy" not in xenopus.domains()
    finally:
        assert xenopus.run("destroy", "chan-src").returncode == 0
        con.communicate(timeout=60)


def _read_every_line_then_ping(path: Path, ping: str) -> None:
    """A client of the channel's socket reads every line the guest wrote once, in order,
    then gets the guest's answer to `ping`."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(path))
        stream = s.makefile("rb")
        got = read_until(stream, f"line {LINES - 1} of {NAME}\n".encode())
        assert got.decode().splitlines() == [f"line {i} of {NAME}" for i in range(LINES)]
        s.sendall(f"{ping}\n".encode())
        assert read_until(stream, b"\n") == f"pong: {ping}\n".encode()


def test_a_socket_channel_survives_save_and_restore(xenopus: Xenopus) -> None:
    """Saved while the guest's lines wait in its ring (no client yet: the backend holds
    back, docs/snapshot-stream.md): the restored backend listens on the config's socket
    again and reconnects to the same ring when the frontend's nodes come back, so a
    client then reads every line once, in order, and the guest answers its ping."""
    path = xenopus.tmp / "chan-saved.sock"
    cfg = xenopus.config("chan-save", "xenchan.elf", xen_platform=1, memory=64,
                         cmdline=f"lines={LINES} timeout_ms=120000", on_poweroff="preserve",
                         channel=[f"connection=socket, name={NAME}, path={path}"])
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "chan-save")
    before = read_until(con.stdout, b"xenchan: connected")
    image = xenopus.tmp / "chan.save"
    saved = xenopus.run("save", "chan-save", str(image))
    assert saved.returncode == 0, saved.stderr
    before += con.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    con = xenopus.popen("console", "chan-save")
    try:
        _read_every_line_then_ping(path, "ping after restore")
        out = read_result(con.stdout)
    finally:
        xenopus.run("destroy", "chan-save")
        con.wait(60)
    assert b"xenchan: got ping after restore" in out and b"RESULT: PASS xenchan" in out, out


def test_a_socket_channel_survives_a_live_migration_on_this_host(xenopus: Xenopus) -> None:
    """As above, live-migrated to this same host (xl migrate DOM localhost): the receiver
    listens on the config's path in place of the source (whose socket it replaces before
    the source goes: the source's cleanup must leave the receiver's socket alone), and
    its backend takes the same ring, so a client then reads every line once, in order."""
    from tests.vm.test_save_restore import _migrate

    path = xenopus.tmp / "chan-moved.sock"
    cfg = xenopus.config("chan-mig", "xenchan.elf", xen_platform=1, memory=64,
                         cmdline=f"lines={LINES} timeout_ms=120000", on_poweroff="preserve",
                         channel=[f"connection=socket, name={NAME}, path={path}"])
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "-t", "serial", "chan-mig")
    before = read_until(con.stdout, b"xenchan: connected")
    moved = _migrate(xenopus, xenopus, "chan-mig")
    assert moved.returncode == 0, moved.stderr
    before += con.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    con = xenopus.popen("console", "-t", "serial", "chan-mig")
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the receiver's, still there
        _read_every_line_then_ping(path, "ping after migrate")
        out = read_result(con.stdout)
    finally:
        xenopus.run("destroy", "chan-mig")
        con.wait(60)
    assert b"xenchan: got ping after migrate" in out and b"RESULT: PASS xenchan" in out, out
