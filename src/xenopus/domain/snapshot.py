"""A guest's whole state into a save stream and back (the format: docs/snapshot-stream.md).

The stream holds, in this order: the CPU policy (a host that cannot offer it refuses the
stream before any RAM), the memory part's layout and then every non-zero page
(PAGE_DATA), then a PART record per inventory part in build order, with the VM clock
and the Xen state last. Restoring goes in the same order into a guest built from the same config and not
started: memory before anything that reads it (a virtio transport's restore resumes its
queues, a kvmclock MSR makes KVM write guest memory), vCPUs before the in-kernel irqchip
is told where its lines are, and KVM_SET_CLOCK after every vCPU (api.rst, KVM_SET_CLOCK),
the Xen state after the clock; then the toolstack's own records (the XenStore subtree),
which the restore hands back to the caller.

A restore that fails raises; the caller then closes the half-restored guest, so no
domain is left half-built. Xen PV disks and NICs save their back rings' state and
reconnect to the same rings once the domain's XenStore subtree is back, and so do PV
channels.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from xenopus.domain.inventory import (
    ForeignWritten,
    Inventory,
    MemoryPart,
    NotSaveable,
    Part,
    Pausable,
    PvDevicePart,
)
from xenopus.kvm import KvmError
from xenopus.memory import image
from xenopus.stream import (
    REC_DOMAIN_CONFIG,
    REC_PAGE_DATA,
    REC_PART,
    REC_ROUND,
    StateError,
    StreamReader,
    StreamRecordError,
    StreamWriter,
)

# Restored after everything else: KVM_SET_CLOCK makes KVM refresh every vCPU's kvmclock
# page from the VM clock, which must by then have its final MSRs; and Xen system time is
# that clock, so the Xen state (its timers' deadlines) follows it.
LAST_KINDS = ("clock", "xen")
# Saved and restored before everything, RAM included: the CPU policy, which a host that
# cannot offer it refuses before the pages are sent (docs/snapshot-stream.md).
FIRST_KINDS = ("cpu-policy",)
# Parts an older image lacks because they did not exist when it was saved: the restored
# guest keeps what its config gives it on this host (its CPU policy, computed here).
OPTIONAL_KINDS = ("cpu-policy",)


# Live pre-copy stops iterating at this many dirty pages (copied while stopped), or after
# this many rounds: a guest that dirties memory faster than it is sent never converges.
STOP_AND_COPY_PAGES = 256
MAX_ROUNDS = 30
# PART records of this kind hold state the toolstack keeps outside the domain process
# (name "xenstore": the domain's XenStore subtree and watches, from the daemon).
TOOLSTACK = "toolstack"


class LiveMachine(Protocol):
    """What a live save needs of the running machine (`Machine`)."""

    def log_dirty(self, on: bool) -> None: ...

    def dirty_pages(self) -> list[int]: ...

    def pause(self) -> None: ...


@dataclass
class Stats:
    """What a save or restore moved: records, pages (pages sent twice count twice),
    octets and seconds; for a live save, the pre-copy rounds, the pages of the
    stop-and-copy round and the time the guest was stopped."""

    parts: int = 0
    pages: int = 0
    octets: int = 0
    seconds: float = 0.0
    rounds: int = 0
    last_round: int = 0
    downtime: float = 0.0
    # When a live save stopped the guest (CLOCK_MONOTONIC, the same in every process of
    # this host): a migration's CLI measures from it until the guest runs over there.
    stopped_at: float = 0.0
    toolstack: dict[str, object] = field(default_factory=dict)  # restored: for the daemon


def _ordered(inventory: Inventory) -> list[Part]:
    parts = inventory.parts
    memory = [p for p in parts if isinstance(p, MemoryPart)]
    last = sorted((p for p in parts if p.kind in LAST_KINDS),
                  key=lambda p: LAST_KINDS.index(p.kind))
    rest = [p for p in parts if p not in memory and p not in last]
    return memory + rest + last


@contextlib.contextmanager
def quiesced(inventory: Inventory) -> Iterator[None]:
    """Every part that works on its own paused for the duration (a virtio device's worker
    between two requests), then resumed in reverse order."""
    paused: list[Pausable] = []
    try:
        for part in inventory.parts:
            if isinstance(part, Pausable):
                part.pause()
                paused.append(part)
        yield
    finally:
        for part in reversed(paused):
            part.resume()


def save(inventory: Inventory, out: BinaryIO, config: object = None, *,
         live: LiveMachine | None = None, toolstack: Mapping[str, object] | None = None
         ) -> Stats:
    """Write every part's state to `out` (any binary file; no seeking), after `config`
    (the domain's `DomainConfig.to_dict()`, the DOMAIN_CONFIG record a save image starts
    with) when given. The caller has paused the machine (`Machine.pause`) or not started
    it; device workers are paused here and resumed before returning, so the guest can go
    on afterwards (`save -c`). With `live` (the running machine), RAM is pre-copied while
    the guest runs (KVM's dirty log and the memory's write log say what to send again),
    then the machine is paused for the rest.
    `toolstack` is state the domain's toolstack keeps outside this process (the daemon's
    XenStore subtree), written as PART records of kind TOOLSTACK after the guest's."""
    started = time.monotonic()
    refused = [p.name for p in inventory.parts
               if isinstance(p, PvDevicePart) and not p.saveable]
    if refused:  # before anything is written
        raise NotSaveable(f"Xen PV devices ({', '.join(refused)}) cannot be saved yet")
    stats = Stats()
    writer = StreamWriter(out)
    if config is not None:
        writer.domain_config(config)
    parts = _ordered(inventory)
    for part in (p for p in parts if p.kind in FIRST_KINDS):
        writer.part(part.kind, part.name, part.save_state())
        stats.parts += 1
    parts = [p for p in parts if p.kind not in FIRST_KINDS]
    memory = parts[0] if parts and isinstance(parts[0], MemoryPart) else None
    pending: list[int] = []
    if live is not None and memory is not None:
        writer.part(memory.kind, memory.name, memory.save_state())
        stats.parts += 1
        parts = parts[1:]
        # Two logs: KVM's of the guest's writes, and GuestMemory's of this process's
        # (devices, Xen), which KVM's does not see.
        live.log_dirty(True)
        memory.memory.log_writes(True)
    try:
        if live is not None and memory is not None:
            pending = _precopy(memory, writer, live, stats)
        stopped = stats.stopped_at = time.monotonic()  # the pause is part of the downtime
        if live is not None and memory is not None:
            live.pause()
        with quiesced(inventory):
            if live is not None and memory is not None:
                # Stop-and-copy: what the guest and this process wrote since the last
                # round, and what other domains may have written (pages granted to them).
                final = set(pending) | set(live.dirty_pages())
                final |= set(_ram(memory, memory.memory.take_dirty()))
                for part in inventory.parts:
                    if isinstance(part, ForeignWritten):
                        final |= set(_ram(memory, part.foreign_written()))
                writer.round(0, len(final))
                stats.pages += image.send_pages(memory.memory, writer, sorted(final))
                stats.last_round = len(final)
            for part in parts:
                writer.part(part.kind, part.name, part.save_state())
                stats.parts += 1
                if isinstance(part, MemoryPart):
                    stats.pages += image.save_pages(part.memory, writer)
            if memory is not None and memory.memory.extra:
                # Pages outside RAM (Xen's p2m): after the `xen` part, whose restore
                # makes them addressable again.
                extra = image.nonzero_pages(memory.memory, extra=True)
                stats.pages += image.send_pages(memory.memory, writer, extra)
            for name, state in (toolstack or {}).items():
                writer.part(TOOLSTACK, name, state)
            writer.end()
        stats.downtime = time.monotonic() - stopped
    finally:
        if live is not None and memory is not None:
            live.log_dirty(False)
            memory.memory.log_writes(False)
    stats.octets = writer.offset
    stats.seconds = time.monotonic() - started
    return stats


def _precopy(memory: MemoryPart, writer: StreamWriter, live: LiveMachine,
             stats: Stats) -> list[int]:
    """Live pre-copy: every page once, then round after round the pages written meanwhile
    (by the guest: KVM's dirty log; by this process: the memory's write log), while their
    number keeps shrinking and is worth another round; returns the pages written since the
    last round sent, for the stop-and-copy."""
    pages = image.nonzero_pages(memory.memory)
    writer.round(1, len(pages))
    stats.pages += image.send_pages(memory.memory, writer, pages, live=True)
    stats.rounds = 1
    dirty = _written(memory, live)
    while len(dirty) > STOP_AND_COPY_PAGES and stats.rounds < MAX_ROUNDS:
        writer.round(stats.rounds + 1, len(dirty))
        stats.pages += image.send_pages(memory.memory, writer, dirty, live=True)
        stats.rounds += 1
        again = _written(memory, live)
        if len(again) >= len(dirty):  # no longer shrinking: stop and copy the rest
            return again
        dirty = again
    return dirty


def _written(memory: MemoryPart, live: LiveMachine) -> list[int]:
    """The pages of RAM written since the last call, by the guest or by this process, in
    order."""
    return sorted(set(live.dirty_pages()) | set(_ram(memory, memory.memory.take_dirty())))


def _ram(memory: MemoryPart, pages: list[int]) -> list[int]:
    """The RAM pages of `pages`: a page outside RAM (Xen's p2m) cannot be restored before
    the `xen` part that makes it addressable; all of those go, once, after that part."""
    return [p for p in pages if memory.memory.is_ram(p, image.PAGE_SIZE)]


def restore(inventory: Inventory, inp: BinaryIO | StreamReader, *,
            clone_fd: int | None = None, verified: bool = False) -> Stats:
    """Read a stream `save` wrote (from its start, or from a reader that has taken its
    DOMAIN_CONFIG: `stream.read_domain_config`) into the parts of a guest built from that
    config, not started. With `clone_fd` (the image file the stream is read from, a
    regular file), RAM is not read but mapped copy-on-write from it (a clone); `verified`:
    its page CRCs were checked before (by the toolstack, once for all clones). Every
    part of the guest must get a state and every state a part; a part refusing its
    state, a damaged stream or a missing part raises (`StreamError`, `StateError`,
    `KvmError`) naming it. The caller then starts the machine without a
    boot state."""
    started = time.monotonic()
    stats = Stats()
    reader = (inp if isinstance(inp, StreamReader)
              else StreamReader(inp, known={REC_DOMAIN_CONFIG, REC_PART, REC_PAGE_DATA}))
    targets = {(p.kind, p.name): p for p in inventory.parts}
    done: set[tuple[str, str]] = set()
    memory: MemoryPart | None = None
    for record in reader:
        if record.type == REC_DOMAIN_CONFIG:
            if record.index:
                raise record.error(StreamRecordError, "DOMAIN_CONFIG after other records")
            record.finish()  # the guest was built from it (or from a config given instead)
            continue
        if record.type == REC_ROUND:  # a progress hint
            record.finish()
            continue
        if record.type == REC_PAGE_DATA:
            if memory is None:
                raise record.error(StreamRecordError, "PAGE_DATA before the memory part")
            if clone_fd is None:
                stats.pages += image.restore_pages(memory.memory, record)
            else:
                stats.pages += image.map_pages(memory.memory, record, clone_fd,
                                               verified=verified)
            continue
        kind, name, state = record.part()
        if kind == TOOLSTACK:
            stats.toolstack[name] = state  # the daemon's to restore
            continue
        part = targets.get((kind, name))
        if part is None:
            raise record.error(StreamRecordError, f"this guest has no {kind} part {name!r}")
        if (kind, name) in done:
            raise record.error(StreamRecordError, f"{kind} part {name!r} saved twice")
        try:
            part.restore_state(state)
        except (ValueError, KvmError, KeyError, TypeError) as e:  # incl. StateError; a
            # field missing or mistyped, or KVM refusing a value
            raise record.error(StreamRecordError,
                               f"{kind} part {name!r} refused its state: {e!r}") from None
        done.add((kind, name))
        stats.parts += 1
        if isinstance(part, MemoryPart):
            memory = part
            if clone_fd is not None:
                image.map_clone(part.memory)
    missing = [f"{k} {n}" for k, n in targets if (k, n) not in done and k not in OPTIONAL_KINDS]
    if missing:
        raise StateError(f"the stream has no state for {', '.join(missing)}")
    stats.octets = reader.offset
    stats.seconds = time.monotonic() - started
    return stats
