"""The daemon's side of a domain process's event stream: whatever a (possibly
compromised) domain process sends, the daemon keeps reading and retires the domain when
the stream ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

from xenopus.control import Reply
from xenopus.domain.config import DomainConfig
from xenopus.toolstack.daemon import Daemon, DomainRecord


def test_malformed_events_do_not_stop_the_reader(tmp_path: Path) -> None:
    async def scenario() -> DomainRecord:
        daemon = Daemon(tmp_path)
        rec = DomainRecord(1, DomainConfig("hostile", "/nonexistent/kernel"))
        daemon.domains[rec.domid] = rec
        fut = asyncio.get_running_loop().create_future()
        rec.pending[7] = fut
        rec.state = "dying"  # a destroy in progress: the end is a clean one
        rec.exited.set()
        reader = asyncio.StreamReader()
        for line in (
            b"not json\n",
            b"[1, 2, 3]\n",  # JSON, not an object
            b'{"seq": [1], "ok": true}\n',  # an unhashable seq
            b'{"event": "state"}\n',  # no state
            b'{"event": "state", "state": 5}\n',
            b'{"seq": 7, "ok": true}\n',  # and a good reply still gets through
        ):
            reader.feed_data(line)
        reader.feed_eof()
        await asyncio.wait_for(daemon._domain_events(rec, reader), 5)
        assert fut.done() and fut.result() == Reply(ok=True, seq=7)
        assert rec.domid not in daemon.domains
        return rec

    rec = asyncio.run(scenario())
    assert rec.gone.is_set() and rec.state == "dying"
