"""The XenStore node tree, per docs/misc/xenstore.txt, with xenstored's semantics.

Nodes live in a flat map keyed by absolute path. Every change stamps the node with a
new global generation; a transaction is an overlay on the map plus the set of paths it
touched, and commits only if none of those changed after it started (else EAGAIN).
Permissions follow xenstore.txt "Permissions": the first entry names the owner and the
default access of everyone not listed; the owner and dom0 may do anything.

Quotas are xenstored's (tools/xenstored/domain.c `quotas[]`, checked in core.c,
watch.c and transaction.c): every unprivileged domain is held to them, dom0 is not.
Memory is counted as xenstored counts it (domain_memory_add): each node's accounted
size plus its path against its owner, each watch's path and token, each path a
transaction keeps, and each message queued for a connection that has not read it yet.
Watches are indexed by the path they watch, so a change looks up the changed path and
its ancestors instead of scanning every watch.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from xenopus.xen.abi import DOMID_FIRST_RESERVED

from .wire import (
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    XsError,
    is_number,
)

READ, WRITE, OWNER = 1, 2, 4
LETTER_ACCESS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}
SPECIAL = ("@introduceDomain", "@releaseDomain")
VALID = re.compile(r"[A-Za-z0-9\-/_@]+")
LOCAL = re.compile(r"/local/domain/(\d{1,5})/")


@dataclass(frozen=True)
class Perm:
    """One ACL entry, written `<letter><domid>` on the wire (e.g. "r1")."""

    letter: str
    domid: int

    def __str__(self) -> str:
        return f"{self.letter}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        if len(text) < 2 or text[0] not in LETTER_ACCESS or not is_number(text[1:]):
            raise XsError("EINVAL", f"bad permission {text!r}")
        domid = int(text[1:])
        if domid > 0xFFFF:
            raise XsError("EINVAL", f"bad domid in {text!r}")
        return cls(text[0], domid)


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    gen: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid


# xenstored's calc_node_acc_size() (core.c): a node is accounted as its struct node_hdr
# (u64 generation, u16 num_perms, u16 datalen, u32 childlen), 8 bytes per permission
# (struct xs_permissions: domid and access, two 32-bit fields), its value and its
# children's names, each nul-terminated.
NODE_HDR_SIZE = 16
PERM_SIZE = 8


def node_size(node: Node) -> int:
    """The size xenstored's node-size quota and memory accounting give a node."""
    return (NODE_HDR_SIZE + PERM_SIZE * len(node.perms) + len(node.value)
            + sum(map(len, node.children)) + len(node.children))


@dataclass(frozen=True)
class Quota:
    """xenstored's hard quotas per unprivileged domain, with its defaults (domain.c
    `quotas[]`, named as in `quota_adm[]`: `xenstored -Q <name>=<value>`, the CONTROL
    `quota` command). 0 disables a check, as in xenstored; dom0 is exempt."""

    nodes: int = 1000  # "nodes": nodes the domain owns
    watches: int = 128  # "watches"
    outstanding: int = 20  # "outstanding": replies queued that the domain has not read
    memory: int = 2 * 1024 * 1024 + 512 * 1024  # "memory": 2.5 MiB, hard quota
    transactions: int = 10  # "transactions": open at once
    transaction_nodes: int = 1024  # "transaction-nodes": nodes one transaction keeps
    node_permissions: int = 5  # "node-permissions"
    node_size: int = 2048  # "node-size": node_size() of one node

    @classmethod
    def parse(cls, text: str) -> Quota:
        """`name=value` pairs separated by commas or blanks, xenstored's names
        ("nodes=2000,memory=4194304"); what is not named keeps its default."""
        values: dict[str, int] = {}
        for item in text.replace(",", " ").split():
            name, sep, number = item.partition("=")
            attr = name.replace("-", "_")
            if not sep or attr not in cls.__dataclass_fields__ or not number.isdigit():
                raise ValueError(f"bad XenStore quota {item!r} (want <name>=<number>, "
                                 f"name one of {', '.join(QUOTA_NAMES)})")
            values[attr] = int(number)
        return cls(**values)


QUOTA_NAMES = tuple(name.replace("_", "-") for name in Quota.__dataclass_fields__)
# domain.c quota_adm[].descr, what CONTROL "quota" prints beside each value.
QUOTA_DESCRIPTIONS = {
    "nodes": "Nodes per domain", "watches": "Watches per domain",
    "outstanding": "Outstanding requests per domain",
    "memory": "Total Xenstore memory per domain",
    "transactions": "Active transactions per domain",
    "transaction-nodes": "Max. number of accessed nodes per transaction",
    "node-permissions": "Max. number of permissions per node", "node-size": "Max. size of a node",
}
# The ring features we serve (xs_wire.h, docs/misc/xenstore-ring.txt): the connection
# error indicator and ring reconnection. GET_FEATURE answers these; SET_FEATURE may
# only clear bits of them.
FEATURES = XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR


@dataclass
class Watch:
    path: str  # as the client gave it: events are reported in the same form
    abs: str
    token: str
    conn: Connection = field(repr=False, compare=False)
    seq: int = field(default=0, compare=False)  # registration order, the order events go

    @property
    def memory(self) -> int:
        """What xenstored's add_watch() charges: the path and the token."""
        return len(self.abs) + len(self.token)


@dataclass
class Transaction:
    id: int
    start_gen: int
    domid: int  # whose memory the kept paths are charged to
    limited: bool  # held to the transaction-nodes and memory quotas
    overlay: dict[str, Node | None] = field(default_factory=dict)
    seen: dict[str, bool] = field(default_factory=dict)  # existed at first access?
    owned: dict[int, int] = field(default_factory=dict)  # node-count deltas per owner
    events: list[tuple[str, tuple[Perm, ...], bool]] = field(default_factory=list)
    memory: int = 0  # charged to domid while the transaction is open
    failed: bool = False  # a quota stopped it half-way: committing answers ENOMEM


Deliver = Callable[[str, str], None]


@dataclass(eq=False)
class Connection:
    """One client of the store: dom0 over the socket, or a domain over its ring."""

    domid: int
    deliver: Deliver  # (path, token) of a watch event; must not block
    on_close: Callable[[], None] | None = None
    target: int | None = None
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    seq: int = 0  # connection order, the order events go
    # A dom0 connection held to domain `bound_to`'s quotas (a domain process's backends,
    # scoped to that domain): dom0's rights within its paths, an unprivileged domain's
    # limits, as a Xen driver domain has them.
    bound_to: int | None = None

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def limited(self) -> bool:
        """Held to the quotas: every domain but dom0, and dom0 bound to a domain."""
        return not self.privileged or self.bound_to is not None

    @property
    def account(self) -> int:
        """Whose memory its watches, transactions and queued output are charged to: its
        domain's, or for a bound connection an account of its own (-1 - domid, never a
        domid) whose use counts against that domain's quota."""
        return self.domid if self.bound_to is None else -1 - self.bound_to


@dataclass
class Domain:
    domid: int
    mfn: int = 0
    port: int = 0
    shutdown: bool = False
    target: int | None = None
    features: int = 0  # the ring features it is offered (SET_FEATURE before INTRODUCE)


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def is_below(path: str, top: str) -> bool:
    """True if path is top or inside its subtree."""
    return path == top or top == "/" or path.startswith(top + "/")


class Store:
    def __init__(self, quota: Quota | None = None) -> None:
        self.quota = quota or Quota()  # the global values: a new domain's (xenstore.txt)
        self._domain_quota: dict[int, Quota] = {}  # a domain's own, from its introduction
        self._features: dict[int, int] = {}  # SET_FEATURE's, for domains not introduced yet
        self.lock = threading.RLock()
        self._gen = 0
        root_perms = (Perm("n", 0),)
        self._nodes: dict[str, Node] = {}
        self._owned: dict[int, int] = {}
        self._memory: dict[int, int] = {}  # accounted bytes per domain (see the module doc)
        for path in ("/", "/local", "/local/domain"):
            self._put(None, path, Node(b"", root_perms))
            if path != "/":
                parent = self._nodes[parent_of(path)]
                self._put(None, parent_of(path),
                          replace(parent, children=parent.children + (basename(path),)))
        self._special = {name: root_perms for name in SPECIAL}
        self._tombs: dict[str, int] = {}  # deletion generations, kept while transactions run
        self._open_tx = 0
        self._tx_ids = 0
        self._conns: list[Connection] = []
        self._conn_seq = 0
        self._watch_seq = 0
        self._watched: dict[str, list[Watch]] = {}  # absolute path -> watches on it
        self.domains: dict[int, Domain] = {}

    # --- connections ---------------------------------------------------------------

    def connect(self, domid: int, deliver: Deliver,
                on_close: Callable[[], None] | None = None) -> Connection:
        with self.lock:
            self._conn_seq += 1
            conn = Connection(domid, deliver, on_close, seq=self._conn_seq)
            dom = self.domains.get(domid)
            if dom is not None:
                conn.target = dom.target
            self._conns.append(conn)
            return conn

    def disconnect(self, conn: Connection) -> None:
        with self.lock:
            if conn in self._conns:
                self._conns.remove(conn)
            self._drop_transactions(conn)
            self._drop_watches(conn)

    # --- accounting ----------------------------------------------------------------

    def memory(self, domid: int) -> int:
        """Bytes accounted to domid: its nodes, watches, transactions, queued output."""
        with self.lock:
            return self._memory.get(domid, 0)

    def _charge(self, domid: int, nbytes: int) -> None:
        self._memory[domid] = self._memory.get(domid, 0) + nbytes

    def _over(self, conn: Connection, limit: int, value: int) -> bool:
        """Whether value breaks a quota for conn (0 disables it; dom0 is exempt unless
        bound to a domain)."""
        return bool(limit) and conn.limited and value > limit

    def _quota(self, conn: Connection) -> Quota:
        return self.quota_of(conn.domid if conn.bound_to is None else conn.bound_to)

    def _used(self, conn: Connection, tx: Transaction | None = None) -> tuple[int, int]:
        """(nodes, bytes) conn's quotas count: its domain's own; for a bound connection
        the nodes of its domain's paths owned by dom0 or that domain (what it can have
        made, or given that domain) and its account's charges."""
        if conn.bound_to is None:
            return self.owned(conn.domid, tx), self._memory.get(conn.domid, 0)
        nodes = size = 0
        for top in self._bound_tops(conn.bound_to, tx):
            node = self._get(tx, top)
            for path, sub in self._subtree(tx, top, node) if node is not None else ():
                if sub.owner in (0, conn.bound_to):
                    nodes += 1
                    size += node_size(sub) + len(path)
        return nodes, size + self._memory.get(conn.account, 0)

    def _bound_tops(self, domid: int, tx: Transaction | None) -> list[str]:
        """A domain's paths: its home and its backend directories (as Scope allows)."""
        tops = [domain_path(domid)]
        backends = self._get(tx, "/local/domain/0/backend")
        for kind in backends.children if backends is not None else ():
            tops.append(f"/local/domain/0/backend/{kind}/{domid}")
        return tops

    def _check_memory(self, conn: Connection, extra: int, tx: Transaction | None = None) -> None:
        """ENOMEM, as xenstored's domain_memory_add() answers, if extra more bytes
        would take conn's domain over its memory quota."""
        if conn.limited and self._over(conn, self._quota(conn).memory, self._used(conn, tx)[1] + extra):
            raise XsError("ENOMEM", "memory quota exceeded")

    def charge_output(self, conn: Connection, nbytes: int, *, check: bool) -> bool:
        """Account a message queued for conn until it has been sent. With `check`, refuse
        (False) what would go over the memory quota: xenstored's send_event() drops
        such an event; a reply is always queued (send_reply checks no quota)."""
        with self.lock:
            if check and conn.limited and self._over(conn, self._quota(conn).memory,
                                                     self._used(conn)[1] + nbytes):
                return False
            self._charge(conn.account, nbytes)
            return True

    def output_sent(self, conn: Connection, nbytes: int) -> None:
        with self.lock:
            self._charge(conn.account, -nbytes)

    def stalled(self, conn: Connection) -> bool:
        """xenstored's domain_can_read(): an unprivileged domain at its memory quota is
        not served until its queued output drains."""
        with self.lock:
            return conn.limited and self._over(conn, self._quota(conn).memory, self._used(conn)[1] + 1)

    # --- paths and permissions -----------------------------------------------------

    def canonical(self, conn: Connection, path: str, special: bool = False) -> str:
        """xenstored's canonicalize() + is_valid_nodename(); relative paths are the domain's."""
        if special and path in SPECIAL:
            return path
        if not path.startswith("/"):
            path = f"{domain_path(conn.domid)}/{path}"
        if (len(path) > XENSTORE_ABS_PATH_MAX or "//" in path
                or (len(path) > 1 and path.endswith("/")) or not VALID.fullmatch(path)):
            raise XsError("EINVAL", f"invalid path {path[:64]!r}")
        if not conn.privileged:
            local = LOCAL.match(path)
            if len(path) - (local.end() if local else 0) > XENSTORE_REL_PATH_MAX:
                raise XsError("EINVAL", "path too long")
        return path

    def access(self, conn: Connection, perms: tuple[Perm, ...]) -> int:
        """xenstored's perm_for_conn(): the READ/WRITE/OWNER bits conn has on a node."""
        owner = perms[0].domid
        if conn.privileged or owner == conn.domid or (
                conn.target is not None and owner == conn.target):
            return READ | WRITE | OWNER
        for perm in perms[1:]:
            if perm.domid == conn.domid:
                return LETTER_ACCESS[perm.letter]
        return LETTER_ACCESS[perms[0].letter]

    def _nearest(self, tx: Transaction | None, path: str) -> tuple[str, Node]:
        """The closest existing proper ancestor of path (the root always exists)."""
        while True:
            path = parent_of(path)
            node = self._get(tx, path)
            if node is not None:
                return path, node

    def _fetch(self, conn: Connection, tx: Transaction | None, path: str, need: int) -> Node:
        """get_node(): the node if conn may `need` it, else ENOENT/EACCES.

        ENOENT is only told to a caller that may read the closest existing ancestor
        (xenstored's errno_from_parents), so existence does not leak through the tree.
        """
        node = self._get(tx, path)
        if node is not None and self.access(conn, node.perms) & need == need:
            return node
        err = "ENOENT" if node is None else "EACCES"
        if path != "/":
            _, ancestor = self._nearest(tx, path)
            if not self.access(conn, ancestor.perms) & READ:
                err = "EACCES"
        raise XsError(err, path)

    # --- raw view (committed map, or a transaction's overlay on it) ----------------

    def _get(self, tx: Transaction | None, path: str) -> Node | None:
        if tx is None:
            return self._nodes.get(path)
        if path in tx.overlay:
            return tx.overlay[path]
        node = self._nodes.get(path)
        if path not in tx.seen:
            self._keep(tx, path, node)
            tx.seen[path] = node is not None
        return node

    def _keep(self, tx: Transaction, path: str, node: Node | None) -> None:
        """A transaction keeps each path it touches (to check it at commit) — even a
        read that failed. xenstored's access_node() bounds them by transaction-nodes
        (ENOSPC) and charges them as memory; either failure fails the transaction."""
        cost = len(path) + (node_size(node) if node is not None else 0)
        if tx.limited:
            quota = self.quota_of(tx.domid if tx.domid >= 0 else -1 - tx.domid)
            if quota.transaction_nodes and len(tx.seen) >= quota.transaction_nodes:
                tx.failed = True
                raise XsError("ENOSPC", "transaction touches too many nodes")
            if quota.memory and self._memory.get(tx.domid, 0) + cost > quota.memory:
                tx.failed = True
                raise XsError("ENOMEM", "memory quota exceeded")
        tx.memory += cost
        self._charge(tx.domid, cost)

    def _put(self, tx: Transaction | None, path: str, node: Node | None) -> None:
        old = self._get(tx, path)
        if tx is not None:
            tx.overlay[path] = node
            counts = tx.owned
            cost = (node_size(node) if node is not None else 0) - (
                node_size(old) if old is not None else 0)
            tx.memory += cost
            self._charge(tx.domid, cost)
        else:
            counts = self._owned
            self._gen += 1
            if node is None:
                self._nodes.pop(path, None)
                if self._open_tx:
                    self._tombs[path] = self._gen
            else:
                node = replace(node, gen=self._gen)
                self._nodes[path] = node
            if old is not None:
                self._charge(old.owner, -node_size(old) - len(path))
            if node is not None:
                self._charge(node.owner, node_size(node) + len(path))
        if old is not None:
            counts[old.owner] = counts.get(old.owner, 0) - 1
        if node is not None:
            counts[node.owner] = counts.get(node.owner, 0) + 1

    def owned(self, domid: int, tx: Transaction | None = None) -> int:
        """Number of nodes domid owns (as seen by tx)."""
        return self._owned.get(domid, 0) + (tx.owned.get(domid, 0) if tx else 0)

    def _tx(self, conn: Connection, tx_id: int) -> Transaction | None:
        if not tx_id:
            return None
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise XsError("ENOENT", f"no transaction {tx_id}")
        return tx

    # --- node operations -----------------------------------------------------------

    def read(self, conn: Connection, path: str, tx_id: int = 0) -> bytes:
        with self.lock:
            tx = self._tx(conn, tx_id)
            return self._fetch(conn, tx, self.canonical(conn, path), READ).value

    def directory(self, conn: Connection, path: str, tx_id: int = 0) -> list[str]:
        with self.lock:
            tx = self._tx(conn, tx_id)
            return list(self._fetch(conn, tx, self.canonical(conn, path), READ).children)

    def directory_part(self, conn: Connection, path: str, offset: int, tx_id: int = 0) -> bytes:
        """XS_DIRECTORY_PART's payload: the node's generation, then children from byte
        `offset` of the nul-separated list; an empty string ends the last chunk."""
        with self.lock:
            tx = self._tx(conn, tx_id)
            node = self._fetch(conn, tx, self.canonical(conn, path), READ)
            blob = b"".join(c.encode("latin-1") + b"\0" for c in node.children)
            if offset < 0 or offset > len(blob):
                raise XsError("EINVAL", "offset beyond the children")
            head = b"%x\0" % node.gen
            room = XENSTORE_PAYLOAD_MAX - len(head) - 1
            end = offset
            while end < len(blob):
                nxt = blob.index(b"\0", end) + 1
                if nxt - offset > room:
                    break
                end = nxt
            if end == offset and end < len(blob):
                raise XsError("E2BIG", "child name too long for one chunk")
            return head + blob[offset:end] + (b"\0" if end == len(blob) else b"")

    def get_perms(self, conn: Connection, path: str, tx_id: int = 0) -> list[Perm]:
        with self.lock:
            tx = self._tx(conn, tx_id)
            path = self.canonical(conn, path, special=True)
            if path in SPECIAL:
                perms = self._special[path]
                if not self.access(conn, perms) & READ:
                    raise XsError("EACCES", path)
                return list(perms)
            return list(self._fetch(conn, tx, path, READ).perms)

    def set_perms(self, conn: Connection, path: str, perms: Iterable[str | Perm],
                  tx_id: int = 0) -> None:
        with self.lock:
            tx = self._tx(conn, tx_id)
            path = self.canonical(conn, path, special=True)
            new = tuple(p if isinstance(p, Perm) else Perm.parse(p) for p in perms)
            if not new:
                raise XsError("EINVAL", "no permissions")
            if path in SPECIAL:
                old_perms = self._special[path]
                if self.access(conn, old_perms) & (WRITE | OWNER) != WRITE | OWNER:
                    raise XsError("EACCES", path)
                self._special[path] = new
                return
            node = self._fetch(conn, tx, path, WRITE | OWNER)
            # An unprivileged domain may not give its nodes away (xenstored: EPERM).
            if not conn.privileged and new[0].domid != node.owner:
                raise XsError("EPERM", "only dom0 changes owners")
            if conn.bound_to is not None and new[0].domid not in (0, conn.bound_to, node.owner):
                # Its nodes would be charged to another domain's quota.
                raise XsError("EPERM", f"a domain {conn.bound_to} connection gives nodes only"
                              f" to dom0 or domain {conn.bound_to}")
            if self._over(conn, self._quota(conn).node_permissions, len(new)):
                raise XsError("ENOSPC", "too many permissions")  # core.c do_set_perms
            changed = replace(node, perms=new)
            self._check_size(conn, changed)
            self._check_memory(conn, PERM_SIZE * (len(new) - len(node.perms)), tx)
            self._put(tx, path, changed)
            self._changed(tx, path, node.perms)

    def write(self, conn: Connection, path: str, value: bytes, tx_id: int = 0) -> None:
        with self.lock:
            tx = self._tx(conn, tx_id)
            path = self.canonical(conn, path)
            self._check_memory(conn, len(path) + NODE_HDR_SIZE + PERM_SIZE + len(value), tx)
            node = self._get(tx, path)
            if node is None:
                node = self._create(conn, tx, path, bytes(value))
            else:
                node = replace(self._fetch(conn, tx, path, WRITE), value=bytes(value))
                self._check_size(conn, node)
            self._put(tx, path, node)
            self._changed(tx, path, node.perms)

    def mkdir(self, conn: Connection, path: str, tx_id: int = 0) -> None:
        with self.lock:
            tx = self._tx(conn, tx_id)
            path = self.canonical(conn, path)
            if self._get(tx, path) is not None:
                self._fetch(conn, tx, path, WRITE)
                return
            self._check_memory(conn, len(path) + NODE_HDR_SIZE + PERM_SIZE, tx)
            node = self._create(conn, tx, path)
            self._put(tx, path, node)
            self._changed(tx, path, node.perms)

    def rm(self, conn: Connection, path: str, tx_id: int = 0) -> None:
        with self.lock:
            tx = self._tx(conn, tx_id)
            path = self.canonical(conn, path)
            try:
                node = self._fetch(conn, tx, path, WRITE)
            except XsError as err:
                # Removing what is already gone is fine if its parent exists.
                if err.name == "ENOENT" and self._get(tx, parent_of(path)) is not None:
                    return
                raise
            if path == "/":
                raise XsError("EINVAL", "cannot remove the root")
            parent_path = parent_of(path)
            parent = self._get(tx, parent_path)
            assert parent is not None
            name = basename(path)
            self._put(tx, parent_path,
                      replace(parent, children=tuple(c for c in parent.children if c != name)))
            # Watches on removed descendants see exactly their own node go; watches on
            # the path and above see the top of the removed subtree (xenstored's rm).
            for sub, sub_node in self._subtree(tx, path, node):
                self._put(tx, sub, None)
                if sub != path:
                    self._changed(tx, sub, sub_node.perms, exact=True)
            self._changed(tx, path, node.perms)

    def _subtree(self, tx: Transaction | None, path: str,
                 node: Node) -> list[tuple[str, Node]]:
        out, todo = [], [(path, node)]
        while todo:
            cur, cur_node = todo.pop()
            out.append((cur, cur_node))
            for child in cur_node.children:
                sub = f"{cur}/{child}" if cur != "/" else f"/{child}"
                sub_node = self._get(tx, sub)
                if sub_node is not None:
                    todo.append((sub, sub_node))
        return out

    def _check_nodes(self, conn: Connection, tx: Transaction | None, extra: int) -> None:
        if conn.limited and self._over(conn, self._quota(conn).nodes, self._used(conn, tx)[0] + extra):
            raise XsError("ENOSPC", "node quota exceeded")

    def _check_size(self, conn: Connection, node: Node) -> None:
        """xenstored's write_node_raw(): ENOSPC for a node over node-size."""
        if self._over(conn, self._quota(conn).node_size, node_size(node)):
            raise XsError("ENOSPC", "node over the node-size quota")

    def _create(self, conn: Connection, tx: Transaction | None, path: str,
                value: bytes = b"") -> Node:
        """Build path and any missing parents (not yet the leaf's store) under the
        closest existing ancestor, which conn must be able to write. New nodes take that
        ancestor's permissions; an unprivileged creator becomes their owner. Every
        quota is checked before the first node is stored."""
        top_path, top = self._nearest(tx, path)
        if self.access(conn, top.perms) & WRITE != WRITE:
            # Same leak rule as a failed lookup: EACCES unless the ancestor is readable.
            raise XsError("EACCES", path)
        missing = [path]
        while parent_of(missing[-1]) != top_path:
            missing.append(parent_of(missing[-1]))
        self._check_nodes(conn, tx, len(missing))
        self._check_size(conn, replace(top, children=top.children + (basename(missing[-1]),)))
        perms = top.perms
        if not conn.privileged:
            perms = (Perm(perms[0].letter, conn.domid),) + perms[1:]
        leaf = Node(value, perms)
        self._check_size(conn, leaf)
        parent_path, parent = top_path, top
        for sub in reversed(missing):
            self._put(tx, parent_path,
                      replace(parent, children=parent.children + (basename(sub),)))
            parent_path, parent = sub, Node(b"", perms)
            if sub != path:
                self._put(tx, sub, parent)
                parent = self._get(tx, sub) or parent
        return leaf

    # --- transactions --------------------------------------------------------------

    def transaction_start(self, conn: Connection) -> int:
        with self.lock:
            if self._over(conn, self._quota(conn).transactions, len(conn.transactions) + 1):
                raise XsError("ENOSPC", "transaction quota exceeded")
            self._tx_ids = self._tx_ids % 0xFFFFFFFF + 1
            conn.transactions[self._tx_ids] = Transaction(
                self._tx_ids, self._gen, conn.account, limited=conn.limited)
            self._open_tx += 1
            return self._tx_ids

    def transaction_end(self, conn: Connection, tx_id: int, commit: bool) -> None:
        with self.lock:
            tx = conn.transactions.pop(tx_id, None) if tx_id else None
            if tx is None:
                raise XsError("ENOENT", f"no transaction {tx_id}")
            self._tx_closed(tx)
            if not commit:
                return
            if tx.failed:  # xenstored's do_transaction_end: trans->fail
                raise XsError("ENOMEM", "transaction failed on a quota")
            for path, existed in tx.seen.items():
                node = self._nodes.get(path)
                gen = node.gen if node is not None else self._tombs.get(path, 0)
                if (node is not None) != existed or gen > tx.start_gen:
                    raise XsError("EAGAIN", f"conflict on {path}")
            for path, node in tx.overlay.items():
                self._put(None, path, node)
            for path, perms, exact in tx.events:
                self._fire(path, perms, exact)

    def _tx_closed(self, tx: Transaction) -> None:
        self._charge(tx.domid, -tx.memory)
        self._open_tx -= 1
        if not self._open_tx:
            self._tombs.clear()

    def _drop_transactions(self, conn: Connection) -> None:
        for tx in conn.transactions.values():
            self._tx_closed(tx)
        conn.transactions.clear()

    # --- watches -------------------------------------------------------------------

    def watch(self, conn: Connection, path: str, token: str) -> None:
        """Register a watch; the first event fires at once, as xenstored's do_watch does
        (the server sends it after the reply)."""
        with self.lock:
            abs_path = self.canonical(conn, path, special=True)
            same_path = self._watched.get(abs_path, [])
            if any(w.conn is conn and w.token == token for w in same_path):
                raise XsError("EEXIST", "watch exists")
            used = sum(len(c.watches) for c in self._conns if c.account == conn.account)
            if self._over(conn, self._quota(conn).watches, used + 1):
                # ENOSPC since xenstored commit 70fcc2531c (E2BIG before).
                raise XsError("ENOSPC", "watch quota exceeded")
            self._watch_seq += 1
            watch = Watch(path, abs_path, token, conn, self._watch_seq)
            self._check_memory(conn, watch.memory)
            self._charge(conn.account, watch.memory)
            conn.watches.append(watch)
            self._watched.setdefault(abs_path, []).append(watch)
            conn.deliver(path, token)

    def unwatch(self, conn: Connection, path: str, token: str) -> None:
        with self.lock:
            abs_path = self.canonical(conn, path, special=True)
            for w in self._watched.get(abs_path, []):
                if w.conn is conn and w.token == token:
                    conn.watches.remove(w)
                    self._unindex(w)
                    return
            raise XsError("ENOENT", "no such watch")

    def domain_watches(self, domid: int) -> list[tuple[str, str]]:
        """(path as given, token) of every watch domain `domid`'s own connections hold
        (what a save of the domain carries)."""
        with self.lock:
            return [(w.path, w.token) for c in self._conns
                    if c.domid == domid and not c.privileged for w in c.watches]

    def add_domain_watch(self, domid: int, path: str, token: str) -> bool:
        """Register a watch on domain `domid`'s own connection, as if it had asked (a
        restored domain's watches); False if it has no connection."""
        with self.lock:
            conn = next((c for c in self._conns if c.domid == domid and not c.privileged),
                        None)
        if conn is None:
            return False
        self.watch(conn, path, token)
        return True

    def reset_watches(self, conn: Connection) -> None:
        with self.lock:
            self._drop_watches(conn)
            self._drop_transactions(conn)

    def _unindex(self, watch: Watch) -> None:
        same_path = self._watched[watch.abs]
        same_path.remove(watch)
        if not same_path:
            del self._watched[watch.abs]
        self._charge(watch.conn.account, -watch.memory)

    def _drop_watches(self, conn: Connection) -> None:
        for watch in conn.watches:
            self._unindex(watch)
        conn.watches.clear()

    def _changed(self, tx: Transaction | None, path: str, perms: tuple[Perm, ...],
                 exact: bool = False) -> None:
        if tx is None:
            self._fire(path, perms, exact)
        else:
            tx.events.append((path, perms, exact))

    def _fire(self, path: str, perms: tuple[Perm, ...], exact: bool = False) -> None:
        """Tell every watcher of path (or of an ancestor, unless exact) that may read it,
        by connection then in the order the watches were set."""
        keys = [path]
        if not exact and path not in SPECIAL:
            while path != "/":
                path = parent_of(path)
                keys.append(path)
            path = keys[0]
        hits = [w for key in keys for w in self._watched.get(key, ())]
        hits.sort(key=lambda w: (w.conn.seq, w.seq))
        readable: dict[Connection, bool] = {}
        for w in hits:
            conn = w.conn
            if conn not in readable:
                readable[conn] = bool(self.access(conn, perms) & READ)
            if readable[conn]:
                conn.deliver(self._relative(conn, w, path), w.token)

    @staticmethod
    def _relative(conn: Connection, w: Watch, path: str) -> str:
        """Events on a relative watch carry paths relative to the domain's home."""
        if w.path.startswith(("/", "@")):
            return path
        home = domain_path(conn.domid) + "/"
        return path[len(home):] if path.startswith(home) else path

    # --- domains -------------------------------------------------------------------

    def _need_privilege(self, conn: Connection) -> None:
        if not conn.privileged:
            raise XsError("EACCES", "dom0 only")

    def introduce(self, conn: Connection, domid: int, mfn: int = 0, port: int = 0) -> None:
        with self.lock:
            self._need_privilege(conn)
            if domid <= 0 or domid >= DOMID_FIRST_RESERVED:
                raise XsError("EINVAL", f"bad domid {domid}")
            dom = self.domains.get(domid)
            if dom is None:
                self.domains[domid] = Domain(domid, mfn, port,
                                             features=self._features.pop(domid, FEATURES))
                # "The initial quota settings for a domain are the global ones."
                self._domain_quota[domid] = self.quota
            else:  # xenstored lets the toolstack re-introduce to rebind the channel
                dom.mfn, dom.port = mfn, port
            self._fire("@introduceDomain", self._special["@introduceDomain"])

    def release(self, conn: Connection, domid: int) -> None:
        """Forget a domain: its connections close, their watches and transactions go."""
        with self.lock:
            self._need_privilege(conn)
            if domid == 0:
                raise XsError("EINVAL", "cannot release dom0")
            if self.domains.pop(domid, None) is None:
                raise XsError("ENOENT", f"domain {domid} not introduced")
            self._domain_quota.pop(domid, None)
            for other in [c for c in self._conns if c.domid == domid]:
                self.disconnect(other)
                if other.on_close:
                    other.on_close()
            self._fire("@releaseDomain", self._special["@releaseDomain"])

    # --- quotas and features (xenstore.txt GET_QUOTA/SET_QUOTA, GET_FEATURE/SET_FEATURE) --

    def quota_of(self, domid: int) -> Quota:
        """The quota values that apply to domid: its own once introduced, else the
        global ones."""
        return self._domain_quota.get(domid, self.quota)

    def _introduced(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        return dom

    @staticmethod
    def _quota_field(name: str) -> str:
        attr = name.replace("-", "_")
        if name not in QUOTA_NAMES:
            raise XsError("EINVAL", f"no quota {name[:32]!r}")
        return attr

    def get_quota(self, conn: Connection, domid: int | None = None,
                  name: str | None = None) -> str:
        """No name: every quota name, blank-separated. A name: its global value, or
        domid's."""
        with self.lock:
            self._need_privilege(conn)
            if name is None:
                return " ".join(QUOTA_NAMES)
            quota = self.quota if domid is None else self._domain_quota.get(domid)
            if quota is None:
                if domid:  # dom0 is always there (and exempt from every quota)
                    self._introduced(domid)
                quota = self.quota
            return str(getattr(quota, self._quota_field(name)))

    def set_quota(self, conn: Connection, domid: int | None, name: str, value: int) -> None:
        """Set one quota: the global value (new domains start from it) or domid's own.
        0 disables the check, as in xenstored."""
        with self.lock:
            self._need_privilege(conn)
            attr = self._quota_field(name)
            if domid is None:
                self.quota = replace(self.quota, **{attr: value})
                return
            if domid:
                self._introduced(domid)
            self._domain_quota[domid] = replace(self.quota_of(domid), **{attr: value})

    def get_feature(self, conn: Connection, domid: int | None = None) -> int:
        """The ring features of domid (dom0 only), or of the caller's own domain."""
        with self.lock:
            if domid is None:
                dom = self.domains.get(conn.domid)
                return dom.features if dom is not None else FEATURES
            self._need_privilege(conn)
            dom = self.domains.get(domid)
            return dom.features if dom is not None else self._features.get(domid, FEATURES)

    def set_feature(self, conn: Connection, domid: int, features: int) -> None:
        """The features domid will be offered: only before its INTRODUCE (EBUSY after),
        only bits we serve (EINVAL)."""
        with self.lock:
            self._need_privilege(conn)
            if domid <= 0 or domid >= DOMID_FIRST_RESERVED:
                raise XsError("EINVAL", f"bad domid {domid}")
            if domid in self.domains:
                raise XsError("EBUSY", f"domain {domid} is already introduced")
            if features & ~FEATURES:
                raise XsError("EINVAL", f"features {features:#x} beyond {FEATURES:#x}")
            self._features[domid] = features

    def usage(self, domid: int) -> dict[str, int]:
        """What domid uses of each quota now (CONTROL "quota <domid>")."""
        with self.lock:
            self._introduced(domid)
            conns = [c for c in self._conns if c.domid == domid]
            return {"nodes": self.owned(domid, None), "memory": self._memory.get(domid, 0),
                    "watches": sum(len(c.watches) for c in conns),
                    "transactions": sum(len(c.transactions) for c in conns)}

    def check(self) -> list[str]:
        """xenstored's check_store() (CONTROL "check"): every node's parent lists it and
        every listed child exists. Returns the problems found (none in a sound store)."""
        with self.lock:
            problems = []
            for path, node in self._nodes.items():
                if path != "/":
                    parent = self._nodes.get(parent_of(path))
                    if parent is None or basename(path) not in parent.children:
                        problems.append(f"{path}: not listed by its parent")
                for child in node.children:
                    if (path.rstrip("/") + "/" + child) not in self._nodes:
                        problems.append(f"{path}: lists missing child {child}")
            return problems

    def is_domain_introduced(self, domid: int) -> bool:
        with self.lock:
            return domid == 0 or domid in self.domains

    def get_domain_path(self, domid: int) -> str:
        return domain_path(domid)

    def resume(self, conn: Connection, domid: int) -> None:
        with self.lock:
            self._need_privilege(conn)
            dom = self.domains.get(domid)
            if dom is None:
                raise XsError("ENOENT", f"domain {domid} not introduced")
            dom.shutdown = False

    def set_target(self, conn: Connection, domid: int, target: int) -> None:
        """Give domid (a device model's domain) owner rights over target's nodes."""
        with self.lock:
            self._need_privilege(conn)
            dom = self.domains.get(domid)
            if dom is None or target not in self.domains:
                raise XsError("ENOENT", "domain not introduced")
            dom.target = target
            for other in self._conns:
                if other.domid == domid:
                    other.target = target
