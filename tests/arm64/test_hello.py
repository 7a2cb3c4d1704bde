"""The arm64 hello guest (guests/arm64/hello.S) on KVM/arm64: the Image protocol with a
generated device tree in x0, output through the PL011, PSCI SYSTEM_OFF through KVM's PSCI
reaching us as KVM_EXIT_SYSTEM_EVENT. Runs on an arm64 host only (`make test-arm64` runs
it inside the emulated one)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from xenopus import host
from xenopus.vm.events import StopReason

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "guests" / "out" / "arm64" / "hello.Image"

pytestmark = [
    pytest.mark.skipif(host.architecture() != "arm64",
                       reason="needs an arm64 host (make test-arm64 runs this in the emulated one)"),
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]


def run_guest(image: Path, vcpus: int = 1, timeout: float = 60.0, memory_mib: int = 64,
              ramdisk: Path | None = None, cmdline: str = "hello") -> tuple[StopReason, bytes]:
    from xenopus.domain.builder_arm64 import build_arm64_guest

    out = bytearray()
    stopped = threading.Event()
    reasons: list[StopReason] = []

    def on_stop(reason: StopReason) -> None:
        reasons.append(reason)
        stopped.set()

    guest = build_arm64_guest(image, console_out=out.extend, memory_mib=memory_mib,
                              vcpus=vcpus, ramdisk=ramdisk, cmdline=cmdline)
    try:
        guest.machine.start(guest.boot.cpu, on_stop)
        assert stopped.wait(timeout), f"the guest did not stop in {timeout} s; output {bytes(out)!r}"
    finally:
        guest.close()
    return reasons[0], bytes(out)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_hello_prints_and_powers_off(vcpus: int) -> None:
    assert HELLO.exists(), "guests/out/arm64/hello.Image: run make -C guests/arm64"
    reason, out = run_guest(HELLO, vcpus)
    assert out == b"Hello from an arm64 xenopus guest\nx0 points at a device tree\n"
    assert reason.kind == "poweroff", reason


def test_psci_cpu_on_starts_the_second_vcpu() -> None:
    """PSCI CPU_ON through KVM: vCPU 1 starts powered off (KVM_ARM_VCPU_POWER_OFF), runs
    from the entry point the boot CPU names with the context ID in x0, then CPU_OFF."""
    reason, out = run_guest(HELLO.with_name("smp.Image"), vcpus=2)
    assert out == (b"cpu0: starting cpu1 with PSCI CPU_ON\n"
                   b"cpu0: cpu1 ran with its context ID\n")
    assert reason.kind == "poweroff", reason


def test_gic_timer_interrupt_and_pause() -> None:
    """guests/arm64/timer.S: the vGICv3 at the device tree's addresses delivers the virtual
    timer's PPI 27 every 1/10 s (each a "tick"). `pause` parks the vCPU outside KVM_RUN
    (ONE_REG then answers from this thread, and nothing runs); `resume` goes on."""
    from xenopus.domain.builder_arm64 import build_arm64_guest
    from xenopus.kvm import uapi as u

    out = bytearray()
    changed = threading.Condition()
    reasons: list[StopReason] = []

    def console(data: bytes) -> None:
        with changed:
            out.extend(data)
            changed.notify_all()

    def ticks() -> int:
        return bytes(out).count(b"tick\n")

    guest = build_arm64_guest(HELLO.with_name("timer.Image"), console_out=console, memory_mib=64)
    try:
        guest.machine.start(guest.boot.cpu, reasons.append)
        with changed:
            assert changed.wait_for(lambda: ticks() >= 3, 120), bytes(out)
        assert out.startswith(b"timer guest: GICv3 and the virtual timer\n")
        guest.machine.pause()
        with changed:
            paused_at = ticks()
        vcpu = guest.machine.vcpus[0]
        pc = vcpu.get_one_reg(u.arm64_core_reg("pc"))  # would block while in KVM_RUN
        for _ in range(100):
            assert vcpu.get_one_reg(u.arm64_core_reg("pc")) == pc
        with changed:
            assert ticks() == paused_at, bytes(out)
        guest.machine.resume()
        with changed:
            assert changed.wait_for(lambda: ticks() > paused_at, 120), bytes(out)
        assert b"unexpected exception" not in out and reasons == []
    finally:
        guest.close()
