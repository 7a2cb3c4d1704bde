"""`/etc/xen/xl.conf` (xl.conf(5)) and where xl finds domain configuration files.

xl reads its global configuration on every invocation (tools/xl/xl.c `parse_global_config`)
and so does the CLI here; a missing file means every default. The file has xl.cfg's
syntax, so it is parsed by `xenopus.domain.config.syntax` — imported only when the file
exists, since every command pays for its imports.

Tests (and anyone who must not touch the host's /etc) point `XENOPUS_XEN_CONFIG_DIR` at
another directory (Xen's build-time XEN_CONFIG_DIR) and `XENOPUS_XL_CONF` at another file.
"""

from __future__ import annotations

import os
from collections import namedtuple

XEN_CONFIG_DIR = "/etc/xen"
XL_LOCK_FILE = "/var/lock/xl"  # xl.h XL_LOCK_FILE, xl.conf(5) lockfile's default
AUTOBALLOON = ("on", "off", "auto")

# The keys that mean something on KVM (xl.conf(5)); the others are accepted and ignored,
# as xl ignores keys it does not know.
#  autoballoon: xl shrinks dom0 to make room for a guest. Here dom0 is the Linux host,
#    whose memory the kernel shares with guests, so there is never anything to balloon
#    ("auto" is off, as xl makes it when dom0_mem fixes dom0's memory); the value is
#    checked as xl checks it, and "on" takes the creation lock as xl does.
#  lockfile: serialises creations that may balloon (xl_vmcontrol.c acquire_lock).
#  vif.default.bridge: the bridge of a vif that names none (the old name defaultbridge
#    is read too, as xl still reads it).
#  Not here: vif.default.script and run_hotplug_scripts (no hotplug script runs: xenopus
#    makes the tap and joins the bridge itself), the grant and claim limits (Xen's).
XlConf = namedtuple("XlConf", "path autoballoon lockfile vif_bridge",
                    defaults=(None, "auto", None, None))
XlConf.__doc__ = """xl.conf's settings (`path` None: no file was read; `lockfile` None: the default)."""


class XlConfError(ValueError):
    pass


def config_dir() -> str:
    return os.environ.get("XENOPUS_XEN_CONFIG_DIR") or XEN_CONFIG_DIR


def xl_conf_path() -> str:
    return os.environ.get("XENOPUS_XL_CONF") or os.path.join(config_dir(), "xl.conf")


def load(path: str | None = None) -> XlConf:
    """xl.conf's settings; every default when the file does not exist. A value of the
    wrong kind is an XlConfError naming the file and key (xl: "invalid autoballoon
    option")."""
    path = path or xl_conf_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return XlConf()
    except (OSError, UnicodeDecodeError) as e:
        raise XlConfError(f"{path}: cannot read: {e}") from None
    from xenopus.domain.config.syntax import ConfigError, parse_config

    try:
        raw = parse_config(text, path)
    except ConfigError as e:
        raise XlConfError(str(e)) from None

    def string(*keys: str) -> str | None:
        value = None
        for key in keys:  # later names win, as xl reads the deprecated one first
            if key in raw:
                if not isinstance(raw[key], str):
                    raise XlConfError(f"{path}: {key}: expected a string")
                value = raw[key]
        return value

    autoballoon = string("autoballoon") or "auto"
    if autoballoon not in AUTOBALLOON:
        raise XlConfError(f"{path}: invalid autoballoon option {autoballoon!r}"
                          " (on, off or auto)")
    return XlConf(path, autoballoon, string("lockfile"),
                  string("defaultbridge", "vif.default.bridge"))


def lock_path(conf: XlConf, run_dir: str, system_run_dir: str) -> str:
    """The creation lock: xl.conf's lockfile, else xl's /var/lock/xl for the system's
    daemon, else one inside a private run directory (a test's daemon shares no lock with
    the host's xl)."""
    if conf.lockfile:
        return conf.lockfile
    return XL_LOCK_FILE if run_dir == system_run_dir else os.path.join(run_dir, "xl.lock")


def find_config(name: str, cwd: str) -> str:
    """The domain configuration file `xl create NAME` means: NAME itself when it exists
    (relative to `cwd`), else, for a bare name, NAME and NAME.cfg in the Xen configuration
    directory (xm's and the distributions' /etc/xen/NAME convention). Unchanged when
    none exists, so the error names what the user typed."""
    if os.path.exists(os.path.join(cwd, name)) or os.sep in name:
        return name
    for candidate in (name, name + ".cfg"):
        path = os.path.join(config_dir(), candidate)
        if os.path.isfile(path):
            return path
    return name
