"""Helpers shared by the boot-loader tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenopus.boot import BootImageError, load_kernel
from xenopus.memory import GuestMemory


def write(tmp_path: Path, data: bytes, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def refused(mem: GuestMemory, path: Path, *words: str, **kw) -> str:
    """Loading `path` fails with a message naming the file and containing `words`."""
    with pytest.raises(BootImageError) as e:
        load_kernel(mem, path, **kw)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg
    return msg
