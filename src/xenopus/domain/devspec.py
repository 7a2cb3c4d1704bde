"""xl's `disk=` and `vif=` device specifications: parsers and the validated specs.

`parse_disk` implements the grammar of Xen's docs/misc/xl-disk-configuration.txt as
libxlu's flex scanner (tools/libs/util/libxlu_disk_l.l) and its post-processing
(libxlu_disk.c xlu_disk_parse) define it: at each position the rule with the longest
match wins (trailing context `r/s` counts towards the length), an earlier rule wins a
tie. So `target=` swallows the rest of the spec, commas included, and a deprecated prefix
such as `phy:` (matched with `/.*` trailing context) beats a positional parameter.

`parse_vif` follows xl's tools/xl/xl_parse.c parse_nic_config and the list loop that calls
it: the spec is cut at every `,` (empty pieces skipped, as strtok does), leading spaces are
dropped, and each piece is `KEY=VALUE`; docs/misc/xl-network-configuration.markdown
documents the keys.

What xenopus supports, and where it differs from xl on purpose:
- Which device a disk or vif becomes is decided when the guest is built (`kind_for`), as
  libxl does for a PVH domU: with the Xen interface on, every disk is a Xen PV disk
  (blkif) and a vif without a model a Xen PV vif (netif), unless virtio is asked for
  (`vd*` vdev or `specification=virtio`; `model=virtio`); with it off (`xen_platform =
  0`), virtio-blk and virtio-net (an `xvd*` disk or `model=xen` vif is then refused).
  vd*, sd* and hd* names count alike (vda, sda and hda are disk 0), so two of them naming
  the same number clash even where one would be a PV disk; the `dNpM` form is refused.
- Only the raw format; qcow, qcow2, vhd and qed are refused. An empty cdrom drive is
  refused (virtio-blk has no removable media); a cdrom with an image is a read-only disk.
- `script=` targets, driver domains (`backend=`) and COLO are refused; `backendtype=`
  and `grant_usage=` are accepted and have no effect (there is no Xen backend to pick).
- The first error stops the parse (libxlu reports every error of the spec).
- vif: unknown keys are warnings, as in xl; a malformed value is an error (xl prints
  "Invalid parameter" and carries on with a half-parsed value). Keys xenopus does not act
  on (`rate`, `ip`, `script`, ...) are validated where xl validates them and give a
  warning. Without `model`, the Xen interface decides (above). A MAC of all zeros means "generate", as in libxl.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

from xenopus.devices.mac import UNSET_MAC, MacError, format_mac, parse_mac

# -- errors ------------------------------------------------------------------------------


class DevSpecError(ValueError):
    """A disk or vif spec that cannot be used; the message names the entry."""

    def __init__(self, kind: str, index: int | None, spec: str, reason: str) -> None:
        where = f"{kind} {index}" if index is not None else kind
        super().__init__(f"{where} '{spec}': {reason}")
        self.kind = kind
        self.index = index
        self.spec = spec
        self.reason = reason


def _entry(kind: str, index: int | None, spec: str) -> str:
    return f"{kind} {index} '{spec}'" if index is not None else f"{kind} '{spec}'"


# -- vdev names ----------------------------------------------------------------------------

# libxl_internal.c libxl__device_disk_dev_number: the highest disk number each prefix
# can encode (docs/misc/vbd-interface.txt). vd* is ours; three letters (vdzzz) is plenty.
_MAX_DISK = {"hd": 3, "sd": 15, "vd": 26 + 26**2 + 26**3 - 1, "xvd": 26 + 26**2 + 26**3 - 1}
_VDEV = re.compile(r"(xvd|vd|sd|hd)([a-z]+)([0-9]*)\Z")
_XEN_DPN = re.compile(r"d[0-9]+(p[0-9]+)?\Z")
XEN_DPN_REFUSAL = "the dNpM form is not supported; name Xen PV disks xvdX"


def _letters_to_index(letters: str) -> int:
    """Bijective base 26 as Linux names disks (virtio_blk.c virtblk_name_format):
    a=0 .. z=25, aa=26, ab=27 ..."""
    n = 0
    for c in letters:
        n = n * 26 + (ord(c) - ord("a") + 1)
    return n - 1


def vdev_index(vdev: str) -> int:
    """The disk number of a whole-disk vdev (vda=0, vdb=1, ..., vdaa=26); ValueError if
    the name is not a virtio-blk disk this release accepts."""
    if _XEN_DPN.match(vdev):
        raise ValueError(f"vdev `{vdev}': {XEN_DPN_REFUSAL}")
    if vdev[:1].isdigit():
        raise ValueError(f"vdev `{vdev}': numeric (xenstore) vdevs are not supported;"
                         " use vdX")
    m = _VDEV.match(vdev)
    if not m:
        raise ValueError(f"vdev `{vdev}' is not a disk name (expected vdX, sdX, hdX or"
                         " xvdX, e.g. vda)")
    prefix, letters, part = m.groups()
    if part:
        raise ValueError(f"vdev `{vdev}' names a partition; disks are whole disks"
                         f" (use `{prefix}{letters}')")
    index = _letters_to_index(letters)
    if index > _MAX_DISK[prefix]:
        raise ValueError(f"vdev `{vdev}' is disk {index}; {prefix}* names go up to"
                         f" disk {_MAX_DISK[prefix]}")
    return index


# -- DiskSpec --------------------------------------------------------------------------------

SUPPORTED_FORMATS = ("raw",)
UNSUPPORTED_FORMATS = ("qcow", "qcow2", "vhd", "qed")
DEVTYPES = ("disk", "cdrom")


@dataclass(frozen=True)
class DiskSpec:
    """One validated `disk=` entry: a virtio-blk disk backed by a raw image or device."""

    target: str  # host path of the image or block device
    vdev: str  # guest name: vdX, sdX or hdX (all virtio-blk)
    format: str = "raw"
    read_only: bool = False
    devtype: str = "disk"  # "disk" or "cdrom" (a cdrom is always read-only)
    discard: bool | None = None  # None: the default, which is to offer discard
    direct_io_safe: bool = False  # the image may be opened O_DIRECT
    trusted: bool | None = None  # xl's trusted/untrusted; None: not said
    specification: str | None = None  # "xen" or "virtio" when the spec says so

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("target", "vdev", "format", "devtype"):
                ok = isinstance(value, str)
            elif f.name == "specification":
                ok = value in (None, *_SPECIFICATIONS)
            elif f.name in ("read_only", "direct_io_safe"):
                ok = isinstance(value, bool)
            else:
                ok = value is None or isinstance(value, bool)
            if not ok:
                raise ValueError(f"{f.name}: unexpected {type(value).__name__}")
        if not self.target:
            raise ValueError("no target specified")
        vdev_index(self.vdev)
        if self.format in UNSUPPORTED_FORMATS:
            raise ValueError(f"format `{self.format}' is not supported yet (only raw)")
        if self.format not in SUPPORTED_FORMATS:
            raise ValueError(f"unknown format `{self.format}'")
        if self.devtype not in DEVTYPES:
            raise ValueError(f"unknown devtype `{self.devtype}'")
        if self.devtype == "cdrom" and not self.read_only:
            raise ValueError("a cdrom is read-only")

    def kind_for(self, xen: bool) -> str:
        """The device model behind the disk, `xen` saying whether the guest sees the Xen
        interface. As libxl makes every disk of a PVH domU a PV vbd: with Xen on, a Xen PV
        disk (blkif; Linux's blkfront names it xvd* whatever the vdev) unless virtio is
        asked for (a vd* vdev or specification=virtio); with Xen off, virtio-blk, except
        an xvd* disk, which the build then refuses."""
        if self.vdev.startswith("xvd") or self.specification == "xen":
            return "xen"
        if self.vdev.startswith("vd") or self.specification == "virtio":
            return "virtio"
        return "xen" if xen else "virtio"

    @property
    def vdev_index(self) -> int:
        return vdev_index(self.vdev)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DiskSpec:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DiskSpec field(s): {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


# -- the disk-spec scanner (libxlu_disk_l.l) ---------------------------------------------------

# Each rule: the token (group "tok") plus any trailing context after it. The whole match
# decides the longest-match contest; only the token is consumed. Compiled on the first
# scan (`_disk_rules`): every domain process imports this module, few parse a disk spec.
_DISK_RULE_TEXT: list[tuple[str, str]] = [
    ("space", r"(?P<tok>[ \t\n]+)(?:[^ \t\n].*)?"),
    ("format", r"(?P<tok>format=[^,]*,?)"),
    ("cdrom", r"(?P<tok>cdrom,?)"),
    ("devtype_cdrom", r"(?P<tok>devtype=cdrom,?)"),
    ("devtype_disk", r"(?P<tok>devtype=disk,?)"),
    ("devtype_bad", r"(?P<tok>devtype=[^,]*,?)"),
    ("access", r"(?P<tok>access=[^,]*,?)"),
    ("backend", r"(?P<tok>backend=[^,]*,?)"),
    ("backendtype", r"(?P<tok>backendtype=[^,]*,?)"),
    ("specification", r"(?P<tok>specification=[^,]*,?)"),
    ("vdev", r"(?P<tok>vdev=[^,]*,?)"),
    ("script", r"(?P<tok>script=[^,]*,?)"),
    ("direct_io_safe", r"(?P<tok>direct-io-safe,?)"),
    ("discard", r"(?P<tok>discard,?)"),
    ("no_discard", r"(?P<tok>no-discard,?)"),
    ("colo", r"(?P<tok>colo,?)"),
    ("no_colo", r"(?P<tok>no-colo,?)"),
    ("colo_param", r"(?P<tok>(?:colo-host|colo-port|colo-export|active-disk|hidden-disk)"
                   r"=[^,]*,?)"),
    ("trusted", r"(?P<tok>trusted,?)"),
    ("untrusted", r"(?P<tok>untrusted,?)"),
    ("grant_usage", r"(?P<tok>grant_usage=[01],?)"),
    ("target", r"(?P<tok>target=.*)"),
    ("unknown_param", r"(?P<tok>[a-z][-a-z0-9]*=[^,],?)"),
    ("format_prefix", r"(?P<tok>(?:raw|qcow2?|vhd):).*"),
    ("script_prefix", r"(?P<tok>(?:iscsi|e?nbd|drbd):).*"),
    ("ignored_prefix", r"(?P<tok>(?:tapdisk|tap2?|aio|ioemu|file|phy):).*"),
    ("unknown_prefix", r"(?P<tok>[a-z][a-z0-9]*:)(?:[^a-z0-9].*)?"),
    ("positional", r"(?P<tok>[^=,]*,|[^=,]+,?)"),
]
_compiled_rules: list[tuple[str, re.Pattern[str]]] | None = None


def _disk_rules() -> list[tuple[str, re.Pattern[str]]]:
    global _compiled_rules
    if _compiled_rules is None:  # two threads at once both compile the same list: harmless
        _compiled_rules = [(name, re.compile(rx)) for name, rx in _DISK_RULE_TEXT]
    return _compiled_rules

_FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")  # libxlu setformat; "" is raw
_BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")
_SPECIFICATIONS = ("xen", "virtio")
DOM0_NAMES = ("0", "Domain-0")


class _DiskFail(Exception):
    pass


class _DiskScan:
    """The scanner's state: libxl_device_disk fields plus libxlu's DiskParseContext."""

    def __init__(self) -> None:
        self.target: str | None = None
        self.format: str | None = None  # None: LIBXL_DISK_FORMAT_UNKNOWN
        self.vdev: str | None = None
        self.read_only = False
        self.access_set = False
        self.cdrom = False
        self.had_prefix = False
        self.discard: bool | None = None
        self.direct_io_safe = False
        self.trusted: bool | None = None
        self.backend: str | None = None
        self.backendtype: str | None = None
        self.specification: str | None = None
        self.script: str | None = None
        self.colo = False

    @staticmethod
    def fail(message: str, near: str | None = None) -> _DiskFail:
        return _DiskFail(f"{message} near `{near}'" if near is not None else message)

    def save(self, what: str, value: str) -> None:
        """SAVESTRING: a second non-empty value is an error; an empty one is replaced."""
        if getattr(self, what):
            raise self.fail(f"{what} respecified", value)
        setattr(self, what, value)

    def enum(self, what: str, value: str, known: tuple[str, ...]) -> None:
        """DSET: set once (or again to the same value)."""
        if value not in known:
            raise self.fail(f"unknown value for {what}", value)
        old = getattr(self, what)
        if old is not None and old != value:
            raise self.fail(f"{what} respecified", value)
        setattr(self, what, value)

    def set_format(self, value: str) -> None:
        self.enum("format", value or "raw", _FORMATS)

    def set_access(self, value: str) -> None:
        if value in ("r", "ro"):
            self.read_only = True
        elif value in ("rw", "w", ""):
            self.read_only = False
        else:
            raise self.fail("unknown value for access", value)

    def vdev_and_devtype(self, text: str) -> bool:
        """`<vdev>:<devtype>` (deprecated): True if `text` had the colon."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", vdev)
        if devtype == "cdrom":
            self.cdrom = True
        elif devtype == "disk":
            self.cdrom = False
        else:
            raise self.fail("unknown deprecated type", devtype)
        return True

    def positional(self, text: str) -> None:
        if self.target is None:
            self.save("target", text)
        elif not self.had_prefix and self.format is None:
            if not self.target and self.vdev_and_devtype(text):
                self.format = "empty"  # ",hdc:cdrom,r": xend's empty cdrom
            else:
                self.set_format(text)
        elif self.vdev is None:
            if not self.vdev_and_devtype(text):
                self.save("vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise self.fail("too many positional parameters", text)

    def rule(self, name: str, tok: str) -> None:
        stripped = tok[:-1] if tok.endswith(",") else tok
        value = stripped.partition("=")[2]
        match name:
            case "space":
                pass
            case "format":
                self.set_format(value)
            case "cdrom" | "devtype_cdrom":
                self.cdrom = True
            case "devtype_disk":
                self.cdrom = False
            case "devtype_bad":
                raise self.fail("unknown value for type", tok)
            case "access":
                self.set_access(value)
            case "backend":
                self.save("backend", value)
            case "backendtype":
                self.enum("backendtype", value, _BACKENDTYPES)
            case "specification":
                self.enum("specification", value, _SPECIFICATIONS)
            case "vdev":
                self.save("vdev", value)
            case "script":
                self.save("script", value)
            case "direct_io_safe":
                self.direct_io_safe = True
            case "discard" | "no_discard":
                self.discard = name == "discard"
            case "colo" | "no_colo":
                self.colo = name == "colo"
            case "colo_param":
                raise self.fail("COLO is not supported", tok)
            case "trusted" | "untrusted":
                self.trusted = name == "trusted"
            case "grant_usage":
                pass  # Xen grant mappings for virtio: nothing to choose here
            case "target":
                self.save("target", value)
            case "unknown_param":
                raise self.fail(f"unknown parameter `{tok.partition('=')[0]}'")
            case "format_prefix":
                self.had_prefix = True
                self.set_format(tok[:-1])
            case "script_prefix":
                self.had_prefix = True
                self.save("script", f"block-{tok[:-1]}")
            case "ignored_prefix":
                self.had_prefix = True
            case "unknown_prefix":
                raise self.fail("unknown deprecated disk prefix", tok)
            case "positional":
                self.positional(stripped)

    def scan(self, spec: str) -> None:
        pos = 0
        while pos < len(spec):
            best: tuple[int, str, str] | None = None
            for name, rx in _disk_rules():
                m = rx.match(spec, pos)
                if m and m.end() > pos and (best is None or m.end() > best[0]):
                    best = (m.end(), name, m.group("tok"))
            if best is None:
                # flex's `.` rule and the LEXERR state: report the rest of the line.
                raise self.fail("bad disk syntax", spec[pos:].split("\n", 1)[0])
            _, name, tok = best
            self.rule(name, tok)
            pos += len(tok)


def parse_disk(spec: str, index: int | None = None) -> DiskSpec:
    """Parse one xl disk spec (xl-disk-configuration.txt) into a validated `DiskSpec`.

    `index` is the entry's position in the `disk` list (its devid), used in messages.
    Raises `DevSpecError` naming the entry.
    """
    s = _DiskScan()
    try:
        s.scan(spec)
        # libxlu_disk.c xlu_disk_parse: defaults and checks after the scan.
        fmt = s.format or "raw"
        if s.cdrom:
            s.read_only = True
            if not s.target:
                fmt = "empty"
        if s.vdev is None:
            raise s.fail("no vdev specified")
        if s.target is None and not s.cdrom:
            raise s.fail("no target specified (and device not removable)")
        # What xenopus can serve.
        if fmt == "empty":
            raise s.fail("empty cdrom drives are not supported (virtio-blk has no"
                         " removable media); give the image as target")
        if s.script is not None:
            raise s.fail(f"script= disks ({s.script}) are not supported; the target"
                         " must be an image file or block device")
        if s.backend is not None and s.backend not in DOM0_NAMES:
            raise s.fail(f"backend domain `{s.backend}': driver domains are not"
                         " supported")
        if s.colo:
            raise s.fail("COLO is not supported")
        if s.specification == "xen" and (s.vdev or "").startswith("vd"):
            raise s.fail("specification=xen with a vdX vdev (vd* names virtio disks)")
        if s.specification == "virtio" and (s.vdev or "").startswith("xvd"):
            raise s.fail("specification=virtio with an xvdX vdev (xvd* names Xen PV disks)")
        return DiskSpec(
            target=s.target or "", vdev=s.vdev, format=fmt, read_only=s.read_only,
            devtype="cdrom" if s.cdrom else "disk", discard=s.discard,
            direct_io_safe=s.direct_io_safe, trusted=s.trusted, specification=s.specification)
    except (_DiskFail, ValueError) as e:
        raise DevSpecError("disk", index, spec, str(e)) from None


# -- VifSpec -----------------------------------------------------------------------------------

IFNAMSIZ = 16  # <linux/if.h>
MIN_MTU = 68  # ETH_MIN_MTU, <linux/if_ether.h>
MAX_MTU = 65535  # ETH_MAX_MTU; virtio-net's config `mtu` is a le16 (virtio 1.2 §5.1.4)
# libxlu_vif.c vif_bytes_per_sec_re and vif_internal_usec_re.
_RATE = re.compile(r"([0-9]+)[GMK]?[Bb]/s\Z")
_INTERVAL = re.compile(r"([0-9]+)[mu]?s?\Z")
VIF_MODELS = ("virtio", "virtio-net")
EMULATED_MODELS = ("rtl8139", "e1000", "e1000e", "ne2k_pci", "pcnet", "i82551",
                   "i82557b", "i82559er", "vmxnet3")
PV_MODELS = ("xen", "netfront")


def check_ifname(name: str) -> str:
    """Linux's dev_valid_name (net/core/dev.c): 1..15 bytes, not "." or "..", no '/',
    ':' or whitespace."""
    if not name:
        raise ValueError("must not be empty")
    if len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"`{name}' is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise ValueError(f"`{name}' is not a valid interface name")
    return name


def _vif_mac(text: str) -> str | None:
    """The canonical form of a vif's mac=, or None for all zeros: "generate one", as
    libxl treats it (libxl__mac_is_default)."""
    mac = parse_mac(text, allow_unset=True)
    return None if mac == UNSET_MAC else format_mac(mac)


def _is_canonical_mac(value: object) -> bool:
    try:
        return isinstance(value, str) and format_mac(parse_mac(value)) == value
    except MacError:
        return False


def check_rate(text: str) -> None:
    """The syntax libxlu_vif.c xlu_vif_parse_rate accepts: RATE[@INTERVAL], each a
    non-zero number that fits in 32 bits."""
    rate, at, interval = text.partition("@")
    if not rate:
        raise ValueError(f"rate `{text}': no rate specified")
    m = _RATE.match(rate)
    if not m or not 0 < int(m.group(1)) <= 0xFFFFFFFF:
        raise ValueError(f"rate `{text}': invalid rate (e.g. 10Mb/s or 1MB/s@20ms)")
    m = _INTERVAL.match(interval)
    if at and (not m or not 0 < int(m.group(1)) <= 0xFFFFFFFF):
        raise ValueError(f"rate `{text}': invalid replenishment interval")


@dataclass(frozen=True)
class VifSpec:
    """One validated `vif=` entry: a network device on a tap — virtio-net, or with
    model=xen the Xen PV network backend (netif)."""

    mac: str | None = None  # canonical "xx:xx:xx:xx:xx:xx"; None: generate in 00:16:3e
    bridge: str | None = None  # Linux bridge to attach the tap to; None: none
    model: str | None = None  # "virtio" or "xen"; None: as the guest's Xen interface says
    vifname: str | None = None  # tap name; None: the backend picks one
    mtu: int | None = None  # None: the tap's default (1500)
    # libxl_device_nic.devid. xl's vif= has no key for it (None: the entry's index, as
    # libxl__device_nextid numbers a new domain's vifs); a vif added by network-attach
    # records the one it got, which a detach before it must not renumber.
    devid: int | None = None

    def __post_init__(self) -> None:
        if self.devid is not None and (not isinstance(self.devid, int)
                                       or isinstance(self.devid, bool) or self.devid < 0):
            raise ValueError(f"devid {self.devid!r} is not a device number")
        if self.mac is not None and not _is_canonical_mac(self.mac):
            raise ValueError(f"mac `{self.mac}' is not a canonical unicast MAC")
        for key in ("bridge", "vifname"):
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"{key}: expected a string")
                try:
                    check_ifname(value)
                except ValueError as e:
                    raise ValueError(f"{key}: {e}") from None
        if self.model not in (None, "virtio", "xen"):
            raise ValueError(f"model `{self.model}' is not supported (virtio or xen)")
        if self.mtu is not None and (not isinstance(self.mtu, int) or isinstance(self.mtu, bool)
                                     or not MIN_MTU <= self.mtu <= MAX_MTU):
            raise ValueError(f"mtu {self.mtu} is outside {MIN_MTU}..{MAX_MTU}")

    def kind_for(self, xen: bool) -> str:
        """The device model, `xen` saying whether the guest sees the Xen interface: the
        model asked for, else (libxl's default for a PVH domU) a Xen PV vif (netfront)
        with Xen on and virtio-net with it off."""
        return self.model or ("xen" if xen else "virtio")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VifSpec:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown VifSpec field(s): {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


def vif_devids(vifs: Sequence[VifSpec]) -> list[int]:
    """Each vif's device id (netif's /local/domain/N/device/vif/DEVID, the backend's
    vifDOMID.DEVID): its recorded one, else its index in the list."""
    return [i if v.devid is None else v.devid for i, v in enumerate(vifs)]


def without_vif(vifs: Sequence[VifSpec], devid: int) -> list[VifSpec]:
    """`vifs` less the one with device id `devid` (network-detach), each other keeping
    its devid: recorded, since its index may change."""
    return [replace(v, devid=d) for v, d in zip(vifs, vif_devids(vifs), strict=True)
            if d != devid]


def _model(value: str) -> str:
    if value in VIF_MODELS:
        return "virtio"
    if value in PV_MODELS:
        return "xen"
    if value in EMULATED_MODELS:
        raise ValueError(f"model `{value}' is not supported: xenopus emulates virtio-net"
                         " only (model=virtio)")
    raise ValueError(f"unknown model `{value}' (expected virtio)")


def _mtu(value: str) -> int:
    # xl's parse_ulong: strtoul(.., 10) over the whole value.
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"mtu `{value}' is not a number")
    n = int(value)
    if not MIN_MTU <= n <= MAX_MTU:
        raise ValueError(f"mtu {n} is outside {MIN_MTU}..{MAX_MTU}")
    return n


def _type(value: str) -> None:
    # type=vif (PV only) vs ioemu: both are served; model= picks the device.
    if value not in ("vif", "ioemu"):
        raise ValueError(f"invalid type `{value}' (expected ioemu or vif)")


def _devid(value: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"devid `{value}' is not a number")
    return int(value)


def _backend(value: str) -> None:
    if value not in DOM0_NAMES:
        raise ValueError(f"backend domain `{value}': driver domains are not supported")


# Keys xenopus acts on (name -> converter); keys it checks and ignores with a warning.
_VIF_KEYS: dict[str, Callable[[str], object]] = {
    "mac": _vif_mac, "bridge": check_ifname, "vifname": check_ifname, "model": _model,
    "mtu": _mtu,
}
_VIF_CHECKED: dict[str, Callable[[str], None]] = {"type": _type, "backend": _backend}
_VIF_IGNORED: dict[str, tuple[Callable[[str], object] | None, str]] = {
    "rate": (check_rate, "rate limiting is not supported; ignored"),
    "ip": (None, "ip= only informs Xen's hotplug scripts, which xenopus does not run;"
                 " ignored"),
    "script": (None, "hotplug scripts are not run (xenopus attaches the tap itself,"
                     " to bridge= if given); ignored"),
    "gatewaydev": (None, "gatewaydev= is for Xen's vif-route/vif-nat scripts; ignored"),
    "netdev": (None, "netdev= is for Xen's vif-route/vif-nat scripts; ignored"),
    "devid": (_devid, "devid= is not supported (devices are numbered in list order);"
                      " ignored"),
    "accel": (None, "the accel parameter for vifs is currently not supported"),
}


def parse_vif(spec: str, index: int | None = None,
              warnings: list[str] | None = None) -> VifSpec:
    """Parse one xl vif spec into a validated `VifSpec`.

    `index` is the entry's position in the `vif` list (its devid), used in messages;
    warnings (unknown or ignored keys) are appended to `warnings` if given. Raises
    `DevSpecError` naming the entry.
    """
    values: dict[str, object] = {}

    def warn(message: str) -> None:
        if warnings is not None:
            warnings.append(f"{_entry('vif', index, spec)}: {message}")

    for piece in spec.split(","):
        token = piece.lstrip(" ")
        if not piece:
            continue  # strtok skips empty pieces; a piece of spaces is an (unknown) token
        key, eq, value = token.partition("=")
        try:
            if eq and key in _VIF_KEYS:
                values[key] = _VIF_KEYS[key](value)  # a later setting replaces
            elif eq and key in _VIF_CHECKED:
                _VIF_CHECKED[key](value)
            elif eq and key in _VIF_IGNORED:
                check, message = _VIF_IGNORED[key]
                if check is not None:
                    check(value)
                warn(message)
            elif eq and (key.startswith("colo_") or key == "forwarddev"):
                warn(f"`{key}' (COLO) is not supported; ignored")
            else:
                warn(f"unrecognized argument `{token}'")  # xl's own words
        except ValueError as e:
            raise DevSpecError("vif", index, spec, str(e)) from None
    if "mac" in values and values["mac"] is None:
        del values["mac"]
    try:
        return VifSpec(**values)  # type: ignore[arg-type]
    except ValueError as e:
        raise DevSpecError("vif", index, spec, str(e)) from None


# -- channel= (xl.cfg(5) CHANNEL_SPEC_STRING, xen-pv-channel(7)) --------------------------


@dataclass(frozen=True)
class ChannelSpec:
    """One validated `channel=` entry: a named PV console (device/console/N, N >= 1)
    whose host end is a Unix socket the backend listens on, or a pty."""

    name: str
    connection: str  # "socket" or "pty"
    path: str | None = None  # the socket's path (connection = socket)

    def __post_init__(self) -> None:
        # xl_parse.c's checks, then libxl's (libxl__init_console_from_channel)
        if self.connection not in ("socket", "pty"):
            raise ValueError(f"unknown channel connection '{self.connection}'")
        if self.connection == "socket" and not self.path:
            raise ValueError("channel connection 'socket' requires path=..")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("channel has no name")
        if self.path is not None and (not isinstance(self.path, str)
                                      or not self.path.startswith("/")):
            raise ValueError(f"path `{self.path}' must be absolute")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ChannelSpec:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown ChannelSpec field(s): {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


def parse_channel(spec: str, index: int | None = None,
                  warnings: list[str] | None = None) -> ChannelSpec:
    """Parse one xl channel spec (xl_parse.c: comma-separated KEY=VALUE, whitespace
    around each trimmed; backend, name, path, connection = pty | socket). Unknown keys
    are warned about and ignored, as xl does. Raises `DevSpecError` naming the entry."""
    values: dict[str, str] = {}
    for piece in spec.split(","):
        key, eq, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not piece.strip():
            continue
        if not eq:
            raise DevSpecError("channel", index, spec,
                               f"failed to parse channel configuration: {piece}")
        if key == "backend":
            try:
                _backend(value)
            except ValueError as e:
                raise DevSpecError("channel", index, spec, str(e)) from None
        elif key in ("name", "path", "connection"):
            values[key] = value
        elif warnings is not None:
            warnings.append(f"{_entry('channel', index, spec)}: unknown channel parameter"
                            f" '{key}', ignoring")
    if "connection" not in values:
        raise DevSpecError("channel", index, spec, "channel has unknown 'connection'")
    try:
        return ChannelSpec(values.get("name", ""), values["connection"], values.get("path"))
    except ValueError as e:
        raise DevSpecError("channel", index, spec, str(e)) from None
