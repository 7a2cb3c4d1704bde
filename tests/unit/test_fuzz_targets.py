"""The fuzz targets (fuzz/targets.py) as an ordinary, bounded, deterministic test: every
committed corpus input, then a few hundred mutations of them from a fixed seed, so a
regression of anything `make fuzz` once found fails `make test`. A failure here is a
crash: an exception other than the target's documented refusal (fuzz/targets.py REFUSALS)
escaped; reproduce with `.venv/bin/python -m fuzz.run TARGET --repro FILE`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
MUTATIONS = 300


def corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir())]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One of libFuzzer's basic mutations: flip, set interesting bytes, insert, erase,
    duplicate, splice with another input."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[at % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and len(b) >= 8:
            at = min(at, len(b) - 8)
            b[at : at + 8] = rng.choice([b"\xff" * 8, bytes(8), b"\x00\x00\x00\x80" * 2,
                                         rng.randbytes(8)])
        elif op == 2:
            b[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and b:
            del b[at : at + rng.randint(1, 64)]
        elif op == 4 and b:
            n = rng.randint(1, min(64, len(b)))
            b[at:at] = b[:n]
        else:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            b = b[:at] + bytearray(other[cut:])
    return bytes(b)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_without_a_crash(target: str) -> None:
    inputs = corpus(target)
    assert inputs, f"fuzz/corpus/{target} is empty"
    for data in inputs:
        TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mutations_without_a_crash(target: str) -> None:
    rng = random.Random(f"xenopus-fuzz-{target}")
    pool = corpus(target)
    for i in range(MUTATIONS):
        data = mutate(rng, rng.choice(pool), pool)
        try:
            TARGETS[target](data)
        except Exception as e:
            raise AssertionError(f"{target}: mutation {i} ({data[:64]!r}...) raised {e!r}") from e
