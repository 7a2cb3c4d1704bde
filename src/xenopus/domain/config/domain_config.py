"""`DomainConfig`, the table of configuration keys, and loading it from xl.cfg.

Each field of `DomainConfig` is one key, declared once with `key()`: its type and default,
the xl.cfg setting(s) it reads and how, its check, and its help text. Reading, validation
(from a file or `from_dict`) and "unknown key" warnings all follow the table.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass, fields

from xenopus.domain.config import keys as k
from xenopus.domain.config.syntax import (
    ConfigError,
    Setting,
    parse_override,
    parse_settings,
)
from xenopus.domain.devspec import ChannelSpec, DiskSpec, VifSpec, vif_devids

# xl.cfg files are a few hundred bytes; anything this large is not one (xl's own limit,
# libxl's read_file_contents, is the file's size, which /dev/zero does not have).
MAX_CONFIG_BYTES = 1 << 20


@dataclass
class DomainConfig:
    """A validated domain configuration (the keys this release supports)."""

    name: str = k.key(read=k.string, check=k.text(k.check_name),
                      help="the name of the domain, unique on the host")
    kernel: str = k.key(read=k.path, check=k.text(k.check_path),
                        help="the file loaded as the kernel image: an ELF with a PVH note, or a bzImage")
    type: str = k.key("pvh", setting=("type", "builder"), read=k.guest_type,
                      check=k.text(k.check_type),
                      help='the guest type: "pvh", or "pv" (with pvshim = 1)')
    memory: int = k.key(128, read=k.number, check=k.integer(k.check_memory),
                        help="MiB of RAM the guest starts with")
    # None means equal to memory
    maxmem: int | None = k.key(None, read=k.number, check=k.integer(k.check_memory),
                               help="the most memory, in MiB, the guest can ever see; at least memory")
    vcpus: int = k.key(1, read=k.number, check=k.integer(k.check_vcpus),
                       help="the number of vCPUs initially online")
    # None means equal to vcpus
    maxvcpus: int | None = k.key(None, read=k.number, check=k.integer(k.check_vcpus),
                                 help="the most vCPUs the guest may bring up; at least vcpus")
    ramdisk: str | None = k.key(None, read=k.path, check=k.text(k.check_path), optional=True,
                                help="the file loaded as the ramdisk")
    # Already combined from cmdline/root/extra.
    cmdline: str = k.key("", setting=("cmdline", "root", "extra"), read=k.guest_cmdline,
                         check=k.text(), help="the kernel command line: cmdline, else root= and extra=")
    on_poweroff: str = k.key("destroy", read=k.string, check=k.text(k.check_action),
                             help="what to do when the guest shuts itself down")
    on_reboot: str = k.key("restart", read=k.string, check=k.text(k.check_action),
                           help="what to do when the guest reboots")
    on_crash: str = k.key("destroy", read=k.string, check=k.text(k.check_action),
                          help="what to do when the guest crashes")
    # The config file it came from (not a setting).
    path: str | None = k.key(None, setting=(), read=k.source, check=k.text(), optional=True,
                             help="the configuration file")
    disks: list[DiskSpec] = k.key(setting="disk", read=k.disks, check=k.list_of(DiskSpec),
                                  factory=list, help="the disks, xl disk-spec strings")
    vifs: list[VifSpec] = k.key(setting="vif", read=k.vifs, check=k.list_of(VifSpec),
                                factory=list, help="the network devices, xl vif-spec strings")
    channels: list[ChannelSpec] = k.key(
        setting="channel", read=k.channels, check=k.list_of(ChannelSpec), factory=list,
        help="PV channels (named consoles device/console/1.. to a socket or pty)")
    # Hard affinity: entry i is vCPU i's host CPUs (None: any); vCPUs past the end of the
    # list, or every vCPU if the whole value is None, are not pinned.
    cpus: list[list[int] | None] | None = k.key(
        None, read=k.affinity, check=k.check_affinity, optional=True,
        help="host CPUs the vCPUs may run on: a CPU list, or one per vCPU")
    # Extra paravirtual devices (not xl keys: xl has no virtio): a virtio console port the
    # CLI attaches to with `console -t virtio`, and a virtio entropy source.
    virtio_console: int = k.key(0, read=k.number, check=k.integer(k.check_flag),
                                help="1 for a virtio console port")
    virtio_rng: int = k.key(0, read=k.number, check=k.integer(k.check_flag),
                            help="1 for a virtio entropy source")
    # The Xen guest interface: "1" shown, "0" hidden (a PVH guest sees no Xen at all),
    # "auto" on unless the image needs the in-kernel path and the host lacks it.
    xen_platform: str = k.key("auto", read=k.xen_platform,
                              check=k.text(k.check_xen_platform),
                              help='whether the guest sees Xen: 1, 0 or "auto"')
    # -- xl.cfg(5) keys of issue 11's lifecycle work --
    uuid: str | None = k.key(None, read=k.string, check=k.text(k.check_uuid), optional=True,
                             help="the domain's UUID (XENVER_guest_handle); default: a fresh one")
    on_watchdog: str = k.key("destroy", read=k.string, check=k.text(k.check_action),
                             help="what to do when the domain's Xen watchdog expires")
    # Soft affinity, as `cpus`: recorded and listed (vcpu-list); Linux schedules threads
    # with one (hard) mask, so it has no effect here.
    cpus_soft: list[list[int] | None] | None = k.key(
        None, read=k.affinity, check=k.check_affinity, optional=True,
        help="host CPUs the vCPUs prefer (soft affinity): a CPU list, or one per vCPU")
    # None: Xen's default (gnttab_max_frames, 64), as libxl's LIBXL_MAX_GRANT_DEFAULT.
    max_grant_frames: int | None = k.key(None, read=k.number, optional=True,
                                         check=k.integer(k.check_grant_frames),
                                         help="the most grant-table frames the domain may have")
    max_event_channels: int = k.key(1023, read=k.number, check=k.integer(k.check_event_channels),
                                    help="the highest event-channel port the domain may use")
    # xl.cfg(5) "Xenstore related settings": the domain's own XenStore quotas (set as libxl
    # does, SET_QUOTA after INTRODUCE) and the ring features it is offered (SET_FEATURE
    # before INTRODUCE, the features we serve ANDed with the mask).
    xenstore_quota: list[str] | None = k.key(
        None, read=k.string_list, check=k.check_xenstore_quota, optional=True,
        help='the domain\'s XenStore quotas: ["nodes=2000", ...] (names as '
             '`xl xenstore-quota-get -g` lists them)')
    xenstore_feature_mask: int = k.key(
        0xFFFFFFFF, read=k.number, check=k.integer(k.check_u32),
        help="the XenStore ring features the guest may see (1: reconnection, 2: error)")
    virtio_balloon: int = k.key(0, read=k.number, check=k.integer(k.check_flag),
                                help="1 for a virtio memory balloon (xl mem-set for a guest"
                                " without Xen)")
    # xl.cfg(5) cpu_weight and cap: the domain's share under the credit schedulers (what
    # `xl sched-credit -w -c` changes later); None: the scheduler's default (256, no cap).
    cpu_weight: int | None = k.key(None, read=k.number, check=k.integer(k.check_weight),
                                   optional=True, help="the domain's CPU weight, 1 to 65535"
                                   " (256: the default share)")
    cap: int | None = k.key(None, read=k.number, check=k.integer(k.check_cap), optional=True,
                            help="the most CPU the domain may use, in percent of one host CPU"
                            " (0: no cap)")
    # The CPU policy (vm/cpu_policy.py): xl's cpuid= in either form, levelled first to the
    # policies of the hosts listed (saved by `xenopus cpu-policy --host -o FILE`).
    cpuid: str | list[str] | None = k.key(
        None, read=k.cpuid, check=k.check_cpuid, optional=True,
        help='CPUID overrides: "host,NAME=VALUE,..." or ["LEAF[,SUBLEAF]:eXx=BITS", ...]')
    cpu_policy_hosts: list[dict[str, object]] | None = k.key(
        None, read=k.cpu_policies, check=k.check_cpu_policies, optional=True,
        help="policy files of hosts: the guest gets only what all of them offer")
    msr_relaxed: int = k.key(0, read=k.number, check=k.integer(k.check_flag),
                             help="1: guest reads of MSRs outside the policy give 0 and"
                                  " writes are ignored, instead of #GP")
    # PV-in-PVH (xl.cfg(5) "PVH guest options"): Xen's PV shim boots as the PVH kernel
    # and runs `kernel` as a PV guest. xl reads these for type = "pvh" (xl_parse.c); a
    # type = "pv" guest needs them here, where KVM has no PV mode of its own.
    pvshim: int = k.key(0, read=k.number, check=k.integer(k.check_flag),
                        help="1 to boot the guest as a PV guest inside Xen's PV shim")
    # None: the default shim (keys.PVSHIM_PATHS), resolved when pvshim is on.
    pvshim_path: str | None = k.key(None, read=k.path, check=k.text(k.check_path),
                                    optional=True, help="the PV shim to boot")
    pvshim_cmdline: str = k.key(k.PVSHIM_CMDLINE, read=k.string, check=k.text(),
                                help="the shim's command line")
    pvshim_extra: str | None = k.key(None, read=k.string, check=k.text(), optional=True,
                                     help="extra shim command-line arguments, appended")
    # How a Xen guest's hypercalls reach xenopus (xen/hypercall.py): "kernel" through KVM's
    # in-kernel Xen support (KVM_CAP_XEN_HVM; vmcall/vmmcall too), "trap" through our
    # port-I/O hypercall page on any KVM, "auto" the former where KVM offers it.
    xen_hypercall_path: str = k.key("auto", read=k.string,
                                    check=k.text(k.check_hypercall_path),
                                    help='how Xen hypercalls arrive: "auto", "kernel" or "trap"')
    # The platform around the guest: "pc" keeps the legacy devices (COM1, i8042, CMOS RTC,
    # PIT; why console=ttyS0 works) and the PC memory map's legacy hole; "xen" is what a
    # Xen PVH domU gets from libxl: none of those devices, RAM from 0 with no legacy hole
    # (README "Xen's PVH platform").
    pvh_platform: str = k.key("pc", read=k.string, check=k.text(k.check_pvh_platform),
                              help='"pc" (legacy PC devices) or "xen" (Xen\'s minimal PVH'
                              " platform: no UART, PIT, i8042 or RTC)")
    # FIFO event channels (EVTCHNOP_init_control): KVM's in-kernel event delivery
    # (xen/kernel_events.py) is 2-level only, so "auto" withholds FIFO where KVM delivers
    # events (Linux then stays on 2-level) and offers it elsewhere; 1 always offers it
    # (the domain's events then all go our way once the guest switches), 0 never.
    evtchn_fifo: str = k.key("auto", read=k.xen_platform,
                             check=k.text(k.check_xen_platform),
                             help='whether the guest may use FIFO event channels: 1, 0 or'
                                  ' "auto" (not where KVM delivers events in-kernel)')

    def __post_init__(self) -> None:
        if self.maxmem is None:
            self.maxmem = self.memory
        if self.maxvcpus is None:
            self.maxvcpus = self.vcpus
        for spec in KEYS:
            spec.validate(getattr(self, spec.name))
        if self.maxmem < self.memory:
            raise ConfigError(f"maxmem: {self.maxmem} MiB is less than memory"
                              f" ({self.memory} MiB)")
        if self.maxvcpus < self.vcpus:
            raise ConfigError(f"maxvcpus: {self.maxvcpus} is less than vcpus ({self.vcpus})")
        if self.cap is not None and self.cap > 100 * self.maxvcpus:
            # libxl_sched.c sched_credit_domain_set: the cap's range scales with the vCPUs
            raise ConfigError(f"cap: {self.cap} is more than 100 per vCPU"
                              f" ({100 * self.maxvcpus} for {self.maxvcpus})")
        if self.cpus is not None and len(self.cpus) > self.maxvcpus:
            raise ConfigError(f"cpus: {len(self.cpus)} entries for {self.maxvcpus} vCPUs")
        if self.cpus_soft is not None and len(self.cpus_soft) > self.maxvcpus:
            raise ConfigError(f"cpus_soft: {len(self.cpus_soft)} entries for {self.maxvcpus} vCPUs")
        _check_unique(self.disks, self.vifs)
        if self.channels and self.xen_platform == "0":
            raise ConfigError("channel: PV channels are Xen PV consoles; xen_platform = 0"
                              " leaves the guest no Xen interface")
        paths = [c.path for c in self.channels if c.path]
        if len(set(paths)) < len(paths):
            raise ConfigError("channel: two channels listen on the same path")
        if self.pvh_platform == "xen" and self.xen_platform == "0":
            raise ConfigError('pvh_platform: "xen" is Xen\'s PVH platform; xen_platform = 0'
                              " hides Xen (and with it the only console left)")
        self._check_pvshim()

    def _check_pvshim(self) -> None:
        if self.type == "pv" and not self.pvshim:
            raise ConfigError('type: "pv" guests run on KVM only inside Xen\'s PV shim (KVM has'
                              " no PV mode): set pvshim = 1")
        if not self.pvshim:
            return
        if self.xen_platform == "0":
            raise ConfigError("xen_platform: the PV shim is Xen running on Xen (pvshim = 1):"
                              " it cannot be 0")
        if self.pvshim_path is None:
            self.pvshim_path = k.default_pvshim()

    @property
    def shim_cmdline(self) -> str:
        """The shim's command line: pvshim_cmdline, then pvshim_extra after a space
        (libxl_create.c, libxl__domain_build)."""
        extra = f" {self.pvshim_extra}" if self.pvshim_extra is not None else ""
        return self.pvshim_cmdline + extra

    def action_for(self, reason: str) -> str:
        """The configured action for a guest stop: "poweroff", "reboot", "crash" or
        "watchdog"."""
        return {"poweroff": self.on_poweroff, "reboot": self.on_reboot, "crash": self.on_crash,
                "watchdog": self.on_watchdog}[reason]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DomainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown DomainConfig field(s): {', '.join(unknown)}")
        missing = [spec.name for spec in KEYS if spec.required and spec.name not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: missing")
        data = dict(data)
        for key, spec in (("disks", DiskSpec), ("vifs", VifSpec), ("channels", ChannelSpec)):
            items = data.get(key, [])
            if not isinstance(items, list):
                raise ConfigError(f"{key}: expected a list, got {type(items).__name__}")
            try:
                data[key] = [spec.from_dict(d) if isinstance(d, dict) else d for d in items]
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{key}: {e}") from None
        return cls(**data)  # type: ignore[arg-type]


KEYS = k.keys_of(fields(DomainConfig))
_BY_NAME = {spec.name: spec for spec in KEYS}
_BY_LABEL = {spec.label: spec for spec in KEYS}
# Every xl.cfg setting a key reads; any other draws a warning.
KNOWN_KEYS = frozenset(s for spec in KEYS for s in spec.setting_names)


def _check_unique(disks: list[DiskSpec], vifs: list[VifSpec]) -> None:
    """One vdev number per disk, one mac, vifname and devid per vif."""
    seen: dict[object, int] = {}
    for i, d in enumerate(disks):
        n = d.vdev_index
        if n in seen:
            j = seen[n]
            same = "is" if disks[j].vdev == d.vdev else f"is the same virtio-blk disk ({n}) as"
            raise ConfigError(f"disk: disk {i} '{d.vdev}' {same} disk {j} '{disks[j].vdev}'"
                              " (duplicate vdev)")
        seen[n] = i
    for key in ("mac", "vifname"):
        seen = {}
        for i, v in enumerate(vifs):
            value = getattr(v, key)
            if value is None:
                continue
            if value in seen:
                raise ConfigError(f"vif: vif {i} has the same {key} ({value}) as"
                                  f" vif {seen[value]}")
            seen[value] = i
    seen = {}
    for i, devid in enumerate(vif_devids(vifs)):
        if devid in seen:
            raise ConfigError(f"vif: vif {i} has the same devid ({devid}) as vif {seen[devid]}")
        seen[devid] = i


# -- loading ----------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str],
                overrides: list[str] | tuple[str, ...] = (),
                cwd: str | None = None) -> tuple[DomainConfig, list[str]]:
    """Read an xl.cfg file plus `KEY=VALUE` overrides; return the config and warnings.

    Overrides are applied after the file, as xl appends them to the config text
    (xl_vmcontrol.c create_domain): a later setting replaces an earlier one, `+=` appends.
    In messages an override's line is its position (1-based) on the command line.
    """
    filename = os.fspath(path)
    try:
        text = _read_config_file(os.path.join(cwd or "", filename)).decode()
    except OSError as e:
        raise ConfigError(f"{filename}: unable to open configuration file:"
                          f" {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{filename}: not UTF-8 text: {e.reason}") from None

    settings = parse_settings(text, filename)
    for i, item in enumerate(overrides, 1):
        parse_override(item, i, settings)
    return from_settings(settings, os.path.abspath(os.path.join(cwd or "", filename)), cwd)


def _read_config_file(path: str) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_CONFIG_BYTES: a FIFO
    (opened without blocking) or a device such as /dev/zero is refused, not read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_CONFIG_BYTES} bytes")
    return data


def from_settings(settings: dict[str, Setting], path: str | None = None,
                  cwd: str | None = None) -> tuple[DomainConfig, list[str]]:
    """Build a `DomainConfig` from parsed settings; relative paths resolve beside `path`."""
    warnings = [f"{k.where(s)}: warning: ignoring unknown parameter `{name}'"
                for name, s in settings.items() if name not in KNOWN_KEYS]
    r = k.Reading(settings, path, os.path.dirname(path) if path else (cwd or os.getcwd()),
                  cwd, warnings, {})
    for spec in KEYS:
        if spec.required and spec.setting(r) is None:
            raise ConfigError(f"{path or '<config>'}: {spec.label}: must be specified"
                              f" ({spec.help})")
    for spec in KEYS:
        value = spec.read(r, spec)
        if value is not None:
            r.values[spec.name] = value
    # Validate each key first so the message can point at its file and line.
    for name, value in r.values.items():
        spec = _BY_NAME[name]
        try:
            spec.validate(value)
        except ConfigError as e:
            raise ConfigError(_located(r, spec.setting(r), e)) from None
    try:
        return DomainConfig(**r.values), warnings  # type: ignore[arg-type]
    except ConfigError as e:
        label = str(e).split(":", 1)[0]
        spec = _BY_LABEL.get(label)
        raise ConfigError(_located(r, spec.setting(r) if spec else None, e)) from None


def _located(r: k.Reading, s: Setting | None, e: ConfigError) -> str:
    return f"{k.where(s)}: {e}" if s else str(e)
