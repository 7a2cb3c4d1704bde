"""XenStore tree semantics, per docs/misc/xenstore.txt and xenstored's behaviour."""

from __future__ import annotations

import pytest

from xenopus.xen.xenstore.store import Perm, Quota, Store
from xenopus.xen.xenstore.wire import XsError


class Events(list):
    def __call__(self, path: str, token: str) -> None:
        self.append((path, token))


@pytest.fixture
def store() -> Store:
    return Store()


def conn(store: Store, domid: int):
    events = Events()
    c = store.connect(domid, events)
    c.events = events  # type: ignore[attr-defined]
    return c


def err(fn, *args) -> str:
    with pytest.raises(XsError) as info:
        fn(*args)
    return info.value.name


def home(store: Store, dom0, domid: int, perms: list[str] | None = None) -> None:
    """What the toolstack does: make /local/domain/N and hand it to the domain."""
    store.mkdir(dom0, f"/local/domain/{domid}")
    store.set_perms(dom0, f"/local/domain/{domid}", perms or [f"n{domid}"])


def test_read_write_and_implicit_parents(store):
    d0 = conn(store, 0)
    store.write(d0, "/a/b/c", b"v")
    assert store.read(d0, "/a/b/c") == b"v"
    assert store.read(d0, "/a/b") == b""
    assert store.directory(d0, "/a") == ["b"]
    assert err(store.read, d0, "/a/x") == "ENOENT"


@pytest.mark.parametrize("bad", ["/a//b", "/a/", "/a b", "/a\x00", "/" + "x" * 3072, ""])
def test_invalid_paths(store, bad):
    assert err(store.write, conn(store, 0), bad, b"") == "EINVAL"


def test_relative_paths_are_the_domains_home(store):
    d0, d1 = conn(store, 0), conn(store, 1)
    home(store, d0, 1)
    store.write(d1, "name", b"guest1")
    assert store.read(d0, "/local/domain/1/name") == b"guest1"
    # The relative-path limit (XENSTORE_REL_PATH_MAX 2048) applies below the home.
    assert err(store.write, d1, "x" * 2049, b"") == "EINVAL"


def test_owner_and_default_permission(store):
    # xenstore.txt "Permissions": first entry = owner + everyone's default.
    d0, d1, d2 = conn(store, 0), conn(store, 1), conn(store, 2)
    home(store, d0, 1)
    store.write(d1, "secret", b"s")
    assert store.read(d1, "secret") == b"s"
    assert err(store.read, d2, "/local/domain/1/secret") == "EACCES"
    assert err(store.write, d2, "/local/domain/1/secret", b"x") == "EACCES"
    # dom2 may not learn whether a node exists under a directory it cannot read.
    assert err(store.read, d2, "/local/domain/1/nothing") == "EACCES"
    assert err(store.read, d1, "nothing") == "ENOENT"
    # dom0 is privileged.
    assert store.read(d0, "/local/domain/1/secret") == b"s"


def test_acl_letters(store):
    d0, d1, d2, d3 = (conn(store, i) for i in range(4))
    store.write(d0, "/shared", b"v")
    store.set_perms(d0, "/shared", ["n1", "r2", "b3"])
    assert store.get_perms(d0, "/shared") == [Perm("n", 1), Perm("r", 2), Perm("b", 3)]
    store.write(d1, "/shared", b"owner")  # the owner may do anything
    assert store.read(d2, "/shared") == b"owner"
    assert err(store.write, d2, "/shared", b"x") == "EACCES"
    store.write(d3, "/shared", b"both")
    assert store.read(d3, "/shared") == b"both"
    store.set_perms(d0, "/shared", ["w0", "n2"])  # default write-only, dom2 none
    d4 = conn(store, 4)
    store.write(d4, "/shared", b"w")
    assert err(store.read, d4, "/shared") == "EACCES"
    assert err(store.write, d2, "/shared", b"x") == "EACCES"


def test_new_nodes_inherit_and_creator_owns(store):
    d0, d1 = conn(store, 0), conn(store, 1)
    home(store, d0, 1, ["n1", "r0", "r5"])
    store.write(d1, "a/b", b"")
    assert [str(p) for p in store.get_perms(d0, "/local/domain/1/a/b")] == ["n1", "r0", "r5"]
    # A dom0 write under a domain's directory keeps the parent's owner (xenstored
    # only rewrites the owner for unprivileged creators).
    store.write(d0, "/local/domain/1/by0", b"")
    assert str(store.get_perms(d0, "/local/domain/1/by0")[0]) == "n1"
    # An unprivileged domain creating where it may write becomes the owner.
    store.write(d0, "/pub", b"")
    store.set_perms(d0, "/pub", ["b0"])
    store.write(d1, "/pub/mine", b"")
    assert str(store.get_perms(d0, "/pub/mine")[0]) == "b1"


def test_set_perms_rules(store):
    d0, d1, d2 = conn(store, 0), conn(store, 1), conn(store, 2)
    home(store, d0, 1)
    store.write(d1, "x", b"")
    store.set_perms(d1, "x", ["n1", "r2"])  # owner may change the ACL
    assert store.read(d2, "/local/domain/1/x") == b""
    assert err(store.set_perms, d1, "x", ["n2"]) == "EPERM"  # ...but not give it away
    assert err(store.set_perms, d2, "/local/domain/1/x", ["n2"]) == "EACCES"
    assert err(store.set_perms, d0, "/local/domain/1/x", ["q1"]) == "EINVAL"
    assert err(store.set_perms, d0, "/local/domain/1/x", []) == "EINVAL"


def test_rm(store):
    d0 = conn(store, 0)
    store.write(d0, "/t/a/b", b"1")
    store.write(d0, "/t/c", b"2")
    store.rm(d0, "/t/a")
    assert store.directory(d0, "/t") == ["c"]
    assert err(store.read, d0, "/t/a/b") == "ENOENT"
    store.rm(d0, "/t/gone")  # already absent, parent exists: fine
    assert err(store.rm, d0, "/nope/gone") == "ENOENT"
    assert err(store.rm, d0, "/") == "EINVAL"


def test_mkdir_existing_is_ok_and_needs_write(store):
    d0, d1 = conn(store, 0), conn(store, 1)
    store.write(d0, "/m", b"keep")
    store.mkdir(d0, "/m")
    assert store.read(d0, "/m") == b"keep"
    store.set_perms(d0, "/m", ["r0"])
    assert err(store.mkdir, d1, "/m") == "EACCES"
    assert err(store.mkdir, d1, "/m/sub") == "EACCES"


def test_directory_part_chunks_and_generation(store):
    d0 = conn(store, 0)
    names = [f"child-{i:04d}-" + "x" * 40 for i in range(200)]  # ~10 KiB of names
    for name in names:
        store.mkdir(d0, f"/big/{name}")
    got, off, gen = [], 0, None
    while True:
        part = store.directory_part(d0, "/big", off)
        assert len(part) <= 4096
        head, _, rest = part.partition(b"\0")
        gen = gen or head
        assert head == gen
        off += len(rest)
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += rest[:-1].split(b"\0")[:-1]
            break
        got += rest.split(b"\0")[:-1]
    assert [g.decode() for g in got] == names
    store.mkdir(d0, "/big/one-more")
    assert store.directory_part(d0, "/big", 0).partition(b"\0")[0] != gen
    assert err(store.directory_part, d0, "/big", 10**6) == "EINVAL"


def test_transaction_sees_own_writes_and_commits(store):
    d0 = conn(store, 0)
    tx = store.transaction_start(d0)
    store.write(d0, "/tx/a", b"1", tx)
    assert store.read(d0, "/tx/a", tx) == b"1"
    assert err(store.read, d0, "/tx/a") == "ENOENT"  # invisible outside until commit
    store.transaction_end(d0, tx, commit=True)
    assert store.read(d0, "/tx/a") == b"1"


def test_transaction_abort_discards(store):
    d0 = conn(store, 0)
    tx = store.transaction_start(d0)
    store.write(d0, "/ab", b"1", tx)
    store.transaction_end(d0, tx, commit=False)
    assert err(store.read, d0, "/ab") == "ENOENT"
    assert err(store.transaction_end, d0, tx, True) == "ENOENT"
    assert err(store.read, d0, "/ab", 12345) == "ENOENT"


def test_transaction_conflict_is_eagain(store):
    d0, other = conn(store, 0), conn(store, 0)
    store.write(d0, "/c", b"0")
    tx = store.transaction_start(d0)
    assert store.read(d0, "/c", tx) == b"0"
    store.write(other, "/c", b"changed")
    store.write(d0, "/d", b"1", tx)
    assert err(store.transaction_end, d0, tx, True) == "EAGAIN"
    assert err(store.read, d0, "/d") == "ENOENT"  # nothing of it was applied


def test_transaction_conflict_on_creation_and_deletion(store):
    d0, other = conn(store, 0), conn(store, 0)
    store.write(d0, "/e", b"")
    tx = store.transaction_start(d0)
    assert err(store.read, d0, "/e/new", tx) == "ENOENT"
    store.write(other, "/e/new", b"")
    assert err(store.transaction_end, d0, tx, True) == "EAGAIN"
    tx = store.transaction_start(d0)
    store.rm(other, "/e/new")
    assert err(store.read, d0, "/e/new", tx) == "ENOENT"  # deleted after start
    assert err(store.transaction_end, d0, tx, True) == "EAGAIN"


def test_disjoint_transactions_both_commit(store):
    a, b = conn(store, 0), conn(store, 0)
    store.mkdir(a, "/p")
    store.mkdir(a, "/q")  # (creating both under / in the two would conflict on /)
    ta, tb = store.transaction_start(a), store.transaction_start(b)
    store.write(a, "/p/a", b"a", ta)
    store.write(b, "/q/b", b"b", tb)
    store.transaction_end(a, ta, True)
    store.transaction_end(b, tb, True)
    assert store.read(a, "/q/b") == b"b"


def test_watch_initial_event_and_subtree(store):
    d0 = conn(store, 0)
    store.watch(d0, "/w", "tok")
    assert d0.events == [("/w", "tok")]  # fires once on registration
    store.write(d0, "/w/a/b", b"")
    store.write(d0, "/other", b"")
    store.write(d0, "/wx", b"")  # a sibling with the same prefix is not below /w
    assert d0.events[1:] == [("/w/a/b", "tok")]
    assert err(store.watch, d0, "/w", "tok") == "EEXIST"
    store.unwatch(d0, "/w", "tok")
    store.write(d0, "/w/c", b"")
    assert len(d0.events) == 2
    assert err(store.unwatch, d0, "/w", "tok") == "ENOENT"


def test_watch_rm_events(store):
    d0 = conn(store, 0)
    store.write(d0, "/r/a/b", b"")
    store.watch(d0, "/r", "top")
    store.watch(d0, "/r/a/b", "leaf")
    d0.events.clear()
    store.rm(d0, "/r/a")
    assert sorted(d0.events) == [("/r/a", "top"), ("/r/a/b", "leaf")]


def test_relative_watch_reports_relative_paths(store):
    d0, d1 = conn(store, 0), conn(store, 1)
    home(store, d0, 1)
    store.watch(d1, "device", "t")
    store.write(d0, "/local/domain/1/device/vbd/0", b"")
    assert d1.events == [("device", "t"), ("device/vbd/0", "t")]


def test_watch_events_respect_read_permission(store):
    d0, d1, d2 = conn(store, 0), conn(store, 1), conn(store, 2)
    store.write(d0, "/pub", b"")
    store.set_perms(d0, "/pub", ["r0"])
    store.watch(d2, "/pub", "t")
    d2.events.clear()
    store.write(d0, "/pub/open", b"")
    store.write(d0, "/pub/hidden", b"")
    store.set_perms(d0, "/pub/hidden", ["n0", "r1"])
    store.write(d0, "/pub/hidden", b"again")
    # The chmod itself is reported under the old perms (xenstored's set_perms), so
    # dom2 learns the node changed; after that, nothing about it.
    assert d2.events == [("/pub/open", "t"), ("/pub/hidden", "t"), ("/pub/hidden", "t")]
    store.watch(d1, "/pub", "t1")
    store.write(d0, "/pub/hidden", b"more")
    assert d1.events[-1] == ("/pub/hidden", "t1") and len(d2.events) == 3


def test_transaction_events_fire_at_commit(store):
    d0, w = conn(store, 0), conn(store, 0)
    store.watch(w, "/tw", "t")
    w.events.clear()
    tx = store.transaction_start(d0)
    store.write(d0, "/tw/x", b"", tx)
    assert w.events == []
    store.transaction_end(d0, tx, True)
    assert w.events == [("/tw/x", "t")]


def test_introduce_release_special_watches(store):
    d0, d1 = conn(store, 0), conn(store, 1)
    store.watch(d0, "@introduceDomain", "in")
    store.watch(d0, "@releaseDomain", "out")
    store.watch(d1, "@releaseDomain", "out1")
    d0.events.clear()
    d1.events.clear()
    assert not store.is_domain_introduced(5)
    store.introduce(d0, 5, 0x1234, 3)
    assert store.is_domain_introduced(5)
    assert store.get_domain_path(5) == "/local/domain/5"
    store.resume(d0, 5)
    assert err(store.introduce, d1, 6) == "EACCES"
    store.release(d0, 5)
    assert d0.events == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    assert d1.events == []  # special nodes are dom0-only (perms n0) by default
    store.set_perms(d0, "@releaseDomain", ["n0", "r1"])
    store.introduce(d0, 7)
    store.release(d0, 7)
    assert d1.events == [("@releaseDomain", "out1")]
    assert err(store.release, d0, 7) == "ENOENT"
    assert err(store.resume, d0, 7) == "ENOENT"


def test_release_closes_the_domains_connections(store):
    d0 = conn(store, 0)
    store.introduce(d0, 3)
    closed = []
    d3 = store.connect(3, Events(), on_close=lambda: closed.append(True))
    home(store, d0, 3)
    store.watch(d3, "x", "t")
    store.transaction_start(d3)
    store.release(d0, 3)
    assert closed == [True]
    assert d3.watches == [] and d3.transactions == {}


def test_reset_watches(store):
    d1 = conn(store, 1)
    store.watch(d1, "/anything", "t")
    store.transaction_start(d1)
    store.reset_watches(d1)
    assert d1.watches == [] and d1.transactions == {}


def test_default_quotas_are_xenstored_defaults():
    # tools/xenstored/domain.c, quotas[]: the hard values.
    assert Quota() == Quota(nodes=1000, watches=128, outstanding=20, memory=2560 * 1024,
                            transactions=10, transaction_nodes=1024, node_permissions=5,
                            node_size=2048)


def test_quotas(store):
    # node-size 40 holds a 16-byte value: struct node_hdr (16) + one permission (8).
    store = Store(Quota(nodes=5, node_size=40, watches=2, transactions=2))
    d0, d1 = conn(store, 0), conn(store, 1)
    home(store, d0, 1)  # dom1 owns its home: 1 node
    store.write(d1, "a", b"")
    store.write(d1, "b", b"")
    assert err(store.write, d1, "c/d/e", b"") == "ENOSPC"  # would need 3 more
    store.write(d1, "c", b"")
    store.write(d1, "d", b"")
    assert err(store.write, d1, "e", b"") == "ENOSPC"
    store.rm(d1, "d")
    store.write(d1, "e", b"x" * 16)
    assert err(store.write, d1, "e", b"x" * 17) == "ENOSPC"
    store.watch(d1, "a", "1")
    store.watch(d1, "b", "2")
    assert err(store.watch, d1, "c", "3") == "ENOSPC"  # xenstored since 70fcc2531c
    store.transaction_start(d1)
    store.transaction_start(d1)
    assert err(store.transaction_start, d1) == "ENOSPC"
    # dom0 is not limited.
    for i in range(10):
        store.write(d0, f"/dom0/{i}", b"y" * 100)
        store.watch(d0, f"/dom0/{i}", "t")
        store.transaction_start(d0)
    # Nodes created inside a transaction count too.
    d2 = conn(store, 2)
    home(store, d0, 2)
    tx = store.transaction_start(d2)
    for name in "abcd":
        store.write(d2, name, b"", tx)
    assert err(store.write, d2, "e", b"", tx) == "ENOSPC"
