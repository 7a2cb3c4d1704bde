"""The seccomp-BPF allow-list of a jailed domain process (libseccomp, through pyseccomp).

What the process still does once its guest runs: KVM_RUN and the other KVM ioctls,
eventfds and epoll (ioeventfd/irqfd, asyncio), the tap and disk I/O (readv/writev,
preadv/pwritev, fsync, fallocate), its sockets to the daemon (sendmsg/recvmsg with
SCM_RIGHTS for interdomain grant views, which arrive as memfds to mmap), timers, futexes,
threads (clone with CLONE_THREAD only: a new process is refused), and what the Python
runtime itself calls. A restart rebuilds the guest in place, so memfd_create, openat
(inside the jail's root) and AF_UNIX connect (the XenStore socket) stay.

Anything else kills the whole process (SCMP_ACT_KILL_PROCESS); the daemon reports the
domain as crashed by SIGSYS. With `log_only` (XENOPUS_JAIL_DEBUG=log, for building this
list) a forbidden call is allowed and logged by the kernel (audit type 1326).

The filter is the same for every domain, so the zygote compiles it once (`compile_filter`,
the only user of libseccomp) into a sealed memfd that every domain process inherits and
loads with seccomp(2) itself (`load_filter`): a domain process neither imports the
binding nor loads libseccomp (time and private memory per domain).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import termios

from xenopus import host
from xenopus.domain.jail import CLONE_THREAD

ALLOWED = (
    # memory
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "memfd_create", "mincore",
    # files and fds (paths resolve inside the jail's root)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
    "openat", "newfstatat", "fstat", "stat", "lstat", "statx", "readlink", "readlinkat",
    "getdents64", "access", "faccessat", "faccessat2", "getcwd", "fsync", "fdatasync",
    "fallocate", "ftruncate", "pipe2", "unlink", "unlinkat",
    # event loop, eventfds, timers
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
    "ppoll", "select", "pselect6", "eventfd2", "timerfd_create", "timerfd_settime",
    "timerfd_gettime", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
    "gettimeofday", "time",
    # sockets already open (the daemon, consoles); AF_UNIX ones only for new ones
    "sendmsg", "recvmsg", "sendto", "recvfrom", "sendmmsg", "recvmmsg", "accept4",
    "connect", "shutdown", "getsockname", "getpeername", "getsockopt", "setsockopt",
    # threads, signals, scheduling
    "futex", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "exit",
    "exit_group", "gettid", "getpid", "getppid", "tgkill", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "rt_sigtimedwait", "restart_syscall", "sched_yield",
    "sched_getaffinity", "sched_setaffinity", "getpriority", "setpriority",
    # identity and accounting
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "getrusage", "getrlimit", "prlimit64", "times", "uname", "sysinfo", "getrandom",
    "prctl", "arch_prctl",
)

# <linux/seccomp.h>; the system call's number is the host architecture's
SYS_seccomp = host.syscall_number("seccomp")  # noqa: N816
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SOCK_FILTER_SIZE = 8  # <linux/filter.h>: struct sock_filter { u16 code; u8 jt, jf; u32 k; }
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>: the kernel's limit on a classic BPF program
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def build(*, log_only: bool, ioctls: tuple[int, ...]):  # -> pyseccomp.SyscallFilter
    """The allow-list as a libseccomp filter, allowing the `ioctls` requests."""
    import pyseccomp as seccomp

    f = seccomp.SyscallFilter(defaction=seccomp.LOG if log_only else seccomp.KILL_PROCESS)
    f.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    for name in ALLOWED:
        f.add_rule(seccomp.ALLOW, name)
    # Threads only: glibc's pthread_create tries clone3 first (its flags are in memory a
    # filter cannot read), so clone3 says ENOSYS and glibc falls back to clone.
    f.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
    f.add_rule(seccomp.ALLOW, "socketpair", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
    for request in ioctls:
        # The kernel takes ioctl's request as an unsigned int: compare the low 32 bits.
        f.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    # Python's io asks whether every file it opens is a terminal: none is.
    f.add_rule(seccomp.ERRNO(errno.ENOTTY), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, termios.TCGETS))
    return f


def install(*, log_only: bool, ioctls: tuple[int, ...]) -> None:
    """Compile and load the filter in this process (on every thread: TSYNC; libseccomp
    sets no_new_privs too). For a domain process with no precompiled filter."""
    build(log_only=log_only, ioctls=ioctls).load()


def compile_filter(*, log_only: bool, ioctls: tuple[int, ...]) -> int:
    """The filter's BPF program (libseccomp's export) in a sealed memfd, for the domain
    processes to load (`load_filter`): nobody can change it once sealed. Inheritable."""
    fd = os.memfd_create("xenopus-seccomp", os.MFD_ALLOW_SEALING)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            build(log_only=log_only, ioctls=ioctls).export_bpf(out)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _SockFprog(ctypes.Structure):  # <linux/filter.h>: struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(fd: int) -> None:
    """Load the BPF program in memfd `fd` (from `compile_filter`) on every thread of this
    process: seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC) (seccomp(2); the
    caller has set no_new_privs). OSError if the kernel refuses it."""
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
        raise OSError(errno.EPERM, "the seccomp filter's memfd is not sealed")
    size = os.fstat(fd).st_size
    if size == 0 or size % SOCK_FILTER_SIZE or size // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise OSError(errno.EINVAL, f"the seccomp filter is {size} bytes: not a BPF program")
    program = ctypes.create_string_buffer(os.pread(fd, size, 0), size)
    prog = _SockFprog(size // SOCK_FILTER_SIZE, ctypes.addressof(program))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(SYS_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(e)}")
    if ret > 0:  # TSYNC: the thread that could not be synchronised
        raise OSError(errno.ESRCH, f"seccomp: thread {ret} could not take the filter")
