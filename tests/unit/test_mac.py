"""MAC addresses: xl's mac= grammar (tools/xl/xl_parse.c parse_nic_config)."""

from __future__ import annotations

import pytest

from xenopus.devices.mac import UNSET_MAC, MacError, format_mac, parse_mac


def test_octets_of_one_or_two_hex_digits_like_xl() -> None:
    # xl reads each octet with strtoul(s, &end, 16): "a" is 0x0a.
    assert parse_mac("0:16:3E:a:b:c") == bytes([0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C])
    assert format_mac(parse_mac("0:16:3E:a:b:c")) == "00:16:3e:0a:0b:0c"


def test_all_zeroes_only_where_unset_is_allowed() -> None:
    assert parse_mac("00:00:00:00:00:00", allow_unset=True) == UNSET_MAC
    with pytest.raises(MacError, match="all zeroes"):
        parse_mac("0:0:0:0:0:0")
