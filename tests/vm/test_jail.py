"""The domain process's jail, one test per layer, read from /proc as an outsider sees it;
and the daemon's own defences (run directory, config files, names, start-up)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUESTS
from tests.vm.conftest import Xenopus
from xenopus import ipc
from xenopus.control import Reply, Request
from xenopus.domain.jail import DEFAULT_UIDS

pytestmark = pytest.mark.kvm

NAMESPACES = ("ipc", "uts", "mnt", "net", "pid")


@pytest.fixture(scope="module")
def jailed(tmp_path_factory: pytest.TempPathFactory, guests: Path) -> Iterator[Xenopus]:
    """A daemon whose domain processes offer the test-only hooks (XENOPUS_JAIL_DEBUG)."""
    tmp = tmp_path_factory.mktemp("jail")
    x = Xenopus(tmp / "run", tmp)
    x.env = {**x.env, "XENOPUS_JAIL_DEBUG": "hooks"}
    x.env.pop("XENOPUS_JAIL_UIDS", None)
    yield x
    x.run("daemon", "--stop", timeout=60)


def ask(x: Xenopus, op: str, **args: object) -> Reply:
    """One request straight to the daemon's socket (ops the CLI has no verb for)."""
    chan = ipc.Channel.connect(ipc.daemon_socket_path(str(x.run_dir)), timeout=10)
    try:
        return Reply.from_wire(chan.request(Request(op, args).to_wire()))
    finally:
        chan.close()


def running(x: Xenopus, name: str, **keys: object) -> dict:
    """Create a domain that waits for console input; its `list` entry."""
    cfg = x.config(name, "serial.elf", cmdline="echo", **keys)
    r = x.run("create", "-q", str(cfg))
    assert r.returncode == 0, r.stderr
    return next(d for d in ask(x, "list").data["domains"] if d["name"] == name)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_identity_capabilities_and_seccomp(jailed: Xenopus) -> None:
    dom = running(jailed, "jail-ids")
    pid, domid = dom["pid"], dom["domid"]
    st = status(pid)
    uid = str(DEFAULT_UIDS[0] + domid)
    assert st["Uid"].split() == [uid] * 4
    assert st["Gid"].split() == [uid] * 4
    assert st["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[caps], 16) == 0, (caps, st[caps])
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"  # SECCOMP_MODE_FILTER
    # Every thread (vCPU, device workers), not only the main one.
    for tid in os.listdir(f"/proc/{pid}/task"):
        t = dict(line.split(":\t", 1) for line in
                 Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines() if ":\t" in line)
        assert int(t["CapEff"], 16) == 0 and t["Seccomp"].strip() == "2", tid
    info = ask(jailed, "info", dom="jail-ids").data["jail"]
    for layer in ("uid", "caps", "no_new_privs", "seccomp"):
        assert info[layer] == "on", info
    # The filter is the zygote's, compiled once: the domain process never loaded
    # libseccomp (nor its Python binding) to build one of its own.
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libseccomp" not in maps
    assert jailed.run("destroy", "jail-ids").returncode == 0


def test_namespaces_and_root(jailed: Xenopus) -> None:
    dom = running(jailed, "jail-ns")
    pid = dom["pid"]
    for ns in NAMESPACES:
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # pid 1 of its own PID namespace: it sees no other process.
    assert status(pid)["NSpid"].split()[-1] == "1"
    root = Path(f"/proc/{pid}/root")
    assert (root / "dev" / "kvm").exists()
    assert Path("/etc/passwd").exists() and not (root / "etc" / "passwd").exists()
    inside = lambda path: root / str(path).lstrip("/")  # noqa: E731
    # Its kernel and its own run-directory entries; not the daemon's log, not its config.
    assert inside(jailed.config("jail-ns", "serial.elf")).exists() is False
    assert inside(GUESTS / "out" / "serial.elf").exists()
    assert inside(ipc.domain_dir(dom["domid"], str(jailed.run_dir))).exists()
    assert not inside(jailed.run_dir / "xenopus.log").exists()
    assert not inside(GUESTS / "out" / "hello.elf").exists()
    assert sorted(p.name for p in (root / "proc").iterdir() if p.name.isdigit()) == ["1"]
    info = ask(jailed, "info", dom="jail-ns").data["jail"]
    for layer in ("pidns", "namespaces", "mount", "netns"):
        assert info[layer] == "on", info
    assert jailed.run("destroy", "jail-ns").returncode == 0


def test_rlimits_and_cgroup(jailed: Xenopus) -> None:
    dom = running(jailed, "jail-limits")
    pid, domid = dom["pid"], dom["domid"]
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
    assert re.search(r"^Max open files\s+4096\s+4096\s", limits, re.M), limits
    assert re.search(r"^Max processes\s+\d+\s+\d+\s", limits, re.M), limits
    info = ask(jailed, "info", dom="jail-limits").data["jail"]
    assert info["rlimits"] == "on"
    # What `xenopus list -l` shows of it: every layer, on or missing and why.
    shown = json.loads(jailed.run("list", "-l", "jail-limits").stdout)[0]["xenopus"]["jail"]
    assert shown == info and {"uid", "caps", "no_new_privs", "seccomp", "cgroup", "aslr"} <= set(shown)
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    if info["cgroup"].startswith("on"):
        assert f"/domain-{domid}\n" in cgroup, cgroup
    else:
        # Only a host without a delegated cgroup v2 may start it without one, and says so.
        assert info["cgroup"].startswith("missing: ") and "cgroup" in info["cgroup"]
        assert not Path("/sys/fs/cgroup/cgroup.subtree_control").exists()
    assert jailed.run("destroy", "jail-limits").returncode == 0


def test_forbidden_syscall_kills_the_domain_process(jailed: Xenopus) -> None:
    running(jailed, "jail-bad", on_crash="destroy")
    r = ask(jailed, "debug-forbidden-syscall", dom="jail-bad")
    assert not r.ok
    deadline = time.monotonic() + 30
    while "jail-bad" in jailed.domains():  # polling what a user sees
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert re.search(r"domain \d+ \(jail-bad\) crashed: domain process killed by seccomp", jailed.log())


def test_the_hook_is_absent_by_default(xenopus: Xenopus) -> None:
    cfg = xenopus.config("nohook", "serial.elf", cmdline="echo")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    r = ask(xenopus, "debug-forbidden-syscall", dom="nohook")
    assert not r.ok and "unknown operation" in r.error
    assert xenopus.domains()["nohook"]
    assert xenopus.run("destroy", "nohook").returncode == 0


def test_process_title_names_the_domain(jailed: Xenopus) -> None:
    dom = running(jailed, "titled")
    cmdline = Path(f"/proc/{dom['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
    assert cmdline.startswith(f"xenopus: domain {dom['domid']} (titled)".encode()), cmdline
    assert jailed.run("destroy", "titled").returncode == 0
    assert not Path(ipc.domain_dir(dom["domid"], str(jailed.run_dir))).exists()


def test_restart_rebuilds_inside_the_jail(jailed: Xenopus) -> None:
    dom = running(jailed, "jail-reboot", on_reboot="restart")
    assert jailed.run("reboot", "-F", "jail-reboot").returncode == 0
    deadline = time.monotonic() + 60
    # polling what a user sees; the reset is asynchronous to the reply
    while (after := next(d for d in ask(jailed, "list").data["domains"]
                         if d["name"] == "jail-reboot"))["reason"] != "reboot":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert after["pid"] == dom["pid"] and after["state"] in ("running", "paused")
    assert status(dom["pid"])["Seccomp"].strip() == "2"
    assert jailed.run("destroy", "jail-reboot").returncode == 0


def test_restart_reads_root_only_files_after_dropping_root(jailed: Xenopus) -> None:
    """A restart rebuilds from files its uid may not open: they were kept open."""
    kernel = jailed.tmp / "private-serial.elf"
    kernel.write_bytes((GUESTS / "out" / "serial.elf").read_bytes())
    disk = jailed.tmp / "private.img"
    disk.write_bytes(bytes(1 << 20))
    for path in (kernel, disk):
        path.chmod(0o600)  # root's alone, in a 0700 directory
    cfg = jailed.tmp / "jail-private.cfg"
    cfg.write_text(f'name = "jail-private"\nkernel = "{kernel}"\nmemory = 32\ncmdline = "echo"\n'
                   f'on_reboot = "restart"\ndisk = ["{disk},raw,xvda,rw"]\n')
    assert jailed.run("create", "-q", str(cfg)).returncode == 0
    dom = next(d for d in ask(jailed, "list").data["domains"] if d["name"] == "jail-private")
    assert ask(jailed, "info", dom="jail-private").data["jail"]["uid"] == "on"
    assert jailed.run("reboot", "-F", "jail-private").returncode == 0
    deadline = time.monotonic() + 60
    while (after := next(d for d in ask(jailed, "list").data["domains"]
                         if d["name"] == "jail-private"))["reason"] != "reboot":
        assert time.monotonic() < deadline  # polling what a user sees
        time.sleep(0.1)
    assert after["pid"] == dom["pid"] and after["state"] in ("running", "paused")
    assert status(dom["pid"])["Uid"].split()[0] != "0"
    assert "crash" not in jailed.log().split("jail-private")[-1]
    assert jailed.run("destroy", "jail-private").returncode == 0


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_config_that_is_not_a_file_is_refused(jailed: Xenopus, special: str) -> None:
    path = special
    if special == "fifo":
        path = str(jailed.tmp / "config.fifo")
        os.mkfifo(path)
    r = jailed.run("create", path, timeout=30)
    assert r.returncode != 0 and "not a regular file" in r.stderr, r.stderr
    assert ask(jailed, "ping").ok  # the daemon is alive and answering


@pytest.mark.parametrize("name", ["Domain-0", ".", "..", "-x"])
def test_reserved_names_are_refused(jailed: Xenopus, name: str) -> None:
    cfg = jailed.config("placeholder", "minimal.elf")
    r = jailed.run("create", str(cfg), f"name={name!r}".replace("'", '"'))
    assert r.returncode != 0 and "name" in r.stderr, r.stderr


def test_destroy_of_a_domain_still_starting_returns(jailed: Xenopus) -> None:
    # A kernel that is a FIFO with no writer: the domain process blocks opening it.
    fifo = jailed.tmp / "kernel.fifo"
    os.mkfifo(fifo)
    cfg = jailed.tmp / "stuck.cfg"
    cfg.write_text(f'name = "stuck"\nkernel = "{fifo}"\nmemory = 32\n')
    create = jailed.popen("create", str(cfg))
    try:
        deadline = time.monotonic() + 30
        while "stuck" not in jailed.domains():
            assert time.monotonic() < deadline
            time.sleep(0.05)  # polling what a user sees until the create is under way
        r = jailed.run("destroy", "stuck", timeout=30)
        assert r.returncode == 0, r.stderr
        _, err = create.communicate(timeout=30)
        assert create.returncode != 0 and b"destroyed while it started" in err, err
        assert "stuck" not in jailed.domains()
    finally:
        create.kill()


def test_a_domain_not_ready_in_time_is_torn_down(tmp_path: Path) -> None:
    """A domain process that never becomes ready (its kernel a FIFO nobody writes) is
    killed after the start-up timeout, and the create fails saying so; nothing of the
    domain is left."""
    x = Xenopus(tmp_path / "run", tmp_path)
    x.env = {**x.env, "XENOPUS_START_TIMEOUT": "2"}
    fifo = tmp_path / "kernel.fifo"
    os.mkfifo(fifo)
    cfg = tmp_path / "slow.cfg"
    cfg.write_text(f'name = "slow"\nkernel = "{fifo}"\nmemory = 32\n')
    try:
        r = x.run("create", str(cfg), timeout=60)
        assert r.returncode != 0 and "did not start within 2 s" in r.stderr, r.stderr
        assert "slow" not in x.domains()
        assert re.search(r"domain (\d+) \(slow\) was not ready after 2 s; killing it", x.log())
        assert not list((x.run_dir / "domains").iterdir())
    finally:
        x.run("daemon", "--stop", timeout=60)


def test_a_bad_start_timeout_is_refused(tmp_path: Path) -> None:
    x = Xenopus(tmp_path / "run", tmp_path)
    x.env = {**x.env, "XENOPUS_START_TIMEOUT": "soon"}
    r = x.run("daemon", timeout=60)
    assert r.returncode != 0 and "XENOPUS_START_TIMEOUT" in r.stderr, r.stderr


def test_run_dir_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "xenopus.pid").symlink_to(victim)
    x = Xenopus(run, tmp_path)
    r = x.run("daemon", timeout=30)
    assert r.returncode != 0
    assert victim.read_text() == "precious\n"
    (run / "xenopus.pid").unlink()
    run.chmod(0o777)
    r = x.run("daemon", timeout=30)
    assert r.returncode != 0 and "writable by others" in r.stderr, r.stderr
    linked = tmp_path / "linked"
    linked.symlink_to(run)
    r = Xenopus(linked, tmp_path).run("daemon", timeout=30)
    assert r.returncode != 0 and "not a directory" in r.stderr, r.stderr


def test_logs_are_private(jailed: Xenopus) -> None:
    running(jailed, "private-log")
    for log in (jailed.run_dir / "xenopus.log", jailed.run_dir / "log" / "private-log.log"):
        assert log.stat().st_mode & 0o777 == 0o600, log
    assert jailed.run_dir.stat().st_mode & 0o777 == 0o700
    assert jailed.run("destroy", "private-log").returncode == 0


def test_kill_9_of_the_daemon_loses_no_domain(jailed: Xenopus) -> None:
    before = {name: running(jailed, name) for name in ("survivor-a", "survivor-b")}
    assert jailed.run("pause", "survivor-b").returncode == 0
    daemon = ask(jailed, "ping").data["pid"]
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{daemon}").exists() and "zombie" not in status(daemon).get("State", ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polling for the kill to land
    # The next command starts a daemon, which adopts both: same domids, pids and states.
    assert jailed.run("list").returncode == 0
    assert ask(jailed, "ping").data["pid"] != daemon
    after = {d["name"]: d for d in ask(jailed, "list").data["domains"]}
    for name, dom in before.items():
        assert (after[name]["domid"], after[name]["pid"]) == (dom["domid"], dom["pid"]), after
    assert after["survivor-a"]["state"] == "running" and after["survivor-b"]["state"] == "paused"
    assert "adopted" in jailed.log()
    # Each is fully managed again: its console, its requests, its end.
    con = jailed.popen("console", "survivor-a", stdin=subprocess.PIPE)
    assert con.stdin is not None
    con.stdin.write(b"after-the-crash\r")
    con.stdin.flush()
    out, _ = con.communicate(timeout=120)
    assert b"ECHO: after-the-crash" in out and b"RESULT: PASS serial" in out, out
    assert jailed.run("unpause", "survivor-b").returncode == 0
    assert jailed.run("destroy", "survivor-b").returncode == 0
    deadline = time.monotonic() + 30
    while "survivor-a" in jailed.domains():  # its power-off reaches the new daemon
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # A new domain does not collide with the adopted ones' IDs (or their taps).
    fresh = running(jailed, "after-crash")
    assert fresh["domid"] > max(d["domid"] for d in before.values())
    assert jailed.run("destroy", "after-crash").returncode == 0


def kill_daemon(x: Xenopus) -> None:
    daemon = ask(x, "ping").data["pid"]
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{daemon}").exists() and "zombie" not in status(daemon).get("State", ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polling for the kill to land


def test_a_domain_process_missing_from_the_table_is_swept(jailed: Xenopus) -> None:
    """A daemon killed after its zygote started a domain process but before it wrote the
    domain into its table (the create never answered) left that process running for
    ever, unknown to the next daemon, which then gave its domid to the next domain. The
    next daemon ends it and removes what was left of its domain."""
    table = Path(ipc.domain_table_path(str(jailed.run_dir)))
    assert jailed.run("list").returncode == 0
    before = table.read_bytes()  # the table as it was before the create
    orphan = running(jailed, "orphan")
    kill_daemon(jailed)
    table.write_bytes(before)  # as if the daemon died before saving the new domain
    assert jailed.run("list").returncode == 0  # a new daemon
    assert not Path(f"/proc/{orphan['pid']}").exists() or \
        "zombie" in status(orphan["pid"]).get("State", "")
    assert f"domain {orphan['domid']}: its process (pid {orphan['pid']})" in jailed.log()
    assert "orphan" not in jailed.domains()
    assert not Path(ipc.domain_dir(orphan["domid"], str(jailed.run_dir))).exists()
    fresh = running(jailed, "after-orphan")
    assert fresh["domid"] > orphan["domid"]  # a domid past the swept one, as after adoption
    assert jailed.run("destroy", "after-orphan").returncode == 0


def test_kill_9_with_a_create_in_flight_leaves_no_orphan(jailed: Xenopus) -> None:
    """The daemon killed while one domain runs and another is still starting (its kernel a
    FIFO: it blocks before Ready, before it is in the table): the next daemon adopts the
    running one and ends the starting one's process, whose create was never answered."""
    steady = running(jailed, "steady")
    fifo = jailed.tmp / "inflight.fifo"
    os.mkfifo(fifo)
    cfg = jailed.tmp / "inflight.cfg"
    cfg.write_text(f'name = "inflight"\nkernel = "{fifo}"\nmemory = 32\n')
    create = jailed.popen("create", str(cfg))
    try:
        deadline = time.monotonic() + 30
        while not (pid := next((d["pid"] for d in ask(jailed, "list").data["domains"]
                                if d["name"] == "inflight" and d.get("pid")), None)):
            assert time.monotonic() < deadline
            time.sleep(0.05)  # polling until its process exists
        inflight = int(pid)
        kill_daemon(jailed)
        create.communicate(timeout=30)
        assert create.returncode != 0  # never answered
        assert jailed.run("list").returncode == 0  # a new daemon
        domains = jailed.domains()
        assert "steady" in domains and int(domains["steady"][1]) == steady["domid"]
        assert "inflight" not in domains
        assert not Path(f"/proc/{inflight}").exists() or "zombie" in status(inflight).get("State", "")
        assert f"its process (pid {inflight})" in jailed.log()
    finally:
        create.kill()
    assert jailed.run("destroy", "steady").returncode == 0


def test_the_sweep_follows_no_planted_symlink(jailed: Xenopus) -> None:
    """A domain's directory is writable by its process: one that refuses adoption could
    leave control.sock as a symlink to another domain's socket (or any host service's).
    The sweep kills only a process of that domain, so the other domain lives on."""
    victim = running(jailed, "victim")
    planted = Path(ipc.domain_dir(999, str(jailed.run_dir)))
    planted.mkdir(parents=True)
    (planted / "control.sock").symlink_to(ipc.control_socket_path(victim["domid"], str(jailed.run_dir)))
    kill_daemon(jailed)
    assert jailed.run("list").returncode == 0  # a new daemon adopts, then sweeps 999
    assert "domain 999: pid" in jailed.log() and "is not its process; left alone" in jailed.log()
    assert Path(f"/proc/{victim['pid']}").exists() and "zombie" not in status(victim["pid"])["State"]
    assert not planted.exists()
    assert jailed.run("destroy", "victim").returncode == 0


def test_a_domain_that_hides_its_control_socket_is_still_ended(jailed: Xenopus) -> None:
    """A compromised domain process replaces its control.sock with a symlink to another
    domain's: its adoption fails (that socket's peer is not the pid in the table), the
    symlink leads the sweep to a process it leaves alone, and the liar itself, found by
    the table's pid and its jail uid, is ended."""
    victim, liar = running(jailed, "victim2"), running(jailed, "liar")
    sock = Path(ipc.control_socket_path(liar["domid"], str(jailed.run_dir)))
    sock.unlink()
    sock.symlink_to(ipc.control_socket_path(victim["domid"], str(jailed.run_dir)))
    kill_daemon(jailed)
    assert jailed.run("list").returncode == 0
    domains = jailed.domains()
    assert "victim2" in domains and "liar" not in domains
    assert f"domain {liar['domid']} (liar) was lost while no daemon ran" in jailed.log()
    assert Path(f"/proc/{victim['pid']}").exists() and "zombie" not in status(victim["pid"])["State"]
    assert not Path(f"/proc/{liar['pid']}").exists() or "zombie" in status(liar["pid"]).get("State", "")
    assert jailed.run("destroy", "victim2").returncode == 0


def xenstore_exists(x: Xenopus, path: str) -> bool:
    env = {**os.environ, "XENSTORED_PATH": str(x.run_dir / "xenstored.sock")}
    return subprocess.run(["xenstore-exists", path], env=env, capture_output=True,
                          timeout=30).returncode == 0


def test_every_exit_is_recorded_and_a_dead_corpse_leaves_nothing(jailed: Xenopus) -> None:
    """Every domain's end is logged with its process's exit status and usage (it used to
    say "exited with status None"); a preserved domain whose process died is destroyed
    with its XenStore home, its /vm/UUID and its run-dir entry (they leaked)."""
    uuid = "5e1f0c2a-9d3b-4c7e-8a41-0d2c6b7e9f13"
    dom = running(jailed, "corpse", on_crash="preserve", uuid=uuid)
    domid = dom["domid"]
    assert xenstore_exists(jailed, f"/local/domain/{domid}")
    assert xenstore_exists(jailed, f"/vm/{uuid}")
    os.kill(dom["pid"], signal.SIGKILL)  # its process dies: a crash, preserved
    deadline = time.monotonic() + 30
    while jailed.domains().get("corpse", [""] * 5)[4] != "---sc-":
        assert time.monotonic() < deadline, jailed.domains()
        time.sleep(0.05)  # polling what a user sees
    assert "crashed: domain process killed by SIGKILL" in jailed.log()
    assert jailed.run("destroy", "corpse").returncode == 0
    assert not xenstore_exists(jailed, f"/local/domain/{domid}")
    assert not xenstore_exists(jailed, f"/vm/{uuid}")
    assert not Path(ipc.domain_dir(domid, str(jailed.run_dir))).exists()
    tidy = running(jailed, "tidy")
    assert jailed.run("destroy", "tidy").returncode == 0
    ended = re.search(rf"domain {tidy['domid']} \(tidy\) destroyed: .*; exit status (\S+), "
                      r"max RSS (\d+) KiB", jailed.log())
    assert ended and ended[1] != "None" and int(ended[2]) > 0, jailed.log()[-2000:]
    assert "exited with status None" not in jailed.log()


def test_restart_keeps_its_tap_inside_the_jail(jailed: Xenopus) -> None:
    dom = running(jailed, "jail-vif", on_reboot="restart", vif=["model=virtio, vifname=xjail0"])
    assert Path("/sys/class/net/xjail0").exists()
    assert jailed.run("reboot", "-F", "jail-vif").returncode == 0
    deadline = time.monotonic() + 60
    while (after := next(d for d in ask(jailed, "list").data["domains"]
                         if d["name"] == "jail-vif"))["reason"] != "reboot":
        assert time.monotonic() < deadline
        time.sleep(0.1)  # polling what a user sees; the reset is asynchronous to the reply
    assert after["pid"] == dom["pid"] and after["state"] == "running", after
    devices = ask(jailed, "devices", dom="jail-vif").data["devices"]
    assert "xjail0" in str(devices)
    assert Path("/sys/class/net/xjail0").exists()
    assert jailed.run("destroy", "jail-vif").returncode == 0
    assert not Path("/sys/class/net/xjail0").exists()  # gone with its domain process


def _libc_base(pid: int) -> int:
    """Where the process's C library is mapped: what ASLR moves per exec."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if re.search(r"/libc[.-]", line):
            return int(line.split("-", 1)[0], 16)
    raise AssertionError(f"no libc mapping in /proc/{pid}/maps")


def test_each_domain_has_its_own_address_space_layout(jailed: Xenopus) -> None:
    if Path("/proc/sys/kernel/randomize_va_space").read_text().strip() == "0":
        pytest.skip("this host has ASLR turned off (kernel.randomize_va_space = 0)")
    doms = [running(jailed, f"jail-aslr{i}") for i in range(3)]
    daemon = (jailed.run_dir / "xenopus.pid").read_text().split()[0]
    zygote = int(subprocess.run(["pgrep", "-P", daemon, "-f", "xenopus.toolstack.zygote"],
                                capture_output=True, text=True).stdout.split()[0])
    bases = {_libc_base(d["pid"]) for d in doms}
    # Three exec'd processes: a shared base would be a fork of one parent.
    assert len(bases) == 3 and _libc_base(zygote) not in bases, bases
    for d in doms:
        assert ask(jailed, "info", dom=d["name"]).data["jail"]["aslr"] == "on"
        # The later two were replacement spares, which may start niced: not as domains.
        assert os.getpriority(os.PRIO_PROCESS, d["pid"]) == 0
        assert jailed.run("destroy", d["name"]).returncode == 0


def test_spares_0_forks_from_the_zygote_and_says_so(tmp_path: Path, guests: Path) -> None:
    x = Xenopus(tmp_path / "run", tmp_path)
    x.env = {**x.env, "XENOPUS_SPARES": "0"}
    try:
        dom = running(x, "shared-layout")
        layer = ask(x, "info", dom="shared-layout").data["jail"]["aslr"]
        assert layer.startswith("shared: forked from the zygote"), layer
        assert dom["pid"] and x.run("destroy", "shared-layout").returncode == 0
    finally:
        x.run("daemon", "--stop", timeout=60)


def test_simultaneous_autostarts_start_one_daemon(tmp_path: Path) -> None:
    """Commands that find no daemon at once take turns: one starts it, the rest use it
    (without the lock the losers of the pid-file race failed, "did not start")."""
    x = Xenopus(tmp_path / "run", tmp_path)
    procs = [x.popen("list") for _ in range(4)]
    try:
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
        for code, out, err in results:
            assert code == 0, err
            assert b"Domain-0" in out
        starts = re.findall(r"xenopus daemon (\d+) listening", x.log())
        assert len(starts) == 1, x.log()
    finally:
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        x.run("daemon", "--stop", timeout=60)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def zombie(pid: int) -> bool:
    try:
        return status(pid)["State"].startswith("Z")
    except FileNotFoundError:
        return False


def test_a_spare_that_dies_while_no_domain_runs_is_reaped_and_replaced(tmp_path: Path) -> None:
    """The zygote collected exits only while a domain ran: a spare killed on an idle host
    stayed a zombie and was never replaced."""
    x = Xenopus(tmp_path / "run", tmp_path)
    try:
        assert x.run("list").returncode == 0
        daemon = int((x.run_dir / "xenopus.pid").read_text())
        (zygote,) = [p for p in children(daemon)
                     if b"xenopus.toolstack.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()]
        deadline = time.monotonic() + 60
        while len(children(zygote)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the spares' start, bounded
        spares = children(zygote)
        assert len(spares) == 2, spares
        os.kill(spares[0], signal.SIGKILL)
        while time.monotonic() < deadline and (
                zombie(spares[0]) or spares[0] in children(zygote) or len(children(zygote)) < 2):
            time.sleep(0.05)
        assert not zombie(spares[0])
        assert spares[0] not in children(zygote) and len(children(zygote)) == 2
    finally:
        x.run("daemon", "--stop", timeout=60)


def test_pv_backends_reconnect_to_a_restarted_daemons_xenstore(jailed: Xenopus) -> None:
    """A daemon killed with a Xen PV disk's backend up (InitWait, the guest paused): the
    next daemon adopts the domain and hands the backend a new XenStore connection; the
    device's nodes are back and the guest's blkfront then connects and does its I/O
    through the new store. (Before, the backend kept its dead connection: the device
    was gone from the store and the frontend waited for a Connected that never came.)"""
    disk = jailed.tmp / "reconnect.img"
    disk.write_bytes(b"")
    os.truncate(disk, 1 << 20)
    os.chmod(disk, 0o666)  # the jailed uid opens it (the jail has no root)
    cfg = jailed.config("pv-reconnect", "xenblk.elf", xen_platform=1, memory=64,
                        disk=[f"{disk},raw,xvda,rw"], cmdline="vdev=51712 sector=8 count=2")
    assert jailed.run("create", "-q", "-p", str(cfg)).returncode == 0
    try:
        before = jailed.run("block-list", "pv-reconnect", check=True).stdout
        kill_daemon(jailed)
        assert jailed.run("list").returncode == 0  # a new daemon, which adopts it
        assert "PV backends reconnected" in (jailed.run_dir / "log" / "pv-reconnect.log").read_text()
        assert jailed.run("block-list", "pv-reconnect", check=True).stdout == before
        con = jailed.popen("console", "pv-reconnect")
        assert jailed.run("unpause", "pv-reconnect").returncode == 0
        out, _ = con.communicate(timeout=120)
        assert b"RESULT: PASS xenblk" in out, out
        start = 8 * 512
        data = disk.read_bytes()[start : start + 2 * 512]
        assert data == bytes((o // 512 * 131 + (o % 512) * 7 + 0x5A) & 0xFF
                             for o in range(start, start + 2 * 512))
    finally:
        jailed.run("destroy", "pv-reconnect")


def console_until(x: Xenopus, name: str, marker: bytes, timeout: float = 120) -> bytes:
    """A fresh `console` (history first) read until `marker`, bounded by `timeout`."""
    con = x.popen("console", name)
    assert con.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, seen
            if select.select([con.stdout], [], [], left)[0]:
                chunk = os.read(con.stdout.fileno(), 4096)
                assert chunk, f"console ended before {marker!r}: {seen!r}"
                seen += chunk
        return seen
    finally:
        con.kill()
        con.communicate()


def test_a_connected_pv_disk_detaches_after_a_daemon_restart(jailed: Xenopus) -> None:
    """The guest's blkfront connected and did its I/O before the daemon was killed (with
    the domain's messages unread: its control stream is reset, not ended); after the
    restart the device is listed Connected and `block-detach` works end to end: the
    backend's nodes and its watch of the frontend are on the new store, so the guest sees
    its backend close, closes, and its device goes. (The guest's own watches, which the
    ring proxy sets again, are tests/unit/test_store_proxy.py's.)"""
    disk = jailed.tmp / "detach.img"
    disk.write_bytes(b"")
    os.truncate(disk, 1 << 20)
    os.chmod(disk, 0o666)
    cfg = jailed.config("pv-detach", "xenblk.elf", xen_platform=1, memory=64,
                        on_poweroff="preserve", disk=[f"{disk},raw,xvda,rw"],
                        cmdline="vdev=51712 sector=8 count=2 wait_detach=1 timeout_ms=120000")
    assert jailed.run("create", "-q", str(cfg)).returncode == 0
    try:
        console_until(jailed, "pv-detach", b"xenblk: read back, pattern ok")
        kill_daemon(jailed)
        assert jailed.run("list").returncode == 0  # a new daemon, which adopts it
        rows = jailed.run("block-list", "pv-detach", check=True).stdout.splitlines()
        assert rows[1].split()[0] == "51712" and rows[1].split()[3] == "4", rows  # Connected
        detach = jailed.run("block-detach", "pv-detach", "xvda")
        assert detach.returncode == 0, detach.stderr
        out = console_until(jailed, "pv-detach", b"RESULT: ")
        assert b"xenblk: closed on the backend's request" in out, out
        assert b"RESULT: PASS xenblk" in out, out
        assert jailed.run("block-list", "pv-detach", check=True).stdout.splitlines()[1:] == []
    finally:
        jailed.run("destroy", "pv-detach")
