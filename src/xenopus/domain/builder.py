"""From a `DomainConfig` to a machine ready to run: memory, devices, kernel.

The PC platform every xenopus domain gets for now: a 16550A on COM1 (IRQ 4), the
i8042 (for Linux's probe and the reset line), the CMOS RTC (IRQ 8), the port-0xE9 debug
console and a sink for POST codes on port 0x80; the PIC, IOAPIC, LAPIC and PIT are
KVM's in-kernel models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from xenopus.boot import BootInfo, load_kernel
from xenopus.devices.bus import Bus, NullDevice
from xenopus.devices.debugcon import DebugCon
from xenopus.devices.i8042 import I8042
from xenopus.devices.rtc import CmosRtc
from xenopus.devices.serial import COM1_BASE, COM1_IRQ, Serial16550
from xenopus.domain.config import DomainConfig
from xenopus.host import memory_mib
from xenopus.memory import GuestMemory, MiB
from xenopus.vm import Machine, StopReason

log = logging.getLogger("xenopus.domain")

RTC_IRQ = 8
I8042_KBD_IRQ = 1
POST_PORT = 0x80
DEBUGCON_PORT = 0xE9


@dataclass
class Guest:
    """One incarnation of a domain: rebuilt from scratch on restart."""

    machine: Machine
    memory: GuestMemory
    boot: BootInfo
    serial: Serial16550
    pio: Bus
    mmio: Bus

    def close(self) -> None:
        self.machine.stop()
        self.machine.close()
        self.memory.close()


def build_guest(
    config: DomainConfig,
    *,
    console_out: Callable[[bytes], None],
    debug_out: Callable[[bytes], None],
) -> Guest:
    """Lay out memory, load the kernel and wire the devices; the vCPUs are not started."""
    host = memory_mib()
    if host and config.memory > host:
        raise ValueError(f"memory = {config.memory} MiB is more than this host has ({host} MiB)")
    memory = GuestMemory.create(config.memory * MiB)
    try:
        boot = load_kernel(memory, config.kernel, ramdisk=config.ramdisk, cmdline=config.cmdline)
        pio, mmio = Bus("pio"), Bus("mmio")
        machine = Machine(memory, config.vcpus, pio=pio, mmio=mmio)
    except BaseException:
        memory.close()
        raise

    def irq(line: int) -> Callable[[bool], None]:
        return lambda level: machine.set_irq(line, level)

    serial = Serial16550(irq=irq(COM1_IRQ), output=console_out)
    i8042 = I8042(
        reset=lambda: machine.request_stop(StopReason("reboot", "reset through the i8042")),
        irq_kbd=irq(I8042_KBD_IRQ),
    )
    rtc = CmosRtc(irq=irq(RTC_IRQ))
    pio.register(COM1_BASE, 8, serial, "serial0")
    pio.register(0x60, 1, i8042, "i8042-data")
    pio.register(0x64, 1, i8042, "i8042-command")
    pio.register(0x70, 2, rtc, "rtc")
    pio.register(DEBUGCON_PORT, 1, DebugCon(debug_out), "debugcon")
    pio.register(POST_PORT, 1, NullDevice(), "post")
    log.info(
        "%s: %s kernel %s entry %#x, %d MiB, cmdline %r",
        config.name, boot.protocol, config.kernel, boot.entry, config.memory, boot.cmdline,
    )
    return Guest(machine, memory, boot, serial, pio, mmio)
