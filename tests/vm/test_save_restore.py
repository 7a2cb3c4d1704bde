"""`xenopus save`, `restore` and `migrate` through the CLI and the daemon (xl's syntax
and semantics): a counting guest saved and restored, or migrated to a second daemon,
carries on with no lost or repeated count; -c leaves it running; a damaged image is
refused by record and leaves nothing behind; the PV console, timers, event channels and
a XenStore watch survive; a migration whose receiver dies or refuses
leaves the source running; a migration over TCP between two network namespaces; virtio-blk
I/O across a live migration (needs /dev/kvm)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_result, read_until
from tests.vm.test_devices import NS, netns  # noqa: F401 - the fixture
from xenopus.stream import read_domain_config
from xenopus.toolstack.transfer import BANNER
from xenopus.xen.xenstore.client import XsClient

pytestmark = pytest.mark.kvm

COUNT = 5000  # ~15 s of printing here: time for the CLI steps between


def _counts(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^count (\d+)\r$", text, re.M)]


def _checksum(count: int) -> str:
    h = 0x811C9DC5
    for i in range(count):
        h = ((h ^ i) * 0x01000193) & 0xFFFFFFFF
    return f"RESULT: PASS counter count={count} checksum=0x{h:08x}"


def _start_counter(x: Xenopus, name: str) -> subprocess.Popen:
    cfg = x.config(name, "counter.elf", cmdline=f"count={COUNT}", on_poweroff="destroy",
                   xen_platform=0)
    created = x.run("create", "-q", str(cfg))
    assert created.returncode == 0, created.stderr
    console = x.popen("console", name)
    assert console.stdout is not None
    return console


def test_save_destroys_and_restore_carries_on_with_no_lost_or_repeated_count(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    console = _start_counter(xenopus, "saved")
    before = read_until(console.stdout, b"count 50\r\n")
    old_domid = xenopus.domains()["saved"][1]
    image = tmp_path / "saved.img"
    saved = xenopus.run("save", "saved", str(image))
    assert saved.returncode == 0, saved.stderr
    assert "saved" not in xenopus.domains()  # without -c the domain is gone
    before += console.communicate(timeout=60)[0]  # its console ends with it
    assert b"RESULT" not in before
    assert not list(tmp_path.glob(".saved.img.*"))  # the temporary file was renamed

    restored = xenopus.run("restore", "-d", str(image))
    assert restored.returncode == 0, restored.stderr
    assert re.search(r"restored domain \d+ \(saved\): \d+ pages", restored.stderr)
    row = xenopus.domains()["saved"]
    assert row[1] != old_domid  # a new domid, the same name
    after = xenopus.popen("console", "saved").communicate(timeout=120)[0]
    text = (before + after).decode()
    assert _counts(text) == list(range(COUNT))
    assert _checksum(COUNT) in text


def test_save_c_leaves_the_domain_running_and_p_paused(xenopus: Xenopus, tmp_path: Path) -> None:
    console = _start_counter(xenopus, "kept")
    read_until(console.stdout, b"count 20\r\n")
    image = tmp_path / "kept.img"
    assert xenopus.run("save", "-p", "kept", str(image)).returncode == 0
    assert xenopus.domains()["kept"][4] == "--p---"
    assert xenopus.run("unpause", "kept").returncode == 0
    assert xenopus.run("save", "-c", "kept", str(image)).returncode == 0
    assert xenopus.domains()["kept"][4] in ("r-----", "-b----")
    # The image's domain still runs here: a restore of the same name is refused.
    again = xenopus.run("restore", str(image))
    assert again.returncode != 0 and "already exists" in again.stderr
    text = (console.communicate(timeout=120)[0]).decode()
    assert _checksum(COUNT) in text  # the source ran to its end
    restored = xenopus.run("restore", "-p", str(image))
    assert restored.returncode == 0, restored.stderr
    assert xenopus.domains()["kept"][4] == "--p---"
    assert xenopus.run("destroy", "kept").returncode == 0


def test_save_with_a_config_stores_that_config_in_the_image(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    """xl save DOM FILE CFG: the image's DOMAIN_CONFIG is CFG's (here: the same guest,
    kept when it powers off), and a restore builds from it."""
    console = _start_counter(xenopus, "withcfg")  # on_poweroff = "destroy"
    read_until(console.stdout, b"count 5\r\n")
    other = xenopus.config("withcfg", "counter.elf", cmdline=f"count={COUNT}",
                           on_poweroff="preserve", xen_platform=0)
    image = tmp_path / "withcfg.img"
    saved = xenopus.run("save", "withcfg", str(image), str(other))
    assert saved.returncode == 0, saved.stderr
    console.communicate(timeout=60)
    with image.open("rb") as f:
        config, _ = read_domain_config(f)
    assert isinstance(config, dict) and config["on_poweroff"] == "preserve", config
    assert xenopus.run("restore", "-p", str(image)).returncode == 0
    try:
        listed = xenopus.run("list", "-l", "withcfg", check=True).stdout
        assert '"on_poweroff": "preserve"' in listed, listed
    finally:
        assert xenopus.run("destroy", "withcfg").returncode == 0


def test_a_damaged_image_is_refused_by_record_and_leaves_nothing(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    console = _start_counter(xenopus, "damaged")
    read_until(console.stdout, b"count 5\r\n")
    image = tmp_path / "damaged.img"
    assert xenopus.run("save", "damaged", str(image)).returncode == 0
    console.communicate(timeout=60)
    data = image.read_bytes()

    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(data[: len(data) // 2])
    r = xenopus.run("restore", str(truncated))
    assert r.returncode != 0
    assert re.search(r"record \d+ PAGE_DATA .*at offset \d+: stream ends", r.stderr), r.stderr
    assert "damaged" not in xenopus.domains()

    corrupt = bytearray(data)
    corrupt[-40] ^= 0xFF  # inside the last PART record
    (tmp_path / "corrupt.img").write_bytes(bytes(corrupt))
    r = xenopus.run("restore", str(tmp_path / "corrupt.img"))
    assert r.returncode != 0 and re.search(r"record \d+ PART .* checksum mismatch", r.stderr), r.stderr
    assert "damaged" not in xenopus.domains()

    wrong = bytearray(data)
    wrong[8:12] = (3).to_bytes(4, "big")  # the header's version (big-endian), and its CRC
    wrong[20:24] = zlib.crc32(wrong[:20]).to_bytes(4, "big")
    (tmp_path / "wrong.img").write_bytes(bytes(wrong))
    r = xenopus.run("restore", str(tmp_path / "wrong.img"))
    assert r.returncode != 0 and "stream version 3" in r.stderr, r.stderr
    assert "damaged" not in xenopus.domains()

    # The whole image still restores, under the domid the daemon gives next.
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    assert xenopus.run("destroy", "damaged").returncode == 0


def test_save_of_a_missing_domain_or_into_a_missing_directory_is_refused(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    r = xenopus.run("save", "nosuch", str(tmp_path / "x.img"))
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert not list(tmp_path.iterdir())  # no temporary file left behind
    r = xenopus.run("save", "nosuch", str(tmp_path / "nodir" / "x.img"))
    assert r.returncode != 0 and "cannot write" in r.stderr
    r = xenopus.run("restore", str(tmp_path / "none.img"))
    assert r.returncode != 0 and "cannot read" in r.stderr


def test_a_xen_guest_s_timer_and_event_channels_keep_firing_after_restore(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    """VIRQ_TIMER re-armed every tick and a loopback pair, through the upcall: the Xen
    state (shared_info, vcpu_info, params, the port table, the armed timer as guest
    system time) goes with the image; so do a node the guest wrote and its XenStore
    watch, under its new domid."""
    ticks = 300
    cfg = xenopus.config("ticker", "xentick.elf", cmdline=f"ticks={ticks} watch=1",
                         on_poweroff="destroy")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "-t", "serial", "ticker")
    before = read_until(console.stdout, b"tick 20\r\n")
    image = tmp_path / "ticker.img"
    saved = xenopus.run("save", "ticker", str(image))
    assert saved.returncode == 0, saved.stderr
    before += console.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    domid = xenopus.domains()["ticker"][1]
    client = XsClient(str(xenopus.run_dir / "xenstored.sock"))
    try:
        client.write(f"/local/domain/{domid}/data/poke", "after-restore")
    finally:
        client.close()
    after = xenopus.popen("console", "-t", "serial", "ticker").communicate(timeout=120)[0]
    text = (before + after).decode()
    assert [int(n) for n in re.findall(r"^tick (\d+)\r$", text, re.M)] == list(range(ticks))
    assert "note before\r\n" in text and "poked after-restore\r\n" in text, text[-500:]
    assert f"RESULT: PASS xentick ticks={ticks}" in text, text[-500:]


def test_the_pv_console_survives_restore(xenopus: Xenopus, tmp_path: Path) -> None:
    """Saved while the guest waits for a line on its PV console's in-ring: after restore
    the console backend of the new domain is joined to the ring (the page in RAM) and the
    event channel the guest bound, so a line typed there reaches the guest, and its
    answer comes back through the ring."""
    cfg = xenopus.config("pvcons", "xenconsole.elf", xen_platform=1, memory=64,
                         cmdline="echo timeout_ms=120000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    con = xenopus.popen("console", "-t", "pv", "pvcons", stdin=subprocess.PIPE)
    assert con.stdin is not None and con.stdout is not None
    seen = read_until(con.stdout, b"READY")
    assert b"hello from the xenopus xenconsole guest" in seen
    image = tmp_path / "pvcons.img"
    saved = xenopus.run("save", "pvcons", str(image))
    assert saved.returncode == 0, saved.stderr
    con.stdin.close()
    con.wait(60)  # the domain went with the save
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    con = xenopus.popen("console", "-t", "pv", "pvcons", stdin=subprocess.PIPE)
    assert con.stdin is not None and con.stdout is not None
    try:
        con.stdin.write(b"typed-after-restore\r")
        con.stdin.flush()
        # (bounded: the guest gives up after its timeout_ms, and its console then ends)
        read_until(con.stdout, b"ECHO: typed-after-restore", timeout=120)
    finally:
        xenopus.run("destroy", "pvcons")
        con.kill()
        con.wait(60)


@pytest.mark.parametrize("kernel, xen_platform, online", [
    # VCPUOP_initialise/up/down: the vCPU the guest took down is saved down (the xen part's
    # vcpu_op state), stays parked after restore, and VCPUOP_up brings it back.
    ("xenvcpuset.elf", 1, {1: b"vcpuset: online 1 of 3", 2: b"vcpuset: online 2 of 3",
                           3: b"vcpuset: online 3 of 3"}),
    # ACPI CPU hotplug (no Xen): the status bytes are saved with the domain, so a vCPU the
    # guest ejected is absent and parked after restore; the guest starts it by INIT/SIPI.
    ("cpuhp.elf", 0, {1: b"cpuhp: online 1 status 010000", 2: b"cpuhp: online 2 status 010100",
                      3: b"cpuhp: online 3 status 010101"}),
], ids=["xen", "acpi"])
def test_a_vcpu_taken_down_stays_parked_after_restore_and_comes_up_again(
    xenopus: Xenopus, tmp_path: Path, kernel: str, xen_platform: int, online: dict[int, bytes],
) -> None:
    """`xl vcpu-set` 1 -> 3 -> 2 vCPUs, save and restore: vCPU 2 is still parked there
    (`vcpu-list`), and `vcpu-set 3` brings it up again."""
    cfg = xenopus.config("hot", kernel, vcpus=1, maxvcpus=3, xen_platform=xen_platform,
                         on_poweroff="destroy")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "hot")
    assert console.stdout is not None
    read_until(console.stdout, online[1])
    assert xenopus.run("vcpu-set", "-i", "hot", "3").returncode == 0
    read_until(console.stdout, online[3])
    assert xenopus.run("vcpu-set", "hot", "2").returncode == 0
    read_until(console.stdout, online[2])
    image = tmp_path / "hot.img"
    saved = xenopus.run("save", "hot", str(image))
    assert saved.returncode == 0, saved.stderr
    console.communicate(timeout=60)
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    try:
        rows = [line.split() for line in
                xenopus.run("vcpu-list", "hot", check=True).stdout.splitlines()[1:]]
        assert [r[3] != "-" for r in rows] == [True, True, False] and rows[2][4] == "--p", rows  # 2 parked
        console = xenopus.popen("console", "hot")
        assert console.stdout is not None
        assert xenopus.run("vcpu-set", "-i", "hot", "3").returncode == 0
        read_until(console.stdout, online[3])
        rows = [line.split() for line in
                xenopus.run("vcpu-list", "hot", check=True).stdout.splitlines()[1:]]
        assert all(r[3].isdigit() for r in rows), rows
    finally:
        xenopus.run("destroy", "hot")
        console.wait(60)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xenopus]:
    """A second host: a daemon with a run directory of its own."""
    tmp = tmp_path_factory.mktemp("receiver")
    x = Xenopus(tmp / "run", tmp)
    yield x
    x.run("daemon", "--stop", timeout=60)


def _migrate(sender: Xenopus, receiver: Xenopus, dom: str, *opts: str
             ) -> subprocess.CompletedProcess:
    """`migrate -s SSHCMD DOM HOST` to the receiving daemon on this host: `SSHCMD HOST
    xenopus migrate-receive` is `env XENOPUS_RUN_DIR=... PATH=... xenopus migrate-receive`."""
    host = f"PATH={Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    return sender.run("migrate", *opts, "-s", f"env XENOPUS_RUN_DIR={receiver.run_dir}",
                      dom, host)


def test_migrate_moves_a_counting_guest_with_no_lost_or_repeated_count(
    xenopus: Xenopus, receiver: Xenopus,
) -> None:
    # Kept when it ends (preserve), so that its console can be read there whenever it
    # attaches: a guest that counts fast could otherwise finish, and go, first.
    cfg = xenopus.config("mover", "counter.elf", cmdline=f"count={COUNT}",
                         on_poweroff="preserve", xen_platform=0)
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "mover")
    assert console.stdout is not None
    before = read_until(console.stdout, b"count 50\r\n")
    moved = _migrate(xenopus, receiver, "mover", "--debug", "-p")  # -p: paused there
    assert moved.returncode == 0, moved.stderr
    assert re.search(r"migrated mover: \d+ pages in \d+ rounds, .* stopped for [\d.]+ ms", moved.stderr), moved.stderr
    assert re.search(r"received domain \d+ \(mover\): \d+ pages, .* \(setup", moved.stderr)
    assert "mover" not in xenopus.domains()  # gone here...
    before += console.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    assert receiver.domains()["mover"][4] == "--p---"  # ...there, paused, a domid of its own
    assert receiver.run("unpause", "mover").returncode == 0
    attached = receiver.popen("console", "mover")
    assert attached.stdout is not None
    try:
        after = read_until(attached.stdout, _checksum(COUNT).encode(), timeout=120)
    finally:
        assert receiver.run("destroy", "mover").returncode == 0
    after += attached.communicate(timeout=60)[0]
    text = (before + after).decode()
    assert _counts(text) == list(range(COUNT))
    assert _checksum(COUNT) in text


def _result_then_destroy(x: Xenopus, name: str, serial: bool = False) -> bytes:
    """`name`'s console (the serial one with `serial`) read to its RESULT line, then the
    domain destroyed (kept by on_poweroff = "preserve" for the test's checks)."""
    attached = x.popen("console", *(("-t", "serial") if serial else ()), name)
    assert attached.stdout is not None
    try:
        return read_result(attached.stdout)
    finally:
        assert x.run("destroy", name).returncode == 0
        attached.wait(60)


def test_migrate_c_sends_the_given_config_instead_of_the_domain_s(
    xenopus: Xenopus, receiver: Xenopus,
) -> None:
    """xl migrate -C CFG: the receiver builds the domain from CFG (here: the same guest,
    kept when it powers off instead of destroyed), not from the config it was created
    with; it carries on counting from where it was."""
    console = _start_counter(xenopus, "reconfigured")  # on_poweroff = "destroy"
    before = read_until(console.stdout, b"count 50\r\n")
    other = xenopus.config("reconfigured", "counter.elf", cmdline=f"count={COUNT}",
                           on_poweroff="preserve", xen_platform=0)
    moved = _migrate(xenopus, receiver, "reconfigured", "-p", "-C", str(other))
    assert moved.returncode == 0, moved.stderr
    before += console.communicate(timeout=60)[0]
    listed = receiver.run("list", "-l", "reconfigured", check=True).stdout
    assert '"on_poweroff": "preserve"' in listed, listed
    assert receiver.run("unpause", "reconfigured").returncode == 0
    after = _result_then_destroy(receiver, "reconfigured")
    text = (before + after).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text


def test_a_live_migrated_xen_guest_s_timer_events_and_watch_carry_on(
    xenopus: Xenopus, receiver: Xenopus,
) -> None:
    """Live: while RAM is pre-copied the guest takes timer VIRQs and loopback events
    (Xen writing its shared_info and vcpu_info from this process, the guest clearing
    them): over there it carries on with no event lost or repeated, and its XenStore
    watch comes along. (The write log itself is tested in tests/unit/test_live_save.py:
    here the guest's own writes to those pages are in KVM's log too.)"""
    ticks = 300
    cfg = xenopus.config("livetick", "xentick.elf", cmdline=f"ticks={ticks} watch=1",
                         on_poweroff="preserve")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "-t", "serial", "livetick")
    assert console.stdout is not None
    before = read_until(console.stdout, b"tick 20\r\n")
    moved = _migrate(xenopus, receiver, "livetick", "-p")
    assert moved.returncode == 0, moved.stderr
    before += console.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    domid = receiver.domains()["livetick"][1]
    client = XsClient(str(receiver.run_dir / "xenstored.sock"))
    try:
        client.write(f"/local/domain/{domid}/data/poke", "after-migrate")
    finally:
        client.close()
    assert receiver.run("unpause", "livetick").returncode == 0
    after = _result_then_destroy(receiver, "livetick", serial=True)
    text = (before + after).decode()
    assert [int(n) for n in re.findall(r"^tick (\d+)\r$", text, re.M)] == list(range(ticks))
    assert "note before\r\n" in text and "poked after-migrate\r\n" in text, text[-500:]
    assert f"RESULT: PASS xentick ticks={ticks}" in text, text[-500:]


def test_virtio_blk_io_running_during_a_live_migration_finishes_with_the_data_verified(
    xenopus: Xenopus, receiver: Xenopus, tmp_path: Path,
) -> None:
    """guests/vblk.c loops=N: round after round of a write and its read-back, each round to
    a range of its own with a seed of its own, going on while RAM is pre-copied; a
    request the source's device had not taken when it paused is taken by the receiver's
    (the queue's saved last_avail). Over there it finishes, reads every round's range
    back, and the image holds every round's pattern (both daemons reach the same file,
    as hosts with shared storage would)."""
    from tests.vm.test_devices import SECTOR, pattern

    loops, count, start = 400, 8, 2048
    disk = tmp_path / "moving.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    cfg = xenopus.config("blkmover", "vblk.elf", disk=[f"{disk},raw,vda,rw"],
                         # ≥ 4 s of rounds, so a loaded host still moves it mid-I/O
                         cmdline=f"sector={start} count={count} loops={loops} round_ms=10",
                         on_poweroff="preserve")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "blkmover")
    assert console.stdout is not None
    before = read_until(console.stdout, b"loop 20\r\n")
    moved = _migrate(xenopus, receiver, "blkmover", "--debug")
    assert moved.returncode == 0, moved.stderr
    before += console.communicate(timeout=60)[0]
    after = _result_then_destroy(receiver, "blkmover")
    text = (before + after).decode()
    done = [int(n) for n in re.findall(r"^loop (\d+)\r$", text, re.M)]
    assert done == list(range(1, loops)), text[-500:]  # none lost, none repeated
    assert 20 <= max(int(n) for n in re.findall(r"^loop (\d+)\r$", before.decode(), re.M)) < loops - 1
    assert f"loops: {loops} rounds written and read back" in text, text[-500:]
    assert "RESULT: PASS vblk" in text, text[-500:]
    data = disk.read_bytes()
    for i in range(loops):
        lo = (start + i * count) * SECTOR
        want = bytes(pattern(o, 0x5A + i) for o in range(lo, lo + count * SECTOR))
        assert data[lo : lo + count * SECTOR] == want, f"round {i}'s range"


XENBLK_LOOPS, XENBLK_COUNT, XENBLK_START = 300, 8, 2048


def _start_xenblk(x: Xenopus, name: str, disk: Path) -> subprocess.Popen:
    """guests/xenblk.c loops=N on a Xen PV disk (blkfront's ring, its grants and event
    channel): round after round of a write and its read-back; its serial console."""
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    cfg = x.config(name, "xenblk.elf", disk=[f"{disk},raw,xvda,rw"], memory=64,
                   cmdline=f"vdev=51712 sector={XENBLK_START} count={XENBLK_COUNT} "
                           f"loops={XENBLK_LOOPS} timeout_ms=60000",
                   on_poweroff="preserve")
    assert x.run("create", "-q", str(cfg)).returncode == 0
    console = x.popen("console", "-t", "serial", name)
    assert console.stdout is not None
    return console


def _check_xenblk(before: bytes, after: bytes, disk: Path, loops: int = XENBLK_LOOPS) -> None:
    """Every round once, in order, some before the move and the rest after; the guest
    read every round back; the image holds every round's pattern."""
    from tests.vm.test_devices import SECTOR, pattern

    text = (before + after).decode(errors="replace")
    done = [int(n) for n in re.findall(r"^xenblk: loop (\d+)\r$", text, re.M)]
    assert done == list(range(1, loops)), text[-800:]  # none lost, none repeated
    early = [int(n) for n in re.findall(r"^xenblk: loop (\d+)\r$", before.decode(errors="replace"), re.M)]
    assert early and max(early) < loops - 1, "moved after the I/O had ended"
    assert f"xenblk: loops: {loops} rounds written and read back" in text, text[-800:]
    assert "RESULT: PASS xenblk" in text, text[-800:]
    data = disk.read_bytes()
    for i in range(loops):
        lo = (XENBLK_START + i * XENBLK_COUNT) * SECTOR
        want = bytes(pattern(o, 0x5A + i) for o in range(lo, lo + XENBLK_COUNT * SECTOR))
        assert data[lo : lo + XENBLK_COUNT * SECTOR] == want, f"round {i}'s range"


def test_xen_blkfront_io_running_during_a_live_migration_finishes_with_the_data_verified(
    xenopus: Xenopus, receiver: Xenopus, tmp_path: Path,
) -> None:
    """The blkback's ring state moves (docs/snapshot-stream.md, "Xen PV disks"): the
    source's backend is paused between two requests, the receiver's maps the same ring
    with the saved indexes and binds the frontend's port when the frontend's nodes come
    back in XenStore; the guest, which never sees a suspend, goes on with its rounds."""
    disk = tmp_path / "xvda.img"
    console = _start_xenblk(xenopus, "xblkmover", disk)
    before = read_until(console.stdout, b"xenblk: loop 20\r\n", timeout=120)
    moved = _migrate(xenopus, receiver, "xblkmover", "--debug")
    assert moved.returncode == 0, moved.stderr
    before += console.communicate(timeout=60)[0]
    after = _result_then_destroy(receiver, "xblkmover", serial=True)
    _check_xenblk(before, after, disk)


def test_xen_blkfront_io_carries_on_across_save_and_restore(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    disk = tmp_path / "xvda.img"
    console = _start_xenblk(xenopus, "xblksaved", disk)
    before = read_until(console.stdout, b"xenblk: loop 20\r\n", timeout=120)
    image = tmp_path / "xblk.save"
    saved = xenopus.run("save", "xblksaved", str(image))
    assert saved.returncode == 0, saved.stderr
    before += console.communicate(timeout=60)[0]
    assert b"RESULT" not in before
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    after = _result_then_destroy(xenopus, "xblksaved", serial=True)
    _check_xenblk(before, after, disk)


HOT_LOOPS = 120  # fewer than XENBLK_LOOPS: the rounds after the restore fit its budget on a busy host


def test_a_disk_attached_at_run_time_is_in_the_image_and_carries_on_after_restore(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    """xl block-attach records the disk in the domain's config (libxl__device_disk_add),
    so a save image's DOMAIN_CONFIG has it and the restored domain is built with it: the
    blkfront that waited for it goes on with its rounds after the restore. A save whose
    given config lacks the disk is refused then, naming it, and the domain runs on."""
    disk = tmp_path / "hot.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    keys: dict[str, object] = dict(memory=64, on_poweroff="preserve")
    cfg = xenopus.config("hotsaved", "xenblk.elf", **keys,
                         cmdline=f"wait_attach=1 vdev=51728 sector={XENBLK_START} "
                                 f"count={XENBLK_COUNT} loops={HOT_LOOPS} timeout_ms=60000")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    console = xenopus.popen("console", "-t", "serial", "hotsaved")
    assert console.stdout is not None
    before = read_until(console.stdout, b"xenblk: waiting for device/vbd/51728", timeout=120)
    attached = xenopus.run("block-attach", "hotsaved", f"{disk},raw,xvdb,rw")
    assert attached.returncode == 0, attached.stderr
    before += read_until(console.stdout, b"xenblk: loop 20\r\n", timeout=120)
    image = tmp_path / "hot.save"
    without = xenopus.config("hotsaved-nodisk", "xenblk.elf", **keys)
    refused = xenopus.run("save", "-c", "hotsaved", str(image), str(without))
    assert refused.returncode != 0 and "disk xvdb is not in the configuration" in refused.stderr, \
        refused.stderr
    assert xenopus.domains()["hotsaved"][4] in ("r-----", "-b----")  # still running
    saved = xenopus.run("save", "hotsaved", str(image))
    assert saved.returncode == 0, saved.stderr
    before += console.communicate(timeout=60)[0]
    with image.open("rb") as f:
        config, _ = read_domain_config(f)
    assert isinstance(config, dict)
    assert [(d["vdev"], d["target"]) for d in config["disks"]] == [("xvdb", str(disk))], config
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    again = xenopus.popen("console", "-t", "serial", "hotsaved")
    assert again.stdout is not None
    try:
        after = read_result(again.stdout)
        listing = xenopus.run("block-list", "hotsaved", check=True).stdout.splitlines()
        assert [row.split()[0] for row in listing[1:]] == ["51728"], listing
    finally:
        assert xenopus.run("destroy", "hotsaved").returncode == 0
        again.wait(60)
    _check_xenblk(before, after, disk, HOT_LOOPS)


# Answers the guest's datagram only when told to (a line on stdin): after the restore.
LATE_RESPONDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5555))
s.settimeout(120)
print("bound", flush=True)
data, peer = s.recvfrom(2048)
print("got", data.decode(), peer[0], flush=True)
sys.stdin.readline()
s.sendto(b"pong-after-restore", peer)
print("sent", flush=True)
"""


def test_xen_netfront_carries_on_across_save_and_restore(netns: Xenopus, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    """guests/xennet sends a datagram through netback, then waits for the answer with its
    receive buffers posted; it is saved there and restored (a new tap of the same name, the
    rings' indexes carried): the host's ARP for the guest goes out through the restored RX
    ring and its answer through the TX ring, then the datagram arrives in a buffer the
    guest posted before the save."""
    cfg = netns.config("xnetsave", "xennet.elf", xen_platform=1, memory=64,
                       vif=["model=xen, vifname=xnptap2"], on_poweroff="preserve",
                       cmdline="src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 "
                               "payload=ping-before-save expect_reply=pong-after-restore "
                               "timeout_ms=120000")
    assert netns.run("create", "-q", "-p", str(cfg)).returncode == 0
    subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", "xnptap2"], check=True)
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", LATE_RESPONDER],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdin is not None
        assert responder.stdout.readline().strip() == "bound"
        assert netns.run("unpause", "xnetsave").returncode == 0
        assert responder.stdout.readline().startswith("got ping-before-save 10.0.2.15")
        image = tmp_path / "xnet.save"
        saved = netns.run("save", "xnetsave", str(image))
        assert saved.returncode == 0, saved.stderr
        restored = netns.run("restore", "-p", str(image))
        assert restored.returncode == 0, restored.stderr
        subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", "xnptap2"], check=True)
        assert netns.run("unpause", "xnetsave").returncode == 0
        _answer_and_check_xennet(netns, responder, "xnetsave")
    finally:
        responder.kill()


def _answer_and_check_xennet(x: Xenopus, responder: subprocess.Popen, name: str) -> None:
    """Let the responder answer the datagram the moved xennet guest sent before it moved;
    the guest takes the answer (in a buffer posted before the move) and passes."""
    assert responder.stdin is not None and responder.stdout is not None
    responder.stdin.write("go\n")
    responder.stdin.flush()
    assert responder.stdout.readline().strip() == "sent"
    console = x.popen("console", "-t", "serial", name)
    assert console.stdout is not None
    try:
        out = read_result(console.stdout).decode(errors="replace")
    finally:
        x.run("destroy", name)
        console.wait(60)
    assert "xennet reply from 10.0.2.2:5555: pong-after-restore" in out, out[-800:]
    assert "RESULT: PASS xennet" in out, out[-800:]


def test_xen_netfront_carries_on_across_a_live_migration_on_this_host(
    netns: Xenopus,  # noqa: F811 - the fixture
) -> None:
    """As above, live-migrated to this same host instead (xl migrate DOM localhost): the
    receiver's netback opens a tap of its own (vifDOMID.0, the new domid) and takes the
    rings' indexes, the guest still waiting with its receive buffers posted; the host's
    address moves to the new tap and the answer arrives in a buffer posted before the
    migration."""
    cfg = netns.config("xnetmig", "xennet.elf", xen_platform=1, memory=64,
                       vif=["model=xen"], on_poweroff="preserve",
                       cmdline="src_ip=10.0.2.15 dst_ip=10.0.2.2 dst_port=5555 "
                               "payload=ping-before-migrate expect_reply=pong-after-restore "
                               "timeout_ms=120000")
    assert netns.run("create", "-q", "-p", str(cfg)).returncode == 0
    old = f"vif{netns.domains()['xnetmig'][1]}.0"
    subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", old], check=True)
    responder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", LATE_RESPONDER],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdin is not None
        assert responder.stdout.readline().strip() == "bound"
        assert netns.run("unpause", "xnetmig").returncode == 0
        assert responder.stdout.readline().startswith("got ping-before-migrate 10.0.2.15")
        moved = _migrate(netns, netns, "xnetmig", "-p")
        assert moved.returncode == 0, moved.stderr
        new = f"vif{netns.domains()['xnetmig'][1]}.0"
        assert new != old
        subprocess.run(["ip", "-n", NS, "addr", "add", "10.0.2.2/24", "dev", new], check=True)
        assert netns.run("unpause", "xnetmig").returncode == 0
        _answer_and_check_xennet(netns, responder, "xnetmig")
    finally:
        responder.kill()


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Xenopus, Xenopus, str]]:
    """Two hosts: a daemon each, in network namespaces of their own joined by a veth
    pair; the receiver's address."""
    tag = f"{os.getpid() % 100000}"
    spaces = (f"xmig-a{tag}", f"xmig-b{tag}")
    addrs = ("10.231.7.1", "10.231.7.2")
    made: list[str] = []
    try:
        for ns in spaces:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "link", "add", "xmiga", "netns", spaces[0], "type", "veth",
                        "peer", "name", "xmigb", "netns", spaces[1]], check=True)
        for ns, dev, addr in zip(spaces, ("xmiga", "xmigb"), addrs, strict=True):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        hosts = [Xenopus(tmp_path / f"run-{ns}", tmp_path, prefix=("ip", "netns", "exec", ns))
                 for ns in spaces]
        try:
            yield hosts[0], hosts[1], addrs[1]
        finally:
            for x in hosts:
                x.run("daemon", "--stop", timeout=60)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_migrate_over_tcp_between_two_network_namespaces(
    two_hosts: tuple[Xenopus, Xenopus, str],
) -> None:
    """A real TCP connection between two namespaces carries the stream and the answers
    (`migrate -s "" DOM "python tcp_pipe.py connect ..."`, migrate-receive behind a
    listener on the far side): the counting guest carries on there."""
    sender, receiver, addr = two_hosts
    helper = Path(__file__).with_name("tcp_pipe.py")
    listener = subprocess.Popen(
        [*receiver.prefix, sys.executable, str(helper), "listen", addr, "7311", "--",
         sys.executable, "-m", "xenopus", "migrate-receive", "-p"],
        env=receiver.env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert listener.stdout is not None
    try:
        assert listener.stdout.readline() == b"listening\n"
        cfg = sender.config("tcpmover", "counter.elf", cmdline=f"count={COUNT}",
                            on_poweroff="preserve", xen_platform=0)
        assert sender.run("create", "-q", str(cfg)).returncode == 0
        console = sender.popen("console", "tcpmover")
        assert console.stdout is not None
        before = read_until(console.stdout, b"count 50\r\n")
        moved = sender.run("migrate", "-s", "", "tcpmover",
                           f"{sys.executable} {helper} connect {addr} 7311")
        assert moved.returncode == 0, moved.stderr
        assert listener.wait(60) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert "tcpmover" not in sender.domains()
    before += console.communicate(timeout=60)[0]
    assert receiver.domains()["tcpmover"][4] == "--p---"  # -p: paused there
    assert receiver.run("unpause", "tcpmover").returncode == 0
    attached = receiver.popen("console", "tcpmover")
    assert attached.stdout is not None
    try:
        after = read_until(attached.stdout, _checksum(COUNT).encode(), timeout=120)
    finally:
        assert receiver.run("destroy", "tcpmover").returncode == 0
        attached.wait(60)
    text = (before + after).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_a_receiver_dying_mid_stream_leaves_the_source_running(
    xenopus: Xenopus, receiver: Xenopus, tmp_path: Path, percent: int,
) -> None:
    name = f"stays{percent}"
    console = _start_counter(xenopus, name)
    before = read_until(console.stdout, b"count 20\r\n")
    image = tmp_path / "size.img"
    assert xenopus.run("save", "-c", name, str(image)).returncode == 0
    cut = image.stat().st_size * percent // 100
    # The "receiver" (HOST itself with -s "", as xl runs it) says it is ready, reads
    # `cut` octets of the stream and dies.
    fake = f"printf '%s'; head -c {cut} >/dev/null" % BANNER.decode().replace("\n", "\\n")
    failed = xenopus.run("migrate", "-s", "", name, fake)
    assert failed.returncode != 0
    assert f"domain {name} resumed" in failed.stderr, failed.stderr
    assert xenopus.domains()[name][4] in ("r-----", "-b----")
    assert name not in receiver.domains()
    text = (before + console.communicate(timeout=120)[0]).decode()
    assert _counts(text) == list(range(COUNT))  # it went on, nothing lost
    assert _checksum(COUNT) in text


def test_a_receiver_that_never_starts_leaves_the_source_untouched(xenopus: Xenopus) -> None:
    """No banner (the receiver's command failed, as ssh to a host without xenopus would):
    the save never starts, so the domain was never paused and still runs."""
    console = _start_counter(xenopus, "unmoved")
    before = read_until(console.stdout, b"count 20\r\n")
    failed = xenopus.run("migrate", "-s", "", "unmoved", "echo no xenopus here; exit 127")
    assert failed.returncode != 0
    assert "the receiver did not start" in failed.stderr and "no xenopus here" in failed.stderr
    assert xenopus.domains()["unmoved"][4] in ("r-----", "-b----")
    text = (before + console.communicate(timeout=120)[0]).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text


def test_a_receiver_whose_sender_never_says_go_destroys_what_it_restored(
    xenopus: Xenopus, receiver: Xenopus, tmp_path: Path,
) -> None:
    """The sender went away after END (its end of the pipe closed, no `go`): the receiver
    has restored the domain, paused, and destroys it rather than run a second copy."""
    console = _start_counter(xenopus, "orphan")
    read_until(console.stdout, b"count 20\r\n")
    image = tmp_path / "orphan.img"
    assert xenopus.run("save", "orphan", str(image)).returncode == 0
    console.communicate(timeout=60)
    with image.open("rb") as stream:  # the stream, then end of file where `go` would be
        got = subprocess.run(receiver.cmd("migrate-receive"), env=receiver.env, stdin=stream,
                             capture_output=True, timeout=120)
    assert got.returncode != 0
    assert got.stdout == BANNER + b"restored\n", got.stdout
    assert b"did not confirm the migration; domain destroyed" in got.stderr, got.stderr
    assert "orphan" not in receiver.domains()


def test_a_receiver_refusing_the_domain_leaves_the_source_running(
    xenopus: Xenopus, receiver: Xenopus,
) -> None:
    cfg = receiver.config("taken", "counter.elf", cmdline="count=1000000", xen_platform=0)
    assert receiver.run("create", "-q", str(cfg)).returncode == 0
    console = _start_counter(xenopus, "taken")
    read_until(console.stdout, b"count 20\r\n")
    failed = _migrate(xenopus, receiver, "taken")
    assert failed.returncode != 0 and "resumed" in failed.stderr, failed.stderr
    assert "already exists" in failed.stderr
    assert xenopus.domains()["taken"][4] in ("r-----", "-b----")
    assert receiver.run("destroy", "taken").returncode == 0
    text = console.communicate(timeout=120)[0].decode()
    assert _checksum(COUNT) in text
