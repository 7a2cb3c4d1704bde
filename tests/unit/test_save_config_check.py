"""A save refuses, before writing anything, an image whose DOMAIN_CONFIG does not match
the domain's Xen PV devices (process._unrecorded_devices): the restored guest is built
from that config, so a device it lacks would leave saved state with no part to go to, and
a disk it has but the domain does not would be built with no state in the image."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from xenopus.control import DISK, NIC
from xenopus.domain.inventory import Inventory, PvDevicePart
from xenopus.domain.process import _unrecorded_devices


def _inventory(*parts: tuple[str, str, int]) -> Inventory:
    backend: Any
    made = []
    for kind, name, devid in parts:
        backend = SimpleNamespace(devid=devid)
        made.append(PvDevicePart(kind, name, backend))
    return Inventory(made)


def _config(vdevs: list[str], vifs: int = 0) -> dict[str, object]:
    return {"disks": [{"vdev": v, "target": f"/img/{v}"} for v in vdevs],
            "vifs": [{"model": "xen"} for _ in range(vifs)]}


def test_a_config_with_every_device_passes() -> None:
    inv = _inventory((DISK, "xvda", 51712), (DISK, "xvdb", 51728), (NIC, "nic0", 0))
    assert _unrecorded_devices(inv, _config(["xvda", "xvdb"], vifs=1)) == []


def test_a_disk_or_nic_the_config_lacks_is_named() -> None:
    inv = _inventory((DISK, "xvda", 51712), (DISK, "xvdb", 51728), (NIC, "nic0", 0),
                     (NIC, "nic1", 1))
    problems = _unrecorded_devices(inv, _config(["xvda"], vifs=1))
    assert [p.split(" is ")[0] for p in problems] == ["disk xvdb", "vif 1"], problems
    assert all("is not in the configuration" in p for p in problems)


def test_a_disk_the_domain_no_longer_has_is_named() -> None:
    inv = _inventory((DISK, "xvda", 51712))
    problems = _unrecorded_devices(inv, _config(["xvda", "xvdc"]))
    assert problems == ["disk xvdc is in the configuration the image would carry but not"
                        " in the domain"], problems


def test_a_vif_is_matched_by_its_recorded_devid_not_its_index() -> None:
    """vif 0 detached, vif 2 attached (network-attach records devid 2): the config's two
    entries are devids 1 and 2, which the domain has; its index alone would say 0 and 1."""
    inv = _inventory((NIC, "nic1", 1), (NIC, "nic2", 2))
    config = {"disks": [], "vifs": [{"model": "xen", "devid": 1}, {"model": "xen", "devid": 2}]}
    assert _unrecorded_devices(inv, config) == []
    config["vifs"] = [{"model": "xen"}, {"model": "xen"}]  # devids 0 and 1
    assert _unrecorded_devices(inv, config) == [
        "vif 2 is not in the configuration the image would carry"]
