"""A 32-bit protected-mode Xen guest (guests/xen32): Xen's compat ABI and the 32-bit
shared_info under xenopus, with paging off, PSE and PAE."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_xen import xen_boot

OUT = Path(__file__).resolve().parents[2] / "guests" / "out"


def hardware_virtualisation() -> bool:
    """VMX or SVM in this CPU: a KVM on it runs guest ring 0 natively."""
    flags = Path("/proc/cpuinfo").read_text()
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None


# The build machines' KVM has no VMX/SVM underneath and emulates guest ring 0; its emulator
# answers the move to CR0.PG of legacy (non-long-mode) PSE or PAE paging with #GP, the same
# under QEMU -accel kvm there. test_32_bit_paging_code_under_tcg shows the guest's paging
# code right on QEMU's TCG instead.
LEGACY_PAGING = pytest.mark.skipif(
    not hardware_virtualisation(),
    reason="32-bit PSE/PAE paging needs a KVM with VMX/SVM (this one emulates ring 0 and "
           "refuses legacy paging with #GP)")


@pytest.mark.kvm
@pytest.mark.parametrize("paging", ["none", pytest.param("pse", marks=LEGACY_PAGING),
                                    pytest.param("pae", marks=LEGACY_PAGING)])
def test_32_bit_guest_uses_the_compat_abi(xenopus: Xenopus, paging: str) -> None:
    r = xen_boot(xenopus, f"x32-{paging}", "xen32.elf", cmdline=f"paging={paging}", vcpus=2)
    out = r.stdout
    assert f"xenopus test guest: xen32 (32-bit protected mode, paging {paging})" in out, out
    assert "FAIL" not in out, out
    assert f"RESULT: PASS xen32 paging={paging}" in out, out
    # What only the compat layouts give: the 16-byte add_to_physmap, the i386 shared_info.
    assert "ok XENMEM_add_to_physmap(shared_info), 16-byte layout: rc 0" in out
    assert "ok HVM_PARAM_CALLBACK_IRQ rc 0; 32-bit shared_info wc_sec" in out
    # Issue 12's items in 32-bit mode: ballooning (the 20-byte reservation), pvclock, the
    # watchdog, vCPU bring-up from a 32-bit context, FIFO events (where they are offered).
    assert "the backend consumed them" in out  # the PV console ring
    assert "ok XENMEM_decrease_reservation (20-byte layout): 1 extent" in out
    assert "again: 0 extents" in out and "ok XENMEM_populate_physmap: 1 extent" in out
    assert "ok VCPUOP_register_vcpu_time_memory_area: version" in out
    assert "ok SCHEDOP_watchdog: id 1, removed: 0" in out
    assert "ok VCPUOP_initialise (32-bit context): 0, then -17" in out
    assert "ok VCPUOP_up again: it resumes after its VCPUOP_down (which returned 0)" in out, out
    assert ("ok FIFO event: port" in out and "ok EVTCHNOP_init_control checks: bad vCPU -2, "
            "bad offset -22, bad gfn -22" in out) or "ok FIFO event channels withheld" in out


@pytest.mark.parametrize("paging", ["pse", "pae"])
def test_32_bit_paging_code_under_tcg(paging: str) -> None:
    """The guest's PSE and PAE identity maps (and its LAPIC and IDT set-up, which run
    with them) on QEMU's TCG, without Xen: it gets to Xen discovery, says there is none,
    and ends by a triple fault that -no-reboot makes an exit."""
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (make deps)"
    proc = subprocess.run(
        [qemu, "-M", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-no-reboot",
         "-display", "none", "-serial", "stdio", "-kernel", str(OUT / "xen32.elf"),
         "-append", f"paging={paging}"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    out = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"(32-bit protected mode, paging {paging})" in out, out
    assert "EXCEPTION" not in out and "RESULT: FAIL xen32 no-xen" in out, out
