"""Fuzz targets: the parsers a guest or a user feeds with untrusted bytes.

Each target takes one input (bytes) and returns normally when the code under test either
accepted it or refused it with its documented error (`REFUSALS`). Any other exception —
an IndexError, struct.error, RecursionError, MemoryError, ... escaping — is a bug, and
so is a hang (the runner's per-input timeout). `fuzz/run.py` drives them with atheris
(`make fuzz`); tests/unit/test_fuzz_targets.py replays the committed corpus and a few
hundred deterministic mutations of it on every `make test`.

    xenstore   a guest's XenStore ring: bytes through RingTransport's framing, every
               whole message through the server's parser and handlers (io/xs_wire.h)
    virtqueue  a split virtqueue (virtio 1.2 §2.7) over guest memory the input fills:
               enable, then pop/push until the ring is drained or found broken
    xlcfg      an xl.cfg file: the lexer/parser, then every key's reader and check
    configdict a DomainConfig in its JSON form (DomainConfig.from_dict), as a domain
               process receives it in Spawn and a restarted daemon reads it back from
               domains.json: validated like a file; what it accepts round-trips
    kernel     a kernel image: ELF/PVH or bzImage, loaded into guest memory
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

from xenopus import ipc
from xenopus.boot.layout import BootImageError
from xenopus.boot.loader import load_kernel
from xenopus.devices.virtio.queue import DescriptorError, SplitQueue
from xenopus.domain.config import ConfigError, DomainConfig, from_settings, parse_settings
from xenopus.memory.guest import GuestMemory, MemoryRegion
from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.ring import RingTransport
from xenopus.xen.xenstore.server import UNSCOPED, Scope, XenStoreServer
from xenopus.xen.xenstore.store import Quota, Store
from xenopus.xen.xenstore.wire import XsError

# -- xenstore -----------------------------------------------------------------------------

_IFACE = wire.XenstoreDomainInterface
_RING = wire.XENSTORE_RING_SIZE
# Who talks: a guest (domain 5, quotas apply), the toolstack (dom0, the whole store), or
# a domain process's backends (dom0 scoped to domain 5's paths).
_SPEAKERS = ((5, UNSCOPED), (0, UNSCOPED), (0, Scope(5)))


def xenstore(data: bytes) -> None:
    """Byte 0 picks the speaker, byte 1 the chunk size the guest writes the ring in;
    the rest is the guest's request stream. Requests are parsed and answered one by one,
    replies go back through the response ring (which the "guest" consumes at once)."""
    if len(data) < 2:
        return
    domid, scope = _SPEAKERS[data[0] % len(_SPEAKERS)]
    chunk = data[1] % _RING + 1
    stream = data[2:]
    # Small quotas, so that the fuzzer reaches the quota paths too.
    store = Store(Quota(nodes=16, watches=4, outstanding=4, memory=1 << 16, transactions=2,
                        transaction_nodes=8, node_size=256))
    for d in (5, 6):
        store.introduce(store.connect(0, lambda p, t: None), d)
    server = XenStoreServer(store)
    conn = store.connect(domid, lambda path, token: None)
    page = memoryview(bytearray(4096))
    ring = RingTransport(page)
    prod = 0
    for start in range(0, len(stream), chunk):
        part = stream[start : start + chunk]
        for i, b in enumerate(part):
            page[_IFACE.req.offset + (prod + i) % _RING] = b
        prod += len(part)
        struct.pack_into("<I", page, _IFACE.req_prod.offset, prod & 0xFFFFFFFF)
        for message in ring.read_messages():
            hdr = wire.unpack_header(message)
            payload = message[wire.HEADER_SIZE :]
            with contextlib.suppress(XsError):
                server._handle(conn, hdr, payload, scope)
            reply = server.dispatch(conn, hdr, payload, scope)
            assert wire.unpack_header(reply).len == len(reply) - wire.HEADER_SIZE
            ring.write(reply)
            ring.flush()
            # The guest consumes every reply.
            rsp_prod = struct.unpack_from("<I", page, _IFACE.rsp_prod.offset)[0]
            struct.pack_into("<I", page, _IFACE.rsp_cons.offset, rsp_prod)
        if ring.broken:
            break
    store.disconnect(conn)


# -- virtqueue ----------------------------------------------------------------------------

# Two RAM regions with a hole between them, so buffers can straddle RAM's edges.
_VQ_REGIONS = ((0x0, 0x10000), (0x20000, 0x10000))
_vq_memory: GuestMemory | None = None
_VQ_HEADER = struct.Struct("<BBIII")


def _memory() -> GuestMemory:
    global _vq_memory
    if _vq_memory is None:
        _vq_memory = GuestMemory([MemoryRegion.create(g, s, "fuzz-ram") for g, s in _VQ_REGIONS])
    return _vq_memory


def virtqueue(data: bytes) -> None:
    """Header: queue size (1 << b0 % 9), feature bits (EVENT_IDX, INDIRECT_DESC), then
    the descriptor table, available ring and used ring addresses (le32 each). The rest
    is guest RAM (region 0, then region 1); the remaining RAM is zero."""
    if len(data) < _VQ_HEADER.size:
        return
    shift, features, desc, avail, used = _VQ_HEADER.unpack_from(data)
    mem = _memory()
    body = data[_VQ_HEADER.size :]
    for region in mem.regions:
        part, body = body[: region.size], body[region.size :]
        region.map[: len(part)] = part
        region.map[len(part) :] = bytes(region.size - len(part))
    q = SplitQueue(mem, 1 << (shift % 9), "fuzz")
    q.desc_addr, q.avail_addr, q.used_addr = desc, avail, used
    q.event_idx, q.indirect = bool(features & 1), bool(features & 2)
    try:
        q.enable()
    except DescriptorError:
        return
    written = features >> 2
    # A ring holds at most `size` chains; a few extra pops check it stops by itself.
    for _ in range(q.size + 4):
        try:
            chain = q.pop()
        except DescriptorError as e:
            if e.fatal:
                break
            q.push(e.head, 0)
            continue
        if chain is None:
            break
        assert chain.readable_len == sum(len(v) for v in chain.readable)
        assert chain.writable_len == sum(len(v) for v in chain.writable)
        q.push(chain, written * 61)
        q.needs_notify()
    q.reset()


# -- xl.cfg -------------------------------------------------------------------------------


def xlcfg(data: bytes) -> None:
    """The file as load_config reads it: UTF-8 text (anything else is refused before
    parsing), then the settings through every key. Paths resolve under a directory
    that does not exist, so no key finds a file."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return
    with contextlib.suppress(ConfigError):
        from_settings(parse_settings(text, "fuzz.cfg"), "/nonexistent/fuzz.cfg")


# -- the JSON form of a domain's configuration ---------------------------------------------


def configdict(data: bytes) -> None:
    """The bytes as one control-protocol line (ipc.decode: a JSON object, or ValueError),
    then as a DomainConfig's dict. Accepted, it must survive its own round trip: what
    to_dict writes (into Spawn, domains.json, a save image), from_dict reads back equal."""
    try:
        obj = ipc.decode(data)
    except ValueError:
        return
    try:
        cfg = DomainConfig.from_dict(obj)
    except ConfigError:
        return
    assert DomainConfig.from_dict(cfg.to_dict()) == cfg


# -- kernel -------------------------------------------------------------------------------

_KERNEL_RAM = 8 << 20
_kernel_memory: GuestMemory | None = None


def kernel(data: bytes) -> None:
    """The bytes as a kernel file, loaded into an 8 MiB guest."""
    global _kernel_memory
    if _kernel_memory is None:
        _kernel_memory = GuestMemory.create(_KERNEL_RAM)
    fd = os.memfd_create("fuzz-kernel", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        with contextlib.suppress(BootImageError):
            load_kernel(_kernel_memory, f"/proc/self/fd/{fd}", cmdline="console=hvc0")
    finally:
        os.close(fd)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "xenstore": xenstore,
    "virtqueue": virtqueue,
    "xlcfg": xlcfg,
    "configdict": configdict,
    "kernel": kernel,
}
# What each target's code documents as its refusal of bad input (caught above).
REFUSALS = {
    "xenstore": "XsError (an error reply), or a broken ring (RingTransport.error)",
    "virtqueue": "DescriptorError (the request answered, or DEVICE_NEEDS_RESET)",
    "xlcfg": "ConfigError (a ValueError naming file, line and key)",
    "configdict": "ValueError from ipc.decode (not a JSON object), ConfigError from from_dict",
    "kernel": "BootImageError (naming the file and the problem)",
}
