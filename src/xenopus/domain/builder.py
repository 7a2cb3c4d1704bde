"""From a `DomainConfig` to a machine ready to run: memory, devices, firmware tables, kernel.

The platform every xenopus domain gets (addresses in `xenopus.devices.platform`):
- legacy PC devices: a 16550A on COM1 (IRQ 4), the i8042 (Linux's probe and the reset
  line), the CMOS RTC (IRQ 8), the port-0xE9 debug console, a sink for POST codes;
- KVM's in-kernel PIC, IOAPIC, LAPICs and PIT;
- ACPI (hardware-reduced): tables at 0xE0000 and the GED power device (power button,
  S5 power-off, reset register);
- a PCI host bridge (CF8/CFC and ECAM) carrying the virtio devices the config asks for:
  virtio-blk per `disk`, virtio-net per `vif`, and optionally virtio-console and -rng.

With `pvh_platform = "xen"` the legacy PC devices and the PIT are left out (the debug
port stays: Xen has it for every HVM domain) and the memory map has no legacy hole, as a
libxl PVH domU has it.

Every stateful part it builds is recorded in the guest's `Inventory` (domain/inventory.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from xenopus.acpi import AcpiPci, AcpiPlatform, install, installed_rsdp
from xenopus.boot import BootInfo, load_kernel, load_pv_shim
from xenopus.control import DISK, NIC
from xenopus.devices import platform
from xenopus.devices.acpi_power import AcpiPowerDevice
from xenopus.devices.bus import Bus, BusDevice, NullDevice
from xenopus.devices.cpu_hotplug import CpuHotplugDevice
from xenopus.devices.debugcon import DebugCon
from xenopus.devices.i8042 import I8042
from xenopus.devices.mac import format_mac
from xenopus.devices.pci.host import PciHostBridge
from xenopus.devices.rtc import CmosRtc
from xenopus.devices.serial import Serial16550
from xenopus.domain.channel import ChannelEnd
from xenopus.domain.config import DomainConfig
from xenopus.domain.cpuid_spec import parse_cpuid
from xenopus.domain.devspec import VifSpec, vif_devids
from xenopus.domain.inventory import (
    BusPart,
    CpuPolicyPart,
    Inventory,
    KvmPart,
    MemoryPart,
    PciFunctionPart,
    PciHostPart,
    PvChannelPart,
    PvDevicePart,
    VcpuPart,
    VirtioPart,
    XenConsolePart,
    XenPart,
    pci_address,
)
from xenopus.domain.vif import VifTaps, open_vif
from xenopus.domain.xenguest import StoreProxy, XenGuest, decide
from xenopus.host import memory_mib
from xenopus.kvm import Kvm
from xenopus.memory import PAGE_SIZE, GuestMemory, MiB
from xenopus.vm import Machine, StopReason
from xenopus.vm.cpu_policy import (
    CpuPolicy,
    RelaxedMsrs,
    common,
    default_policy,
    host_facts,
    host_max,
)
from xenopus.vm.machine import MachineHooks

if TYPE_CHECKING:
    # Each imported where a guest gets one (_add_virtio), not by every domain process.
    from xenopus.devices.virtio.balloon import VirtioBalloon
    from xenopus.devices.virtio.console import VirtioConsole
    from xenopus.devices.virtio.device import VirtioDevice
    from xenopus.devices.virtio.net import VirtioNet

log = logging.getLogger("xenopus.domain")


@dataclass
class Guest:
    """One incarnation of a domain: rebuilt from scratch on restart."""

    machine: Machine
    memory: GuestMemory
    boot: BootInfo
    serial: Serial16550 | None  # None on Xen's PVH platform (pvh_platform = "xen")
    power: AcpiPowerDevice
    pci: PciHostBridge
    pio: Bus
    mmio: Bus
    inventory: Inventory = field(default_factory=Inventory)
    vconsole: VirtioConsole | None = None
    xen: XenGuest | None = None
    xen_path: str = "off"  # how hypercalls arrive: "trap", "kernel" or "off" (no Xen)
    balloon: VirtioBalloon | None = None  # virtio_balloon = 1
    # ACPI CPU hotplug (xl vcpu-set of a guest without Xen): the DSDT's processor devices
    cpu_hotplug: CpuHotplugDevice | None = None
    _devices_closed: bool = field(default=False, init=False, repr=False)

    def memory_mib(self) -> int:
        """The memory the guest holds now, in MiB: its RAM less what a Xen guest's balloon
        gave back plus what it populated, or less what its virtio balloon holds (xl
        list's Mem)."""
        domain = self.xen.domain if self.xen is not None else None
        pages = domain.p2m.current_pages() if domain is not None else None
        if pages is None:
            pages = self.memory.ram_size // PAGE_SIZE
        if self.balloon is not None:
            pages -= self.balloon.ballooned_pages()
        return pages * PAGE_SIZE // MiB

    def close_devices(self) -> None:
        """Stop the vCPUs, then the device threads, which close what they hold of the
        host (each NIC its tap descriptor); idempotent. The fast part of `close`."""
        self.machine.stop()
        if self._devices_closed:
            return
        self._devices_closed = True
        if self.xen is not None:
            self.xen.close()
        self.pci.close()

    def close(self) -> None:
        """The devices (`close_devices`), then release the VM and its memory (the kernel's
        slow part)."""
        self.close_devices()
        self.machine.close()
        self.memory.close()


def build_guest(
    config: DomainConfig,
    *,
    console_out: Callable[[bytes], None],
    debug_out: Callable[[bytes], None],
    vconsole_out: Callable[[bytes], None] | None = None,
    domid: int = 0,
    hv_log: Callable[[str], None] | None = None,
    pv_console_out: Callable[[bytes], None] | None = None,
    store: StoreProxy | None = None,
    xenstore_path: str | None = None,
    kvm: Kvm | None = None,
    taps: VifTaps | None = None,
    channels: list[ChannelEnd] | None = None,
    restoring: bool = False,
) -> Guest:
    """Lay out memory, write the ACPI tables, load the kernel and wire the devices; the
    vCPUs are not started. Any failure releases what was built and names the problem.
    `kvm` is an open /dev/kvm to use (and leave open), `taps` the vifs' taps and
    `channels` the channels' host ends kept across incarnations: a jailed process can
    open none of them again. `restoring`: a saved image's RAM replaces this guest's
    before it runs (domain/snapshot.py: the memory part discards it first), so the ACPI
    tables, which the image has, are not built and written."""
    host = memory_mib()
    if host and config.memory > host:
        raise ValueError(f"memory = {config.memory} MiB is more than this host has ({host} MiB)")
    memory = GuestMemory.create(config.memory * MiB)
    machine: Machine | None = None
    pci: PciHostBridge | None = None
    xen: XenGuest | None = None
    try:
        ram_end = max(r.end for r in memory.regions)
        # maxvcpus vCPUs exist, `vcpus` of them online at boot (xl.cfg(5) maxvcpus)
        maxvcpus = config.maxvcpus or config.vcpus
        legacy = config.pvh_platform == "pc"  # else Xen's PVH platform: none of them
        # A PV shim domain's MADT has no IO-APIC (AcpiPlatform.io_apic says why), nor has
        # the MADT libxl builds for a PVH domU (libacpi without ACPI_HAS_IOAPIC).
        rsdp = installed_rsdp() if restoring else install(memory, AcpiPlatform(
            vcpus=maxvcpus, online=config.vcpus, pci=AcpiPci.default(ram_end), serial=legacy,
            rtc=legacy, i8042=legacy, io_apic=legacy and not config.pvshim))
        kvm = kvm or Kvm()
        if config.pvshim:
            assert config.pvshim_path is not None  # resolved by DomainConfig
            boot = load_pv_shim(
                memory, config.pvshim_path, pv_kernel=config.kernel, ramdisk=config.ramdisk,
                shim_cmdline=config.shim_cmdline, pv_cmdline=config.cmdline, rsdp_paddr=rsdp,
            )
        else:
            boot = load_kernel(
                memory, config.kernel, ramdisk=config.ramdisk, cmdline=config.cmdline,
                rsdp_paddr=rsdp, legacy_hole=legacy,
            )
        pio, mmio = Bus("pio"), Bus("mmio")
        xen_path, why = decide(config, boot, kvm)
        log.info("%s: Xen guest interface: %s (%s)", config.name, xen_path, why)
        hooks: MachineHooks = {}
        if xen_path != "off":
            xen = XenGuest(
                config, memory, boot, pio, domid=domid, path=xen_path,
                hv_log=hv_log or (lambda line: log.info("%s", line)),
                pv_console_out=pv_console_out or console_out,
                store=store or StoreProxy(asyncio.get_event_loop(), None),
                xenstore_path=xenstore_path, taps=taps, channels=channels,
            )
            hooks = xen.machine_hooks()
        elif (any(d.kind_for(False) == "xen" for d in config.disks)
              or any(v.kind_for(False) == "xen" for v in config.vifs)):
            raise ValueError(f"xvd* disks and model=xen vifs need the Xen platform, which is off: {why}")
        hooks["cpu_policy"] = domain_policy(config, kvm)
        if config.msr_relaxed:
            hooks["msr_handler"] = RelaxedMsrs(hooks.get("msr_handler"))
        machine = Machine(memory, maxvcpus, pio=pio, mmio=mmio, kvm=kvm, pit=legacy, **hooks)
        m = machine
        if xen is not None:
            xen.attach(machine)

        def irq(line: int) -> Callable[[bool], None]:
            return lambda level: m.set_irq(line, level)

        def stop(kind: str, why: str) -> Callable[[], None]:
            return lambda: m.request_stop(StopReason(kind, why))

        inventory = _machine_parts(machine, memory)

        def legacy(bus: Bus, base: int, length: int, device: BusDevice, name: str) -> None:
            bus.register(base, length, device, name)
            inventory.add(BusPart(name, bus.name, base, length, device))

        serial: Serial16550 | None = None
        if config.pvh_platform == "pc":
            serial = Serial16550(irq=irq(platform.COM1_IRQ), output=console_out)
            i8042 = I8042(reset=stop("reboot", "reset through the i8042"),
                          irq_kbd=irq(platform.I8042_KBD_IRQ))
            legacy(pio, platform.COM1_PORT, platform.COM1_PORT_SIZE, serial, "serial0")
            legacy(pio, platform.I8042_DATA_PORT, 1, i8042, "i8042-data")
            legacy(pio, platform.I8042_CMD_PORT, 1, i8042, "i8042-command")
            legacy(pio, platform.RTC_PORT, platform.RTC_PORT_SIZE,
                   CmosRtc(irq=irq(platform.RTC_IRQ)), "rtc")
        # Xen keeps port 0xE9 for every HVM domain, PVH included (hvm_print_line).
        legacy(pio, platform.DEBUGCON_PORT, 1, DebugCon(debug_out), "debugcon")
        legacy(pio, platform.POST_PORT, 1, NullDevice(), "post")
        power = AcpiPowerDevice(
            irq(platform.ACPI_GED_IRQ),
            on_poweroff=stop("poweroff", "ACPI S5 (power off)"),
            on_reset=stop("reboot", "ACPI reset register"),
        )
        legacy(mmio, platform.ACPI_REGS_BASE, platform.ACPI_POWER_SIZE, power, "acpi-power")
        # maxvcpus vCPUs exist; those past `vcpus` are absent (their _STA says so) until
        # xl vcpu-set inserts them, and parked once the guest ejects them.
        cpu_hotplug = CpuHotplugDevice(maxvcpus, config.vcpus, notify=power.signal_cpu_hotplug,
                                       on_insert=machine.vcpu_up, on_eject=machine.vcpu_down)
        legacy(mmio, platform.CPU_HOTPLUG_BASE, platform.CPU_HOTPLUG_SIZE, cpu_hotplug,
               "cpu-hotplug")

        pci = PciHostBridge(pio, mmio, machine.set_irq, ram_end=ram_end)
        guest = Guest(machine, memory, boot, serial, power, pci, pio, mmio, inventory,
                      xen=xen, xen_path=xen_path, cpu_hotplug=cpu_hotplug)
        _add_virtio(guest, config, domid, vconsole_out, taps)
        _apply_affinity(machine, config)
        if xen is not None:
            xen.start_backends()
        _pci_and_xen_parts(guest)
    except BaseException:
        if xen is not None:
            xen.close()
        if pci is not None:
            pci.close()
        if machine is not None:
            machine.close()
        memory.close()
        raise
    log.info(
        "%s: %s kernel %s entry %#x, %d MiB, %d vCPU(s), cmdline %r; RSDP at %#x",
        config.name, boot.protocol, config.kernel, boot.entry, config.memory, config.vcpus,
        boot.cmdline, rsdp,
    )
    for part in guest.inventory.parts:
        if isinstance(part, VirtioPart):
            log.info("%s: pci %s virtio-%s %s", config.name, pci_address(part.bdf),
                     part.device.name, dict(part.detail))
    return guest


def _add_virtio(
    guest: Guest, config: DomainConfig, domid: int, vconsole_out: Callable[[bytes], None] | None,
    taps: VifTaps | None,
) -> None:
    xen = guest.xen is not None  # whether disks and vifs default to Xen PV devices
    # Each device model is imported only for a guest that has one: a spare imports none.

    def add(kind: str, name: str, index: int, device: VirtioDevice, **detail: object) -> None:
        from xenopus.devices.virtio.pci import VirtioPciDevice

        try:
            bdf = guest.pci.add(VirtioPciDevice(device, guest.machine))
        except BaseException:
            device.close()
            raise
        guest.inventory.add(VirtioPart(kind, name, index, bdf, device, detail))

    for i, disk in enumerate(config.disks):
        if disk.kind_for(xen) != "virtio":
            continue  # the Xen PV block backend
        from xenopus.devices.virtio.blk import VirtioBlk

        blk = VirtioBlk(
            disk.target, read_only=disk.read_only, serial=f"{config.name[:12]}-{disk.vdev}",
            direct=disk.direct_io_safe,
        )
        add(DISK, disk.vdev, i, blk, vdev=disk.vdev, target=disk.target,
            mode="r" if disk.read_only else "w")
    for i, (vif, devid) in enumerate(zip(config.vifs, vif_devids(config.vifs), strict=True)):
        if vif.kind_for(xen) != "virtio":
            continue  # the Xen PV network backend
        net = _virtio_net(config, vif, domid, devid, taps)
        add(NIC, f"nic{devid}", i, net, mac=format_mac(net.mac), tap=net.tap.name, bridge=vif.bridge or "-")
    if config.virtio_console:
        from xenopus.devices.virtio.console import VirtioConsole

        guest.vconsole = VirtioConsole(vconsole_out or (lambda data: None))
        add("console", "virtio-console0", 0, guest.vconsole)
    if config.virtio_rng:
        from xenopus.devices.virtio.rng import VirtioRng

        add("rng", "virtio-rng0", 0, VirtioRng())
    if config.virtio_balloon:
        from xenopus.devices.virtio.balloon import VirtioBalloon

        guest.balloon = VirtioBalloon(guest.memory)
        add("balloon", "virtio-balloon0", 0, guest.balloon)


def _virtio_net(config: DomainConfig, vif: VifSpec, domid: int, devid: int,
                taps: VifTaps | None) -> VirtioNet:
    from xenopus.devices.virtio.net import VirtioNet

    tap, mac = (taps.open if taps else open_vif)(config.name, vif, domid, devid)
    try:
        return VirtioNet(tap, mac)
    except BaseException:
        tap.close()
        raise


def domain_policy(config: DomainConfig, kvm: Kvm) -> CpuPolicy:
    """The domain's CPU policy: this host's default, levelled with `cpu_policy_hosts`,
    then xl's `cpuid=` on top ('x' keeps the levelled bit, 'k'/'s' take this host's)."""
    offer = host_max(host_facts(kvm))  # what a forced or 'k' bit may ask for
    policy = default_policy(offer)
    if config.cpu_policy_hosts:
        policy = common([policy, *(CpuPolicy.from_dict(d, f"cpu_policy_hosts {i}")
                                   for i, d in enumerate(config.cpu_policy_hosts))])
    if config.cpuid is not None:
        policy = policy.with_overrides(parse_cpuid(config.cpuid), offer)
    return replace(policy, origin=f"domain {config.name}")


def _machine_parts(machine: Machine, memory: GuestMemory) -> Inventory:
    """The inventory's first parts: the CPU policy (restored before anything that
    depends on it), the vCPUs, what KVM keeps per VM, and memory."""
    inventory = Inventory([CpuPolicyPart(machine), *(VcpuPart(v, machine) for v in machine.vcpus)])
    inventory.add(KvmPart("irqchip", "irqchip", {
        "model": "in-kernel PIC, IOAPIC and LAPICs", "ioapic": platform.IOAPIC_BASE,
        "lapic": platform.LAPIC_BASE,
    }, machine))
    if machine.has_pit:
        inventory.add(KvmPart("pit", "pit", {"model": "in-kernel i8254", "irq": platform.PIT_IRQ},
                              machine))
    inventory.add(KvmPart("clock", "kvmclock", {"model": "KVM's VM clock"}, machine))
    inventory.add(MemoryPart(memory))
    return inventory


def _pci_and_xen_parts(guest: Guest) -> None:
    """The PCI bus as built (the host bridge and every function, virtio transports
    included), then the Xen domain state and its PV devices."""
    inventory = guest.inventory
    inventory.add(PciHostPart(guest.pci))
    for bdf, device in sorted(guest.pci.devices.items()):
        inventory.add(PciFunctionPart(bdf, device))
    xen = guest.xen
    if xen is None:
        return
    assert xen.domain is not None  # attached as the Machine was built
    inventory.add(XenPart(xen.domain, xen.path, xen))
    inventory.add(XenConsolePart(xen))
    if not xen.backends:
        return
    # imported by now: xen.start_backends made them
    from xenopus.xen.backends.blkback import BlkBack
    from xenopus.xen.backends.channel import ChannelBack
    from xenopus.xen.backends.netback import NetBack

    for backend in xen.backends:
        if isinstance(backend, BlkBack):
            inventory.add(PvDevicePart(DISK, backend.vdev, backend))
        elif isinstance(backend, NetBack):
            inventory.add(PvDevicePart(NIC, f"nic{backend.devid}", backend))
        elif isinstance(backend, ChannelBack):
            inventory.add(PvChannelPart(backend))


def _apply_affinity(machine: Machine, config: DomainConfig) -> None:
    """The config's `cpus` (hard affinity per vCPU), as xl applies it at creation."""
    for vcpu, cpus in enumerate(config.cpus or []):
        if cpus is not None and vcpu < (config.maxvcpus or config.vcpus):
            machine.pin(vcpu, set(cpus))
