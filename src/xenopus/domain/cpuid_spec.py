"""xl's `cpuid=` grammar (xl.cfg(5) "cpuid"; Xen's tools/libs/light/libxl_cpuid.c).

Two forms, as libxl takes them:
- the string form, "host,NAME=VALUE,...": "host" first (the only base xl knows), then
  named fields (arch/x86.py CPUID_FIELDS) set to a number (0/1 for a feature flag;
  decimal, 0x hex or 0 octal as strtoul reads it) or to 'x', 'k' or 's';
- the list form (xend's), ["LEAF[,SUBLEAF]:eXx=BITS[,eYx=BITS...]", ...]: BITS are 32
  characters, bit 31 first, each '1'/'0' (force), 'x' (the default policy's bit), 'k' or
  's' (the host's bit; xenopus keeps every bit across save/restore, so 's' is 'k').

Both become `Override`s (vm/cpu_policy.py), one per register. Fields that follow the vCPU
topology (`vcpus=`), the hypervisor bit and the hypervisor's own leaves are refused:
xenopus sets them itself and would silently ignore them otherwise.
"""

from __future__ import annotations

from xenopus.arch import x86
from xenopus.vm.cpu_policy import HYPERVISOR_LEAVES, Override, per_vcpu_mask


def _number(text: str) -> int | None:
    """strtoul(text, 0) over the whole text: decimal, 0x hex or 0 octal; None otherwise."""
    t = text.strip().lower()
    try:
        if t.startswith("0x"):
            return int(t[2:], 16)
        if len(t) > 1 and t.startswith("0"):
            return int(t[1:], 8)
        return int(t, 10)
    except ValueError:
        return None


def _check_settable(leaf: int, subleaf: int, reg: int, bits: str, what: str) -> None:
    if leaf in HYPERVISOR_LEAVES:
        raise ValueError(f"{what}: the hypervisor leaves ({leaf:#x}) are xenopus's own")
    if (leaf, reg) == (0x1, x86.ECX) and bits[0] != "x":
        raise ValueError(f"{what}: CPUID.1:ECX[31] (hypervisor) is xenopus's: always set")
    fixed = per_vcpu_mask(leaf, reg)
    if any(c != "x" and fixed >> (31 - i) & 1 for i, c in enumerate(bits)):
        raise ValueError(f"{what}: leaf {leaf:#x} {x86.CPUID_REGS[reg]} follows each vCPU's"
                         " topology (vcpus=), it cannot be set")


def _named(item: str, regs: dict[tuple[int, int, int], list[str]]) -> None:
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep:
        raise ValueError(f"{item!r}: expected NAME=VALUE")
    spec = x86.CPUID_FIELDS.get(name)
    if spec is None:
        raise ValueError(f"unknown CPUID feature {name!r}")
    leaf, sub, reg, bit, width = spec
    key = (leaf, sub or 0, reg)
    bits = regs.setdefault(key, ["x"] * 32)
    n = _number(value)
    if n is None:
        if value not in ("x", "k", "s"):
            raise ValueError(f"{name}={value!r}: expected a number or x, k, s")
        field = {bit + i: value for i in range(width)}
    elif name == "family":  # SDM 2A, CPUID.1:EAX: base family 11:8, extended 27:20
        if not 0 <= n <= 0xFF + 0xF:
            raise ValueError(f"family={value}: out of range (0 to {0xFF + 0xF})")
        base, ext = (n, 0) if n < 0xF else (0xF, n - 0xF)
        field = {8 + i: "01"[base >> i & 1] for i in range(4)}
        field.update({20 + i: "01"[ext >> i & 1] for i in range(8)})
    elif name == "model":  # model 7:4, extended model 19:16
        if not 0 <= n <= 0xFF:
            raise ValueError(f"model={value}: out of range (0 to 255)")
        field = {4 + i: "01"[n >> i & 1] for i in range(4)}
        field.update({16 + i: "01"[n >> (4 + i) & 1] for i in range(4)})
    else:
        if not 0 <= n < 1 << width:
            raise ValueError(f"{name}={value}: does not fit in {width} bit(s)")
        field = {bit + i: "01"[n >> i & 1] for i in range(width)}
    for b, c in field.items():
        bits[31 - b] = c
    _check_settable(*key, "".join(bits), name)


def _register_list(item: str, regs: dict[tuple[int, int, int], list[str]]) -> None:
    where, sep, rest = item.partition(":")
    if not sep:
        raise ValueError(f"{item!r}: expected LEAF[,SUBLEAF]:eXx=BITS")
    leaf_text, _, sub_text = where.partition(",")
    leaf = _number(leaf_text)
    subleaf = _number(sub_text) if sub_text else 0
    if leaf is None or subleaf is None or leaf >> 32 or subleaf >> 32:
        raise ValueError(f"{item!r}: {where!r} is not a leaf[,subleaf] of 32-bit numbers")
    for assignment in rest.split(","):
        name, eq, bits = (s.strip() for s in assignment.partition("="))
        if name not in x86.CPUID_REGS or not eq:
            raise ValueError(f"{item!r}: {assignment.strip()!r}: expected eax=, ebx=, ecx= or edx=")
        if len(bits) != 32 or set(bits) - set("01xks"):
            raise ValueError(f"{item!r}: {name}: expected 32 characters of 0, 1, x, k, s;"
                             f" got {bits!r}")
        reg = x86.CPUID_REGS.index(name)
        _check_settable(leaf, subleaf, reg, bits, item)
        regs[(leaf, subleaf, reg)] = list(bits)


def parse_cpuid(value: str | list[str]) -> list[Override]:
    """The overrides of a `cpuid=` value; ValueError naming the item at fault."""
    regs: dict[tuple[int, int, int], list[str]] = {}
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
        if items[0] != "host":
            raise ValueError(f"the string form starts with \"host\", not {items[0]!r}"
                             " (\"host,NAME=VALUE,...\")")
        for item in items[1:]:
            _named(item, regs)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        for item in value:
            _register_list(item, regs)
    else:
        raise ValueError("expected a string (\"host,NAME=VALUE,...\") or a list of strings")
    return [Override(leaf, sub, reg, "".join(bits)) for (leaf, sub, reg), bits in regs.items()]
