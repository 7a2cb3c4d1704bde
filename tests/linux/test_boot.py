"""Plain Linux (Xen off) boots to userspace under xenopus, then powers off.

Debian's 6.1 and 6.12 kernels through both loaders (PVH and bzImage), with 1 and with 4
vCPUs, with no timing hints on the command line: the guest must learn the TSC rate from
the hypervisor (kvmclock) and bring every vCPU up. The guest's /init reports `nproc`, its
clock source and that time advances (tests/linux/guest/checks/boot.sh).
"""

from __future__ import annotations

import pytest

from tests.linux.linuxguest import Xenopus, kernel_file

pytestmark = [pytest.mark.kvm, pytest.mark.linux]


@pytest.mark.parametrize(
    ("release", "image", "vcpus"),
    [("6.1", "pvh", 1), ("6.1", "bzimage", 1), ("6.12", "pvh", 1), ("6.12", "bzimage", 1),
     ("6.1", "pvh", 4), ("6.12", "bzimage", 4)],
    ids=lambda v: str(v) if not isinstance(v, int) else f"{v}cpu",
)
def test_plain_linux_boots_to_userspace(xenopus: Xenopus, release: str, image: str,
                                        vcpus: int) -> None:
    name = f"plain-{release}-{image}-{vcpus}".replace(".", "_")
    cfg = xenopus.config(name, kernel_file(release, image), "boot", vcpus=vcpus)
    boot = xenopus.boot(name, cfg)
    boot.assert_passed("boot")
    assert f"nproc={vcpus} " in boot.detail, boot.context()
    assert "clocksource=kvm-clock" in boot.detail, boot.context()
    assert not any("calibrate" in ln.lower() and "unable" in ln.lower() for ln in boot.lines), \
        boot.context()
