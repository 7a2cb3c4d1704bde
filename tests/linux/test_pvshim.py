"""PV guests through Xen's own PV shim (`type = "pv"`, `pvshim = 1`).

The shim (Xen 4.17 from Debian's source, `make shim`) boots as a PVH guest and issues
`vmcall`/`vmmcall` itself, so it needs KVM's in-kernel Xen path: it runs where KVM has
KVM_CAP_XEN_HVM (the nested host's 6.12 kernel). Behind it runs guests/pv/pvhello, a
64-bit PV kernel of the test kit: it maps shared_info and its rings with
update_va_mapping, writes on the PV console ring, reads its name from XenStore over the
store event channel and powers off with SCHEDOP_shutdown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.linux.linuxguest import Xenopus
from xenopus.kvm import Kvm
from xenopus.xen.hypercall import kernel_flags, kernel_path_available

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "build" / "shim" / "xen-shim"
PVHELLO = ROOT / "guests" / "out" / "pv" / "pvhello.elf"
SHIM_BOOT_TIMEOUT = 180.0


def needs_shim() -> None:
    for needed, how in ((SHIM, "make shim"), (PVHELLO, "make guests")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: `{how}` builds it (make test-linux does)")


def pv_config(xenopus: Xenopus, name: str, kernel: Path, extra: str = "") -> Path:
    cfg = xenopus.tmp / f"{name}.cfg"
    cfg.write_text(
        f'name = "{name}"\ntype = "pv"\npvshim = 1\npvshim_path = "{SHIM}"\nmemory = 128\n'
        f'kernel = "{kernel}"\nextra = "xenopus.pv=1"\n'
        'on_crash = "destroy"\non_reboot = "destroy"\non_poweroff = "destroy"\n' + extra
    )
    return cfg


def test_pv_kernel_runs_behind_the_shim(xenopus: Xenopus) -> None:
    needs_shim()
    with Kvm() as kvm:
        if not kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM lacks KVM_CAP_XEN_HVM: test_shim_is_refused_here covers it")
    boot = xenopus.boot("pvhello", pv_config(xenopus, "pvhello", PVHELLO),
                        timeout=SHIM_BOOT_TIMEOUT)
    m = boot.result
    assert m is not None, f"no RESULT line{boot.context()}"
    assert (m.group(1), m.group(2)) == ("PASS", "pvhello"), f"{m.group(0)}{boot.context()}"
    # Its XenStore name is the domain's, the shim reports its Xen and the PV kernel got the
    # guest's command line as its module's cmdline.
    assert "name=pvhello " in m.group(3) and "cmdline=xenopus.pv=1" in m.group(3), m.group(0)
    assert "xen=4." in m.group(3), m.group(0)
    assert boot.returncode == 0, boot.context()
    listed = xenopus.run("list")
    assert "pvhello" not in listed.stdout, listed.stdout  # powered off and destroyed
    print(f"pvhello behind the shim: {boot.seconds:.2f} s from create to power-off")


def test_shim_is_refused_here_without_the_in_kernel_path(xenopus: Xenopus) -> None:
    needs_shim()
    with Kvm() as kvm:
        if kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM has KVM_CAP_XEN_HVM: test_pv_kernel_runs_behind_the_shim")
    created = xenopus.run("create", str(pv_config(xenopus, "pvrefused", PVHELLO)))
    assert created.returncode != 0
    assert "KVM_CAP_XEN_HVM" in created.stderr and "vmcall" in created.stderr, created.stderr
