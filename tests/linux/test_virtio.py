"""Linux's own virtio drivers against xenopus's devices (Xen off).

- virtio-console and virtio-rng: /dev/hvc0 exists and /dev/hwrng (virtio_rng) gives data.
- virtio-blk as the root filesystem: the host builds an ext4 image with a copy of the
  guests' /init on it; the initramfs mounts /dev/vda and switches root to it; the guest
  reads the host's file, writes one with fsync and reports its checksum; after the
  power-off the host checks the filesystem (e2fsck) and reads the file back (debugfs).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.linux.conftest import NS
from tests.linux.linuxguest import CONSOLE, GUEST_SOURCES, LINUX, Xenopus, kernel_file

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

HOST_TEXT = "written-by-the-host"


def root_disk(tmp_path: Path, size_mib: int = 64) -> Path:
    """An ext4 image holding busybox, the guests' /init and checks, and host.txt."""
    for tool in ("mkfs.ext4", "debugfs", "e2fsck"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (e2fsprogs)")
    tree = tmp_path / "rootfs"
    for d in ("bin", "dev", "proc", "sys", "tmp", "checks"):
        (tree / d).mkdir(parents=True)
    shutil.copy(LINUX / "busybox", tree / "bin" / "busybox")
    shutil.copy(GUEST_SOURCES / "init", tree / "init")
    for check in (GUEST_SOURCES / "checks").glob("*.sh"):
        shutil.copy(check, tree / "checks" / check.stem)
    (tree / ".xenopus-root").write_text("")
    (tree / "host.txt").write_text(HOST_TEXT + "\n")
    image = tmp_path / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{size_mib}M"],
                   check=True)
    return image


def read_back(image: Path, path: str) -> bytes:
    out = image.with_suffix(".out")
    subprocess.run(["debugfs", "-R", f"dump {path} {out}", str(image)], check=True,
                   capture_output=True)
    return out.read_bytes()


@pytest.mark.parametrize("release", ["6.1", "6.12"])
def test_virtio_blk_root_filesystem(xenopus: Xenopus, tmp_path: Path, release: str) -> None:
    kernel = kernel_file(release, "pvh")
    image = root_disk(tmp_path)
    name = f"blk-{release}".replace(".", "_")
    cfg = xenopus.config(name, kernel, "blk", cmdline=f"{CONSOLE} xenopus.root=/dev/vda",
                         extra=f'disk = ["format=raw, vdev=vda, access=rw, target={image}"]\n')
    boot = xenopus.boot(name, cfg)
    boot.assert_passed("blk")
    assert f"host.txt={HOST_TEXT}" in boot.detail, boot.context()
    m = re.search(r"guest\.bin\.sha256=([0-9a-f]{64})", boot.detail)
    assert m, boot.context()
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"the guest left the filesystem unclean:\n{fsck.stdout}{fsck.stderr}"
    data = read_back(image, "/guest.bin")
    assert len(data) == 4 << 20
    assert hashlib.sha256(data).hexdigest() == m.group(1)


GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.2"
TAP = "xlt0"
STREAM_MIB = 100


def sender_script(mib: int, guest_ip: str = GUEST_IP, wait: float = 600) -> str:
    """A script that sends `mib` MiB of seeded random bytes to the guest's port 5555 once it
    listens, and prints their SHA-256. Connection attempts repeat while the guest boots (for
    up to `wait` seconds): it listens only after its ping, whose timing the host does not
    see."""
    return f"""
import hashlib, random, socket, time
data = random.Random(8).randbytes({mib} << 20)
print(hashlib.sha256(data).hexdigest(), flush=True)
deadline = time.monotonic() + {wait}
while True:
    try:
        s = socket.create_connection(("{guest_ip}", 5555), timeout=10)
        s.settimeout(None)  # the stream may stall for seconds on a loaded host
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
s.sendall(data)
s.close()
"""


SENDER = sender_script(STREAM_MIB)


def test_virtio_net_ping_and_tcp_stream(netns: Xenopus) -> None:
    kernel = kernel_file("6.1", "pvh")
    cfg = netns.config("net", kernel, "net", memory=512,
                       cmdline=f"{CONSOLE} xenopus.ip={GUEST_IP}/24 xenopus.peer={HOST_IP}",
                       extra=f'vif = ["vifname={TAP}"]\n')
    sender: list[subprocess.Popen] = []

    def host_side() -> None:
        subprocess.run(["ip", "-n", NS, "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
        subprocess.run(["ip", "-n", NS, "link", "set", TAP, "up"], check=True)
        sender.append(subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", SENDER],
                                       stdout=subprocess.PIPE, text=True))

    try:
        boot = netns.boot("net", cfg, paused=host_side)
        sent_sum, _ = sender[0].communicate(timeout=60)
    finally:
        for p in sender:
            p.kill()
    boot.assert_passed("net")
    assert any("ping: 3 of 3 echoes answered" in ln for ln in boot.lines), boot.context()
    assert f"received={STREAM_MIB << 20} sha256={sent_sum.strip()}" in boot.detail, boot.context()


def test_virtio_console_and_rng(xenopus: Xenopus) -> None:
    cfg = xenopus.config("vdev", kernel_file("6.1", "pvh"), "vdev",
                         extra="virtio_console = 1\nvirtio_rng = 1\n")
    boot = xenopus.boot("vdev", cfg)
    boot.assert_passed("vdev")
