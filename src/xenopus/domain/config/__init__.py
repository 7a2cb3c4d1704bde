"""xl.cfg domain configuration: `DomainConfig` and the parser behind it.

- `syntax.py`: the xl.cfg lexer and parser (libxlu's grammar), `Setting`, `ConfigError`.
- `keys.py`: what a key is (`Key`, `key()`), the readers and checks keys are built from.
- `domain_config.py`: `DomainConfig`, whose fields are the table of keys (one `key()`
  declaration each), and `load_config` / `from_settings`.

Deliberate differences from xl, beyond the syntax ones listed in `syntax`:
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
- `cpus` (hard affinity, xl.cfg(5) "cpus"): the grammar is `cpulist`'s, as a string for
  every vCPU or a list with one string per vCPU. NUMA `node:` forms and "all" combined
  with exclusions are refused: the host's CPUs are checked when the domain is created,
  not here.
"""

from xenopus.domain.config.domain_config import (
    KEYS,
    KNOWN_KEYS,
    DomainConfig,
    from_settings,
    load_config,
)
from xenopus.domain.config.keys import CMDLINE_WARNING, MAX_VCPUS, combine_cmdline
from xenopus.domain.config.syntax import (
    OVERRIDES_SOURCE,
    ConfigError,
    ConfigSyntaxError,
    Setting,
    parse_config,
    parse_settings,
)

__all__ = [
    "CMDLINE_WARNING",
    "KEYS",
    "KNOWN_KEYS",
    "MAX_VCPUS",
    "OVERRIDES_SOURCE",
    "ConfigError",
    "ConfigSyntaxError",
    "DomainConfig",
    "Setting",
    "combine_cmdline",
    "from_settings",
    "load_config",
    "parse_config",
    "parse_settings",
]
