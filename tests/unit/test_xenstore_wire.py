"""The XenStore wire format and the guest ring, checked against io/xs_wire.h."""

from __future__ import annotations

import ctypes
import struct

import pytest

from xenopus.xen.xenstore import wire
from xenopus.xen.xenstore.ring import RingTransport
from xenopus.xen.xenstore.server import XenStoreServer
from xenopus.xen.xenstore.store import Store
from xenopus.xen.xenstore.wire import XenstoreDomainInterface as Iface
from xenopus.xen.xenstore.wire import XsError


def test_message_type_numbers_match_xs_wire_h():
    # enum xsd_sockmsg_type, in header order (xen/include/public/io/xs_wire.h).
    expected = {
        "XS_CONTROL": 0, "XS_DIRECTORY": 1, "XS_READ": 2, "XS_GET_PERMS": 3, "XS_WATCH": 4,
        "XS_UNWATCH": 5, "XS_TRANSACTION_START": 6, "XS_TRANSACTION_END": 7,
        "XS_INTRODUCE": 8, "XS_RELEASE": 9, "XS_GET_DOMAIN_PATH": 10, "XS_WRITE": 11,
        "XS_MKDIR": 12, "XS_RM": 13, "XS_SET_PERMS": 14, "XS_WATCH_EVENT": 15,
        "XS_ERROR": 16, "XS_IS_DOMAIN_INTRODUCED": 17, "XS_RESUME": 18,
        "XS_SET_TARGET": 19, "XS_RESET_WATCHES": 21,
        "XS_DIRECTORY_PART": 22, "XS_GET_FEATURE": 23, "XS_SET_FEATURE": 24,
        "XS_GET_QUOTA": 25, "XS_SET_QUOTA": 26, "XS_INVALID": 0xFFFF,
    }
    assert {name: getattr(wire, name) for name in expected} == expected
    assert (wire.XENSTORE_PAYLOAD_MAX, wire.XENSTORE_RING_SIZE) == (4096, 1024)
    assert (wire.XENSTORE_ABS_PATH_MAX, wire.XENSTORE_REL_PATH_MAX) == (3072, 2048)
    assert (wire.XS_WATCH_PATH, wire.XS_WATCH_TOKEN) == (0, 1)
    # xsd_errors[] (current xs_wire.h; EPERM was appended after E2BIG).
    names = {"EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
             "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"}
    assert names == wire.XSD_ERRORS


def test_struct_layouts():
    # struct xsd_sockmsg: four uint32_t; struct xenstore_domain_interface: two
    # 1024-byte rings then uint32_t indexes, features, connection, error.
    assert ctypes.sizeof(wire.XsdSockmsg) == 16
    offsets = {name: getattr(Iface, name).offset for name, *_ in Iface._fields_}
    assert offsets == {"req": 0, "rsp": 1024, "req_cons": 2048, "req_prod": 2052,
                       "rsp_cons": 2056, "rsp_prod": 2060, "server_features": 2064,
                       "connection": 2068, "error": 2072}
    assert (wire.XENSTORE_ERROR_RINGIDX, wire.XENSTORE_ERROR_PROTO) == (2, 3)
    assert wire.XENSTORE_SERVER_FEATURE_ERROR == 2


def test_header_pack_unpack():
    msg = wire.pack(wire.XS_READ, 7, 3, b"/a\0")
    assert msg[:16] == bytes([2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0])
    assert wire.unpack_header(msg) == (2, 7, 3, 3)


def test_error_and_event_messages():
    assert wire.error_reply(9, 1, "ENOENT") == struct.pack("<4I", 16, 9, 1, 7) + b"ENOENT\0"
    assert wire.error_reply(9, 1, "EQUOTA").endswith(b"EINVAL\0")  # not in xsd_errors
    assert wire.watch_event("/a", "tok") == struct.pack("<4I", 15, 0, 0, 7) + b"/a\0tok\0"


def test_parse_request():
    assert wire.parse_request(wire.XS_WRITE, b"/p\0\x00\xffraw") == ("/p", b"\x00\xffraw")
    assert wire.parse_request(wire.XS_SET_PERMS, b"/p\0n0\0r1\0") == ["/p", "n0", "r1"]
    assert wire.parse_request(wire.XS_WATCH, b"/w\0tok\0") == ["/w", "tok"]
    for type_, payload in [(wire.XS_READ, b"/a"), (wire.XS_READ, b"/a\0/b\0"),
                           (wire.XS_WATCH, b"/w\0"), (wire.XS_WRITE, b"nonul"),
                           (wire.XS_SET_PERMS, b"/p\0"), (wire.XS_READ, b"")]:
        with pytest.raises(XsError) as info:
            wire.parse_request(type_, payload)
        assert info.value.name == "EINVAL"


def reply(server: XenStoreServer, conn, type_: int, payload: bytes, req_id: int = 1,
          tx: int = 0) -> tuple[wire.Header, bytes]:
    out = server.dispatch(conn, wire.Header(type_, req_id, tx, len(payload)), payload)
    hdr = wire.unpack_header(out)
    assert hdr.len == len(out) - 16
    return hdr, out[16:]


def test_dispatch_replies():
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    assert reply(server, d0, wire.XS_WRITE, b"/a\0val", req_id=5) == (
        (wire.XS_WRITE, 5, 0, 3), b"OK\0")
    assert reply(server, d0, wire.XS_READ, b"/a\0")[1] == b"val"
    hdr, body = reply(server, d0, wire.XS_READ, b"/missing\0", req_id=6)
    assert (hdr.type, hdr.req_id, body) == (wire.XS_ERROR, 6, b"ENOENT\0")
    assert reply(server, d0, wire.XS_GET_PERMS, b"/a\0")[1] == b"n0\0"
    assert reply(server, d0, wire.XS_DIRECTORY, b"/\0")[1] == b"local\0a\0"
    assert reply(server, d0, wire.XS_GET_DOMAIN_PATH, b"3\0")[1] == b"/local/domain/3\0"
    assert reply(server, d0, wire.XS_IS_DOMAIN_INTRODUCED, b"3\0")[1] == b"F\0"
    assert reply(server, d0, wire.XS_INTRODUCE, b"3\0" b"4660\0" b"1\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_IS_DOMAIN_INTRODUCED, b"3\0")[1] == b"T\0"
    assert reply(server, d0, wire.XS_INTRODUCE, b"x\0" b"1\0" b"1\0")[1] == b"EINVAL\0"
    assert reply(server, d0, 99, b"")[1] == b"ENOSYS\0"
    assert reply(server, d0, 20, b"1\0")[1] == b"ENOSYS\0"  # XS_RESTRICT, gone since 4.9
    assert reply(server, d0, wire.XS_RESET_WATCHES, b"")[1] == b"OK\0"


def test_dispatch_transaction_ids_and_eagain():
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    other = server.store.connect(0, lambda p, t: None)
    tx = int(reply(server, d0, wire.XS_TRANSACTION_START, b"\0")[1].rstrip(b"\0"))
    assert tx != 0
    hdr, body = reply(server, d0, wire.XS_WRITE, b"/t\0in-tx", tx=tx)
    assert (hdr.tx_id, body) == (tx, b"OK\0")
    reply(server, other, wire.XS_WRITE, b"/t\0outside")
    assert reply(server, d0, wire.XS_TRANSACTION_END, b"T\0", tx=tx)[1] == b"EAGAIN\0"
    assert reply(server, d0, wire.XS_TRANSACTION_END, b"X\0", tx=tx)[1] == b"EINVAL\0"


def test_big_directory_is_e2big_and_directory_part_works():
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    for i in range(150):
        server.store.mkdir(d0, f"/big/{i:03d}" + "y" * 40)
    assert reply(server, d0, wire.XS_DIRECTORY, b"/big\0")[1] == b"E2BIG\0"
    hdr, body = reply(server, d0, wire.XS_DIRECTORY_PART, b"/big\0" b"0\0")
    assert hdr.type == wire.XS_DIRECTORY_PART and len(body) <= 4096


# --- the guest ring ------------------------------------------------------------------

def ring_page() -> tuple[bytearray, memoryview]:
    buf = bytearray(4096)
    return buf, memoryview(buf)


def field(buf: bytearray, name: str) -> int:
    return struct.unpack_from("<I", buf, getattr(Iface, name).offset)[0]


def set_field(buf: bytearray, name: str, value: int) -> None:
    struct.pack_into("<I", buf, getattr(Iface, name).offset, value & 0xFFFFFFFF)


def guest_send(buf: bytearray, data: bytes) -> None:
    """What a guest's xenbus does: copy into req at req_prod (wrapping), bump req_prod."""
    prod = field(buf, "req_prod")
    for i, byte in enumerate(data):
        buf[(prod + i) % 1024] = byte
    set_field(buf, "req_prod", prod + len(data))


def guest_recv(buf: bytearray) -> bytes:
    cons, prod = field(buf, "rsp_cons"), field(buf, "rsp_prod")
    data = bytes(buf[1024 + (cons + i) % 1024] for i in range((prod - cons) & 0xFFFFFFFF))
    set_field(buf, "rsp_cons", prod)
    return data


def test_ring_round_trip_with_wrap_and_partial_messages():
    buf, page = ring_page()
    # Start near the end of the ring so messages wrap around index 1024.
    for name in ("req_cons", "req_prod", "rsp_cons", "rsp_prod"):
        set_field(buf, name, 0xFFFFFFF0)  # and the 32-bit indexes wrap too
    ring = RingTransport(page)
    assert field(buf, "server_features") == 3  # bit 0 reconnection, bit 1 error indicator
    msg = wire.pack(wire.XS_READ, 1, 0, b"/local/domain/1/name\0")
    guest_send(buf, msg[:10])
    assert ring.read_messages() == []
    guest_send(buf, msg[10:] + msg)
    assert ring.read_messages() == [msg, msg]
    assert field(buf, "req_cons") == field(buf, "req_prod")
    ring.write(b"r" * 30)
    assert ring.flush()
    assert guest_recv(buf) == b"r" * 30


def test_ring_reconnection_resets_the_ring():
    # xenstore-ring.txt: the guest sets connection = 1; the server drops partial packets,
    # empties both queues, sets connection back to 0 (even on a ring it had broken).
    buf, page = ring_page()
    ring = RingTransport(page)
    msg = wire.pack(wire.XS_READ, 1, 0, b"/a\0")
    guest_send(buf, msg + msg[:7])  # one whole request and part of the next
    assert ring.read_messages() == [msg]
    ring.write(b"unread reply")
    assert ring.flush()
    ring.write(b"still queued")
    assert not ring.reconnect_requested
    set_field(buf, "connection", wire.XENSTORE_RECONNECT)
    set_field(buf, "error", wire.XENSTORE_ERROR_PROTO)
    ring.broken = True
    assert ring.reconnect_requested
    ring.reset()
    assert [field(buf, n) for n in ("req_cons", "req_prod", "rsp_cons", "rsp_prod",
                                    "connection", "error")] == [0] * 6
    assert not ring.broken and ring.pending == 0
    guest_send(buf, msg)  # a whole packet after the reset: the partial one is gone
    assert ring.read_messages() == [msg]


def test_ring_streams_a_message_larger_than_the_ring():
    buf, page = ring_page()
    ring = RingTransport(page)
    msg = wire.pack(wire.XS_WRITE, 1, 0, b"/v\0" + b"x" * 3000)
    got = []
    for off in range(0, len(msg), 1000):
        guest_send(buf, msg[off:off + 1000])
        got += ring.read_messages()
    assert got == [msg] and not ring.broken
    ring.write(b"z" * 2500)  # more than fits: goes out as the guest consumes
    assert ring.flush() and ring.pending == 2500 - 1024
    assert not ring.flush()  # ring full, guest has not read
    out = guest_recv(buf)
    while ring.flush():
        out += guest_recv(buf)
    assert out == b"z" * 2500


def test_ring_corrupt_length_breaks_the_connection(caplog):
    buf, page = ring_page()
    ring = RingTransport(page)
    guest_send(buf, struct.pack("<4I", wire.XS_READ, 1, 0, 4097))
    assert ring.read_messages() == []
    assert ring.broken and field(buf, "error") == wire.XENSTORE_ERROR_PROTO
    guest_send(buf, wire.pack(wire.XS_READ, 2, 0, b"/a\0"))
    assert ring.read_messages() == []  # no longer served
    ring.write(b"late reply")
    assert not ring.flush() and field(buf, "rsp_prod") == 0
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1


def test_ring_overrun_request_indexes():
    buf, page = ring_page()
    ring = RingTransport(page)
    set_field(buf, "req_prod", 1025)  # claims more than a ring's worth
    assert ring.read_messages() == []
    assert ring.broken and field(buf, "error") == wire.XENSTORE_ERROR_RINGIDX
    assert field(buf, "req_cons") == 0


def test_ring_backwards_indexes_are_an_overrun():
    buf, page = ring_page()
    ring = RingTransport(page)
    set_field(buf, "req_cons", 10)  # prod behind cons: (prod - cons) mod 2**32 is huge
    assert ring.read_messages() == [] and ring.broken


def test_ring_overrun_response_indexes():
    buf, page = ring_page()
    ring = RingTransport(page)
    set_field(buf, "rsp_cons", 0x80000000)  # guest scribbled over its own consumer index
    ring.write(b"reply")
    assert not ring.flush()
    assert ring.broken and field(buf, "error") == wire.XENSTORE_ERROR_RINGIDX


def test_ring_guest_that_never_reads_is_cut_off():
    buf, page = ring_page()
    ring = RingTransport(page, max_pending=4096)
    for _ in range(6):  # 1024 bytes fit in the ring, 4096 more may wait
        ring.write(b"e" * 1000)
        ring.flush()
    assert ring.broken and field(buf, "error") == wire.XENSTORE_ERROR_COMM


def test_ring_to_store_end_to_end():
    """Guest ring -> dispatch as domain 1 -> reply back on the ring."""
    buf, page = ring_page()
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    server.store.mkdir(d0, "/local/domain/1")
    server.store.set_perms(d0, "/local/domain/1", ["n1"])
    d1 = server.store.connect(1, lambda p, t: None)
    ring = RingTransport(page)
    guest_send(buf, wire.pack(wire.XS_WRITE, 1, 0, b"data/x\0hello"))
    guest_send(buf, wire.pack(wire.XS_READ, 2, 0, b"/local/domain/0\0"))
    for raw in ring.read_messages():
        ring.write(server.dispatch(d1, wire.unpack_header(raw), raw[16:]))
    ring.flush()
    out = guest_recv(buf)
    assert out == (wire.pack(wire.XS_WRITE, 1, 0, b"OK\0")
                   + wire.pack(wire.XS_ERROR, 2, 0, b"EACCES\0"))
    assert server.store.read(d0, "/local/domain/1/data/x") == b"hello"


def test_quota_wire_ops_per_xenstore_txt():
    # GET_QUOTA [[<domid>|]<quota>|] / SET_QUOTA [<domid>|]<quota>|<value>| (dom0 only):
    # no argument lists the names blank-separated; a domain starts from the global values.
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    names = reply(server, d0, wire.XS_GET_QUOTA, b"")[1]
    assert names.rstrip(b"\0").split(b" ")[:3] == [b"nodes", b"watches", b"outstanding"]
    assert reply(server, d0, wire.XS_GET_QUOTA, b"nodes\0")[1] == b"1000\0"
    assert reply(server, d0, wire.XS_SET_QUOTA, b"nodes\0" b"2000\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_GET_QUOTA, b"nodes\0")[1] == b"2000\0"
    assert reply(server, d0, wire.XS_GET_QUOTA, b"5\0nodes\0")[1] == b"ENOENT\0"
    reply(server, d0, wire.XS_INTRODUCE, b"5\0" b"1\0" b"1\0")
    assert reply(server, d0, wire.XS_GET_QUOTA, b"5\0nodes\0")[1] == b"2000\0"
    assert reply(server, d0, wire.XS_SET_QUOTA, b"5\0watches\0" b"3\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_GET_QUOTA, b"5\0watches\0")[1] == b"3\0"
    assert reply(server, d0, wire.XS_GET_QUOTA, b"watches\0")[1] == b"128\0"  # global kept
    assert reply(server, d0, wire.XS_GET_QUOTA, b"bogus\0")[1] == b"EINVAL\0"
    assert reply(server, d0, wire.XS_SET_QUOTA, b"nodes\0" b"many\0")[1] == b"EINVAL\0"
    # The domain's own value is the one enforced: its fourth watch is refused.
    d5 = server.store.connect(5, lambda p, t: None)
    for i in range(3):
        assert reply(server, d5, wire.XS_WATCH, f"/w{i}\0t\0".encode())[1] == b"OK\0"
    assert reply(server, d5, wire.XS_WATCH, b"/w3\0t\0")[1] == b"ENOSPC\0"
    assert reply(server, d5, wire.XS_GET_QUOTA, b"nodes\0")[1] == b"EACCES\0"
    assert reply(server, d5, wire.XS_SET_QUOTA, b"nodes\0" b"1\0")[1] == b"EACCES\0"


def test_feature_wire_ops_per_xenstore_txt():
    # GET_FEATURE [<domid>|] / SET_FEATURE <domid>|<value>|: the ring features of
    # docs/misc/xenstore-ring.txt (bit 0 reconnection, bit 1 error indicator); SET_FEATURE
    # only before INTRODUCE (EBUSY after) and only bits served (EINVAL).
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    both = str(wire.XENSTORE_SERVER_FEATURE_RECONNECTION | wire.XENSTORE_SERVER_FEATURE_ERROR)
    assert reply(server, d0, wire.XS_GET_FEATURE, b"")[1] == both.encode() + b"\0"
    assert reply(server, d0, wire.XS_SET_FEATURE, b"6\0" b"4\0")[1] == b"EINVAL\0"
    assert reply(server, d0, wire.XS_SET_FEATURE, b"6\0" b"2\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_GET_FEATURE, b"6\0")[1] == b"2\0"
    reply(server, d0, wire.XS_INTRODUCE, b"6\0" b"1\0" b"1\0")
    assert reply(server, d0, wire.XS_SET_FEATURE, b"6\0" b"3\0")[1] == b"EBUSY\0"
    d6 = server.store.connect(6, lambda p, t: None)
    assert reply(server, d6, wire.XS_GET_FEATURE, b"")[1] == b"2\0"  # its own
    assert reply(server, d6, wire.XS_GET_FEATURE, b"0\0")[1] == b"EACCES\0"


def test_control_commands_dom0_only():
    server = XenStoreServer(Store())
    d0 = server.store.connect(0, lambda p, t: None)
    help_text = reply(server, d0, wire.XS_CONTROL, b"help\0")[1].decode()
    assert help_text.splitlines()[0].split() == ["check"]
    assert reply(server, d0, wire.XS_CONTROL, b"check\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_CONTROL, b"print\0hi\0")[1] == b"OK\0"
    assert reply(server, d0, wire.XS_CONTROL, b"quota\0set\0nodes\0" b"7\0")[1] == b"OK\0"
    assert "nodes            :        7 Nodes per domain" in reply(
        server, d0, wire.XS_CONTROL, b"quota\0")[1].decode()
    assert reply(server, d0, wire.XS_CONTROL, b"quota\0set\0nodes\0" b"0\0")[1] == b"EINVAL\0"
    assert reply(server, d0, wire.XS_CONTROL, b"live-update\0")[1] == b"EINVAL\0"
    d3 = server.store.connect(3, lambda p, t: None)
    assert reply(server, d3, wire.XS_CONTROL, b"help\0")[1] == b"EACCES\0"
