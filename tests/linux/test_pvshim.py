"""PV guests through Xen's own PV shim (`type = "pv"`, `pvshim = 1`).

The shim (Xen 4.17 from Debian's source, `make shim`) boots as a PVH guest and issues
`vmcall`/`vmmcall` itself, so it needs KVM's in-kernel Xen path: it runs where KVM has
KVM_CAP_XEN_HVM (the nested host's 6.12 kernel). Behind it runs guests/pv/pvhello, a
64-bit PV kernel of the test kit: it maps shared_info and its rings with
update_va_mapping, writes on the PV console ring, reads its name from XenStore over the
store event channel (counting the events the shim forwards) and powers off with
SCHEDOP_shutdown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.linux.linuxguest import Boot, Xenopus
from xenopus.kvm import Kvm
from xenopus.xen.hypercall import kernel_flags, kernel_path_available

pytestmark = [pytest.mark.kvm, pytest.mark.linux]
ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "build" / "shim" / "xen-shim"
PVHELLO = ROOT / "guests" / "out" / "pv" / "pvhello.elf"
SHIM_BOOT_TIMEOUT = 400.0  # the shim's own boot is most of it: ~100 s in the nested host


def needs_shim() -> None:
    for needed, how in ((SHIM, "make shim"), (PVHELLO, "make guests")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: `{how}` builds it (make test-linux does)")


def pv_config(xenopus: Xenopus, name: str, kernel: Path, extra: str = "xenopus.pv=1",
              more: str = "", memory: int = 128) -> Path:
    cfg = xenopus.tmp / f"{name}.cfg"
    cfg.write_text(
        f'name = "{name}"\ntype = "pv"\npvshim = 1\npvshim_path = "{SHIM}"\n'
        f'memory = {memory}\nkernel = "{kernel}"\nextra = "{extra}"\n'
        'on_crash = "destroy"\non_reboot = "destroy"\non_poweroff = "destroy"\n' + more
    )
    return cfg


def needs_kvm_xen() -> None:
    with Kvm() as kvm:
        if not kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM lacks KVM_CAP_XEN_HVM: test_shim_is_refused_here covers it")


class ShimBoot(NamedTuple):
    boot: Boot
    domains: list[str]  # `xenopus list` after the boot ended


@pytest.fixture(scope="module")
def pvhello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimBoot]:
    """pvhello booted once behind the shim; the tests below read what it showed."""
    needs_shim()
    needs_kvm_xen()
    xenopus = Xenopus(tmp_path_factory.mktemp("pvshim"))
    try:
        boot = xenopus.boot("pvhello", pv_config(xenopus, "pvhello", PVHELLO),
                            timeout=SHIM_BOOT_TIMEOUT)
        # The domains left once the guest has gone: for the power-off check below.
        listed = xenopus.run("list").stdout.splitlines()[1:]
        print(f"pvhello behind the shim: {boot.seconds:.2f} s from create to power-off")
        yield ShimBoot(boot, [row.split()[0] for row in listed])
    finally:
        xenopus.stop()


def test_pv_kernel_runs_behind_the_shim(pvhello: ShimBoot) -> None:
    boot = pvhello.boot
    m = boot.result
    assert m is not None, f"no RESULT line{boot.context()}"
    assert (m.group(1), m.group(2)) == ("PASS", "pvhello"), f"{m.group(0)}{boot.context()}"
    # Its XenStore name is the domain's, the shim reports its Xen and the PV kernel got the
    # guest's command line as its module's cmdline.
    assert "name=pvhello " in m.group(3) and "cmdline=xenopus.pv=1" in m.group(3), m.group(0)
    assert "xen=4." in m.group(3), m.group(0)
    assert boot.returncode == 0, boot.context()  # SCHEDOP_shutdown ended the domain
    assert pvhello.domains == ["Domain-0"], pvhello.domains  # `list` shows it gone


def test_store_events_reach_the_pv_guest(pvhello: ShimBoot) -> None:
    m = pvhello.boot.result
    assert m is not None, f"no RESULT line{pvhello.boot.context()}"
    events = re.search(r"events=(\d+)", m.group(3))
    assert events is not None and int(events.group(1)) > 0, m.group(0)


def test_shim_is_refused_here_without_the_in_kernel_path(xenopus: Xenopus) -> None:
    needs_shim()
    with Kvm() as kvm:
        if kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM has KVM_CAP_XEN_HVM: test_pv_kernel_runs_behind_the_shim")
    created = xenopus.run("create", str(pv_config(xenopus, "pvrefused", PVHELLO)))
    assert created.returncode != 0
    assert "KVM_CAP_XEN_HVM" in created.stderr and "vmcall" in created.stderr, created.stderr

