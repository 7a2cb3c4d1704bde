"""A domain process's XenStore connection reaches only its own domain's paths."""

from __future__ import annotations

import pytest

from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.server import UNSCOPED, Scope, XenStoreServer
from xenopus.xen.xenstore.store import Store


@pytest.fixture
def server() -> XenStoreServer:
    srv = XenStoreServer(Store())
    dom0 = srv.store.connect(0, lambda path, token: None)
    for domid in (3, 4):
        srv.store.write(dom0, f"/local/domain/{domid}/name", f"d{domid}".encode())
        srv.store.write(dom0, f"/local/domain/0/backend/vbd/{domid}/51712/state", b"1")
    return srv


def request(srv: XenStoreServer, scope: Scope, type_: int, *args: str) -> tuple[int, bytes]:
    """(reply type, payload) of one request on a dom0 connection scoped as `scope`."""
    conn = srv.store.connect(0, lambda path, token: None)
    payload = wire.strings(*args) if type_ != wire.XS_WRITE else f"{args[0]}\0{args[1]}".encode()
    reply = srv.dispatch(conn, wire.unpack_header(wire.pack(type_, 1, 0, payload)), payload, scope)
    return wire.unpack_header(reply).type, reply[wire.HEADER_SIZE:]


def refused(reply: tuple[int, bytes]) -> bool:
    return reply == (wire.XS_ERROR, b"EACCES\0")


def test_scoped_connection_reaches_its_domain_and_its_backends(server: XenStoreServer) -> None:
    mine = Scope(3)
    assert request(server, mine, wire.XS_READ, "/local/domain/3/name") == (wire.XS_READ, b"d3")
    assert request(server, mine, wire.XS_READ, "/local/domain/0/backend/vbd/3/51712/state")[0] == wire.XS_READ
    assert request(server, mine, wire.XS_WRITE, "/local/domain/0/backend/vif/3/0/state", "2")[0] == wire.XS_WRITE
    # dom0's relative paths are below /local/domain/0: its own backend directory only.
    assert request(server, mine, wire.XS_READ, "backend/vbd/3/51712/state")[0] == wire.XS_READ


@pytest.mark.parametrize("type_,args", [
    (wire.XS_READ, ("/local/domain/4/name",)),
    (wire.XS_READ, ("/local/domain/0/backend/vbd/4/51712/state",)),
    (wire.XS_DIRECTORY, ("/local/domain/0/backend/vbd",)),
    (wire.XS_DIRECTORY, ("/local/domain",)),
    (wire.XS_WRITE, ("/local/domain/4/name", "evil")),
    (wire.XS_WRITE, ("/tool/xenopus", "x")),
    (wire.XS_RM, ("/local/domain/4",)),
    (wire.XS_SET_PERMS, ("/local/domain/4/name", "b4")),
    (wire.XS_WATCH, ("@releaseDomain", "t")),
    (wire.XS_WATCH, ("/local/domain/4", "t")),
    (wire.XS_READ, ("backend/vbd/4/51712/state",)),
    (wire.XS_INTRODUCE, ("5", "0", "0")),
    (wire.XS_RELEASE, ("4",)),
    (wire.XS_SET_TARGET, ("4", "3")),
    (wire.XS_RESUME, ("4",)),
])
def test_scoped_connection_is_refused_elsewhere(server: XenStoreServer, type_: int, args: tuple[str, ...]) -> None:
    assert refused(request(server, Scope(3), type_, *args))
    assert request(server, Scope(3), wire.XS_READ, "/local/domain/4/name") != (wire.XS_READ, b"evil")


def test_unscoped_dom0_reaches_everything(server: XenStoreServer) -> None:
    assert request(server, UNSCOPED, wire.XS_READ, "/local/domain/4/name") == (wire.XS_READ, b"d4")
    assert request(server, UNSCOPED, wire.XS_DIRECTORY, "/local/domain")[0] == wire.XS_DIRECTORY


def test_the_daemon_scopes_domain_processes_and_refuses_strangers(tmp_path) -> None:
    from xenopus.domain.jail import uid_range
    from xenopus.toolstack.daemon import Daemon, DomainRecord
    from xenopus.xen.xenstore.peer import Peer

    daemon = Daemon(tmp_path)
    rec = DomainRecord(7, config=None, pid=4321)  # type: ignore[arg-type]
    daemon.domains[7] = rec
    base, _ = uid_range()
    assert daemon.xenstore_scope(Peer(4321, 0, 0)) == Scope(7)  # by pid, before its uid changes
    assert daemon.xenstore_scope(Peer(999, base + 7, base + 7)) == Scope(7)  # by its jail uid
    assert daemon.xenstore_scope(Peer(999, 0, 0)) == UNSCOPED  # root's tools
    assert daemon.xenstore_scope(Peer(999, 1000, 1000)) is None  # anyone else


# --- a compromised domain process's connection is held to its domain's quotas -------------


def bound_server(quota) -> tuple[XenStoreServer, object]:
    from xenopus.xen.xenstore.store import Store as _Store

    srv = XenStoreServer(_Store(quota))
    dom0 = srv.store.connect(0, lambda path, token: None)
    for domid in (3, 4):
        srv.store.write(dom0, f"/local/domain/{domid}/name", f"d{domid}".encode())
        srv.store.mkdir(dom0, f"/local/domain/0/backend/vbd/{domid}")
    return srv, dom0


def bound(srv: XenStoreServer, domid: int):
    """A connection as `_serve` makes it for a domain process's backends."""
    conn = srv.store.connect(0, lambda path, token: None)
    conn.bound_to = domid
    return conn


def call(srv: XenStoreServer, conn, type_: int, *args: str, tx: int = 0) -> tuple[int, bytes]:
    payload = wire.strings(*args) if type_ != wire.XS_WRITE else f"{args[0]}\0{args[1]}".encode()
    head = wire.unpack_header(wire.pack(type_, 1, tx, payload))
    reply = srv.dispatch(conn, head, payload, Scope(conn.bound_to) if conn.bound_to else UNSCOPED)
    return wire.unpack_header(reply).type, reply[wire.HEADER_SIZE:]


def test_a_scoped_connection_cannot_grow_the_store_without_bound() -> None:
    """dom0 is exempt from xenstored's quotas; a domain process's backends are dom0 only
    within their domain's paths and are held to that domain's quotas there, as a Xen
    driver domain is: nodes, memory, watches, transactions."""
    from xenopus.xen.xenstore.store import Quota

    srv, dom0 = bound_server(Quota(nodes=50, memory=64 * 1024, watches=5, transactions=2))
    evil = bound(srv, 3)
    made = 0
    while call(srv, evil, wire.XS_WRITE, f"/local/domain/0/backend/vbd/3/n{made}", "x")[0] == wire.XS_WRITE:
        made += 1
        assert made < 1000, "no node quota"
    assert call(srv, evil, wire.XS_WRITE, f"/local/domain/0/backend/vbd/3/n{made}", "x") == (
        wire.XS_ERROR, b"ENOSPC\0")
    assert 40 <= made <= 50
    assert call(srv, evil, wire.XS_WRITE, "/local/domain/0/backend/vbd/3/n0", "v" * 2000)[0] == wire.XS_WRITE
    grown = 0
    while call(srv, evil, wire.XS_WRITE, f"/local/domain/0/backend/vbd/3/n{grown}", "v" * 1900)[0] == wire.XS_WRITE:
        grown += 1
        assert grown < made, "no memory quota"
    assert call(srv, evil, wire.XS_WRITE, f"/local/domain/0/backend/vbd/3/n{grown}", "v" * 1900) == (
        wire.XS_ERROR, b"ENOMEM\0")
    for i in range(5):
        assert call(srv, evil, wire.XS_WATCH, "/local/domain/3", f"t{i}")[0] == wire.XS_WATCH
    assert call(srv, evil, wire.XS_WATCH, "/local/domain/3", "t5") == (wire.XS_ERROR, b"ENOSPC\0")
    for _ in range(2):
        assert call(srv, evil, wire.XS_TRANSACTION_START, "")[0] == wire.XS_TRANSACTION_START
    assert call(srv, evil, wire.XS_TRANSACTION_START, "") == (wire.XS_ERROR, b"ENOSPC\0")
    # Another domain's backends and the toolstack are untouched by it.
    other = bound(srv, 4)
    assert call(srv, other, wire.XS_WRITE, "/local/domain/0/backend/vbd/4/51712/state", "1")[0] == wire.XS_WRITE
    assert call(srv, other, wire.XS_WATCH, "/local/domain/4", "t")[0] == wire.XS_WATCH
    for i in range(200):
        srv.store.write(dom0, f"/tool/n{i}", b"v" * 1000)  # dom0 unscoped: no quota


def test_a_scoped_connection_gives_nodes_only_to_dom0_or_its_domain() -> None:
    """libxl's layout (backend n0,r<dom>; frontend n<dom>,r0) stays possible; handing a node
    to another domain, whose quota it would then count against, is refused."""
    from xenopus.xen.xenstore.store import Quota

    srv, _ = bound_server(Quota())
    be = bound(srv, 3)
    assert call(srv, be, wire.XS_MKDIR, "/local/domain/0/backend/vbd/3/51712")[0] == wire.XS_MKDIR
    assert call(srv, be, wire.XS_SET_PERMS, "/local/domain/0/backend/vbd/3/51712", "n0", "r3")[0] == wire.XS_SET_PERMS
    assert call(srv, be, wire.XS_MKDIR, "/local/domain/3/device/vbd/51712")[0] == wire.XS_MKDIR
    assert call(srv, be, wire.XS_SET_PERMS, "/local/domain/3/device/vbd/51712", "n3", "r0")[0] == wire.XS_SET_PERMS
    assert call(srv, be, wire.XS_SET_PERMS, "/local/domain/3/device/vbd/51712", "n4", "r0") == (
        wire.XS_ERROR, b"EPERM\0")
