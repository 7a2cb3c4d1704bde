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
    from xenopus.xen.xenstore.server import Peer

    daemon = Daemon(tmp_path)
    rec = DomainRecord(7, config=None, pid=4321)  # type: ignore[arg-type]
    daemon.domains[7] = rec
    base, _ = uid_range()
    assert daemon.xenstore_scope(Peer(4321, 0, 0)) == Scope(7)  # by pid, before its uid changes
    assert daemon.xenstore_scope(Peer(999, base + 7, base + 7)) == Scope(7)  # by its jail uid
    assert daemon.xenstore_scope(Peer(999, 0, 0)) == UNSCOPED  # root's tools
    assert daemon.xenstore_scope(Peer(999, 1000, 1000)) is None  # anyone else
