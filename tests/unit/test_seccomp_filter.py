"""The seccomp filter the zygote compiles once and each domain process loads (a sealed
memfd), checked in a child process so the test runner stays unfiltered."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from xenopus.domain import jail, seccomp_policy

pytest.importorskip("pyseccomp", reason="libseccomp's binding (pyseccomp) is not installed")


def in_child(fn) -> int:
    """Run `fn` in a forked child; its exit status (or -signal)."""
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:  # noqa: BLE001
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def compiled() -> int:
    fd = seccomp_policy.compile_filter(log_only=False, ioctls=jail.IOCTLS)
    yield fd
    os.close(fd)


def test_the_compiled_filter_is_sealed_and_a_bpf_program(compiled: int) -> None:
    seals = fcntl.fcntl(compiled, fcntl.F_GET_SEALS)
    assert seals & seccomp_policy.SEALS == seccomp_policy.SEALS
    size = os.fstat(compiled).st_size
    assert size > 0 and size % seccomp_policy.SOCK_FILTER_SIZE == 0
    with pytest.raises(OSError):
        os.pwrite(compiled, b"\0" * 8, 0)


def test_a_loaded_filter_allows_the_list_and_kills_the_rest(compiled: int) -> None:
    def allowed() -> int:
        jail._no_new_privs()
        seccomp_policy.load_filter(compiled)
        os.getpid()  # allowed
        r, w = os.pipe()
        os.write(w, b"x")
        return 0 if os.read(r, 1) == b"x" else 1

    def forbidden() -> int:
        jail._no_new_privs()
        seccomp_policy.load_filter(compiled)
        os.chroot("/")  # outside the list: SIGSYS
        return 0

    assert in_child(allowed) == 0
    assert in_child(forbidden) == -31  # SIGSYS: SCMP_ACT_KILL_PROCESS


def test_every_thread_gets_the_filter(compiled: int) -> None:
    """TSYNC: a thread started before the load is filtered too."""
    import threading

    def run() -> int:
        go, done = threading.Event(), threading.Event()

        def other() -> None:
            go.wait()
            os.chroot("/")
            done.set()

        t = threading.Thread(target=other)
        t.start()
        jail._no_new_privs()
        seccomp_policy.load_filter(compiled)
        go.set()
        done.wait(10)
        return 0

    assert in_child(run) == -31


def test_an_unsealed_or_malformed_filter_is_refused() -> None:
    fd = os.memfd_create("x", os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"\0" * 8)
        with pytest.raises(OSError) as e:
            seccomp_policy.load_filter(fd)
        assert e.value.errno == errno.EPERM
        os.write(fd, b"\0" * 3)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seccomp_policy.SEALS)
        with pytest.raises(OSError) as e:
            seccomp_policy.load_filter(fd)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize("call", ["tiocgwinsz", "af_inet", "af_netlink"])
def test_ioctls_and_sockets_outside_the_list_kill(compiled: int, call: str) -> None:
    """ioctl only with the requests of kvm/uapi.py, devices/tap.py and FIO(N)CLEX/FIONBIO;
    socket only AF_UNIX. A terminal ioctl (TIOCSTI's family) on a pipe would be ENOTTY
    unfiltered, and an AF_INET or AF_NETLINK socket would open: here each is SIGSYS."""
    import socket
    import termios

    def allowed() -> int:
        r, w = os.pipe()
        jail._no_new_privs()
        seccomp_policy.load_filter(compiled)
        fcntl.ioctl(r, termios.FIOCLEX)  # on the list
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        if os.path.exists("/dev/kvm"):
            kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
            assert fcntl.ioctl(kvm, 0xAE00) == 12  # KVM_GET_API_VERSION
        return 0

    def forbidden() -> int:
        r, w = os.pipe()
        jail._no_new_privs()
        seccomp_policy.load_filter(compiled)
        if call == "tiocgwinsz":
            fcntl.ioctl(r, termios.TIOCGWINSZ, b"\0" * 8)
        elif call == "af_inet":
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        return 0

    assert in_child(allowed) == 0
    assert in_child(forbidden) == -31
