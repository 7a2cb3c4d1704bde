"""`xenopus clone` and `restore --clone` through the CLI and the daemon: domains restored
from one image whose RAM is mapped copy-on-write from it (docs/snapshot-stream.md,
"Clones"), each its own domain (domid, UUID, name), each carrying on from the image with
no lost or repeated count (needs /dev/kvm)."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_until
from tests.vm.test_save_restore import COUNT, _checksum, _counts, _start_counter

pytestmark = pytest.mark.kvm
TIMEOUT = 600  # several counting guests at once on a loaded 2-core machine


def _carries_on(console: subprocess.Popen, seen: bytes = b"") -> list[int]:
    """The counts a clone prints from where it was cloned to the end: consecutive, ending
    at COUNT - 1 with the guest's own checksum of every count (its state came through)."""
    text = (seen + console.communicate(timeout=TIMEOUT)[0]).decode()
    counts = _counts(text)
    assert counts, text[-500:]
    assert counts == list(range(counts[0], COUNT)), text[-500:]
    assert _checksum(COUNT) in text
    return counts


def _uuid(x: Xenopus, name: str) -> str:
    row = next(line for line in x.run("list", "-v", check=True).stdout.splitlines()
               if line.split()[0] == name)
    return next(f for f in row.split() if re.fullmatch(r"[0-9a-f-]{36}", f))


def test_clone_of_a_running_domain_makes_running_domains_that_carry_on(
    xenopus: Xenopus,
) -> None:
    console = _start_counter(xenopus, "origin")
    before = read_until(console.stdout, b"count 50\r\n")
    # Read while it runs: it ends when it has counted.
    origin, origin_domid = _uuid(xenopus, "origin"), xenopus.domains()["origin"][1]
    cloned = xenopus.run("clone", "-p", "origin", "copy1", "copy2")  # paused: listed surely
    assert cloned.returncode == 0, cloned.stderr
    doms = xenopus.domains()
    assert len({doms[n][1] for n in ("copy1", "copy2")} | {origin_domid}) == 3  # own domids
    assert len({_uuid(xenopus, n) for n in ("copy1", "copy2")} | {origin}) == 3
    copies = [xenopus.popen("console", n) for n in ("copy1", "copy2")]
    for n in ("copy1", "copy2"):
        assert xenopus.run("unpause", n).returncode == 0
    with ThreadPoolExecutor(3) as pool:  # three guests printing at once: read all three
        source = pool.submit(console.communicate, timeout=TIMEOUT)
        counted = list(pool.map(_carries_on, copies))
        text = (before + source.result()[0]).decode()
    # the source was left running: it counts on to the end as if nothing happened
    assert _counts(text) == list(range(COUNT))
    starts = [c[0] for c in counted]
    assert all(50 <= s <= COUNT for s in starts)
    assert not list(xenopus.run_dir.glob("*.img"))  # the image has no name in the run dir


def test_clone_from_a_file_and_restore_clone(xenopus: Xenopus, tmp_path: Path) -> None:
    console = _start_counter(xenopus, "filed")
    read_until(console.stdout, b"count 50\r\n")
    image = tmp_path / "filed.img"
    saved = xenopus.run("save", "filed", str(image))
    assert saved.returncode == 0, saved.stderr
    console.communicate(timeout=60)
    cloned = xenopus.run("clone", "-d", "-p", str(image), "fc1", "fc2")
    assert cloned.returncode == 0, cloned.stderr
    # -d: each clone's start-up, phase by phase, adding up to its time since process start
    for name in ("fc1", "fc2"):
        m = re.search(rf"cloned domain \d+ \({name}\): \d+ pages mapped in [\d.]+ ms, "
                      r"restored ([\d.]+) ms after its process started \(setup ([\d.]+) ms, "
                      r"build ([\d.]+) ms, jail ([\d.]+) ms, handover ([\d.]+) ms, "
                      r"restore ([\d.]+) ms\), ([\d.]+) ms of CPU", cloned.stderr)
        assert m, cloned.stderr
        total, *phases, cpu = (float(x) for x in m.groups())
        assert abs(sum(phases) - total) < 0.5, cloned.stderr  # each rounded to 0.1 ms
        assert cpu > 0, cloned.stderr  # the process's own CPU time over those phases
    assert {xenopus.domains()[n][4] for n in ("fc1", "fc2")} == {"--p---"}  # -p: paused
    image.write_bytes(b"overwritten after the clone")  # the clones mapped a private copy
    consoles = [xenopus.popen("console", n) for n in ("fc1", "fc2")]
    for n in ("fc1", "fc2"):
        assert xenopus.run("unpause", n).returncode == 0
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(_carries_on, consoles))
    assert counts[0] == counts[1]  # both start where the image was taken


def test_restore_clone_keeps_the_name_and_carries_on(xenopus: Xenopus, tmp_path: Path) -> None:
    console = _start_counter(xenopus, "rc")
    read_until(console.stdout, b"count 50\r\n")
    image = tmp_path / "rc.img"
    assert xenopus.run("save", "rc", str(image)).returncode == 0
    console.communicate(timeout=60)
    restored = xenopus.run("restore", "--clone", str(image))
    assert restored.returncode == 0, restored.stderr
    assert "rc" in xenopus.domains()
    _carries_on(xenopus.popen("console", "rc"))


def test_a_clone_that_cannot_be_made_leaves_nothing(xenopus: Xenopus, tmp_path: Path) -> None:
    console = _start_counter(xenopus, "orig2")
    read_until(console.stdout, b"count 50\r\n")
    taken = xenopus.run("clone", "orig2", "new1", "orig2")
    assert taken.returncode != 0 and "already exists" in taken.stderr
    assert "new1" not in xenopus.domains()
    twice = xenopus.run("clone", "orig2", "dup", "dup")
    assert twice.returncode != 0 and "given twice" in twice.stderr
    damaged = tmp_path / "damaged.img"
    damaged.write_bytes(b"not an image" * 10)
    bad = xenopus.run("clone", str(damaged), "new2")
    assert bad.returncode != 0 and "not a xenopus stream" in bad.stderr
    # A damaged page: the daemon reads the image whole once, before any clone maps it.
    image = tmp_path / "orig2.img"
    assert xenopus.run("save", "-c", "orig2", str(image)).returncode == 0
    data = bytearray(image.read_bytes())
    page = data.index(b"count ")  # the guest's console buffer or the kernel's rodata
    data[page] ^= 0x20
    image.write_bytes(bytes(data))
    bad = xenopus.run("clone", str(image), "new3")
    assert bad.returncode != 0 and re.search(r"PAGE_DATA .*checksum mismatch", bad.stderr), \
        bad.stderr
    assert set(xenopus.domains()) & {"new1", "new2", "new3", "dup"} == set()
    assert xenopus.run("destroy", "orig2").returncode == 0
    console.communicate(timeout=60)


def test_a_domain_with_a_writable_disk_is_not_cloned(xenopus: Xenopus, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    cfg = xenopus.config("withdisk", "counter.elf", cmdline=f"count={COUNT}", xen_platform=0)
    cfg.write_text(cfg.read_text() + f"disk = ['{disk},raw,vda,rw']\n")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    refused = xenopus.run("clone", "withdisk", "diskcopy")
    assert refused.returncode != 0
    assert "disk vda is writable" in refused.stderr, refused.stderr
    assert "diskcopy" not in xenopus.domains()
    assert xenopus.run("destroy", "withdisk").returncode == 0


def test_clones_of_a_xen_guest_keep_their_timers_events_and_watches_under_their_domids(
    xenopus: Xenopus,
) -> None:
    """Each clone of a Xen guest (VIRQ_TIMER re-armed every tick, a loopback pair, a node
    it wrote and a XenStore watch) ticks on to the end with no tick lost or repeated, reads
    its own note back and sees a poke written under its own new domid: its XenStore
    subtree, its watch and its event channels re-established per clone."""
    from xenopus.xen.xenstore.client import XsClient

    ticks = 300
    cfg = xenopus.config("tickorigin", "xentick.elf", cmdline=f"ticks={ticks} watch=1",
                         on_poweroff="destroy")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    origin = xenopus.popen("console", "-t", "serial", "tickorigin")
    assert origin.stdout is not None
    before = read_until(origin.stdout, b"tick 20\r\n")
    assert xenopus.run("pause", "tickorigin").returncode == 0  # the clones start from here
    cloned = xenopus.run("clone", "-p", "tickorigin", "tick1", "tick2")
    assert cloned.returncode == 0, cloned.stderr
    assert xenopus.run("destroy", "tickorigin").returncode == 0
    before += origin.communicate(timeout=60)[0]
    doms = xenopus.domains()
    client = XsClient(str(xenopus.run_dir / "xenstored.sock"))
    try:
        for name in ("tick1", "tick2"):
            client.write(f"/local/domain/{doms[name][1]}/data/poke", f"{name}-poke")
    finally:
        client.close()
    consoles = {n: xenopus.popen("console", "-t", "serial", n) for n in ("tick1", "tick2")}
    for name in consoles:
        assert xenopus.run("unpause", name).returncode == 0
    with ThreadPoolExecutor(2) as pool:
        outputs = dict(zip(consoles, pool.map(
            lambda c: c.communicate(timeout=TIMEOUT)[0].decode(), consoles.values()),
            strict=True))
    first = int(re.search(r"^tick (\d+)\r$", before.decode(), re.M)[1])
    for name, text in outputs.items():
        # The pause may fall inside a line ("tick 2" | "2"): each clone's output goes on
        # from exactly where the origin's stopped.
        seen = [int(n) for n in re.findall(r"^tick (\d+)\r$", before.decode() + text, re.M)]
        assert seen == list(range(first, ticks)), (name, text[-500:])
        assert "note before\r\n" in text and f"poked {name}-poke\r\n" in text, text[-500:]
        assert f"RESULT: PASS xentick ticks={ticks}" in text, text[-500:]
