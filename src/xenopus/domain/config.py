"""xl.cfg domain configuration: the parser and `DomainConfig`.

The syntax is the one xl(1) reads, documented in xl.cfg(5) and implemented by libxlu
(Xen tools/libs/util: libxlu_cfg_l.l is the lexer, libxlu_cfg_y.y the grammar,
libxlu_cfg.c the string escapes and `+=`):

    file    := { [ KEY ("=" | "+=") value ] (NEWLINE | ";") }
    value   := STRING | NUMBER | "[" {NEWLINE} [ item { "," {NEWLINE} item } [","] ] "]"
    item    := value {NEWLINE}
    KEY     := [a-z][_0-9a-z]*
    NUMBER  := [0-9][0-9a-fx]*   converted like strtol(s, NULL, 0): 0x.. hex, 0.. octal
    STRING  := '...' or "..." on one line, with C escapes
    comment := "#" to the end of the line

Deliberate differences from libxlu, each friendlier and none accepting a file xl reads
differently:
- "\\xHH" takes exactly two hex digits and "\\ooo" is octal, as C and libxlu's own
  comments intend (libxlu's strtoul calls reject every \\x and read "octal" as decimal).
- A comment on the last line needs no newline, and CRLF line ends are accepted.
- The first error stops the parse (libxlu recovers at the next line and reports more).
- A command-line override whose value is not valid xl syntax (`name=web1`) is taken as a
  plain string; xl would need `name="web1"`.
- Relative `kernel`/`ramdisk` paths and disk targets are resolved against the config
  file's directory (xl uses the cwd, and prepends /dev to a relative disk target): our
  configs live beside their guests. Overrides given on the command line resolve
  against the cwd, where the user typed them.
- Unknown keys produce a warning (xl ignores them silently).
- `type` defaults to "pvh" (xl's default is "pv", which we do not support).
- `disk`/`vif` must be lists of strings (xl warns about a single string and then
  ignores the setting); their grammars and differences are in `devspec`. Two disks
  with the same vdev number are refused (libxl refuses duplicate vdevs when it
  creates the devices), and so are two vifs with the same mac or vifname.
- `cpus` (hard affinity, xl.cfg(5) "cpus"): "all", "N", "N-M", "^N" exclusions, as a
  string for every vCPU or a list with one string per vCPU. NUMA `node:` forms and
  "all" combined with exclusions are refused: the host CPU count is checked when the
  domain is created, not here.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields, replace

from xenopus.domain.cpulist import parse_affinity
from xenopus.domain.devspec import DevSpecError, DiskSpec, VifSpec, parse_disk, parse_vif

# -- errors -------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and line."""


class ConfigSyntaxError(ConfigError):
    """The text is not valid xl.cfg syntax."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


# -- lexer (libxlu_cfg_l.l) -----------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"[a-z][_0-9a-z]*\Z")  # libxlu accepts lowercase keys only
_NUMWORD = re.compile(r"[0-9][0-9A-Za-z_]*")
# strtol(s, NULL, 0) (C11 7.22.1.4): hex after 0x, octal after a leading 0, else decimal.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+\Z|0[0-7]*\Z|[1-9][0-9]*\Z")
_PYTHONISH = "+-.():"  # libxlu sets likely_python on these (libxlu_cfg_l.l)

_SIMPLE_ESCAPES = {
    '"': '"', "'": "'", "\\": "\\",
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}

IDENT, NUMBER, STRING, NEWLINE, EOF = "ident", "number", "string", "newline", "eof"


@dataclass(frozen=True)
class _Token:
    kind: str  # one of the names above, or the punctuation itself: = += ; [ ] ,
    text: str
    line: int
    value: object = None


def _describe(tok: _Token) -> str:
    if tok.kind == NEWLINE:
        return "end of line"
    if tok.kind == EOF:
        return "end of file"
    if tok.kind == STRING:
        return "a string"
    return f"`{tok.text}'"


def _to_int(text: str) -> int | None:
    if not _NUMBER.match(text):
        return None
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text)


def _unescape(body: str, filename: str, line: int) -> str:
    """Apply the C escapes libxlu's xlu__cfgl_dequote accepts (libxlu_cfg.c)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]  # the lexer guarantees a character after every backslash
        i += 1
        if nc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nc])
        elif nc == "x":
            digits = body[i:i + 2]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise ConfigSyntaxError(
                    filename, line, "invalid hex escape in string: expected \\x and two hex digits")
            out.append(chr(int(digits, 16)))
            i += 2
        elif nc in "01234567":
            m = re.match(r"[0-7]{0,2}", body[i:])
            digits = nc + (m.group() if m else "")
            code = int(digits, 8)
            if code > 0o377:
                raise ConfigSyntaxError(filename, line, f"octal escape \\{digits} out of range")
            out.append(chr(code))
            i += len(digits) - 1
        else:
            raise ConfigSyntaxError(
                filename, line, f"invalid character after backslash in string: `\\{nc}'")
    return "".join(out)


def _tokens(text: str, filename: str) -> list[_Token]:
    toks: list[_Token] = []
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\n" or (c == "\r" and text[i + 1:i + 2] == "\n"):
            toks.append(_Token(NEWLINE, "\n", line))
            line += 1
            i += 1 if c == "\n" else 2
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end  # the newline itself ends the statement
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c and text[j] not in "\r\n":
                j += 2 if text[j] == "\\" and j + 1 < n and text[j + 1] != "\n" else 1
            if j >= n or text[j] != c:
                raise ConfigSyntaxError(filename, line, "unterminated string")
            raw = text[i:j + 1]
            toks.append(_Token(STRING, raw, line, _unescape(raw[1:-1], filename, line)))
            i = j + 1
        elif c.isdigit():
            word = _NUMWORD.match(text, i).group()  # type: ignore[union-attr]
            value = _to_int(word)
            if value is None:
                raise ConfigSyntaxError(filename, line, f"invalid number `{word}'")
            toks.append(_Token(NUMBER, word, line, value))
            i += len(word)
        elif _IDENT.match(text, i):
            word = _IDENT.match(text, i).group()  # type: ignore[union-attr]
            if not _KEY.match(word):
                raise ConfigSyntaxError(
                    filename, line,
                    f"invalid name `{word}': names are lowercase letters, digits and '_',"
                    " starting with a letter")
            toks.append(_Token(IDENT, word, line))
            i += len(word)
        elif text.startswith("+=", i):
            toks.append(_Token("+=", "+=", line))
            i += 2
        elif c in "=;[],":
            toks.append(_Token(c, c, line))
            i += 1
        else:
            msg = f"unexpected character `{c}'"
            if c in _PYTHONISH:
                msg += " (this looks like Python, which xl config files no longer support)"
            raise ConfigSyntaxError(filename, line, msg)
    toks.append(_Token(EOF, "", line))
    return toks


# -- parser (libxlu_cfg_y.y) ------------------------------------------------------------


@dataclass
class Setting:
    """One KEY = VALUE with where it came from (for messages naming file and line)."""

    value: object
    source: str
    line: int
    text: str | None = None  # the source text of a NUMBER atom


class _Parser:
    def __init__(self, text: str, filename: str, settings: dict[str, Setting]) -> None:
        self.toks = _tokens(text, filename)
        self.pos = 0
        self.filename = filename
        self.settings = settings

    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    def advance(self) -> _Token:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def error(self, message: str, line: int | None = None) -> ConfigSyntaxError:
        return ConfigSyntaxError(self.filename, self.tok.line if line is None else line, message)

    def skip_newlines(self) -> None:
        while self.tok.kind == NEWLINE:
            self.advance()

    def parse(self) -> None:
        while self.tok.kind != EOF:
            if self.tok.kind in (NEWLINE, ";"):
                self.advance()
                continue
            if self.tok.kind != IDENT:
                raise self.error(f"expected a setting name, got {_describe(self.tok)}")
            key = self.advance()
            if self.tok.kind not in ("=", "+="):
                raise self.error(f"expected `=' after `{key.text}', got {_describe(self.tok)}")
            op = self.advance().kind
            line = self.tok.line
            value, text = self.value(key.text)
            self.store(key.text, op, Setting(value, self.filename, line, text))
            if self.tok.kind not in (NEWLINE, ";", EOF):
                raise self.error(
                    f"expected end of line after the value of `{key.text}',"
                    f" got {_describe(self.tok)}")

    def value(self, key: str) -> tuple[object, str | None]:
        tok = self.tok
        if tok.kind in (STRING, NUMBER):
            self.advance()
            return tok.value, tok.text if tok.kind == NUMBER else None
        if tok.kind == "[":
            return self.list(), None
        if tok.kind in (NEWLINE, EOF, ";"):
            raise self.error(f"missing value for `{key}'")
        raise self.error(f"expected a value for `{key}', got {_describe(tok)}")

    def list(self) -> list[object]:
        opened = self.advance().line
        items: list[object] = []
        self.skip_newlines()
        while True:
            if self.tok.kind == "]":
                self.advance()
                return items
            if self.tok.kind == EOF:
                raise self.error("unterminated list: `[' has no matching `]'", opened)
            if self.tok.kind not in (STRING, NUMBER, "["):
                raise self.error(f"expected a list item or `]', got {_describe(self.tok)}")
            items.append(self.value("list item")[0])
            self.skip_newlines()
            if self.tok.kind == ",":
                self.advance()
                self.skip_newlines()
            elif self.tok.kind == EOF:
                raise self.error("unterminated list: `[' has no matching `]'", opened)
            elif self.tok.kind != "]":
                raise self.error(f"expected `,' or `]' in list, got {_describe(self.tok)}")

    def store(self, key: str, op: str, new: Setting) -> None:
        old = self.settings.get(key)
        if op == "+=" and old is not None:
            # libxlu_cfg.c xlu__cfg_concat_vals: strings concatenate, lists append.
            if isinstance(old.value, int) or isinstance(new.value, int):
                raise self.error(f"can't use += with numbers for `{key}'", new.line)
            if isinstance(old.value, list) != isinstance(new.value, list):
                raise self.error("can't add [list] to \"string\" or vice versa", new.line)
            new.value = old.value + new.value  # type: ignore[operator]
        # A later setting replaces an earlier one: libxlu's find() returns the newest.
        self.settings.pop(key, None)
        self.settings[key] = new


def parse_settings(text: str, filename: str = "<config>",
                   settings: dict[str, Setting] | None = None) -> dict[str, Setting]:
    """Parse xl.cfg text into settings that remember their file and line."""
    out = {} if settings is None else settings
    _Parser(text, filename, out).parse()
    return out


def parse_config(text: str, filename: str = "<config>") -> dict[str, object]:
    """Parse xl.cfg text into raw values: str, int, or (nested) lists of them."""
    return {k: s.value for k, s in parse_settings(text, filename).items()}


# -- DomainConfig -------------------------------------------------------------------------

NAME_MAX = 64
MIN_MEMORY_MIB = 2
# A sane ceiling, well inside what KVM allows (KVM_CAP_MAX_VCPUS, checked at create) and
# what 8-bit xAPIC IDs in the MADT can name.
MAX_VCPUS = 64
ACTIONS = ("destroy", "restart", "preserve")
# The rest of xl's action_on_shutdown_names (xl_parse.c), refused for now.
UNSUPPORTED_ACTIONS = ("rename-restart", "coredump-destroy", "coredump-restart", "soft-reset")
CMDLINE_WARNING = "Warning: ignoring root= and extra= in favour of cmdline="

STRING_KEYS = ("name", "type", "builder", "kernel", "ramdisk", "cmdline", "extra", "root",
               "on_poweroff", "on_reboot", "on_crash")
OTHER_KEYS = ("xen_platform",)
NUMBER_KEYS = ("memory", "maxmem", "vcpus", "maxvcpus", "virtio_console", "virtio_rng")
LIST_KEYS = ("disk", "vif", "cpus")
KNOWN_KEYS = frozenset(STRING_KEYS + NUMBER_KEYS + LIST_KEYS + OTHER_KEYS)


def check_name(name: str) -> str:
    if not name:
        raise ValueError("must not be empty")
    if name.isdigit():
        raise ValueError(f"`{name}' is all digits, which would be taken for a domain ID")
    if "/" in name:
        raise ValueError(f"`{name}' contains '/'")
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
    if kind == "pvh":
        return kind
    if kind in ("hvm", "pv"):
        raise ValueError(f"`{kind}' guests are not supported yet; use type = \"pvh\"")
    raise ValueError(f"unknown guest type `{kind}' (expected \"pvh\")")


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


def check_action(action: str) -> str:
    if action in ACTIONS:
        return action
    if action in UNSUPPORTED_ACTIONS:
        raise ValueError(f"action `{action}' is not supported yet"
                         f" (supported: {', '.join(ACTIONS)})")
    raise ValueError(f"unknown action `{action}' (expected one of {', '.join(ACTIONS)})")


def check_xen_platform(value: str) -> str:
    if value not in ("0", "1", "auto"):
        raise ValueError(f"expected 1, 0 or \"auto\", got {value!r}")
    return value


def check_flag(value: int) -> int:
    if value not in (0, 1):
        raise ValueError(f"expected 0 or 1, got {value}")
    return value


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


@dataclass
class DomainConfig:
    """A validated domain configuration (the keys this release supports)."""

    name: str
    kernel: str
    type: str = "pvh"
    memory: int = 128  # MiB
    maxmem: int | None = None  # MiB; None means equal to memory
    vcpus: int = 1
    maxvcpus: int | None = None  # None means equal to vcpus
    ramdisk: str | None = None
    cmdline: str = ""  # already combined from cmdline/root/extra
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    path: str | None = None  # the config file it came from
    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[VifSpec] = field(default_factory=list)
    # Hard affinity: entry i is vCPU i's host CPUs (None: any); vCPUs past the end of the
    # list, or every vCPU if the whole value is None, are not pinned.
    cpus: list[list[int] | None] | None = None
    # Extra paravirtual devices (not xl keys: xl has no virtio): a virtio console port the
    # CLI attaches to with `console -t virtio`, and a virtio entropy source.
    virtio_console: int = 0
    virtio_rng: int = 0
    # The Xen guest interface: "1" shown, "0" hidden (a PVH guest sees no Xen at all),
    # "auto" on unless the image needs the in-kernel path and the host lacks it.
    xen_platform: str = "auto"

    def __post_init__(self) -> None:
        if self.maxmem is None:
            self.maxmem = self.memory
        if self.maxvcpus is None:
            self.maxvcpus = self.vcpus
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))
        if self.maxmem < self.memory:
            raise ConfigError(f"maxmem: {self.maxmem} MiB is less than memory"
                              f" ({self.memory} MiB)")
        if self.maxvcpus < self.vcpus:
            raise ConfigError(f"maxvcpus: {self.maxvcpus} is less than vcpus ({self.vcpus})")
        if self.cpus is not None and len(self.cpus) > self.maxvcpus:
            raise ConfigError(f"cpus: {len(self.cpus)} entries for {self.maxvcpus} vCPUs")
        _check_unique(self.disks, self.vifs)

    def action_for(self, reason: str) -> str:
        """The configured action for a guest stop: "poweroff", "reboot" or "crash"."""
        return {"poweroff": self.on_poweroff, "reboot": self.on_reboot, "crash": self.on_crash}[reason]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DomainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown DomainConfig field(s): {', '.join(unknown)}")
        missing = [k for k in ("name", "kernel") if k not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: missing")
        data = dict(data)
        for key, spec in (("disks", DiskSpec), ("vifs", VifSpec)):
            items = data.get(key, [])
            if not isinstance(items, list):
                raise ConfigError(f"{key}: expected a list, got {type(items).__name__}")
            try:
                data[key] = [spec.from_dict(d) if isinstance(d, dict) else d for d in items]
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{key}: {e}") from None
        return cls(**data)  # type: ignore[arg-type]


def _check_unique(disks: list[DiskSpec], vifs: list[VifSpec]) -> None:
    """One vdev number per disk, one mac and one vifname per vif."""
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


_CHECKS = {
    "name": check_name, "type": check_type, "kernel": check_path, "ramdisk": check_path, "memory": check_memory, "maxmem": check_memory,
    "vcpus": check_vcpus, "maxvcpus": check_vcpus,
    "on_poweroff": check_action, "on_reboot": check_action, "on_crash": check_action,
    "virtio_console": check_flag, "virtio_rng": check_flag, "xen_platform": check_xen_platform,
}
_INT_FIELDS = ("memory", "maxmem", "vcpus", "maxvcpus", "virtio_console", "virtio_rng")
_OPTIONAL = ("ramdisk", "path", "cpus")
_SPEC_FIELDS = {"disks": DiskSpec, "vifs": VifSpec}
# The setting a field comes from, where the names differ.
_SETTING_OF = {"disks": "disk", "vifs": "vif"}


def _check_cpus(value: object) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"cpus: expected a list, got {type(value).__name__}")
    for i, cpus in enumerate(value):
        if cpus is None:
            continue
        if (not isinstance(cpus, list) or not cpus
                or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in cpus)
                or cpus != sorted(set(cpus))):
            raise ConfigError(f"cpus: entry {i} is not a sorted list of host CPU numbers")


def _check_field(key: str, value: object) -> None:
    if value is None and key in _OPTIONAL:
        return
    if key in _SPEC_FIELDS:
        kind = _SPEC_FIELDS[key]
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise ConfigError(f"{_SETTING_OF[key]}: expected a list of {kind.__name__}")
        return
    if key == "cpus":
        _check_cpus(value)
        return
    want = int if key in _INT_FIELDS else str
    if not isinstance(value, want) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {'an int' if want is int else 'a string'},"
                          f" got {type(value).__name__}")
    check = _CHECKS.get(key)
    if check is not None:
        try:
            check(value)  # type: ignore[operator]
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None


# -- loading ----------------------------------------------------------------------------

OVERRIDES_SOURCE = "<command line>"


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return "a number" if isinstance(value, int) else "a string"


def _where(s: Setting) -> str:
    return f"{s.source}:{s.line}"


def _get_str(settings: dict[str, Setting], key: str) -> str | None:
    s = settings.get(key)
    if s is None:
        return None
    if isinstance(s.value, str):
        return s.value
    if isinstance(s.value, int):
        return s.text  # libxlu keeps every atom as text, so `name = 7' is the string "7"
    raise ConfigError(f"{_where(s)}: {key}: expected a string, got a list")


def _get_int(settings: dict[str, Setting], key: str) -> int | None:
    s = settings.get(key)
    if s is None:
        return None
    if isinstance(s.value, int):
        return s.value
    # xl reads numbers with strtol() on the atom's text, so a quoted "256" works too.
    if isinstance(s.value, str) and (n := _to_int(s.value.strip())) is not None:
        return n
    shown = f" `{s.value}'" if isinstance(s.value, str) else ""
    raise ConfigError(f"{_where(s)}: {key}: expected a number, got {_kind(s.value)}{shown}")


def _get_list(s: Setting, key: str) -> list[str]:
    if not isinstance(s.value, list):
        raise ConfigError(f"{_where(s)}: {key}: expected a list of strings"
                          f" ([ '...', ... ]), got {_kind(s.value)}")
    for i, item in enumerate(s.value):
        if not isinstance(item, str):
            raise ConfigError(f"{_where(s)}: {key}: entry {i}: expected a string,"
                              f" got {_kind(item)}")
    return s.value  # type: ignore[return-value]


def _get_disks(settings: dict[str, Setting], base: str, cwd: str | None = None) -> list[DiskSpec]:
    """Parse each `disk` entry; messages carry file:line and the entry."""
    s = settings.get("disk")
    if s is None:
        return []
    disks = []
    for i, spec in enumerate(_get_list(s, "disk")):
        try:
            d = parse_disk(spec, i)
        except DevSpecError as e:
            raise ConfigError(f"{_where(s)}: disk: {e}") from None
        disks.append(replace(d, target=_resolve(d.target, s, base, cwd)))
    return disks


def _get_vifs(settings: dict[str, Setting], warnings: list[str]) -> list[VifSpec]:
    s = settings.get("vif")
    if s is None:
        return []
    vifs = []
    notes: list[str] = []
    for i, spec in enumerate(_get_list(s, "vif")):
        try:
            vifs.append(parse_vif(spec, i, notes))
        except DevSpecError as e:
            raise ConfigError(f"{_where(s)}: vif: {e}") from None
    warnings += [f"{_where(s)}: warning: {n}" for n in notes]
    return vifs


def _get_cpus(s: Setting, count: int) -> list[list[int] | None] | None:
    """xl_parse.c parse_vcpu_affinity: a string applies to every vCPU; a list gives one
    set per vCPU, entries past the last vCPU ignored."""
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
        raise ConfigError(f"{_where(s)}: cpus: {e}") from None


def _resolve(path: str | None, s: Setting | None, base: str, cwd: str | None = None) -> str | None:
    """A relative path from the file resolves beside it; one from an override against the
    directory the user typed it in (`cwd`, which the daemon gets from the CLI)."""
    if not path or s is None or os.path.isabs(path):
        return path
    root = (cwd or os.getcwd()) if s.source == OVERRIDES_SOURCE else base
    return os.path.normpath(os.path.join(root, path))


def _parse_override(text: str, index: int, settings: dict[str, Setting]) -> None:
    key, sep, raw = text.partition("=")
    op = "="
    if key.endswith("+"):
        key, op = key[:-1], "+="
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"malformed override `{text}': expected KEY=VALUE")
    if not _KEY.match(key):
        raise ConfigError(f"malformed override `{text}': `{key}' is not a valid key")
    try:
        parse_settings(f"{key} {op} {raw}", OVERRIDES_SOURCE, settings)
    except ConfigSyntaxError:
        # Not xl syntax (e.g. name=web1): take the value as a plain string.
        _Parser("", OVERRIDES_SOURCE, settings).store(
            key, op, Setting(raw, OVERRIDES_SOURCE, index))
        return
    settings[key].line = index


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
        with open(os.path.join(cwd or "", filename), encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{filename}: unable to open configuration file:"
                          f" {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{filename}: not UTF-8 text: {e.reason}") from None

    settings = parse_settings(text, filename)
    for i, item in enumerate(overrides, 1):
        _parse_override(item, i, settings)
    return from_settings(settings, os.path.abspath(os.path.join(cwd or "", filename)), cwd)


def from_settings(settings: dict[str, Setting], path: str | None = None,
                  cwd: str | None = None) -> tuple[DomainConfig, list[str]]:
    """Build a `DomainConfig` from parsed settings; relative paths resolve beside `path`."""
    warnings = [f"{_where(s)}: warning: ignoring unknown parameter `{k}'"
                for k, s in settings.items() if k not in KNOWN_KEYS]
    base = os.path.dirname(path) if path else (cwd or os.getcwd())

    def need(key: str) -> str:
        value = _get_str(settings, key)
        if value is None:
            raise ConfigError(f"{path or '<config>'}: {key}: must be specified")
        return value

    name, kernel = need("name"), need("kernel")
    kind = _get_str(settings, "type")
    builder = _get_str(settings, "builder")
    if kind is None and builder is not None:
        # xl_parse.c: the deprecated `builder' picks hvm for "hvm", else pv.
        kind = "hvm" if builder == "hvm" else "pv"
    cmdline, more = combine_cmdline(_get_str(settings, "cmdline"), _get_str(settings, "root"),
                                    _get_str(settings, "extra"))
    warnings += more
    values: dict[str, object] = {
        "name": name,
        "kernel": _resolve(kernel, settings.get("kernel"), base, cwd),
        "type": kind if kind is not None else "pvh",
        "ramdisk": _resolve(_get_str(settings, "ramdisk"), settings.get("ramdisk"), base, cwd),
        "cmdline": cmdline,
        "path": path,
    }
    for key in NUMBER_KEYS:
        if (n := _get_int(settings, key)) is not None:
            values[key] = n
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        if (a := _get_str(settings, key)) is not None:
            values[key] = a
    if (x := settings.get("xen_platform")) is not None:
        # xl-style 1/0, or the string "auto" (or "1"/"0")
        values["xen_platform"] = str(x.value) if isinstance(x.value, (int, str)) else x.value
    values["disks"] = _get_disks(settings, base, cwd)
    values["vifs"] = _get_vifs(settings, warnings)
    if "cpus" in settings:
        count = values.get("maxvcpus", values.get("vcpus", 1))
        assert isinstance(count, int)
        # An out-of-range count fails its own check below; don't build a huge list first.
        values["cpus"] = _get_cpus(settings["cpus"], min(max(count, 0), MAX_VCPUS))
    # Validate each key first so the message can point at its file and line.
    for key, value in values.items():
        s = settings.get("builder" if key == "type" and "type" not in settings
                         else _SETTING_OF.get(key, key))
        try:
            _check_field(key, value)
        except ConfigError as e:
            raise ConfigError(f"{_where(s)}: {e}" if s else str(e)) from None
    try:
        return DomainConfig(**values), warnings  # type: ignore[arg-type]
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        s = settings.get(_SETTING_OF.get(key, key))
        raise ConfigError(f"{_where(s)}: {e}" if s else str(e)) from None
