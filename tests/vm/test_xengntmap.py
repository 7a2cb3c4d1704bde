"""Grant mapping between two xenopus domains (GNTTABOP_map_grant_ref / unmap_grant_ref):
the kit's xengntmap guests, one granting a page and one mapping it into its own physical
address space, each seeing the other's writes; the daemon passes the granter's memfds."""

from __future__ import annotations

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_xenpair import console, pair_ids

pytestmark = pytest.mark.kvm


def create_paused(x: Xenopus, name: str, cmdline: str) -> int:
    cfg = x.config(name, "xengntmap.elf", xen_platform=1, memory=64, cmdline=cmdline)
    r = x.run("create", "-q", "-p", str(cfg))
    assert r.returncode == 0, r.stderr
    return int(x.domains()[name][1])


@pytest.mark.parametrize("version", [1, 2])
def test_a_granted_page_mapped_by_another_domain(xenopus: Xenopus, version: int) -> None:
    # version 2: a's table is v2 (its status frame holds the in-use bits); b's process
    # finds the entry through the layout a's process published
    a, b = pair_ids(xenopus, "map")
    assert create_paused(xenopus, "map-a", f"role=a peer={b} grant_version={version}") == a
    assert create_paused(xenopus, "map-b", f"role=b peer={a}") == b
    cons = {n: console(xenopus, n) for n in ("map-a", "map-b")}
    try:
        for name in ("map-b", "map-a"):
            assert xenopus.run("unpause", name).returncode == 0
        out = {n: c.communicate(timeout=120)[0].decode(errors="replace") for n, c in cons.items()}
    finally:
        for c in cons.values():
            c.kill()
    assert "mapped gref" in out["map-b"] and f"of domain {a} at 0x80000000: hello from domain {a}" in out["map-b"], out["map-b"]
    assert f"gntmap a: b wrote: written by domain {b} through its mapping" in out["map-a"], out["map-a"]
    for name, role in (("map-a", "a"), ("map-b", "b")):
        assert "FAIL" not in out[name], out[name]
        assert f"RESULT: PASS xengntmap role={role}" in out[name], out[name]
