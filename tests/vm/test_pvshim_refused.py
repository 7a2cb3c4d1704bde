"""A `pvshim = 1` domain where KVM cannot catch the shim's vmcalls: refused, and why.

Xen's PV shim never asks for a hypercall page; it issues vmcall/vmmcall, which only KVM's
in-kernel Xen path (KVM_CAP_XEN_HVM) turns into exits. On a KVM without it (the build
machines' 6.1 kernel) `xl create` must fail with that reason and leave the daemon serving.
Where KVM has it, tests/linux/test_pvshim.py boots the real shim instead.
"""

from __future__ import annotations

import pytest

from tests.conftest import GUEST_OUT
from tests.vm.conftest import Xenopus
from xenopus.kvm import Kvm
from xenopus.xen.hypercall import kernel_flags, kernel_path_available

pytestmark = pytest.mark.kvm


def test_shim_domain_is_refused_without_kvm_xen(xenopus: Xenopus) -> None:
    with Kvm() as kvm:
        if kernel_path_available(kernel_flags(kvm)):
            pytest.skip("this KVM has KVM_CAP_XEN_HVM: the shim runs (tests/linux/test_pvshim.py)")
    # Any PVH ELF stands in for the shim: the refusal comes before a vCPU runs.
    cfg = xenopus.config("pvshimmed", "pv/pvhello.elf", type="pv", pvshim=1,
                         pvshim_path=str(GUEST_OUT / "minimal.elf"))
    r = xenopus.run("create", str(cfg))
    assert r.returncode != 0
    for words in ("PV shim", "vmcall/vmmcall", "KVM_CAP_XEN_HVM", "CONFIG_KVM_XEN"):
        assert words in r.stderr, r.stderr
    assert "pvshimmed" not in xenopus.domains()
    assert "Domain-0" in xenopus.domains()  # the daemon serves on
