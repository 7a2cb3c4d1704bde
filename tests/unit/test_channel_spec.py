"""xl.cfg `channel=` (xl_parse.c's grammar and checks, libxl's name check), the config's
own checks, its libxl JSON and `xl channel-list`'s format (xl_console.c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenopus.domain.config import ConfigError, load_config
from xenopus.domain.devspec import ChannelSpec, DevSpecError, parse_channel
from xenopus.toolstack import xlformat


def test_keys_are_trimmed_and_unknown_ones_warned_about() -> None:
    notes: list[str] = []
    spec = parse_channel(" name = org.a.b , connection= socket ,path =/run/a.sock,"
                         " backend=Domain-0, colour=blue", 0, notes)
    assert spec == ChannelSpec("org.a.b", "socket", "/run/a.sock")
    assert notes == ["channel 0 ' name = org.a.b , connection= socket ,path =/run/a.sock,"
                     " backend=Domain-0, colour=blue': unknown channel parameter 'colour',"
                     " ignoring"]
    assert parse_channel("connection=pty,name=n") == ChannelSpec("n", "pty")


@pytest.mark.parametrize(("spec", "reason"), [
    ("name=n", "channel has unknown 'connection'"),
    ("name=n,connection=serial", "unknown channel connection 'serial'"),
    ("name=n,connection=socket", "channel connection 'socket' requires path=.."),
    ("connection=pty", "channel has no name"),
    ("name=n,connection=pty,backend=3", "driver domains are not supported"),
    ("name=n,connection=socket,path=rel.sock", "must be absolute"),
    ("name=n,connection", "failed to parse channel configuration: connection"),
])
def test_refusals_name_the_entry(spec: str, reason: str) -> None:
    with pytest.raises(DevSpecError) as e:
        parse_channel(spec, 2)
    assert str(e.value).startswith(f"channel 2 '{spec}': ") and reason in str(e.value)


def write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "d.cfg"
    cfg.write_text('name = "d"\nkernel = "/k"\n' + text)
    return cfg


def test_config_reads_channels_and_checks_them(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, 'channel = ["connection=pty,name=a",'
                                            ' "connection=socket,name=b,path=/run/b"]\n'))
    assert config.channels == [ChannelSpec("a", "pty"), ChannelSpec("b", "socket", "/run/b")]
    json = xlformat.libxl_domain_config(config, "u")["channels"]
    assert json == [{"devid": 1, "name": "a", "connection": "pty", "connection.pty": {}},
                    {"devid": 2, "name": "b", "connection": "socket",
                     "connection.socket": {"path": "/run/b"}}]
    with pytest.raises(ConfigError, match="xen_platform = 0"):
        load_config(write(tmp_path, 'xen_platform = 0\nchannel = ["connection=pty,name=a"]\n'))
    with pytest.raises(ConfigError, match="same path"):
        load_config(write(tmp_path, 'channel = ["connection=socket,name=a,path=/r/x",'
                                    ' "connection=socket,name=b,path=/r/x"]\n'))


def test_channel_list_is_xl_s_table() -> None:
    rows = xlformat.channel_list([
        {"devid": 1, "backend_id": 0, "state": 4, "evtch": 7, "rref": 8, "connection": "pty",
         "tty": "/dev/pts/3"},
        {"devid": 2, "backend_id": 0, "state": 1, "evtch": -1, "rref": -1,
         "connection": "socket", "tty": ""},
    ])
    # xl_console.c main_channellist's printf formats, field by field
    assert rows == ["Idx BE state evt-ch ring-ref connection " + " " * 30,
                    "1   0  4     7      8        pty        /dev/pts/3" + " " * 21,
                    "2   0  1     -1     -1       socket     "]
