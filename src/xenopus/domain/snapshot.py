"""A guest's whole state into a save stream and back (the format: docs/snapshot-stream.md).

The stream holds, in this order: the memory part's layout and then every non-zero page
(PAGE_DATA), then a PART record per inventory part in build order, with the VM clock
last. Restoring goes in the same order into a guest built from the same config and not
started: memory before anything that reads it (a virtio transport's restore resumes its
queues, a kvmclock MSR makes KVM write guest memory), vCPUs before the in-kernel irqchip
is told where its lines are, and KVM_SET_CLOCK after every vCPU (api.rst, KVM_SET_CLOCK).

A restore that fails raises; the caller then closes the half-restored guest, so no
domain is left half-built. The Xen state and PV backends cannot be saved yet: a guest
with them is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from xenopus.domain.inventory import Inventory, MemoryPart, NotSaveable, Part, Pausable
from xenopus.kvm import KvmError
from xenopus.memory import image
from xenopus.stream import (
    REC_PAGE_DATA,
    REC_PART,
    StateError,
    StreamReader,
    StreamRecordError,
    StreamWriter,
)

# Restored after everything else: KVM_SET_CLOCK makes KVM refresh every vCPU's kvmclock
# page from the VM clock, which must by then have its final MSRs.
LAST_KINDS = ("clock",)
UNSAVEABLE_KINDS = ("xen",)


@dataclass
class Stats:
    """What a save or restore moved: records, pages, octets and seconds."""

    parts: int = 0
    pages: int = 0
    octets: int = 0
    seconds: float = 0.0


def _ordered(inventory: Inventory) -> list[Part]:
    parts = inventory.parts
    memory = [p for p in parts if isinstance(p, MemoryPart)]
    last = [p for p in parts if p.kind in LAST_KINDS]
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


def save(inventory: Inventory, out: BinaryIO) -> Stats:
    """Write every part's state to `out` (any binary file; no seeking). The caller has
    paused the machine (`Machine.pause`) or not started it; device workers are paused here
    and resumed before returning, so the guest can go on afterwards (`save -c`)."""
    started = time.monotonic()
    refused = [p.name for p in inventory.parts if p.kind in UNSAVEABLE_KINDS]
    if refused:
        raise NotSaveable(f"the Xen state ({', '.join(refused)}) cannot be saved yet")
    stats = Stats()
    writer = StreamWriter(out)
    with quiesced(inventory):
        for part in _ordered(inventory):
            writer.part(part.kind, part.name, part.save_state())
            stats.parts += 1
            if isinstance(part, MemoryPart):
                stats.pages += image.save_pages(part.memory, writer)
        writer.end()
    stats.octets = writer.offset
    stats.seconds = time.monotonic() - started
    return stats


def restore(inventory: Inventory, inp: BinaryIO) -> Stats:
    """Read a stream `save` wrote into the parts of a guest built from the same config,
    not started. Every part of the guest must get a state and every state a part; a part
    refusing its state, a damaged stream or a missing part raises (`StreamError`,
    `StateError`, `KvmError`) naming it. The caller then starts the machine without a
    boot state."""
    started = time.monotonic()
    stats = Stats()
    reader = StreamReader(inp, known={REC_PART, REC_PAGE_DATA})
    targets = {(p.kind, p.name): p for p in inventory.parts}
    done: set[tuple[str, str]] = set()
    memory: MemoryPart | None = None
    for record in reader:
        if record.type == REC_PAGE_DATA:
            if memory is None:
                raise record.error(StreamRecordError, "PAGE_DATA before the memory part")
            stats.pages += image.restore_pages(memory.memory, record)
            continue
        kind, name, state = record.part()
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
    missing = [f"{k} {n}" for k, n in targets if (k, n) not in done]
    if missing:
        raise StateError(f"the stream has no state for {', '.join(missing)}")
    stats.octets = reader.offset
    stats.seconds = time.monotonic() - started
    return stats
