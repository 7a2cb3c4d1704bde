"""An arm64 domain: config pieces → a ready `Arm64Guest` (the `Arm64Machine`, its PL011
console and PL031 RTC, the kernel loaded by the Image protocol and the device tree that describes it).

The device tree follows the bindings Linux reads (Documentation/devicetree/bindings/:
arm/cpus.yaml and arm/psci.yaml, interrupt-controller/arm,gic-v3.yaml, timer/
arm,arch_timer.yaml, serial/arm,pl011.yaml, clock/fixed-clock.yaml, chosen.yaml) with the
nodes and numbers QEMU virt writes for the same machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenopus.arch.arm64 import (
    GIC_PPI_BASE,
    GIC_SPI_BASE,
    TIMER_PPI_HYP,
    TIMER_PPI_NONSECURE_PHYS,
    TIMER_PPI_SECURE_PHYS,
    TIMER_PPI_VIRT,
)
from xenopus.boot.arm64 import Arm64Layout, load_image, write_dtb
from xenopus.boot.fdt import Node
from xenopus.control import DISK, NIC
from xenopus.devices import platform
from xenopus.devices.bus import Bus
from xenopus.devices.mac import format_mac
from xenopus.devices.pl011 import MMIO_SIZE as PL011_SIZE
from xenopus.devices.pl011 import Pl011
from xenopus.devices.pl031 import MMIO_SIZE as PL031_SIZE
from xenopus.devices.pl031 import Pl031
from xenopus.devices.virtio.blk import VirtioBlk
from xenopus.devices.virtio.console import VirtioConsole
from xenopus.devices.virtio.device import VirtioDevice
from xenopus.devices.virtio.mmio import MMIO_SIZE as VIRTIO_MMIO_SIZE
from xenopus.devices.virtio.mmio import VirtioMmioDevice
from xenopus.devices.virtio.net import VirtioNet
from xenopus.devices.virtio.rng import VirtioRng
from xenopus.domain.config import DomainConfig
from xenopus.domain.devspec import vif_devids
from xenopus.domain.inventory import Inventory, VirtioMmioPart
from xenopus.domain.vif import VifTaps, open_vif
from xenopus.kvm import uapi as u
from xenopus.kvm.system import Kvm
from xenopus.memory.guest import GuestMemory, MemoryRegion
from xenopus.vm.arm64 import (
    GIC_DIST_BASE,
    GIC_REDIST_BASE,
    RAM_BASE,
    Arm64CpuState,
    Arm64Machine,
)

if TYPE_CHECKING:  # annotations only: pathlib and its imports cost each domain process ~0.65 MiB
    from pathlib import Path

MiB = 1 << 20
# Interrupt specifier cells of arm,gic-v3.yaml: <type number flags>; type 0 SPI, 1 PPI;
# flags are the IRQ_TYPE_* of dt-bindings/interrupt-controller/irq.h.
GIC_FDT_SPI = 0
GIC_FDT_PPI = 1
IRQ_TYPE_EDGE_RISING = 1
IRQ_TYPE_LEVEL_HIGH = 4
PHANDLE_GIC = 1
PHANDLE_APB_CLOCK = 2


@dataclass
class Arm64Boot:
    """What the domain process asks of `Guest.boot`: the entry state and the protocol."""

    cpu: Arm64CpuState
    protocol: str = "arm64-image"
    details: dict[str, object] = field(default_factory=dict)


@dataclass
class Arm64Guest:
    """The arm64 counterpart of `builder.Guest`, with the same names where the domain
    process reads them; what arm64 lacks yet (Xen, ballooning, the power button, vCPU hotplug) is None."""

    machine: Arm64Machine
    memory: GuestMemory
    serial: Pl011
    rtc: Pl031
    mmio: Bus
    layout: Arm64Layout
    boot: Arm64Boot
    dtb: bytes
    inventory: Inventory = field(default_factory=Inventory)
    virtio: list[VirtioMmioDevice] = field(default_factory=list)
    vconsole: VirtioConsole | None = None
    xen: None = None
    xen_path: str = "off"  # no Xen interface on arm64 (README "Xen on arm64")
    balloon: None = None
    power: None = None
    cpu_hotplug: None = None  # ACPI CPU hotplug is x86's (the DSDT's processor devices)

    def memory_mib(self) -> int:
        return self.memory.ram_size // MiB

    def add_virtio(self, device: VirtioDevice) -> VirtioMmioDevice:
        """`device` behind the next free virtio-mmio window (QEMU virt's), its interrupt
        an irqfd on the window's SPI. Closes `device` if it cannot be added."""
        try:
            index = len(self.virtio)
            if index >= platform.ARM64_VIRTIO_MMIO_COUNT:
                raise ValueError(f"more than {platform.ARM64_VIRTIO_MMIO_COUNT} virtio devices")
            base = platform.ARM64_VIRTIO_MMIO_BASE + index * platform.ARM64_VIRTIO_MMIO_STRIDE
            intid = GIC_SPI_BASE + platform.ARM64_VIRTIO_MMIO_SPI + index
            irqfd = self.machine.irqfd(intid)
            transport = VirtioMmioDevice(device, self.machine, base,
                                         lambda: os.eventfd_write(irqfd, 1), intid=intid)
        except BaseException:
            device.close()
            raise
        self.virtio.append(transport)
        self.mmio.register(base, VIRTIO_MMIO_SIZE, transport, transport.name)
        return transport

    def close_devices(self) -> None:
        """As `builder.Guest.close_devices`: vCPUs, then the virtio transports; idempotent."""
        self.machine.stop()
        transports, self.virtio = self.virtio, []
        for transport in transports:
            transport.close()

    def close(self) -> None:
        self.close_devices()
        self.machine.close()
        self.memory.close()


def device_tree(machine: Arm64Machine, ram_size: int, cmdline: str, layout: Arm64Layout,
                virtio: int = 0) -> Node:
    """The guest's device tree (Devicetree Specification v0.4 ch. 3 base nodes), with
    `virtio` virtio-mmio windows."""
    root = Node("")
    root.string("compatible", "linux,dummy-virt").string("model", "xenopus arm64")
    root.u32("#address-cells", 2).u32("#size-cells", 2).u32("interrupt-parent", PHANDLE_GIC)

    chosen = root.child("chosen")
    chosen.string("bootargs", cmdline)
    chosen.string("stdout-path", f"/pl011@{platform.ARM64_PL011_BASE:x}")
    if layout.initrd_size:
        chosen.u64("linux,initrd-start", layout.initrd)
        chosen.u64("linux,initrd-end", layout.initrd + layout.initrd_size)

    root.child(f"memory@{RAM_BASE:x}").string("device_type", "memory").u64("reg", RAM_BASE, ram_size)

    cpus = root.child("cpus")
    cpus.u32("#address-cells", 1).u32("#size-cells", 0)  # reg: MPIDR Aff2..0 (cpus.yaml)
    for i in range(len(machine.vcpus)):
        cpu = cpus.child(f"cpu@{i:x}")
        cpu.string("device_type", "cpu").string("compatible", "arm,arm-v8")
        cpu.string("enable-method", "psci").u32("reg", machine.mpidr(i) & 0xFF_FFFF)

    # psci.yaml: PSCI 0.2+ through HVC; KVM answers (KVM_ARM_VCPU_PSCI_0_2).
    root.child("psci").string("compatible", "arm,psci-1.0", "arm,psci-0.2").string("method", "hvc")

    gic = root.child(f"intc@{GIC_DIST_BASE:x}")
    gic.string("compatible", "arm,gic-v3").prop("interrupt-controller")
    gic.u32("#interrupt-cells", 3).u32("#address-cells", 2).u32("#size-cells", 2)
    gic.u32("#redistributor-regions", 1)
    gic.u64("reg", GIC_DIST_BASE, u.KVM_VGIC_V3_DIST_SIZE, GIC_REDIST_BASE, machine.redist_size)
    gic.u32("phandle", PHANDLE_GIC)

    # arm,arch_timer.yaml: secure phys, non-secure phys, virt, hyp PPIs, in that order.
    timer = root.child("timer")
    timer.string("compatible", "arm,armv8-timer").prop("always-on")
    ppis = (TIMER_PPI_SECURE_PHYS, TIMER_PPI_NONSECURE_PHYS, TIMER_PPI_VIRT, TIMER_PPI_HYP)
    timer.u32("interrupts", *(c for p in ppis
                              for c in (GIC_FDT_PPI, p - GIC_PPI_BASE, IRQ_TYPE_LEVEL_HIGH)))

    clock = root.child("apb-pclk")
    clock.string("compatible", "fixed-clock").u32("#clock-cells", 0)
    clock.u32("clock-frequency", platform.ARM64_PL011_CLOCK_HZ)
    clock.string("clock-output-names", "clk24mhz").u32("phandle", PHANDLE_APB_CLOCK)

    uart = root.child(f"pl011@{platform.ARM64_PL011_BASE:x}")
    uart.string("compatible", "arm,pl011", "arm,primecell")
    uart.u64("reg", platform.ARM64_PL011_BASE, PL011_SIZE)
    uart.u32("interrupts", GIC_FDT_SPI, platform.ARM64_PL011_SPI, IRQ_TYPE_LEVEL_HIGH)
    uart.u32("clocks", PHANDLE_APB_CLOCK, PHANDLE_APB_CLOCK)
    uart.string("clock-names", "uartclk", "apb_pclk")

    rtc = root.child(f"pl031@{platform.ARM64_PL031_BASE:x}")
    rtc.string("compatible", "arm,pl031", "arm,primecell")
    rtc.u64("reg", platform.ARM64_PL031_BASE, PL031_SIZE)
    rtc.u32("interrupts", GIC_FDT_SPI, platform.ARM64_PL031_SPI, IRQ_TYPE_LEVEL_HIGH)
    rtc.u32("clocks", PHANDLE_APB_CLOCK).string("clock-names", "apb_pclk")

    # virtio/mmio.yaml: one node per transport; the interrupt is an edge (an irqfd).
    for i in range(virtio):
        base = platform.ARM64_VIRTIO_MMIO_BASE + i * platform.ARM64_VIRTIO_MMIO_STRIDE
        node = root.child(f"virtio_mmio@{base:x}")
        node.string("compatible", "virtio,mmio").u64("reg", base, VIRTIO_MMIO_SIZE)
        node.u32("interrupts", GIC_FDT_SPI, platform.ARM64_VIRTIO_MMIO_SPI + i,
                 IRQ_TYPE_EDGE_RISING)
        node.prop("dma-coherent")
    return root


def build_arm64_guest(kernel: str | Path, *, ramdisk: str | Path | None = None,
                      cmdline: str = "", memory_mib: int = 128, vcpus: int = 1,
                      console_out: Callable[[bytes], None], kvm: Kvm | None = None,
                      devices: Callable[[Arm64Guest], None] | None = None) -> Arm64Guest:
    """Create the machine, its devices, load the kernel and write the device tree.
    `devices(guest)` adds the virtio devices (`Arm64Guest.add_virtio`) before the device
    tree that names them is written."""
    ram_size = memory_mib * MiB
    memory = GuestMemory([MemoryRegion.create(RAM_BASE, ram_size, "xenopus-ram")])
    try:
        mmio = Bus("mmio")
        machine = Arm64Machine(memory, vcpus, mmio=mmio, kvm=kvm)
        try:
            intid = GIC_SPI_BASE + platform.ARM64_PL011_SPI
            serial = Pl011(irq=lambda level: machine.set_irq(intid, level), output=console_out)
            mmio.register(platform.ARM64_PL011_BASE, PL011_SIZE, serial, "pl011")
            rtc_intid = GIC_SPI_BASE + platform.ARM64_PL031_SPI
            rtc = Pl031(irq=lambda level: machine.set_irq(rtc_intid, level))
            mmio.register(platform.ARM64_PL031_BASE, PL031_SIZE, rtc, "pl031")
            layout = load_image(memory, kernel, ramdisk, RAM_BASE, ram_size)
            guest = Arm64Guest(machine, memory, serial, rtc, mmio, layout,
                               Arm64Boot(Arm64CpuState(pc=0)), b"")
        except BaseException:
            machine.close()
            raise
        try:
            if devices is not None:
                devices(guest)
            guest.dtb = device_tree(machine, ram_size, cmdline, layout, len(guest.virtio)).to_dtb()
            entry = write_dtb(memory, layout, guest.dtb)
            guest.boot = Arm64Boot(Arm64CpuState(pc=entry.pc, x0=entry.x0, pstate=entry.pstate))
            return guest
        except BaseException:
            for transport in guest.virtio:
                transport.close()
            machine.close()
            raise
    except BaseException:
        memory.close()
        raise


# The DomainConfig keys an arm64 domain cannot honour yet; any that is set is refused by name.
ARM64_UNSUPPORTED = (("channels", "channel="), ("virtio_balloon", "virtio_balloon="))


def build_arm64_domain(config: DomainConfig, *, console_out: Callable[[bytes], None],
                       vconsole_out: Callable[[bytes], None] | None = None, domid: int = 0,
                       taps: VifTaps | None = None, kvm: Kvm | None = None) -> Arm64Guest:
    """A domain's config on an arm64 host: kernel (an arm64 Image), ramdisk, cmdline (with
    root=/extra=), memory, vcpus; PL011 console; virtio-blk per `disk`, virtio-net per
    `vif`, virtio-console and -rng, each over virtio-mmio. There is no Xen interface on
    arm64 (README "Xen on arm64"): an xvd* disk or a model=xen vif is refused, as are keys
    arm64 cannot honour yet."""
    for attr, key in ARM64_UNSUPPORTED:
        if getattr(config, attr):
            raise ValueError(f"{config.name}: {key} is not supported on arm64 yet")
    for disk in config.disks:
        if disk.kind_for(False) != "virtio":
            raise ValueError(f"{config.name}: disk {disk.vdev} is a Xen PV disk; arm64 has "
                             "no Xen interface (use a vd* vdev)")
    for vif in config.vifs:
        if vif.kind_for(False) != "virtio":
            raise ValueError(f"{config.name}: vif model={vif.model} needs the Xen interface, "
                             "which arm64 lacks")

    def devices(guest: Arm64Guest) -> None:
        def add(kind: str, name: str, index: int, device: VirtioDevice, **detail: object) -> None:
            t = guest.add_virtio(device)
            guest.inventory.add(VirtioMmioPart(kind, name, index, t.base, t.intid, device, detail))

        for i, disk in enumerate(config.disks):
            blk = VirtioBlk(disk.target, read_only=disk.read_only,
                            serial=f"{config.name[:12]}-{disk.vdev}", direct=disk.direct_io_safe)
            add(DISK, disk.vdev, i, blk, vdev=disk.vdev, target=disk.target,
                mode="r" if disk.read_only else "w")
        for i, (vif, devid) in enumerate(zip(config.vifs, vif_devids(config.vifs), strict=True)):
            tap, mac = (taps.open if taps else open_vif)(config.name, vif, domid, devid)
            try:
                net = VirtioNet(tap, mac)
            except BaseException:
                tap.close()
                raise
            add(NIC, f"nic{devid}", i, net, mac=format_mac(net.mac), tap=net.tap.name,
                bridge=vif.bridge or "-")
        if config.virtio_console:
            guest.vconsole = VirtioConsole(vconsole_out or (lambda data: None))
            add("console", "virtio-console0", 0, guest.vconsole)
        if config.virtio_rng:
            add("rng", "virtio-rng0", 0, VirtioRng())

    return build_arm64_guest(config.kernel, ramdisk=config.ramdisk, cmdline=config.cmdline,
                             memory_mib=config.memory, vcpus=config.vcpus,
                             console_out=console_out, kvm=kvm, devices=devices)
