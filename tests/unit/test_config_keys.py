"""The table of configuration keys: one `key()` declaration per DomainConfig field."""

from __future__ import annotations

import pytest

from xenopus.domain.config import KEYS, KNOWN_KEYS, ConfigError, DomainConfig, load_config


def test_known_keys_are_the_settings_the_table_reads() -> None:
    # xl.cfg(5) keys we act on, plus the deprecated `builder` (xl_parse.c picks the type
    # from it) and root=/extra= (folded into the command line), plus three of ours.
    assert {
        "name", "type", "builder", "kernel", "ramdisk", "cmdline", "root", "extra",
        "memory", "maxmem", "vcpus", "maxvcpus", "on_poweroff", "on_reboot", "on_crash",
        "disk", "vif", "channel", "cpus", "xen_platform", "virtio_console", "virtio_rng",
        "uuid", "on_watchdog", "cpus_soft", "max_grant_frames", "max_event_channels",
        "cpu_weight", "cap", "virtio_balloon", "xenstore_quota", "xenstore_feature_mask",
        "cpuid", "msr_relaxed", "cpu_policy_hosts",
        "pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra",
        "xen_hypercall_path", "pvh_platform", "evtchn_fifo",
    } == KNOWN_KEYS
    assert "path" not in KNOWN_KEYS  # a field, not a setting


def test_every_field_is_a_key_with_help() -> None:
    assert [k.name for k in KEYS] == [f for f in DomainConfig.__dataclass_fields__]
    assert all(k.help for k in KEYS)
    assert [k.name for k in KEYS if k.required] == ["name", "kernel"]


@pytest.mark.parametrize("spec", [k for k in KEYS if k.name not in ("name", "kernel")],
                         ids=lambda k: k.name)
def test_from_dict_checks_every_key_and_names_it(spec) -> None:
    # from_dict speaks of dict keys (fields); the check itself of the xl.cfg setting.
    with pytest.raises(ConfigError, match=rf"^({spec.name}|{spec.label}): "):
        DomainConfig.from_dict({"name": "a", "kernel": "/k", spec.name: object()})


def test_missing_and_mistyped_keys_explain_themselves(tmp_path) -> None:
    path = tmp_path / "d.cfg"
    path.write_text('name = "a"\n')
    with pytest.raises(ConfigError, match=r"kernel: must be specified \(the file loaded as"
                                          r" the kernel image"):
        load_config(path)
    path.write_text('name = "a"\nkernel = "k"\nvcpus = [2]\n')
    with pytest.raises(ConfigError, match=r":3: vcpus: expected a number, got a list"
                                          r" \(the number of vCPUs initially online\)$"):
        load_config(path)


def test_pvh_platform_is_pc_or_xen_and_xen_needs_xen(tmp_path) -> None:
    path = tmp_path / "d.cfg"
    path.write_text('name = "a"\nkernel = "k"\n')
    assert load_config(path)[0].pvh_platform == "pc"
    path.write_text('name = "a"\nkernel = "k"\npvh_platform = "xen"\n')
    assert load_config(path)[0].pvh_platform == "xen"
    path.write_text('name = "a"\nkernel = "k"\npvh_platform = "hvm"\n')
    with pytest.raises(ConfigError, match=r'pvh_platform: expected "pc" or "xen", got \'hvm\''):
        load_config(path)
    path.write_text('name = "a"\nkernel = "k"\npvh_platform = "xen"\nxen_platform = 0\n')
    with pytest.raises(ConfigError, match=r"pvh_platform: .*xen_platform = 0"):
        load_config(path)


@pytest.mark.parametrize(("text", "value"), [("", "auto"), ("evtchn_fifo = 1\n", "1"),
                                             ("evtchn_fifo = 0\n", "0"),
                                             ('evtchn_fifo = "auto"\n', "auto")])
def test_evtchn_fifo_takes_1_0_or_auto(tmp_path, text: str, value: str) -> None:
    path = tmp_path / "d.cfg"
    path.write_text('name = "d"\nkernel = "/k"\n' + text)
    assert load_config(str(path))[0].evtchn_fifo == value


def test_evtchn_fifo_refuses_anything_else(tmp_path) -> None:
    path = tmp_path / "d.cfg"
    path.write_text('name = "d"\nkernel = "/k"\nevtchn_fifo = 2\n')
    with pytest.raises(ConfigError, match="evtchn_fifo"):
        load_config(str(path))


def test_xenstore_quota_and_feature_mask(tmp_path) -> None:
    """xl.cfg(5) "Xenstore related settings": QUOTA_SPECs with xenstored's names, a 32-bit
    feature mask (default all ones)."""
    path = tmp_path / "d.cfg"
    path.write_text('name = "a"\nkernel = "k"\n')
    cfg = load_config(path)[0]
    assert (cfg.xenstore_quota, cfg.xenstore_feature_mask) == (None, 0xFFFFFFFF)
    path.write_text('name = "a"\nkernel = "k"\nxenstore_quota = ["nodes=2000", '
                    '"transaction-nodes=64"]\nxenstore_feature_mask = 0x1\n')
    cfg = load_config(path)[0]
    assert (cfg.xenstore_quota, cfg.xenstore_feature_mask) == (
        ["nodes=2000", "transaction-nodes=64"], 1)
    for bad in ('["nodes=-1"]', '["bogus=1"]', '["nodes"]', '"nodes=1"'):
        path.write_text(f'name = "a"\nkernel = "k"\nxenstore_quota = {bad}\n')
        with pytest.raises(ConfigError, match=r"xenstore_quota: "):
            load_config(path)
    path.write_text('name = "a"\nkernel = "k"\nxenstore_feature_mask = 0x100000000\n')
    with pytest.raises(ConfigError, match=r"xenstore_feature_mask: .*32-bit mask"):
        load_config(path)
