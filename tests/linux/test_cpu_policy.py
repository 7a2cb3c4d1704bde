"""The CPU policy as a real Linux sees it on a host with hardware-assisted KVM (the
nested host): `cpuid="host,sse3=0"` hides SSE3, which /proc/cpuinfo calls `pni`
(arch/x86/include/asm/cpufeatures.h: X86_FEATURE_XMM3 "pni"), and the default-deny MSR
filter leaves Linux with no unchecked MSR access on its way to userspace."""

from __future__ import annotations

import pytest

from tests.linux.linuxguest import Xenopus, kernel_file

pytestmark = [pytest.mark.kvm, pytest.mark.linux]


@pytest.mark.parametrize("cpuid, pni", [(None, True), ("host,sse3=0", False)],
                         ids=["default", "sse3-hidden"])
def test_linux_sees_the_policy_s_cpu_flags(xenopus: Xenopus, cpuid: str | None,
                                           pni: bool) -> None:
    name = "cpuinfo-" + ("plain" if cpuid is None else "nosse3")
    extra = f'cpuid = "{cpuid}"\n' if cpuid else ""
    cfg = xenopus.config(name, kernel_file("6.12", "pvh"), "cpuinfo", extra=extra)
    boot = xenopus.boot(name, cfg)
    boot.assert_passed("cpuinfo")
    flags = boot.detail.split()
    assert "sse2" in flags, boot.context()  # the line is Linux's flags
    assert ("pni" in flags) == pni, boot.context()
    assert not any("unchecked MSR access" in ln for ln in boot.lines), boot.context()
