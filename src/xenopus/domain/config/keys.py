"""What a configuration key is: `Key` (the xl.cfg settings it reads, how it reads them,
how its value is checked, and a line of help for messages), `key()` to declare one as a
`DomainConfig` field, and the readers and checks the declarations use.

Semantics are xl.cfg(5)'s (docs/man/xl.cfg.5.pod.in) and xl's (tools/xl/xl_parse.c
parse_config_data), with the differences listed in `xenopus.domain.config`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, replace
from typing import Any, TypeVar

from xenopus.domain.config.syntax import OVERRIDES_SOURCE, ConfigError, Setting, to_int
from xenopus.domain.cpuid_spec import parse_cpuid
from xenopus.domain.cpulist import parse_affinity
from xenopus.domain.devspec import (
    ChannelSpec,
    DevSpecError,
    DiskSpec,
    VifSpec,
    parse_channel,
    parse_disk,
    parse_vif,
)
from xenopus.vm.cpu_policy import CpuPolicy, PolicyError, load_policy_file

T = TypeVar("T")

NAME_MAX = 64
MIN_MEMORY_MIB = 2
# A sane ceiling, well inside what KVM allows (KVM_CAP_MAX_VCPUS, checked at create) and
# what 8-bit xAPIC IDs in the MADT can name.
MAX_VCPUS = 64
ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
           "coredump-restart")
# The rest of xl's action_on_shutdown_names (xl_parse.c), refused for now.
UNSUPPORTED_ACTIONS = ("soft-reset",)
CMDLINE_WARNING = "Warning: ignoring root= and extra= in favour of cmdline="
# libxl's default shim command line (tools/libs/light/libxl_internal.h, PVSHIM_CMDLINE):
# Xen's console on console_io ("xen") and on the PVH console ring ("pv").
PVSHIM_CMDLINE = "pv-shim console=xen,pv"
# Where a PV shim is looked for when pvshim_path is not set: the one `make shim`
# (scripts/build-shim) builds in this checkout, then libxl's default,
# XENFIRMWAREDIR/PVSHIM_BASENAME (libxl_create.c, libxl__domain_build_info_setdefault).
# (os.path, not pathlib: a domain process imports this, and pathlib costs each ~0.65 MiB)
PROJECT_SHIM = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.realpath(__file__)))))), "build", "shim", "xen-shim")
PVSHIM_PATHS = (PROJECT_SHIM, "/usr/lib/xen/boot/xen-shim")


# -- reading settings ------------------------------------------------------------------------


@dataclass
class Reading:
    """One conversion of parsed settings into `DomainConfig` field values."""

    settings: dict[str, Setting]
    path: str | None  # the configuration file
    base: str  # the directory a relative path from the file resolves against
    cwd: str | None  # the directory one from a command-line override resolves against
    warnings: list[str]
    values: dict[str, object]  # the fields read so far, in declaration order


Reader = Callable[[Reading, "Key"], object]  # returns None for "not set: keep the default"


@dataclass(frozen=True)
class Key:
    """How one `DomainConfig` field comes from xl.cfg and what values it accepts."""

    name: str  # the DomainConfig field
    # The xl.cfg keys it reads, the first naming it in messages; None (until `keys_of`
    # binds it): the field's name.
    settings: tuple[str, ...] | None
    read: Reader
    check: Callable[[Any], object]  # raises ValueError (the message without the key)
    help: str
    optional: bool  # None is a valid value
    required: bool  # there is no default: the file must set it

    @property
    def label(self) -> str:
        return self.settings[0] if self.settings else self.name

    @property
    def setting_names(self) -> tuple[str, ...]:
        return self.settings or ()

    def validate(self, value: object) -> None:
        """ConfigError naming the key, for a value its check refuses."""
        if value is None and self.optional:
            return
        try:
            self.check(value)
        except ValueError as e:
            raise ConfigError(f"{self.label}: {e}") from None

    def setting(self, r: Reading) -> Setting | None:
        """The setting a message about this key points at: the first one the file has."""
        return next((r.settings[s] for s in self.setting_names if s in r.settings), None)


def key(default: Any = MISSING, *, read: Reader, check: Callable[[Any], object],
        help: str, setting: str | tuple[str, ...] | None = None,
        factory: Callable[[], Any] | None = None, optional: bool = False) -> Any:
    """Declare a `DomainConfig` field as a configuration key: its default, the xl.cfg
    setting(s) it reads (default: the field's name) with `read`, its `check`, and its
    `help`. The field's name is filled in by `keys_of`."""
    settings = (setting,) if isinstance(setting, str) else setting
    spec = Key("", settings, read, check, help, optional,
               required=default is MISSING and factory is None)
    if factory is not None:
        return field(default_factory=factory, metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


def keys_of(fields: tuple[Any, ...]) -> tuple[Key, ...]:
    """The keys declared with `key()`, named after their fields, in declaration order."""
    out = []
    for f in fields:
        spec: Key = f.metadata["key"]
        settings = spec.settings if spec.settings is not None else (f.name,)
        out.append(replace(spec, name=f.name, settings=settings))
    return tuple(out)


def where(s: Setting) -> str:
    return f"{s.source}:{s.line}"


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return "a number" if isinstance(value, int) else "a string"


def source(r: Reading, k: Key) -> str | None:
    """The configuration file's path (not a setting)."""
    return r.path


def string(r: Reading, k: Key) -> str | None:
    """A string setting; a number atom is its text (libxlu keeps every atom as text, so
    `name = 7' is the string "7")."""
    return _string(r, k.label, k.help)


def _string(r: Reading, name: str, help: str) -> str | None:
    s = r.settings.get(name)
    if s is None:
        return None
    if isinstance(s.value, str):
        return s.value
    if isinstance(s.value, int):
        return s.text
    raise ConfigError(f"{where(s)}: {name}: expected a string, got a list ({help})")


def number(r: Reading, k: Key) -> int | None:
    """A number setting; xl reads numbers with strtol() on the atom's text, so a quoted
    "256" works too."""
    s = r.settings.get(k.label)
    if s is None:
        return None
    if isinstance(s.value, int):
        return s.value
    if isinstance(s.value, str) and (n := to_int(s.value.strip())) is not None:
        return n
    shown = f" `{s.value}'" if isinstance(s.value, str) else ""
    raise ConfigError(f"{where(s)}: {k.label}: expected a number, got {_kind(s.value)}{shown}"
                      f" ({k.help})")


def resolve(r: Reading, path: str | None, s: Setting | None) -> str | None:
    """A relative path from the file resolves beside it; one from an override against the
    directory the user typed it in (`cwd`, which the daemon gets from the CLI)."""
    if not path or s is None or os.path.isabs(path):
        return path
    root = (r.cwd or os.getcwd()) if s.source == OVERRIDES_SOURCE else r.base
    return os.path.normpath(os.path.join(root, path))


def path(r: Reading, k: Key) -> str | None:
    return resolve(r, string(r, k), r.settings.get(k.label))


def guest_type(r: Reading, k: Key) -> str | None:
    """`type`, or from the deprecated `builder` (xl_parse.c): "hvm" for "hvm", else pv."""
    kind = _string(r, "type", k.help)
    builder = _string(r, "builder", k.help)
    if kind is None and builder is not None:
        return "hvm" if builder == "hvm" else "pv"
    return kind


def guest_cmdline(r: Reading, k: Key) -> str:
    cmdline, warnings = combine_cmdline(*(_string(r, s, k.help) for s in k.setting_names))
    r.warnings += warnings
    return cmdline


def combine_cmdline(cmdline: str | None, root: str | None,
                    extra: str | None) -> tuple[str, list[str]]:
    """The guest command line from cmdline/root/extra, as xl_parse.c parse_cmdline().

    `cmdline` wins as is (with xl's warning if root or extra is also set); otherwise
    "root=ROOT EXTRA", "root=ROOT", or EXTRA.
    """
    if cmdline is not None:
        warn = [CMDLINE_WARNING] if root is not None or extra is not None else []
        return cmdline, warn
    if root is not None:
        return (f"root={root} {extra}" if extra is not None else f"root={root}"), []
    return extra or "", []


def xen_platform(r: Reading, k: Key) -> object:
    """xl-style 1/0, or the string "auto" (or "1"/"0"); anything else fails the check."""
    s = r.settings.get(k.label)
    if s is None:
        return None
    return str(s.value) if isinstance(s.value, (int, str)) else s.value


def _string_list(s: Setting, name: str) -> list[str]:
    if not isinstance(s.value, list):
        raise ConfigError(f"{where(s)}: {name}: expected a list of strings"
                          f" ([ '...', ... ]), got {_kind(s.value)}")
    for i, item in enumerate(s.value):
        if not isinstance(item, str):
            raise ConfigError(f"{where(s)}: {name}: entry {i}: expected a string,"
                              f" got {_kind(item)}")
    return s.value  # type: ignore[return-value]


def string_list(r: Reading, k: Key) -> list[str] | None:
    """A list of strings (`[ "a", "b" ]`); None when absent."""
    s = r.settings.get(k.label)
    return None if s is None else list(_string_list(s, k.label))


def disks(r: Reading, k: Key) -> list[DiskSpec]:
    """Each `disk` entry (devspec's grammar), its target resolved like a path."""
    s = r.settings.get(k.label)
    if s is None:
        return []
    out = []
    for i, spec in enumerate(_string_list(s, k.label)):
        try:
            d = parse_disk(spec, i)
        except DevSpecError as e:
            raise ConfigError(f"{where(s)}: {k.label}: {e}") from None
        out.append(replace(d, target=resolve(r, d.target, s)))
    return out


def _specs(r: Reading, k: Key, parse: Callable[[str, int, list[str]], T]) -> list[T]:
    """Each entry of a list of device specs, parsed; the parser's notes become warnings."""
    s = r.settings.get(k.label)
    if s is None:
        return []
    out = []
    notes: list[str] = []
    for i, spec in enumerate(_string_list(s, k.label)):
        try:
            out.append(parse(spec, i, notes))
        except DevSpecError as e:
            raise ConfigError(f"{where(s)}: {k.label}: {e}") from None
    r.warnings += [f"{where(s)}: warning: {n}" for n in notes]
    return out


def vifs(r: Reading, k: Key) -> list[VifSpec]:
    """Each `vif` entry (devspec's grammar)."""
    return _specs(r, k, parse_vif)


def channels(r: Reading, k: Key) -> list[ChannelSpec]:
    """Each `channel` entry (xl_parse.c's grammar)."""
    return _specs(r, k, parse_channel)


def affinity(r: Reading, k: Key) -> list[list[int] | None] | None:
    """xl_parse.c parse_vcpu_affinity: a string applies to every vCPU; a list gives one
    set per vCPU, entries past the last vCPU ignored."""
    s = r.settings.get(k.label)
    if s is None:
        return None
    count = r.values.get("maxvcpus", r.values.get("vcpus", 1))
    assert isinstance(count, int)
    # An out-of-range count fails its own check; don't build a huge list first.
    count = min(max(count, 0), MAX_VCPUS)
    try:
        if isinstance(s.value, list):
            items = [str(v) if isinstance(v, int) else v for v in s.value]
            if not all(isinstance(v, str) for v in items):
                raise ValueError("expected a string or a list of strings")
            return [parse_affinity(v) for v in items[:count]]  # type: ignore[arg-type]
        text = s.text if isinstance(s.value, int) else s.value
        cpus = parse_affinity(str(text))
        return None if cpus is None else [list(cpus) for _ in range(count)]
    except ValueError as e:
        raise ConfigError(f"{where(s)}: {k.label}: {e}") from None



def cpuid(r: Reading, k: Key) -> object:
    """xl's `cpuid=`, kept as written (a string or a list of strings); the check parses it."""
    s = r.settings.get(k.label)
    if s is None:
        return None
    return _string_list(s, k.label) if isinstance(s.value, list) else s.value


def cpu_policies(r: Reading, k: Key) -> list[dict[str, object]] | None:
    """Each listed policy file (`xenopus cpu-policy -o FILE`), read now: the domain keeps
    the policies themselves (its process, its save image and a migration need no file)."""
    s = r.settings.get(k.label)
    if s is None:
        return None
    out = []
    for name in _string_list(s, k.label):
        try:
            out.append(load_policy_file(resolve(r, name, s) or name).to_dict())
        except PolicyError as e:
            raise ConfigError(f"{where(s)}: {k.label}: {e}") from None
    return out


# -- checks ------------------------------------------------------------------------------------


def text(check: Callable[[str], object] | None = None) -> Callable[[object], None]:
    """A check for a string value, then `check` on it."""
    def checked(value: object) -> None:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if check is not None:
            check(value)
    return checked


def integer(check: Callable[[int], object]) -> Callable[[object], None]:
    """A check for an int value (not a bool), then `check` on it."""
    def checked(value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an int, got {type(value).__name__}")
        check(value)
    return checked


def list_of(kind: type) -> Callable[[object], None]:
    def checked(value: object) -> None:
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise ValueError(f"expected a list of {kind.__name__}")
    return checked


# The host's own name in `xl list`, and the names a path component cannot have.
RESERVED_NAMES = ("Domain-0", ".", "..")


def check_name(name: str) -> str:
    if not name:
        raise ValueError("must not be empty")
    if name.isdigit():
        raise ValueError(f"`{name}' is all digits, which would be taken for a domain ID")
    if "/" in name:
        raise ValueError(f"`{name}' contains '/'")
    if name in RESERVED_NAMES:
        raise ValueError(f"`{name}' is reserved (xl refuses it too)")
    if name.startswith("-"):
        raise ValueError(f"`{name}' starts with '-', which would be taken for an option")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"`{name}' contains whitespace or a control character")
    if len(name) > NAME_MAX:
        raise ValueError(f"is {len(name)} characters long; the limit is {NAME_MAX}")
    return name


def check_path(path: str) -> str:
    if not path:
        raise ValueError("must not be empty")
    return path


def check_type(kind: str) -> str:
    if kind in ("pvh", "pv"):  # "pv" only with pvshim = 1: DomainConfig checks that
        return kind
    if kind == "hvm":
        raise ValueError(f"`{kind}' guests are not supported yet; use type = \"pvh\"")
    raise ValueError(f"unknown guest type `{kind}' (expected \"pvh\" or \"pv\")")


def check_memory(mib: int) -> int:
    if mib < MIN_MEMORY_MIB:
        raise ValueError(f"{mib} MiB is too small; the minimum is {MIN_MEMORY_MIB} MiB")
    return mib


def check_vcpus(count: int) -> int:
    if count < 1:
        raise ValueError("a domain needs at least 1 vCPU")
    if count > MAX_VCPUS:
        raise ValueError(f"{count} vCPUs requested; the limit is {MAX_VCPUS}")
    return count


def check_weight(weight: int) -> int:
    # libxl_sched.c: "Cpu weight out of range, valid values are within range from 1 to 65535"
    if not 1 <= weight <= 65535:
        raise ValueError(f"{weight} is out of range: 1 to 65535")
    return weight


def check_cap(cap: int) -> int:
    if cap < 0:
        raise ValueError(f"{cap} is negative (0 means no cap)")
    return cap


def check_action(action: str) -> str:
    if action in ACTIONS:
        return action
    if action in UNSUPPORTED_ACTIONS:
        raise ValueError(f"action `{action}' is not supported yet"
                         f" (supported: {', '.join(ACTIONS)})")
    raise ValueError(f"unknown action `{action}' (expected one of {', '.join(ACTIONS)})")


def uuid_bytes(text: str) -> bytes:
    """A UUID's 16 bytes from libxl's only form, 8-4-4-4-12 hex digits (libxl_uuid.c,
    libxl_uuid_from_string); ValueError otherwise. (Not the uuid module: a domain process
    would import it, with its platform probing, for this alone.)"""
    fields = text.split("-")
    if [len(f) for f in fields] != [8, 4, 4, 4, 12] or not all(
            c in "0123456789abcdefABCDEF" for f in fields for c in f):
        raise ValueError(f"not a UUID: {text!r}")
    return bytes.fromhex("".join(fields))


def check_uuid(text: str) -> str:
    """xl_parse.c: libxl_uuid_from_string, else "Failed to parse UUID"."""
    try:
        uuid_bytes(text)
    except ValueError:
        raise ValueError(f"Failed to parse UUID: {text}") from None
    return text


# Xen's opt_max_grant_frames default is 64; its domain_create refuses fewer than 1 frame
# (grant_table_init: -EINVAL). A cap keeps a typo from reserving gigabytes of guest frames.
MAX_GRANT_FRAMES = 4096
# xl.cfg(5) max_event_channels: 4095 for a 2-level (64-bit x86) guest, the only ABI here.
MAX_EVENT_CHANNELS = 4095


def check_grant_frames(frames: int) -> int:
    if not 1 <= frames <= MAX_GRANT_FRAMES:
        raise ValueError(f"{frames} is not between 1 and {MAX_GRANT_FRAMES}")
    return frames


def check_event_channels(count: int) -> int:
    if not 1 <= count <= MAX_EVENT_CHANNELS:
        raise ValueError(f"{count} is not between 1 and {MAX_EVENT_CHANNELS} (the 2-level"
                         " ABI's ports)")
    return count


def check_xenstore_quota(items: object) -> None:
    """xl.cfg(5) xenstore_quota: QUOTA_SPECs `name=value`, the names GET_QUOTA lists (`xl
    xenstore-quota-get -g`), each a non-negative integer."""
    from xenopus.xen.xenstore.store import QUOTA_NAMES

    list_of(str)(items)
    for item in items:  # type: ignore[attr-defined]
        name, sep, value = item.partition("=")
        if not sep or name not in QUOTA_NAMES or not value.isdigit():
            raise ValueError(f"{item!r} is not <quota-name>=<number> (names: "
                             f"{', '.join(QUOTA_NAMES)})")


def check_u32(value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} is not a 32-bit mask")
    return value


def check_xen_platform(value: str) -> str:
    if value not in ("0", "1", "auto"):
        raise ValueError(f"expected 1, 0 or \"auto\", got {value!r}")
    return value


def check_pvh_platform(value: str) -> str:
    if value not in ("pc", "xen"):
        raise ValueError(f'expected "pc" or "xen", got {value!r}')
    return value


def check_hypercall_path(value: str) -> str:
    if value not in ("auto", "kernel", "trap"):
        raise ValueError(f'expected "auto", "kernel" or "trap", got {value!r}')
    return value


def check_flag(value: int) -> int:
    if value not in (0, 1):
        raise ValueError(f"expected 0 or 1, got {value}")
    return value


def check_affinity(value: object) -> None:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    for i, cpus in enumerate(value):
        if cpus is None:
            continue
        if (not isinstance(cpus, list) or not cpus
                or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in cpus)
                or cpus != sorted(set(cpus))):
            raise ValueError(f"entry {i} is not a sorted list of host CPU numbers")


def check_cpuid(value: object) -> None:
    if not isinstance(value, (str, list)):
        raise ValueError(f"expected a string or a list of strings, got {type(value).__name__}")
    parse_cpuid(value)  # type: ignore[arg-type]


def check_cpu_policies(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of CPU policies")
    for i, policy in enumerate(value):
        CpuPolicy.from_dict(policy, f"policy {i}")


def default_pvshim() -> str:
    """The first PV shim of PVSHIM_PATHS that exists, or a ConfigError saying how to get one."""
    for candidate in PVSHIM_PATHS:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError("pvshim_path: no PV shim found (looked for "
                      + ", ".join(PVSHIM_PATHS) + "): build one from Debian's Xen source"
                      " with `make shim` (scripts/build-shim), or set pvshim_path")
