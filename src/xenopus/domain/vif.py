"""The host end of a `vif=` entry, for virtio-net and the Xen network backend alike.

xl's semantics (xl-network-configuration(5)): the backend interface is named
`vifDOMID.DEVID` unless `vifname=` says otherwise, `mtu=` sets its MTU, `bridge=` enslaves
it (and brings it up; without a bridge it is only brought up), and a missing `mac=` is
generated in Xen's 00:16:3e range. Hotplug `script=`s are not run: xenopus attaches the
tap itself, and the config parser warns that the key is ignored.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from xenopus.devices.mac import generate_mac, parse_mac
from xenopus.devices.tap import Tap
from xenopus.domain.devspec import VifSpec


class VifEnd(NamedTuple):
    """An open, configured tap and the MAC address the guest's NIC gets."""

    tap: Tap
    mac: bytes


class VifTaps:
    """A domain process's taps, opened once and handed to every incarnation of its guest
    (each gets its own descriptor of the same tap, which it closes with its NIC): a jailed
    process can make no tap (no CAP_NET_ADMIN, a network namespace of its own), and a tap
    that lives on keeps its name, MTU and bridge across a reboot."""

    def __init__(self) -> None:
        self._ends: dict[int, VifEnd] = {}  # by devid

    def open(self, domain: str, vif: VifSpec, domid: int, devid: int) -> VifEnd:
        end = self._ends.get(devid)
        if end is None:
            end = self._ends[devid] = open_vif(domain, vif, domid, devid)
        return _duplicate(end)

    def keep(self, devid: int, end: VifEnd) -> VifEnd:
        """A tap made for this domain by someone else (xl network-attach: the daemon),
        now ours and kept for every later incarnation as if `open` had made it; a
        descriptor of it for the device."""
        self.release(devid)
        self._ends[devid] = end
        return _duplicate(end)

    def release(self, devid: int) -> None:
        """Vif `devid` is gone (network-detach): our descriptor of its tap closes, so the
        tap goes from the host with the device's."""
        end = self._ends.pop(devid, None)
        if end is not None:
            end.tap.close()

    def close(self) -> None:
        for end in self._ends.values():
            end.tap.close()
        self._ends.clear()


def _duplicate(end: VifEnd) -> VifEnd:
    tap = end.tap
    return VifEnd(Tap(os.dup(tap.fd), tap.name, tap.vnet_hdr_len), end.mac)


def open_vif(domain: str, vif: VifSpec, domid: int, index: int) -> VifEnd:
    """Open vif `index` of `domain` (domain ID `domid`): a tap named as Xen names the
    backend interface, with the vif's MTU, up, on its bridge; and the guest's MAC, derived
    from the domain's name when the config has none (so it is stable across restarts).
    The tap is closed again if any step fails."""
    tap = Tap.open(vif.vifname or f"vif{domid}.{index}")
    try:
        if vif.mtu:
            tap.set_mtu(vif.mtu)
        if vif.bridge:
            tap.attach_to_bridge(vif.bridge)
        else:
            tap.set_up()
        mac = parse_mac(vif.mac) if vif.mac else generate_mac(f"{domain}/vif{index}")
    except BaseException:
        tap.close()
        raise
    return VifEnd(tap, mac)
