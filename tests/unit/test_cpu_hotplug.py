"""The ACPI CPU hotplug register block (devices/cpu_hotplug.py), driven through the MMIO
bus at the address the DSDT's processor devices read (platform.CPU_HOTPLUG_BASE), with
the byte values our AML writes: _EJ0 stores EJECT, the scan method stores INSERT or
REMOVE back to acknowledge (acpi/tables.py; iasl shows them in test_acpi_tables.py)."""

from __future__ import annotations

import pytest

from xenopus.devices import platform
from xenopus.devices.acpi_power import GED_CPU_HOTPLUG, GED_EVENT, AcpiPowerDevice
from xenopus.devices.bus import Bus
from xenopus.devices.cpu_hotplug import EJECT, ENABLED, INSERT, REMOVE, CpuHotplugDevice
from xenopus.stream import StateError

BASE = platform.CPU_HOTPLUG_BASE


class Rig:
    """Four vCPUs, two online: the device on the bus beside the power device whose GED
    event it raises, with the machine's park and unpark recorded."""

    def __init__(self, vcpus: int = 4, online: int = 2) -> None:
        self.levels: list[bool] = []
        self.power = AcpiPowerDevice(self.levels.append, lambda: None, lambda: None)
        self.calls: list[tuple[str, int]] = []
        self.dev = CpuHotplugDevice(
            vcpus, online, notify=self.power.signal_cpu_hotplug,
            on_insert=lambda i: self.calls.append(("up", i)),
            on_eject=lambda i: self.calls.append(("park", i)))
        self.bus = Bus("mmio")
        self.bus.register(platform.ACPI_REGS_BASE, platform.ACPI_POWER_SIZE, self.power,
                          "acpi-power")
        self.bus.register(BASE, platform.CPU_HOTPLUG_SIZE, self.dev, "cpu-hotplug")

    def status(self, i: int) -> int:
        return self.bus.read(BASE + i, 1)

    def ged(self) -> int:
        """What the GED's _EVT reads (and so clears)."""
        return self.bus.read(platform.ACPI_REGS_BASE + GED_EVENT, 4)

    def scan(self) -> list[tuple[int, int]]:
        """What \\_SB.CSCN does: each vCPU but the boot one, INSERT then REMOVE: notify,
        then acknowledge. Returns the (vCPU, Notify value) pairs."""
        notified = []
        for i in range(1, self.dev.vcpus):
            if self.status(i) & INSERT:
                notified.append((i, 1))
                self.bus.write(BASE + i, 1, INSERT)
            if self.status(i) & REMOVE:
                notified.append((i, 3))
                self.bus.write(BASE + i, 1, REMOVE)
        return notified


def test_boot_status_enabled_for_the_online_vcpus_only() -> None:
    rig = Rig()
    assert [rig.status(i) for i in range(4)] == [ENABLED, ENABLED, 0, 0]
    assert rig.bus.read(BASE, 4) == 0x0101  # one byte per vCPU, little-endian lanes
    assert rig.status(4) == 0 and rig.status(255) == 0  # beyond the vCPUs: absent
    assert rig.dev.offline() == [2, 3]


def test_insert_then_the_os_scans_and_acknowledges() -> None:
    rig = Rig()
    assert rig.dev.set_online(4) == ([2, 3], [])
    # Present before the event, so the _STA the OS evaluates on Device Check says so.
    assert [rig.status(i) for i in (2, 3)] == [ENABLED | INSERT] * 2
    assert rig.calls == [("up", 2), ("up", 3)]  # running before the OS's INIT/SIPI
    assert rig.levels[-1] is True and rig.ged() == GED_CPU_HOTPLUG
    assert rig.levels[-1] is False  # the read cleared the latch and dropped the line
    assert rig.scan() == [(2, 1), (3, 1)]
    assert [rig.status(i) for i in range(4)] == [ENABLED] * 4
    assert rig.scan() == []  # acknowledged: nothing twice


def test_remove_request_then_eject_parks() -> None:
    rig = Rig(online=4)
    assert rig.dev.set_online(2) == ([], [2, 3])
    assert rig.status(3) == ENABLED | REMOVE and rig.ged() == GED_CPU_HOTPLUG
    assert rig.scan() == [(2, 3), (3, 3)]
    assert rig.status(3) == ENABLED and rig.calls == []  # still present until _EJ0
    rig.bus.write(BASE + 3, 1, EJECT)  # _EJ0
    assert rig.status(3) == 0 and rig.calls == [("park", 3)]
    assert rig.dev.enabled() == [0, 1, 2]
    rig.bus.write(BASE + 3, 1, EJECT)  # again: already gone, nothing happens
    assert rig.calls == [("park", 3)]


def test_boot_vcpu_is_never_removed_nor_ejected() -> None:
    rig = Rig(online=4)
    with pytest.raises(ValueError, match="1-4"):
        rig.dev.set_online(0)
    with pytest.raises(ValueError, match="1-4"):
        rig.dev.set_online(5)
    rig.bus.write(BASE, 1, EJECT)
    assert rig.status(0) == ENABLED and rig.calls == []


def test_asked_back_before_the_os_heard_cancels_the_removal() -> None:
    rig = Rig(online=4)
    rig.dev.set_online(3)
    assert rig.dev.set_online(4) == ([], [])
    assert rig.status(3) == ENABLED and rig.scan() == []


def test_asked_back_after_the_os_took_the_request_is_inserted_once_ejected() -> None:
    rig = Rig(online=4)
    rig.dev.set_online(3)
    rig.ged()
    assert rig.scan() == [(3, 3)]  # the OS is offlining it
    rig.dev.set_online(4)  # nothing to do yet: it is still present
    rig.bus.write(BASE + 3, 1, EJECT)
    assert rig.calls == [("park", 3), ("up", 3)]
    assert rig.status(3) == ENABLED | INSERT and rig.ged() == GED_CPU_HOTPLUG
    assert rig.scan() == [(3, 1)]


def test_zero_writes_and_unknown_vcpus_change_nothing() -> None:
    rig = Rig()
    rig.bus.write(BASE + 1, 1, 0)
    rig.bus.write(BASE + 200, 1, EJECT)
    assert [rig.status(i) for i in range(4)] == [ENABLED, ENABLED, 0, 0] and rig.calls == []


def test_save_and_restore_keep_the_status_and_the_count() -> None:
    a = Rig(online=4)
    a.dev.set_online(3)
    state = a.dev.save_state()
    b = Rig(online=4)
    b.dev.restore_state(state)
    assert [b.status(i) for i in range(4)] == [ENABLED] * 3 + [ENABLED | REMOVE]
    b.bus.write(BASE + 3, 1, EJECT)
    assert b.calls == [("park", 3)] and b.dev.offline() == [3]
    with pytest.raises(StateError):
        b.dev.restore_state({**state, "status": [0, 1, 1, 1]})  # the boot vCPU absent
    with pytest.raises(StateError):
        b.dev.restore_state({**state, "version": 99})


def test_sizes_fit_the_platform_page() -> None:
    with pytest.raises(ValueError):
        CpuHotplugDevice(257, 1, notify=lambda: None, on_insert=print, on_eject=print)
    assert platform.CPU_HOTPLUG_SIZE >= 256
    assert platform.CPU_HOTPLUG_BASE + platform.CPU_HOTPLUG_SIZE <= (
        platform.ACPI_REGS_BASE + platform.ACPI_REGS_SIZE)
