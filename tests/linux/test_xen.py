"""Xen-aware Linux (xen_platform = 1) boots to userspace on Linux's own Xen support.

Debian's 6.1 kernel uses the hypercall page (the trap path); 6.12 issues `vmcall`
directly (the in-kernel path where KVM has KVM_CAP_XEN_HVM). The guest must find Xen
(/sys/hypervisor/type), run on the Xen clock, bring xenbus up and see time advance
(tests/linux/guest/checks/xen.sh).
"""

from __future__ import annotations

import pytest

from tests.linux.linuxguest import Xenopus, kernel_file

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
XEN_BOOT_TIMEOUT = 300.0
# The PV console (a Xen PVH guest has no legacy serial port); early messages go through
# console_io to the host log (`xenopus dmesg`, shown when a boot times out). Warnings too:
# where a Xen-aware boot stops, and why, is the evidence this test gives.
XEN_CONSOLE = "console=hvc0 earlyprintk=xen loglevel=5 panic=-1"


@pytest.mark.parametrize("release", ["6.1", "6.12"])
def test_xen_aware_linux_boots_to_userspace(xenopus: Xenopus, release: str) -> None:
    name = f"xen-{release}".replace(".", "_")
    cfg = xenopus.config(name, kernel_file(release, "pvh"), "xen", xen_platform=1,
                         cmdline=XEN_CONSOLE)
    boot = xenopus.boot(name, cfg, timeout=XEN_BOOT_TIMEOUT)
    boot.assert_passed("xen")
