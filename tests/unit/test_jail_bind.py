"""The jail's bind mounts: a kernel or ramdisk named through symlinks is reachable inside.

Each case runs in a child process with its own mount namespace (unshare), as the domain
process does, so nothing is mounted on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenopus.domain import jail


def in_mount_namespace(root: Path, binds: list[Path], probe: Path) -> bytes:
    """Bind `binds` under `root` in a child's private mount namespace; return what the
    child reads at `probe` resolved inside `root` (as the jail sees it after pivot_root)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            jail.unshare(jail.CLONE_NEWNS)
            jail._mount("none", "/", None, jail.MS_REC | jail.MS_PRIVATE)
            jail._mount("tmpfs", str(root), "tmpfs", 0, "size=1m")
            for path in binds:
                jail._bind(str(root), str(path), read_only=True)
            os.chroot(root)
            with open(probe, "rb") as f:
                os.write(write, f.read())
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(write, f"ERR {type(e).__name__}: {e}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount namespaces and bind mounts, as the jail)")
    real = tmp_path / "store" / "linux"
    real.mkdir(parents=True)
    (real / "vmlinux-6.1").write_bytes(b"kernel image")
    (tmp_path / "jailroot").mkdir()
    return tmp_path


def test_a_symlinked_kernel_is_reachable_through_its_link(tree: Path) -> None:
    # checkout/linux -> ../store/linux (a worktree's link to the fetched kernels), and the
    # kernel itself a relative link: vmlinux -> vmlinux-6.1.
    checkout = tree / "checkout"
    checkout.mkdir()
    (checkout / "linux").symlink_to("../store/linux")
    (tree / "store" / "linux" / "vmlinux").symlink_to("vmlinux-6.1")
    kernel = checkout / "linux" / "vmlinux"
    assert in_mount_namespace(tree / "jailroot", [kernel], kernel) == b"kernel image"


def test_a_link_to_an_absolute_path_elsewhere(tree: Path) -> None:
    link = tree / "kernel"
    link.symlink_to(tree / "store" / "linux" / "vmlinux-6.1")
    assert in_mount_namespace(tree / "jailroot", [link], link) == b"kernel image"


def test_a_plain_file_is_bound_as_before(tree: Path) -> None:
    kernel = tree / "store" / "linux" / "vmlinux-6.1"
    assert in_mount_namespace(tree / "jailroot", [kernel], kernel) == b"kernel image"
