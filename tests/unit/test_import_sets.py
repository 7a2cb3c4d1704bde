"""What the processes every create pays for do NOT import: the CLI (started for every
command, on the path of every `create -c`) and a spare domain process (one exec'd per
domain: its imports are the CPU a create/destroy loop pays per domain, and most of an
idle domain's memory). Module sets, not timings: each module named here cost measured
milliseconds (README, Security)."""

from __future__ import annotations

import subprocess
import sys

# Each costs every CLI command milliseconds of imports: `socket` brings `enum` and
# `selectors`, `json` brings `re` and compiles its expressions; `contextlib` brings
# `functools`.
CLI_NEVER = {"socket", "json", "re", "enum", "selectors", "typing", "asyncio", "dataclasses",
             "subprocess", "pathlib", "argparse", "platform", "contextlib", "functools"}


def modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter (as the CLI's: site included) after `code`."""
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return set(out.splitlines()[-1].split())


def test_a_cli_create_imports_none_of_the_expensive_modules() -> None:
    # What `xenopus create -c` runs up to its request and console attach: the CLI module,
    # a request framed, a reply decoded, the console socket made.
    loaded = modules_after(
        "import _socket\n"
        "from xenopus.toolstack import cli\n"
        "from xenopus import client, ipc\n"
        "from xenopus.control import Request\n"
        "line = ipc.encode(Request('create', {'path': 'x.cfg', 'attach': True}).to_wire())\n"
        "assert client.decode_reply(ipc.decode(b'{\"ok\":true,\"domid\":1}')).ok\n"
        "s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        "s.close()\n"
    )
    assert "xenopus.toolstack.cli" in loaded
    assert loaded & CLI_NEVER == set()


def test_the_probe_sees_an_import() -> None:
    """The check above can fail: a module the code imports shows."""
    assert {"json", "re"} <= modules_after("import json")


# Imported where a guest has them (domain/builder.py's _add_virtio, the Xen PV backends
# in domain/xenguest.py), not by every spare: ~10 ms of CPU and ~1 MiB per domain.
SPARE_NEVER = {
    "xenopus.devices.virtio.pci", "xenopus.devices.virtio.blk", "xenopus.devices.virtio.net",
    "xenopus.devices.virtio.console", "xenopus.devices.virtio.rng",
    "xenopus.devices.virtio.balloon", "xenopus.devices.disk", "xenopus.xen.backends.blkback",
    "xenopus.xen.backends.netback", "xenopus.xen.backends.channel",
    "xenopus.xen.backends.xenbus", "xenopus.xen.xenstore.client",
    # the CLI's and the daemon's, never a domain's
    "xenopus.toolstack.daemon", "xenopus.toolstack.cli", "xenopus.xen.xenstore.store",
}


def test_a_spare_imports_no_device_model_its_guest_may_not_have() -> None:
    loaded = modules_after("from xenopus.toolstack import spare\nspare.warm()\n")
    assert {"xenopus.domain.process", "xenopus.xen.backends.console"} <= loaded
    assert loaded & SPARE_NEVER == set()
    # A guest that has them imports them as it is built: tests/vm/test_inventory.py
    # (virtio-pci transports, virtio-blk and -rng, the Xen console) and the Xen PV tests.

