"""Ethernet MAC addresses: the one parser of their text form, the formatter, and the
generator of guest MACs in Xen's range.

Grammar: xl's (tools/xl/xl_parse.c parse_nic_config, "mac="): six octets of one or two
hex digits (strtoul base 16, at most 0xff) separated by ':' (xl takes any separator;
xl-network-configuration(5) documents ':'). The canonical form is lowercase, two digits
per octet, as libxl writes it to XenStore (libxl's LIBXL_MAC_FMT "%02hhx:...").
"""

from __future__ import annotations

import os
import re

# Xen's OUI (XenSource), the range libxl draws guest MACs from.
XEN_OUI = b"\x00\x16\x3e"
# libxl__mac_is_default: an all-zero mac= means "none given, pick one".
UNSET_MAC = bytes(6)
_MAC = re.compile(r"([0-9a-fA-F]{1,2})" + r":([0-9a-fA-F]{1,2})" * 5 + r"\Z")


class MacError(ValueError):
    """A MAC address that is malformed or unusable for a NIC."""


def parse_mac(text: str, *, allow_unset: bool = False) -> bytes:
    """ "00:16:3e:12:34:56" → 6 bytes. Refuses other shapes, multicast addresses (the
    I/G bit, bit 0 of the first octet, IEEE 802 §8.2) and, unless `allow_unset`, the
    all-zero address (`UNSET_MAC`)."""
    m = _MAC.match(text)
    if not m:
        raise MacError(f"mac `{text}' is not six colon-separated hex octets"
                       " (e.g. 00:16:3e:12:34:56)")
    mac = bytes(int(g, 16) for g in m.groups())
    if mac[0] & 1:
        raise MacError(f"mac `{text}' is a multicast address (the low bit of the"
                       " first octet is set)")
    if mac == UNSET_MAC and not allow_unset:
        raise MacError(f"mac `{text}' is all zeroes")
    return mac


def format_mac(mac: bytes) -> str:
    """The canonical text form: "00:16:3e:0a:bc:ff"."""
    return ":".join(f"{b:02x}" for b in mac)


def generate_mac(seed: str | None = None) -> bytes:
    """A MAC in Xen's 00:16:3e range. With a seed (say "domname/vif0") the lower three
    bytes are derived from it, so a domain keeps its MAC, and so its DHCP lease, across
    restarts; without one they are random, as libxl does. Like libxl the fourth octet's
    top bit is clear (the lower half of the OUI is the part used for guests)."""
    if seed is None:
        tail = os.urandom(3)
    else:
        import hashlib  # here: with OpenSSL's libcrypto it is ~0.6 MiB in a domain process

        tail = hashlib.sha256(seed.encode()).digest()
    return XEN_OUI + bytes((tail[0] & 0x7F, tail[1], tail[2]))
