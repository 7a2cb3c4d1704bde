"""The CLI's relay of a live migration stream (toolstack/transfer.py, StreamRelay): it
passes the stream through unchanged, stops after END (the pipe carries more after it),
counts pages and follows the ROUND hints for the progress bar, and reports a receiver
that went away."""

from __future__ import annotations

import contextlib
import io
import os
import threading

from xenopus import stream
from xenopus.toolstack.transfer import StreamRelay, receiver_command


def _stream() -> bytes:
    out = io.BytesIO()
    w = stream.StreamWriter(out)
    w.domain_config({"name": "x"})
    w.round(1, 3)
    w.pages([1, 2, 9], [bytes([1]) * 8192, bytes([2]) * 4096])
    w.round(2, 1)
    w.pages([2], [bytes([3]) * 4096])
    w.round(0, 1)
    w.pages([5], [bytes([4]) * 4096])
    w.part("vcpu", "vcpu0", {"version": 1})
    w.end()
    return out.getvalue()


def _feed(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fd, "wb") as f, contextlib.suppress(BrokenPipeError):
            f.write(data)

    t = threading.Thread(target=write)
    t.start()
    return t


def test_the_relay_passes_the_stream_unchanged_and_counts_what_it_carries() -> None:
    data = _stream()
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    writer = _feed(src_w, data + b"go\n")  # what follows END is not the relay's
    relay = StreamRelay(src_r, dst_w)
    relay.start()
    got = b""
    while len(got) < len(data):
        got += os.read(dst_r, 1 << 20)
    relay.join(30)
    writer.join(30)
    os.close(dst_w)
    assert os.read(dst_r, 10) == b""  # nothing past END went through
    os.close(dst_r)
    assert got == data
    assert relay.error is None
    assert relay.octets == len(data)
    octets, shown = relay.measure()
    assert octets == len(data)
    assert shown["pages"] == 5
    assert shown["round"] == "stop-and-copy"
    # and the receiver reads what it got as the stream it is
    assert [r.type for r in stream.StreamReader(io.BytesIO(got))].count(stream.REC_PAGE_DATA) == 3


def test_a_receiver_that_went_away_is_reported_and_the_sender_sees_it() -> None:
    out = io.BytesIO()
    w = stream.StreamWriter(out)
    w.pages(list(range(300)), [bytes([7]) * 300 * 4096])  # more than a pipe buffers
    w.end()
    data = out.getvalue()
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.close(dst_r)  # the receiver died
    relay = StreamRelay(src_r, dst_w)
    relay.start()
    with open(src_w, "wb") as f:
        try:
            f.write(data)
            f.flush()
            failed = False
        except BrokenPipeError:  # the relay closed its end: the sender's write fails
            failed = True
    relay.join(30)
    os.close(dst_w)
    assert isinstance(relay.error, BrokenPipeError)
    assert failed  # as a domain process's save fails, and the source resumes


def test_a_stream_that_ends_early_is_reported() -> None:
    data = _stream()
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    writer = _feed(src_w, data[: len(data) // 2])  # fits in the pipes' buffers
    relay = StreamRelay(src_r, dst_w)
    relay.start()
    relay.join(30)
    writer.join(30)
    assert data.startswith(os.read(dst_r, 1 << 20))
    os.close(dst_r)
    os.close(dst_w)
    assert isinstance(relay.error, EOFError)


def test_the_receiver_s_command_is_xl_s_rune() -> None:
    """xl_migrate.c main_migrate: `exec SSHCMD HOST xl migrate-receive [-e] [-d] [-p]`,
    HOST quoted for sh; with -s "" HOST alone is the command."""
    from types import SimpleNamespace

    def rune(**kw: object) -> str:
        args = {"ssh": None, "host": "far", "debug": False, "no_wait": False, "paused": False}
        return receiver_command(SimpleNamespace(**{**args, **kw}))

    assert rune() == "exec ssh far xenopus migrate-receive"
    assert rune(ssh="ssh -p 2222", host="a b") == "exec ssh -p 2222 'a b' xenopus migrate-receive"
    assert rune(no_wait=True, debug=True, paused=True) == \
        "exec ssh far xenopus migrate-receive -e -d -p"
    assert rune(ssh="", host="nc far 9000") == "nc far 9000"
