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
"""

from __future__ import annotations

import errno
import socket
import termios

import pyseccomp as seccomp

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


def install(*, log_only: bool, ioctls: tuple[int, ...]) -> None:
    """Load the filter on every thread of the process (TSYNC; it sets no_new_privs too),
    allowing the `ioctls` requests."""
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
    f.load()
