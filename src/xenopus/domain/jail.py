"""The domain process's jail: what a compromised domain process is left with.

A domain process runs guest-facing code (device models, Xen backends), so it is treated
as hostile once its guest runs, as Xen treats a device model under `dm_restrict` and
Firecracker its VMM under the jailer. The jail is applied in two steps:

- `enter_early` (single-threaded, still root, before the guest is built): the process title,
  IPC/UTS/mount namespaces (the PID namespace is entered at fork, by the zygote), the
  capability bounding set and ambient set emptied, a per-domain cgroup v2, and a new root
  that holds only what the domain needs (Python's code read-only, its disk and kernel
  files, `/dev/kvm`, its run-directory entries, a `/proc` of its own PID namespace);
- `enter_late` (the guest is built: /dev/kvm, memfds, taps, disks and sockets are open;
  no vCPU has run yet): a network namespace, rlimits, a per-domain unprivileged uid/gid
  (every capability goes with root), `no_new_privs`, and a seccomp-BPF allow-list with
  `ioctl` limited to the KVM, tap and terminal requests xenopus makes.

A mechanism the host lacks does not stop the domain: its layer is reported as missing,
with the reason, in the domain log and in the domain process's `info` (`Jail.layers`).

Settings come from the environment the daemon passes down:
  XENOPUS_JAIL_UIDS   "BASE:COUNT" — domain N runs as uid and gid BASE+N (default
                      524288:65536, the range systemd-nspawn leaves to containers)
  XENOPUS_CGROUP      a delegated cgroup v2 directory for the per-domain cgroups
                      (default: /sys/fs/cgroup/xenopus when the root cgroup is v2)
  XENOPUS_JAIL_DEBUG  debug only, never set by default: "log" makes seccomp log a
                      forbidden call instead of killing; "hooks" enables test-only steps
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import stat
import sysconfig
import termios
from collections.abc import Iterable
from dataclasses import dataclass, field

import xenopus
from xenopus import held_files, host
from xenopus.devices import tap
from xenopus.domain.config import DomainConfig
from xenopus.kvm import uapi
from xenopus.kvm.uapi import KVMIO

try:  # imported here, in the zygote, not in every domain process
    import setproctitle
except ImportError:  # titles fall back to the kernel's 15-byte comm
    setproctitle = None  # type: ignore[assignment]

log = logging.getLogger("xenopus.domain")

_libc = ctypes.CDLL(None, use_errno=True)

# <linux/sched.h> clone/unshare flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
# <linux/prctl.h>
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# <linux/capability.h>: capset's header and one set for each 32 capabilities.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_pivot_root = host.syscall_number("pivot_root")  # noqa: N816 - glibc has no wrapper
SYS_capset = host.syscall_number("capset")  # noqa: N816

DEFAULT_UIDS = (524288, 65536)
CGROUP_ROOT = "/sys/fs/cgroup"
# A domain process's own memory beyond guest RAM (Python, the code, device buffers): its
# RSS less guest RAM is ~25 MiB for a minimal guest (benchmarks/startup.py); twice that
# leaves room for disk and network buffers.
MEMORY_OVERHEAD = 64 << 20
CPU_PERIOD_US = 100_000  # cgroup v2's default cpu.max period
CGROUP_CONTROLLERS = ("cpu", "memory", "pids")  # what the per-domain cgroups use
# Threads a domain process may have beyond one per vCPU (device workers, timers, the
# asyncio executor); counted against RLIMIT_NPROC, which is per uid.
SPARE_THREADS = 64
MAX_FDS = 4096
# Paths Python and the C libraries it loaded may still read: mounted read-only in the jail.
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/kvm", "/dev/net/tun")

ALL_LAYERS = ("pidns", "namespaces", "mount", "cgroup", "netns", "rlimits", "uid", "caps",
              "no_new_privs", "seccomp")


def debug_flags() -> set[str]:
    """XENOPUS_JAIL_DEBUG's words (debug only; empty in production)."""
    return set(os.environ.get("XENOPUS_JAIL_DEBUG", "").replace(",", " ").split())


def uid_range() -> tuple[int, int]:
    text = os.environ.get("XENOPUS_JAIL_UIDS", "")
    if not text:
        return DEFAULT_UIDS
    base, _, count = text.partition(":")
    return int(base), int(count or "1")


class JailError(OSError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise JailError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {source} on {target}")


def set_process_title(title: str) -> None:
    """What ps/top show: argv (setproctitle) and the kernel's comm (PR_SET_NAME)."""
    if setproctitle is not None:
        setproctitle.setproctitle(title)
    _libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)


@dataclass
class Jail:
    """One domain process's jail and what each layer came to ("on", or why not)."""

    domid: int
    config: DomainConfig
    run_dir: str
    layers: dict[str, str] = field(default_factory=dict)
    host_pid: int = field(default_factory=os.getpid)
    # The zygote's compiled seccomp filter (a sealed memfd, seccomp_policy.compile_filter);
    # None: compile it here.
    seccomp_fd: int | None = None

    def _layer(self, name: str, fn, *args) -> bool:
        try:
            fn(*args)
        except (OSError, ValueError, ImportError) as e:
            self.layers[name] = f"missing: {e}"
            log.warning("domain %d: jail layer %s is missing: %s", self.domid, name, e)
            return False
        self.layers.setdefault(name, "on")
        return True

    # -- before the guest is built (single-threaded, root) -----------------------------
    def enter_early(self) -> None:
        # The host's pid: the process may be pid 1 of its own namespace now.
        self.host_pid = int(os.readlink("/proc/self"))
        if os.getpid() == 1:
            self.layers["pidns"] = "on"
        else:
            self.layers["pidns"] = "missing: the zygote could not make a PID namespace"
        self._layer("namespaces", self._namespaces)
        self._layer("caps", self._drop_bounding_set)
        self._layer("cgroup", self._cgroup)
        if self.layers["namespaces"] == "on":
            if not self._layer("mount", self._new_root) and self.layers["pidns"] == "on":
                # The host's /proc would name our threads by the wrong pids.
                self._layer("proc", _mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            self.layers["mount"] = "missing: no mount namespace"

    def _namespaces(self) -> None:
        unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)
        name = f"xenopus-d{self.domid}".encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
        # Nothing mounted in here reaches the host's namespace.
        _mount("none", "/", None, MS_REC | MS_PRIVATE)

    def _drop_bounding_set(self) -> None:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT")

    def _cgroup(self) -> None:
        missing = enter_cgroup(cgroup_base(), self.domid, self.config.memory << 20,
                               self.config.vcpus)
        if missing:
            self.layers["cgroup"] = (f"on (without {', '.join(missing)}: not offered to"
                                     f" {cgroup_base()})")

    def _new_root(self) -> None:
        """pivot_root into a tmpfs holding only what this domain reaches by path."""
        root = os.path.join(self.run_dir, "domains", str(self.domid), "root")
        os.makedirs(root, mode=0o700, exist_ok=True)
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        ro = [*SYSTEM_DIRS, *(p for p in PYTHON_PATHS if os.path.isdir(p)),
              self.config.kernel, *([self.config.ramdisk] if self.config.ramdisk else []),
              *([self.config.pvshim_path] if self.config.pvshim and self.config.pvshim_path else [])]
        rw = [os.path.join(self.run_dir, "domains", str(self.domid)),
              os.path.join(self.run_dir, "xenstored.sock")]
        for disk in self.config.disks:
            (ro if disk.read_only else rw).append(disk.target)
        for path in ro:
            _bind(root, path, read_only=True)
        for path in rw:
            _bind(root, path, read_only=False)
        for dev in DEVICES:
            _bind(root, dev, read_only=False)
        proc = os.path.join(root, "proc")
        os.makedirs(proc, exist_ok=True)
        _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        old = os.path.join(root, ".old")
        os.makedirs(old, exist_ok=True)
        if _libc.syscall(SYS_pivot_root, root.encode(), old.encode()) != 0:
            # A root that is the initramfs, or a chroot (a nested test host's 9p root),
            # cannot be pivoted away from: chroot instead, which holds once the
            # capabilities are gone and seccomp forbids chroot.
            why = os.strerror(ctypes.get_errno())
            os.rmdir(old)
            os.chroot(root)
            os.chdir("/")
            self.layers["mount"] = f"on (chroot: pivot_root refused: {why})"
        else:
            os.chdir("/")
            _check(_libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
            os.rmdir("/.old")
        _mount("none", "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    # -- the guest is built, no vCPU has run ---------------------------------------------
    def enter_late(self, thread_count: int) -> None:
        self._layer("netns", unshare, CLONE_NEWNET)
        self._layer("rlimits", self._rlimits, thread_count)
        if self._layer("uid", self._switch_user):
            self.layers["caps"] = self.layers.get("caps", "on")
        else:
            self.layers["caps"] = "missing: root keeps its capabilities (no uid switch)"
        self._layer("no_new_privs", _no_new_privs)
        self._layer("seccomp", self._seccomp)
        # Hand back what building the filter and the root left on the heap: each domain
        # process's private pages are what one more domain costs the host.
        _libc.malloc_trim(0)
        missing = {k: v for k, v in self.layers.items() if v != "on"}
        if missing:
            log.warning("domain %d: jailed without: %s", self.domid,
                        "; ".join(f"{k} ({v})" for k, v in missing.items()))
        else:
            log.info("domain %d: jailed (%s)", self.domid, ", ".join(self.layers))

    def _rlimits(self, thread_count: int) -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_FDS, MAX_FDS))
        threads = thread_count + self.config.vcpus + SPARE_THREADS
        resource.setrlimit(resource.RLIMIT_NPROC, (threads, threads))

    def _switch_user(self) -> None:
        base, count = uid_range()
        if self.domid >= count:
            raise JailError(errno.ERANGE, f"domain {self.domid} is outside the uid range {base}:{count}")
        uid = base + self.domid
        # What a rebuild (an action "restart") opens again stays open from here on, with
        # root's rights: that uid may not be allowed to open it (held_files).
        cfg = self.config
        if "restart" in (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash):
            for path, flags in self._reopened():
                try:
                    held_files.hold(path, flags)
                except OSError as e:  # gone since the build: the rebuild will say so
                    log.warning("domain %d: cannot keep %s open for a restart: %s",
                                self.domid, path, e.strerror)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # glibc applies it to every thread; the kernel drops
        _capset_zero()               # every capability of each as it leaves uid 0

    def _reopened(self) -> Iterable[tuple[str, int]]:
        """What a rebuild opens, with the open flags it uses (boot/layout.open_file,
        devices/disk.DiskImage)."""
        yield self.config.kernel, os.O_RDONLY
        if self.config.ramdisk:
            yield self.config.ramdisk, os.O_RDONLY
        if self.config.pvshim and self.config.pvshim_path:
            yield self.config.pvshim_path, os.O_RDONLY
        for disk in self.config.disks:
            if disk.format == "empty":
                continue
            flags = os.O_RDONLY if disk.read_only else os.O_RDWR
            yield disk.target, flags
            if disk.direct_io_safe:
                yield disk.target, flags | os.O_DIRECT

    def _seccomp(self) -> None:
        from xenopus.domain import seccomp_policy

        fd, self.seccomp_fd = self.seccomp_fd, None
        if fd is None:
            seccomp_policy.install(log_only="log" in debug_flags(), ioctls=IOCTLS)
            return
        try:
            seccomp_policy.load_filter(fd)
        finally:
            os.close(fd)


def _python_paths() -> list[str]:
    """Where Python's code lives: the standard library and site directories, the
    directories PYTHONPATH adds (dependencies installed there rather than in a site
    directory) and the directory xenopus is imported from (not sys.path's working
    directory)."""
    paths = sysconfig.get_paths()
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    return [*(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")), *extra,
            os.path.dirname(os.path.dirname(os.path.abspath(xenopus.__file__)))]


def _bind(root: str, path: str, read_only: bool) -> None:
    """Mount `path` at the same place under `root`. A symlink stays a symlink, to its
    fully resolved target, which is bound too: the link's own text may be relative
    or name a path through other links (a kernel in a checkout whose `linux/` is a link)
    that the jail's real directories would resolve elsewhere, or not at all."""
    if not os.path.lexists(path):
        return
    target = os.path.join(root, path.lstrip("/"))
    if os.path.lexists(target):
        return  # inside a directory already bound
    os.makedirs(os.path.dirname(target), exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        # Relative to where the link lands inside `root` (its directory as the jail's own
        # links resolve it), so that it resolves the same before the pivot and after.
        top = os.path.realpath(root)
        here = "/" + os.path.relpath(os.path.realpath(os.path.dirname(target)), top)
        os.symlink(os.path.relpath(real, here), target)
        _bind(root, real, read_only)
        return
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(target, exist_ok=True)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount(path, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _capset_zero() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_capset, ctypes.byref(header), data), "capset")


def _allowed_ioctls() -> tuple[int, ...]:
    """The ioctl requests a jailed domain process may make: every KVM ioctl (kvm/uapi.py),
    the tap ones (devices/tap.py) and the fd flags Python's os module sets by ioctl."""
    allowed = {value for name, value in vars(uapi).items()
               if name.startswith("KVM_") and isinstance(value, int) and (value >> 8) & 0xFF == KVMIO}
    allowed |= {value for name, value in vars(tap).items()
                if name.startswith("TUN") and isinstance(value, int) and name != "TUN_DEVICE"}
    allowed |= {termios.FIOCLEX, termios.FIONCLEX, termios.FIONBIO}
    return tuple(sorted(allowed))


# Computed once, in the zygote: walking modules in each domain process would touch (and so
# copy) the zygote's pages that hold them.
IOCTLS = _allowed_ioctls()
PYTHON_PATHS = tuple(sorted(set(_python_paths())))


# -- the credit schedulers' weight and cap on the domain's cgroup (xl sched-credit) --------
CREDIT_WEIGHT = 256  # sched_credit.c / sched_credit2.c: CSCHED_DEFAULT_WEIGHT
CGROUP_V1_CPU = os.path.join(CGROUP_ROOT, "cpu")  # a v1 host's cpu hierarchy
CGROUP_V2_WEIGHT = 100  # cgroup-v2.rst: cpu.weight's default (range 1-10000)
CGROUP_V1_SHARES = 1024  # sched-design-CFS / cgroup-v1 cpu.shares' default (min 2)


def cgroup_base() -> str:
    """Where the jail makes the per-domain cgroups (v2)."""
    return os.environ.get("XENOPUS_CGROUP") or os.path.join(CGROUP_ROOT, "xenopus")


def set_cpu_share(domid: int, pid: int, weight: int, cap: int, vcpus: int) -> str:
    """Give domain `domid` (its process `pid`, a host pid) a credit weight and cap, as
    the Linux scheduler can: a weight relative to the default 256 becomes the cgroup's
    CPU weight (the same proportion of the controller's default), a cap (percent of one
    CPU, 0: none) its CFS bandwidth limit. Cgroup v2: the jail's own domain cgroup
    (cpu.weight, cpu.max; with no cap, the jail's limit of one CPU per vCPU). Cgroup v1
    (no delegation; the daemon is root): a cgroup of the cpu hierarchy the process is
    moved into (cpu.shares, cpu.cfs_quota_us), named by its pid (unique on the host, as
    domain ids are not across daemons). Which one took them; JailError when neither
    exists (the values are then only recorded)."""
    v2 = os.path.join(cgroup_base(), f"domain-{domid}")
    if os.path.exists(os.path.join(v2, "cpu.weight")):
        quota = cap * CPU_PERIOD_US // 100 if cap else vcpus * CPU_PERIOD_US
        _write_cgroup(v2, "cpu.weight", max(1, min(10000, weight * CGROUP_V2_WEIGHT // CREDIT_WEIGHT)))
        _write_cgroup(v2, "cpu.max", f"{quota} {CPU_PERIOD_US}")
        return f"cgroup v2 {v2}"
    if os.path.exists(os.path.join(CGROUP_V1_CPU, "cpu.shares")):
        own = v1_cpu_cgroup(pid)
        os.makedirs(own, exist_ok=True)
        _write_cgroup(own, "cpu.shares", max(2, weight * CGROUP_V1_SHARES // CREDIT_WEIGHT))
        if os.path.exists(os.path.join(own, "cpu.cfs_quota_us")):
            _write_cgroup(own, "cpu.cfs_period_us", CPU_PERIOD_US)
            _write_cgroup(own, "cpu.cfs_quota_us", cap * CPU_PERIOD_US // 100 if cap else -1)
        elif cap:
            raise JailError(errno.ENOTSUP, f"{own}: no CFS bandwidth control (cpu.cfs_quota_us)"
                            " for the cap")
        _write_cgroup(own, "cgroup.procs", pid)  # every thread; new ones are born there
        return f"cgroup v1 {own}"
    raise JailError(errno.ENOTSUP, f"no cpu controller: neither {v2}/cpu.weight (cgroup v2,"
                    f" delegated) nor {CGROUP_V1_CPU}/cpu.shares (cgroup v1)")


def enter_cgroup(base: str, domid: int, ram_bytes: int, vcpus: int) -> list[str]:
    """Move this process into `base`/domain-`domid` (cgroup v2, made if need be) with its
    limits; the controllers of CGROUP_CONTROLLERS that `base` is not offered (its
    cgroup.controllers, what its parent delegates: cgroup-v2.rst "Enabling and Disabling")
    are left out, and returned, rather than failing the whole write."""
    parent = os.path.join(os.path.dirname(base.rstrip("/")), "cgroup.subtree_control")
    if not os.path.exists(parent):
        raise JailError(errno.ENOTSUP, f"no cgroup v2 delegation: {parent} is missing"
                        " (a cgroup v1 host, or XENOPUS_CGROUP not set)")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "cgroup.controllers")) as f:
        offered = set(f.read().split())
    enabled = [c for c in CGROUP_CONTROLLERS if c in offered]
    if enabled:
        with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join(f"+{c}" for c in enabled))
    own = os.path.join(base, f"domain-{domid}")
    os.makedirs(own, exist_ok=True)
    limits = {
        "memory": [("memory.max", str(ram_bytes + MEMORY_OVERHEAD))],
        "cpu": [("cpu.max", f"{vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}"), ("cpu.weight", "100")],
    }
    for controller in enabled:
        for name, value in limits.get(controller, []):
            _write_cgroup(own, name, value)
    _write_cgroup(own, "cgroup.procs", 0)
    return [c for c in CGROUP_CONTROLLERS if c not in offered]


def remove_cgroup(domid: int) -> bool:
    """Remove domain `domid`'s cgroup v2 directory once its process has gone (a cgroup
    holding a task cannot be: then False, as when there is none)."""
    try:
        os.rmdir(os.path.join(cgroup_base(), f"domain-{domid}"))
    except OSError:
        return False
    return True


def stale_cgroups(live: Iterable[int]) -> list[int]:
    """Domain ids with a cgroup directory under the base but not in `live`."""
    keep = set(live)
    try:
        names = os.listdir(cgroup_base())
    except OSError:
        return []
    out = []
    for name in names:
        prefix, _, number = name.partition("-")
        if prefix == "domain" and number.isdigit() and int(number) not in keep:
            out.append(int(number))
    return sorted(out)


def v1_cpu_cgroup(pid: int) -> str:
    return os.path.join(CGROUP_V1_CPU, "xenopus", f"pid-{pid}")


def remove_cpu_share(pid: int) -> None:
    """The v1 cgroup `set_cpu_share` made for process `pid`, once it has exited (the v2
    one is the jail's). Best effort: one still holding a task stays."""
    with contextlib.suppress(OSError):
        os.rmdir(v1_cpu_cgroup(pid))


def _write_cgroup(directory: str, name: str, value: object) -> None:
    path = os.path.join(directory, name)
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise JailError(e.errno or errno.EIO, f"{path}: {e.strerror}") from None
