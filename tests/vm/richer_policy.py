"""A save stream from stdin to stdout with one CPU feature added to its cpu-policy part,
as a host that has it would have saved it; then whatever follows END, as it comes. Run
between `migrate` and `migrate-receive` (tests/vm/test_cpu_policy.py):

    python richer_policy.py LEAF SUBLEAF REGISTER BIT

The new value has the old one's width, so no record after it moves (a version 2
PAGE_DATA record's pages stay aligned in the stream)."""

from __future__ import annotations

import os
import select
import sys

from xenopus.stream import REC_PART, StreamReader, StreamWriter, decode_state


def add_feature(policy: dict, leaf: int, subleaf: int, reg: int, bit: int) -> None:
    for row in policy["cpuid"]:
        if (int(row[0], 16), row[1]) == (leaf, subleaf):
            row[2 + reg] = f"{int(row[2 + reg], 16) | 1 << bit:#010x}"


def main() -> None:
    leaf, subleaf, reg, bit = (int(a, 0) for a in sys.argv[1:5])
    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(1, "wb", buffering=0)
    writer = StreamWriter(out)
    for record in StreamReader(inp):
        if record.type == REC_PART:
            part = decode_state(record.body())
            assert isinstance(part, dict)
            if part["kind"] == "cpu-policy":
                add_feature(part["state"]["policy"], leaf, subleaf, reg, bit)
            writer.part(part["kind"], part["name"], part["state"])
        else:
            writer.record(record.type, record.body())
    writer.end()
    # The sender's answers after END, until either side goes. The receiver may have
    # refused the stream and gone while the sender's end waits to hear from it: with
    # nothing to read here, only the pipe to the receiver breaking (POLLERR) says so.
    poll = select.poll()
    poll.register(0, select.POLLIN)
    poll.register(1, 0)  # POLLERR and POLLHUP are always reported
    while True:
        for fd, events in poll.poll():
            if fd == 1 or not events & select.POLLIN:
                return
            data = inp.read(4096)
            if not data:
                return
            out.write(data)


if __name__ == "__main__":
    main()
