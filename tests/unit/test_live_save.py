"""A live save's dirty tracking without checksums: GuestMemory's write log (the pages this
process writes into guest RAM, which KVM's dirty log never sees), parts that report pages
other domains may write, and records going out in one writev(2) each."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field

import pytest

from xenopus.domain import snapshot
from xenopus.domain.inventory import Inventory, MemoryPart
from xenopus.memory.guest import PAGE_SIZE, GuestMemory, MemoryRegion
from xenopus.stream import StreamWriter


@pytest.fixture
def mems():
    a, b = GuestMemory.create(8 << 20), GuestMemory.create(8 << 20)
    yield a, b
    a.close()
    b.close()


def test_the_write_log_holds_what_this_process_wrote_and_only_while_on(mems) -> None:
    mem, _ = mems
    mem.write(0x1000, b"before")  # the log is off: nothing kept
    mem.log_writes(True)
    assert mem.take_dirty() == []
    mem.write(0x2FFE, b"abcd")  # straddles two pages
    mem.write_u32(0x5000, 7)
    mem.fill(0x7000, 10)
    mem.view(0x9000, 1)[0] = 1  # a view may be written through
    mem.discard(0xB000, PAGE_SIZE)  # reads as zeros now: must go again
    mem.mark_dirty(0xD000, 2 * PAGE_SIZE)  # a device writing through a view of its own
    assert mem.read(0x20000, 16) == bytes(16) and mem.read_u64(0x21000) == 0  # reads: not
    assert mem.take_dirty() == [0x2000, 0x3000, 0x5000, 0x7000, 0x9000, 0xB000, 0xD000,
                                0xE000]
    assert mem.take_dirty() == []  # taken: the log starts again
    mem.log_writes(False)
    mem.write(0x1000, b"after")
    assert mem.take_dirty() == []


class _SwappedUnderfoot(set):
    """A write log whose first update runs only after another thread's `take_dirty` has
    taken it (the interleaving a GIL switch can make between mark_dirty's load of the log
    and its update)."""

    def __init__(self, mem: GuestMemory):
        super().__init__()
        self.mem, self.taken = mem, None

    def update(self, *pages) -> None:
        if self.taken is None:
            self.taken = self.mem.take_dirty()
        super().update(*pages)


def test_a_write_logged_while_the_log_is_taken_is_in_the_next_answer(mems) -> None:
    mem, _ = mems
    mem.log_writes(True)
    log = mem._written = _SwappedUnderfoot(mem)
    mem.write(0x6000, b"x")
    assert log.taken == []  # the pass read the log before the write was logged
    assert mem.take_dirty() == [0x6000]  # so the next pass has it


def test_a_kept_view_is_reported_every_time_while_the_log_is_on(mems) -> None:
    mem, _ = mems
    ring = mem.view(0x4000, PAGE_SIZE, kept=True)  # a PV ring, written at any time
    mem.log_writes(True)
    ring[0] = 1
    assert mem.take_dirty() == [0x4000]
    assert mem.take_dirty() == [0x4000]  # whether or not written since: we cannot know
    mem.log_writes(False)
    assert mem.take_dirty() == []


@dataclass
class FakeLive:
    """A machine whose guest writes nothing (KVM's log stays empty); `during` runs at each
    dirty-log harvest, as a device or another domain writing while the save goes on."""

    during: list = field(default_factory=list)
    paused: bool = False

    def log_dirty(self, on: bool) -> None:
        pass

    def dirty_pages(self) -> list[int]:
        if self.during:
            self.during.pop(0)()
        return []

    def pause(self) -> None:
        self.paused = True


@dataclass
class Granting:
    """A part whose pages another domain may write (as XenPart's granted pages)."""

    pages: list[int]
    kind: str = "granting"
    name: str = "g"

    def describe(self) -> dict[str, object]:
        return {}

    def save_state(self) -> object:
        return {}

    def restore_state(self, state: object) -> None:
        pass

    def foreign_written(self) -> list[int]:
        return self.pages


def _live_save(source: GuestMemory, target: GuestMemory, live: FakeLive,
               *extra: object) -> snapshot.Stats:
    out = io.BytesIO()
    stats = snapshot.save(Inventory([MemoryPart(source), *extra]), out, live=live)
    assert live.paused
    snapshot.restore(Inventory([MemoryPart(target), *extra]), io.BytesIO(out.getvalue()))
    return stats


def test_pages_a_device_writes_during_a_live_save_reach_the_target(mems) -> None:
    source, target = mems
    source.write(0x10000, b"sent in round one")
    # After round one: a device writes a page already sent, and one never sent.
    live = FakeLive(during=[lambda: (source.write(0x10000, b"written again"),
                                     source.write_u32(0x30000, 0xFEED))])
    stats = _live_save(source, target, live)
    assert stats.last_round == 2
    assert target.read(0, 8 << 20) == source.read(0, 8 << 20)


def test_pages_another_process_writes_go_again_when_granted(mems) -> None:
    source, target = mems
    source.write(0x40000, b"granted page, first contents")

    def foreign() -> None:  # another domain's process: through its own mapping, no log
        source.regions[0].map[0x40000 : 0x40005] = b"peer!"

    stats = _live_save(source, target, FakeLive(during=[foreign]), Granting([0x40000]))
    assert stats.last_round >= 1
    assert target.read(0x40000, 28) == b"peer!ed page, first contents"


EXTRA = 0x1_0000_0000  # a page outside RAM, as Xen's p2m adds for shared_info


@dataclass
class AddsExtra:
    """A part whose restore makes a page outside RAM addressable (the xen part's p2m)."""

    memory: GuestMemory
    kind: str = "extra"
    name: str = "p2m"

    def describe(self) -> dict[str, object]:
        return {}

    def save_state(self) -> object:
        return {}

    def restore_state(self, state: object) -> None:
        self.memory.attach(MemoryRegion.create(EXTRA, PAGE_SIZE))


def test_a_page_outside_ram_written_during_a_live_save_goes_after_its_part(mems) -> None:
    source, target = mems
    source.attach(MemoryRegion.create(EXTRA, PAGE_SIZE))
    # Written while the log is on (Xen setting an event bit in shared_info up there):
    # not in a round, where the target could not address it yet.
    live = FakeLive(during=[lambda: source.write(EXTRA, b"shared info")])
    out = io.BytesIO()
    snapshot.save(Inventory([MemoryPart(source), AddsExtra(source)]), out, live=live)
    snapshot.restore(Inventory([MemoryPart(target), AddsExtra(target)]),
                     io.BytesIO(out.getvalue()))
    assert target.read(EXTRA, 11) == b"shared info"


def test_a_record_goes_out_in_one_writev_with_the_same_octets(mems, monkeypatch) -> None:
    mem, _ = mems
    for i in range(8):
        mem.write_u64(i * 2 * PAGE_SIZE, i + 1)  # eight runs of one page
    frames = list(range(0, 16, 2))
    views = [mem.view(f * PAGE_SIZE, PAGE_SIZE) for f in frames]
    plain = io.BytesIO()
    StreamWriter(plain).pages(frames, views)
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    calls: list[int] = []
    real = os.writev

    def counting(fd: int, buffers: list) -> int:
        calls.append(len(buffers))
        return real(fd, buffers)

    with open(w, "wb", buffering=0) as out:
        writer = StreamWriter(out)
        monkeypatch.setattr(os, "writev", counting)
        writer.pages(frames, views)
        monkeypatch.undo()
    reader.join()
    os.close(r)
    assert bytes(got) == plain.getvalue()
    assert calls == [12]  # header, page head, frames, padding and eight pages: one call
