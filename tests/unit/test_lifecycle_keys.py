"""xl.cfg(5) keys of the lifecycle work: uuid (xl_parse.c: libxl_uuid_from_string, "Failed
to parse UUID"), on_watchdog and the rename-restart / coredump-* actions
(action_on_shutdown_names), cpus_soft (as cpus), max_grant_frames and max_event_channels
(enforced by GrantTable and EventChannels as Xen's grant_table.c and event_channel.c do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenopus.domain.config import ConfigError, load_config
from xenopus.memory import GuestMemory, MiB
from xenopus.xen import abi
from xenopus.xen.evtchn import EventChannels
from xenopus.xen.grant import GrantTable

DOMID_SELF = 0x7FF0
ENOSPC, EINVAL = 28, 22


def cfg(tmp_path: Path, text: str):
    path = tmp_path / "d.cfg"
    path.write_text('name = "d"\nkernel = "/k"\nvcpus = 2\n' + text)
    return load_config(path)[0]


def test_uuid_is_taken_as_given_and_checked(tmp_path: Path) -> None:
    uuid = "6d9c0a3e-2f55-4c86-a0a4-4b4c55e3a0e1"
    assert cfg(tmp_path, f'uuid = "{uuid}"\n').uuid == uuid
    assert cfg(tmp_path, "").uuid is None  # the daemon makes a fresh one
    for bad in ("6d9c0a3e2f554c86a0a44b4c55e3a0e1", "not-a-uuid", ""):
        with pytest.raises(ConfigError, match=f":4: uuid: Failed to parse UUID: {bad}$"):
            cfg(tmp_path, f'uuid = "{bad}"\n')


def test_on_watchdog_and_the_actions_xl_names(tmp_path: Path) -> None:
    c = cfg(tmp_path, "")
    assert c.on_watchdog == "destroy" and c.action_for("watchdog") == "destroy"  # xl.cfg(5)
    c = cfg(tmp_path, 'on_watchdog = "coredump-restart"\non_poweroff = "rename-restart"\n'
                      'on_crash = "coredump-destroy"\n')
    assert (c.action_for("watchdog"), c.action_for("poweroff"), c.action_for("crash")) == (
        "coredump-restart", "rename-restart", "coredump-destroy")
    with pytest.raises(ConfigError, match="soft-reset.*not supported"):
        cfg(tmp_path, 'on_reboot = "soft-reset"\n')
    with pytest.raises(ConfigError, match="unknown action `explode'"):
        cfg(tmp_path, 'on_watchdog = "explode"\n')


def test_cpus_soft_reads_as_cpus(tmp_path: Path) -> None:
    assert cfg(tmp_path, 'cpus_soft = "0-1"\n').cpus_soft == [[0, 1], [0, 1]]
    assert cfg(tmp_path, 'cpus_soft = ["0", "1"]\n').cpus_soft == [[0], [1]]
    with pytest.raises(ConfigError, match="cpus_soft"):
        cfg(tmp_path, 'cpus_soft = "x"\n')


def test_limits_are_checked(tmp_path: Path) -> None:
    c = cfg(tmp_path, "")
    assert (c.max_grant_frames, c.max_event_channels) == (None, 1023)  # libxl's defaults
    c = cfg(tmp_path, "max_grant_frames = 4\nmax_event_channels = 8\n")
    assert (c.max_grant_frames, c.max_event_channels) == (4, 8)
    with pytest.raises(ConfigError, match="max_event_channels: 5000 is not between 1 and 4095"):
        cfg(tmp_path, "max_event_channels = 5000\n")
    with pytest.raises(ConfigError, match="max_grant_frames: 0 is not between"):
        cfg(tmp_path, "max_grant_frames = 0\n")


def test_event_channel_ports_stop_at_the_limit() -> None:
    """common/event_channel.c get_free_port: a port past max_evtchn_port is -ENOSPC."""
    with GuestMemory.create(1 * MiB) as mem:
        ev = EventChannels(1, mem, 1, lambda vcpu: None, max_port=3)
        ports = [ev.alloc_unbound(DOMID_SELF, 0) for _ in range(4)]
    assert ports == [1, 2, 3, -ENOSPC]


def test_grant_frames_stop_at_the_limit() -> None:
    """XENMEM_add_to_physmap(grant_table) past max_grant_frames is -EINVAL (Xen's
    gnttab_map_frame → gnttab_grow_table refuses)."""
    with GuestMemory.create(1 * MiB) as mem:
        table = GrantTable(1, mem, max_frames=2)
        assert table.max_frames == 2
        assert table.map_frame(2, 0x80) == -abi.XEN_EINVAL
