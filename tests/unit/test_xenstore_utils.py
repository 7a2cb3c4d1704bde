"""Debian's xenstore-utils (libxenstore) against our XenStore socket via XENSTORED_PATH.

libxenstore's xs_open() takes XENSTORED_PATH for both the "domain device" and the
daemon socket; it stat()s the path and, seeing a socket, speaks xsd_sockmsg over it.
So nothing else is needed: no /dev/xen/xenbus on this host, and none is faked.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.client import XsClient
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store

pytestmark = pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                                reason="xenstore-utils not installed (scripts/install-deps)")


class Daemon:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="xs-")  # short: AF_UNIX paths max 108 bytes
        self.path = os.path.join(self.dir, "socket")
        self.server = XenStoreServer(Store())
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.listener = self.loop.run_until_complete(self.server.serve_unix(self.path))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.env = dict(os.environ, XENSTORED_PATH=self.path)

    def tool(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=20)

    def stop(self) -> None:
        async def shutdown() -> None:
            self.listener.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[XsClient]:
    with XsClient(daemon.path, timeout=10) as c:
        yield c


def test_write_read_ls_rm(daemon, client):
    assert daemon.tool("xenstore-write", "/local/domain/1/name", "guest1",
                       "/local/domain/1/memory/target", "524288").returncode == 0
    assert client.read("/local/domain/1/name") == b"guest1"
    r = daemon.tool("xenstore-read", "/local/domain/1/name")
    assert (r.returncode, r.stdout) == (0, "guest1\n")
    # xenstore-ls: one space of indent per level, `name = "value"` (not a tty: 80 cols).
    r = daemon.tool("xenstore-ls", "/local")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ('domain = ""\n'
                        ' 1 = ""\n'
                        '  name = "guest1"\n'
                        '  memory = ""\n'
                        '   target = "524288"\n')
    r = daemon.tool("xenstore-ls", "-p", "/local/domain/1")
    assert r.stdout.splitlines()[0].startswith('name = "guest1"')
    assert r.stdout.splitlines()[0].endswith("(n0)")
    assert daemon.tool("xenstore-list", "/local/domain/1").stdout == "name\nmemory\n"
    assert daemon.tool("xenstore-rm", "/local/domain/1/memory").returncode == 0
    assert client.directory("/local/domain/1") == ["name"]
    r = daemon.tool("xenstore-read", "/local/domain/1/memory/target")
    assert r.returncode == 1 and "couldn't read path" in r.stderr
    assert daemon.tool("xenstore-exists", "/local/domain/1/name").returncode == 0


def test_binary_values_are_escaped_like_xenstored_tools(daemon, client):
    client.write("/bin", b"a\nb\x01")
    assert daemon.tool("xenstore-read", "/bin").stdout == "a\\nb\\001\n"


def test_chmod_then_read_perms_back(daemon, client):
    assert daemon.tool("xenstore-write", "/x", "v").returncode == 0
    r = daemon.tool("xenstore-chmod", "/x", "r1")
    assert r.returncode == 0, r.stderr
    assert client.get_perms("/x") == ["r1"]
    assert daemon.tool("xenstore-chmod", "/x", "n0", "b2", "w3").returncode == 0
    assert client.get_perms("/x") == ["n0", "b2", "w3"]
    r = daemon.tool("xenstore-ls", "-p", "/")
    assert "(n0,b2,w3)" in r.stdout


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout, failing the test if none comes in time."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise AssertionError(f"no line from {proc.args} within {timeout}s: {line!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"{proc.args} closed stdout: {line!r}")
        line += chunk
    return line.decode().rstrip("\n")


def test_watch_sees_client_writes(daemon, client):
    proc = subprocess.Popen(["xenstore-watch", "-n", "2", "/watched"], env=daemon.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(proc, 10) == "/watched"  # the initial event xenstored sends
        client.write("/watched/child", "1")
        assert read_line(proc, 10) == "/watched/child"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_watch_callback_and_transaction(daemon, client):
    seen: list[tuple[str, str]] = []
    got = threading.Event()

    def on_event(path: str, token: str) -> None:
        seen.append((path, token))
        if len(seen) == 2:
            got.set()

    client.watch("/cb", "tok", callback=on_event)
    with client.transaction() as tx:
        client.write("/cb/a", "1", tx)
    assert got.wait(10)
    assert seen == [("/cb", "tok"), ("/cb/a", "tok")]
    tx = client.transaction_start()
    client.read("/cb/a", tx)
    assert daemon.tool("xenstore-write", "/cb/a", "2").returncode == 0
    with pytest.raises(wire.XsError) as info:
        client.transaction_end(tx)
    assert info.value.name == "EAGAIN"


def test_domain_stream_nodes_visible_to_tools(daemon, client):
    """A domain's ring traffic, proxied over attach_domain, acts as that domain."""
    client.mkdir("/local/domain/1")
    client.set_perms("/local/domain/1", ["n1"])
    client.introduce(1)
    ours, theirs = socket.socketpair()

    async def attach() -> None:
        reader, writer = await asyncio.open_unix_connection(sock=theirs)
        await daemon.server.attach_domain(1, reader, writer)

    done = asyncio.run_coroutine_threadsafe(attach(), daemon.loop)
    ours.settimeout(10)

    def call(type_: int, payload: bytes) -> tuple[wire.Header, bytes]:
        ours.sendall(wire.pack(type_, 7, 0, payload))
        buf = b""
        while len(buf) < 16 or len(buf) < 16 + wire.unpack_header(buf).len:
            buf += ours.recv(4096)
        return wire.unpack_header(buf), buf[16:]

    assert call(wire.XS_WRITE, b"data/x\0hello")[1] == b"OK\0"
    assert call(wire.XS_READ, b"/local/domain/0\0")[1] in (b"EACCES\0", b"ENOENT\0")
    r = daemon.tool("xenstore-read", "/local/domain/1/data/x")
    assert r.stdout == "hello\n"
    assert "(n1)" in daemon.tool("xenstore-ls", "-p", "/local/domain/1").stdout
    # Releasing the domain closes its stream.
    client.release(1)
    assert ours.recv(16) == b""
    done.result(10)
    ours.close()


XENSTORE_CONTROL = ROOT / "build" / "xen-utils" / "xenstore-control"


@pytest.mark.skipif(not XENSTORE_CONTROL.exists(),
                    reason=f"{XENSTORE_CONTROL} is missing: run scripts/fetch-xen-utils (make test does)")
def test_xenstore_control_from_xen(daemon: Daemon, client: XsClient) -> None:
    # Xen 4.17's own xenstore-control (XS_CONTROL through libxenstore's xs_control_command)
    control = str(XENSTORE_CONTROL)
    helped = daemon.tool(control, "help")
    assert helped.returncode == 0 and helped.stdout.split()[:2] == ["check", "print"], helped
    assert daemon.tool(control, "check").stdout == "OK\n"
    assert daemon.tool(control, "quota", "set", "watches", "99").stdout == "OK\n"
    shown = daemon.tool(control, "quota").stdout.splitlines()
    assert shown[0] == "Quota settings:" and "watches          :       99 Watches per domain" in shown
    client.write("/local/domain/4/x", "1")
    client.introduce(4, 1, 1)
    used = daemon.tool(control, "quota", "4").stdout.splitlines()
    assert used[0] == "Domain 4:" and used[1].split()[:3] == ["nodes", ":", "0"]
    unknown = daemon.tool(control, "memreport")
    assert unknown.returncode != 0 and "Command not supported" in unknown.stderr
