"""xl's output formats, byte for byte.

Sources (Xen): tools/xl/xl_info.c `list_domains` for `xl list` (and `-v`),
`output_nodeinfo`/`output_physinfo`/`output_xeninfo`/`print_info` for `xl info`,
`print_uptime` and `uptime_to_string` for `xl uptime`; tools/xentop/xentop.c `do_header`/
`do_domain` and the `fields[]` table for `xl top -b`; tools/libs/light/libxl_types.idl
`libxl_domain_config` for `xl list -l`; tools/xl/xl_vcpu.c
`vcpulist`/`print_vcpuinfo` for `xl vcpu-list`, tools/xl/xl_utils.c `print_bitmap` for
CPU affinity sets, tools/xl/xl_block.c `main_blocklist` and tools/xl/xl_nic.c
`main_networklist` for Xen PV disks and NICs. Each function returns one line without its trailing newline.
The printf formats are kept verbatim as %-formats (hence the UP031 waivers) so they can
be compared with xl's source at a glance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module; the config package only the daemon
    from xenopus.domain.config import DomainConfig
    from xenopus.domain.devspec import DiskSpec, VifSpec

# xl_info.c: shutdown_reason_letters[] = "-rscwS", indexed by libxl_shutdown_reason
# (poweroff, reboot, suspend, crash, watchdog, soft_reset).
SHUTDOWN_LETTERS = {"poweroff": "-", "reboot": "r", "suspend": "s", "crash": "c",
                    "watchdog": "w", "soft_reset": "S"}
# The same order gives `xl list -v`'s Reason-Code (libxl_shutdown_reason's values).
SHUTDOWN_CODES = {reason: code for code, reason in enumerate(SHUTDOWN_LETTERS)}


@dataclass(frozen=True)
class DomainState:
    """The six `xl list` state flags (libxl_dominfo: running, blocked, paused, shutdown,
    the shutdown reason column, dying)."""

    running: bool = False
    blocked: bool = False
    paused: bool = False
    shutdown: bool = False
    crashed: bool = False
    dying: bool = False
    reason: str | None = None  # shutdown reason, one of SHUTDOWN_LETTERS' keys

    def flags(self) -> str:
        """The six characters, e.g. "r-----". The fifth column is 'c' when crashed; otherwise, as xl 4.x prints,
        the shutdown reason letter when shut down ('-' for poweroff)."""
        fifth = "c" if self.crashed else (
            SHUTDOWN_LETTERS.get(self.reason or "", "?") if self.shutdown and self.reason
            else "-")
        return "".join((
            "r" if self.running else "-",
            "b" if self.blocked else "-",
            "p" if self.paused else "-",
            "s" if self.shutdown else "-",
            fifth,
            "d" if self.dying else "-",
        ))


def list_header() -> str:
    # xl_info.c list_domains: printf("Name                                        ID   Mem
    # VCPUs\tState\tTime(s)")
    return "Name" + " " * 40 + "ID   Mem VCPUs\tState\tTime(s)"


def list_row(name: str, domid: int, mem_mib: int, vcpus: int,
             state_flags: DomainState | str, cpu_time: float) -> str:
    """One `xl list` row: "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f" (xl_info.c).

    `cpu_time` is in seconds. Like printf, long names are not truncated.
    """
    flags = state_flags.flags() if isinstance(state_flags, DomainState) else state_flags
    if len(flags) != 6:
        raise ValueError(f"state flags must be 6 characters, got {flags!r}")
    return "%-40s %5d %5d %5d     %s  %8.1f" % (name, domid, mem_mib, vcpus, flags, cpu_time)  # noqa: UP031


# xl_info.c list_domains: the options' columns, in this order, after the six fixed ones.
# Header: -v "   UUID                            Reason-Code\tSecurity Label", else -Z
# "   Security Label"; -c "         Cpupool"; -n " NODE Affinity". Rows: -v " "
# LIBXL_UUID_FMT then " %8x" (the shutdown reason) or " %8s" ("-"); -v or -Z " %16s"
# (the security label: "-" without XSM/FLASK); -c "%16s" (the pool's name); -n " " then
# print_bitmap of the domain's node affinity.
LIST_VERBOSE_HEADER = "   UUID                            Reason-Code\tSecurity Label"
POOL = "Pool-0"  # Xen's first CPU pool, which every domain here is in


def list_options_header(*, verbose: bool = False, context: bool = False,
                        cpupool: bool = False, numa: bool = False, claim: bool = False) -> str:
    return "".join((LIST_VERBOSE_HEADER if verbose else "",
                    "   Security Label" if context and not verbose else "",
                    "  Claimed" if claim else "",
                    "         Cpupool" if cpupool else "", " NODE Affinity" if numa else ""))


def list_options_columns(uuid: str, reason: str | None, shutdown: bool, *,
                         verbose: bool = False, context: bool = False, cpupool: bool = False,
                         nodes: str | None = None, claim: bool = False) -> str:
    """What `xl list -v/-Z/-c/-n` (and `xl claims`) add to a row; `nodes` is the node
    affinity as print_bitmap writes it (with -n). Claims (" %5lu", MiB still claimed) are
    always 0: KVM allocates guest memory on touch, nothing is claimed ahead."""
    out = ""
    if verbose:
        code = "%8x" % SHUTDOWN_CODES.get(reason or "poweroff", 0) if shutdown else "%8s" % "-"  # noqa: UP031
        out += f" {uuid} {code}"
    if claim:
        out += " %5d" % 0  # noqa: UP031
    if verbose or context:
        out += " %16s" % "-"  # noqa: UP031
    if cpupool:
        out += "%16s" % POOL  # noqa: UP031
    if nodes is not None:
        out += " " + nodes
    return out


# xl_info.c list_vm: printf("UUID                                  ID    name\n"), then
# per guest (dom0 excluded) LIBXL_UUID_FMT "  %d    %-30s\n".
VM_LIST_HEADER = "UUID                                  ID    name"


def vm_list_row(uuid: str, domid: int, name: str) -> str:
    return "%s  %d    %-30s" % (uuid, domid, name)  # noqa: UP031


def cpumap(cpus: Iterable[int] | str, nr_cpus: int) -> str:
    """A CPU set as xl_utils.c print_bitmap writes it: "all" when every one of the
    `nr_cpus` CPUs is set, "none" when none is, else ranges like "0-2,5"."""
    if isinstance(cpus, str):
        return cpus
    chosen = sorted({c for c in cpus if 0 <= c < nr_cpus})
    if not chosen:
        return "none"
    if len(chosen) == nr_cpus:
        return "all"
    runs: list[str] = []
    start = prev = chosen[0]
    for c in chosen[1:] + [-1]:
        if c != prev + 1:
            runs.append(str(start) if prev == start else f"{start}-{prev}")
            start = c
        prev = c
    return ",".join(runs)


def vcpu_list_header() -> str:
    # xl_vcpu.c vcpulist: printf("%-32s %5s %5s %5s %5s %9s %s\n", "Name", "ID", "VCPU",
    # "CPU", "State", "Time(s)", "Affinity (Hard / Soft)")
    return "%-32s %5s %5s %5s %5s %9s %s" % (  # noqa: UP031
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)")


def vcpu_list_row(name: str, domid: int, vcpu: int, cpu: int | None, *,
                  running: bool = False, blocked: bool = False, cpu_time: float = 0.0,
                  hard: Iterable[int] | str = "all", soft: Iterable[int] | str = "all",
                  nr_cpus: int = 1) -> str:
    """One `xl vcpu-list` row (xl_vcpu.c print_vcpuinfo). `cpu` None means the vCPU is
    offline, printed as "-" with state "--p"; `cpu_time` is in seconds."""
    row = "%-32s %5u %5u" % (name, domid, vcpu)  # noqa: UP031
    if cpu is None:
        row += "%5c %3c%cp " % ("-", "-", "-")  # noqa: UP031
    else:
        row += "%5u %3c%c- " % (cpu, "r" if running else "-", "b" if blocked else "-")  # noqa: UP031
    row += "%9.1f  " % cpu_time  # noqa: UP031
    return row + f"{cpumap(hard, nr_cpus)} / {cpumap(soft, nr_cpus)}"


def list_long(entries: Iterable[Mapping[str, object]]) -> str:
    """`xl list -l`: a JSON array, indent 4, of one object per domain, as xl_info.c
    printf_info_one_json makes it: "domid" and "config" (`libxl_domain_config`), plus
    what xenopus adds under "xenopus" (its own fields; parsers of xl's output skip it).
    Values with a `to_dict()` are converted."""
    def default(obj: object) -> object:
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return to_dict()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps([dict(e) for e in entries], indent=4, default=default)


# block-list / network-list. Xen PV devices are listed as xl lists them: the backend's
# path and the frontend's xenbus state, event channel and ring references. Virtio devices
# have none of these; their table shows the equivalents (PCI address, host backend) and
# follows xl's table when a domain has both.
XL_BLOCK_HEADER = "%-5s %-3s %-6s %-5s %-6s %-8s %-30s" % (  # noqa: UP031
    "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path")
XL_NETWORK_HEADER = "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s" % (  # noqa: UP031
    "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path")
VIRTIO_BLOCK = ("Vdev  Idx PCI     Mode Target", "{vdev:<5} {index:<3} {pci:<7} {mode:<4} {target}")
VIRTIO_NETWORK = (
    "Idx Mac Addr.         PCI     Tap             Bridge",
    "{index:<3} {mac:<17} {pci:<7} {tap:<15} {bridge}",
)


def _is_xen(device: Mapping[str, object]) -> bool:
    return str(device.get("model", "")).startswith("xen-")


def xl_block_row(d: Mapping[str, object]) -> str:
    """One Xen PV disk as xl_block.c prints it: "%-5d %-3d %-6d %-5d %-6d %-8d %-30s"
    (devid, backend domid, frontend domid, state, event channel, ring-ref, backend path)."""
    return "%-5d %-3d %-6d %-5d %-6d %-8d %-30s" % (  # noqa: UP031
        d["devid"], d["backend_id"], d["frontend_id"], d["state"], d["event-channel"],
        d["ring-ref"], d["backend"])


def xl_network_row(d: Mapping[str, object]) -> str:
    """One Xen PV NIC as xl_nic.c prints it: "%-3d %-2d " then the MAC, then
    "%6d %5d %6d %5d/%-11d %-30s" (devid, state, event channel, tx/rx ring-refs, path)."""
    return "%-3d %-2d " % (d["devid"], d["backend_id"]) + str(d["mac"]) + (  # noqa: UP031
        "%6d %5d %6d %5d/%-11d %-30s" % (  # noqa: UP031
            d["devid"], d["state"], d["event-channel"], d["tx-ring-ref"], d["rx-ring-ref"],
            d["backend"]))


def _listing(devices: Iterable[Mapping[str, object]], xl_header: str,
             xl_row: Callable[[Mapping[str, object]], str], virtio: tuple[str, str]) -> list[str]:
    devices = list(devices)
    xen = [d for d in devices if _is_xen(d)]
    others = [d for d in devices if not _is_xen(d)]
    lines: list[str] = []
    if xen or not others:  # no device at all: xl's header alone, as xl prints it
        lines += [xl_header, *map(xl_row, xen)]
    if others:
        if lines:
            lines.append("")
        lines += [virtio[0], *(virtio[1].format(**d) for d in others)]
    return lines


def channel_list(channels: list[dict[str, Any]]) -> list[str]:
    """xl channel-list (xl_console.c main_channellist): the header, then per channel
    devid, backend, frontend state, event channel, ring-ref, connection and, for a pty,
    its path; each field followed by a space, as xl's printf leaves it."""
    lines = ["%-3s %-2s %-5s %-6s %8s %-10s %-30s" % (  # noqa: UP031
        "Idx", "BE", "state", "evt-ch", "ring-ref", "connection", "")]
    for c in channels:
        row = "%-3d %-2d %-5d %-6d %-8d %-10s " % (  # noqa: UP031
            c["devid"], c["backend_id"], c["state"], c["evtch"], c["rref"], c["connection"])
        if c["connection"] == "pty":
            row += "%-30s " % c["tty"]  # noqa: UP031
        lines.append(row)
    return lines


def block_list(disks: Iterable[Mapping[str, object]]) -> list[str]:
    """`block-list`'s lines for these disks (inventory descriptions of kind "disk")."""
    return _listing(disks, XL_BLOCK_HEADER, xl_block_row, VIRTIO_BLOCK)


def network_list(nics: Iterable[Mapping[str, object]]) -> list[str]:
    """`network-list`'s lines for these NICs (inventory descriptions of kind "nic")."""
    return _listing(nics, XL_NETWORK_HEADER, xl_network_row, VIRTIO_NETWORK)


# -- xl info (xl_info.c print_info) ----------------------------------------------------
# The fields in print_info's order: output_nodeinfo, output_physinfo, output_xeninfo,
# then "xend_config_format". Each line is maybe_printf("NAME<padding>: VALUE\n") with the
# name padded to 23 columns; virt_caps is "virt_caps              :%s%s..." with each
# capability written " NAME", so an empty set leaves no space after the colon.
INFO_FIELDS = (
    "host", "release", "version", "machine",
    "nr_cpus", "max_cpu_id", "nr_nodes", "cores_per_socket", "threads_per_core", "cpu_mhz",
    "hw_caps", "virt_caps", "total_memory", "free_memory", "sharing_freed_memory",
    "sharing_used_memory", "outstanding_claims", "free_cpus",
    "xen_major", "xen_minor", "xen_extra", "xen_version", "xen_caps", "xen_scheduler",
    "xen_pagesize", "platform_params", "xen_changeset", "xen_commandline", "cc_compiler",
    "cc_compile_by", "cc_compile_domain", "cc_compile_date",
    "xend_config_format",
)


def topology_lines(values: Mapping[str, Any]) -> list[str]:
    """`xl info -n`'s tables, between the physinfo and xeninfo fields (print_info):
    output_topologyinfo's "%3d:    %4d     %4d     %4d" per CPU and "%04x:%02x:%02x.%01x
    %d" per PCI device, then output_numainfo's "%4d:    %6"PRIu64"     %6"PRIu64"      %d"
    per node with ",%d" for each further distance."""
    lines = ["cpu_topology           :", "cpu:    core    socket     node"]
    lines += ["%3d:    %4d     %4d     %4d" % tuple(t) for t in values["cpu_topology"]]  # noqa: UP031
    lines += ["device topology        :", "device           node"]
    devices = list(values["device_topology"])
    lines += ["%s      %d" % (addr, node) for addr, node in devices]  # noqa: UP031
    if not devices:
        lines.append("No device topology data available")
    lines += ["numa_info              :", "node:    memsize    memfree    distances"]
    for node, size, free, dists in values["numa_info"]:
        lines.append("%4d:    %6d     %6d      %s" % (node, size, free, ",".join(map(str, dists))))  # noqa: UP031
    return lines


def info_lines(values: Mapping[str, Any]) -> list[str]:
    """`xl info`'s lines for the fields in `values` (INFO_FIELDS order); with -n's
    tables (`cpu_topology` in `values`) after the physinfo fields."""
    lines: list[str] = []
    for name in INFO_FIELDS:
        if name == "xen_major" and "cpu_topology" in values:
            lines += topology_lines(values)
        if name not in values:
            continue
        value = values[name]
        if name == "virt_caps":
            caps = value if isinstance(value, list) else str(value).split()
            lines.append("%-23s:%s" % (name, "".join(f" {c}" for c in caps)))  # noqa: UP031
        else:
            lines.append("%-23s: %s" % (name, value))  # noqa: UP031
    return lines


def info_select(lines: Sequence[str], name: str) -> list[str]:
    """maybe_printf's filter: the text after ": " of each line that starts with `name`."""
    return [line.split(": ", 1)[1] for line in lines
            if line.startswith(name) and ": " in line]


# -- xl uptime (xl_info.c print_uptime / uptime_to_string) ------------------------------
UPTIME_HEADER = "%-33s %4s %s" % ("Name", "ID", "Uptime")  # noqa: UP031


def uptime_text(seconds: int, short: bool) -> str:
    """uptime_to_string: "D days, HH:MM[:SS]" ("day" for one), the hour "%2d"."""
    day, rest = divmod(int(seconds), 86400)
    hour, rest = divmod(rest, 3600)
    minute, sec = divmod(rest, 60)
    clock = "%2d:%02d" % (hour, minute) if short else "%2d:%02d:%02d" % (hour, minute, sec)  # noqa: UP031
    if day > 1:
        return f"{day} days, {clock}"
    return f"{day} day, {clock}" if day == 1 else clock


def uptime_row(name: str, domid: int, seconds: int, short: bool, now: float) -> str:
    """print_dom0_uptime / print_domU_uptime: "%-33s %4d %s", or with -s
    " %s up %s, %s (%d)" (the local time as "%H:%M:%S", the uptime, name, domid)."""
    if short:
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        return " %s up %s, %s (%d)" % (clock, uptime_text(seconds, True), name, domid)  # noqa: UP031
    return "%-33s %4d %s" % (name, domid, uptime_text(seconds, False))  # noqa: UP031


# -- xl top -b (xentop.c) ---------------------------------------------------------------
@dataclass(frozen=True)
class TopEntry:
    """One domain's xenstat figures (memory in KiB, cpu_ns in nanoseconds)."""

    name: str
    state: str  # xentop's six letters, see top_state
    cpu_ns: int
    cpu_pct: float
    mem_kib: int
    maxmem_kib: int | None  # None: "no limit"
    vcpus: int
    nets: int = 0
    net_tx: int = 0  # bytes
    net_rx: int = 0
    vbds: int = 0


def top_summary(now: float, version: str, entries: Sequence[TopEntry], total_kib: int,
                free_kib: int, cpus: int, cpu_khz: int) -> list[str]:
    """xentop.c do_summary, above the table on xentop's screen: "xentop - %s   Xen %s",
    then "%u domains: %u running, %u blocked, %u paused, %u crashed, %u dying, %u
    shutdown " (each domain counted once, in that order of precedence), then "Mem: %lluk
    total, %lluk used, %lluk free    CPUs: %u @ %lluMHz"."""
    counts = dict.fromkeys("rbpscd", 0)
    for e in entries:
        # state is "dsbcpr"; precedence running, blocked, paused, shutdown, crashed, dying
        first = next((c for c in "rbpscd" if c in e.state), None)
        if first is not None:
            counts[first] += 1
    return [
        "xentop - %s   Xen %s" % (time.strftime("%H:%M:%S", time.localtime(now)), version),  # noqa: UP031
        "%u domains: %u running, %u blocked, %u paused, %u crashed, %u dying, %u shutdown " % (  # noqa: UP031
            len(entries), counts["r"], counts["b"], counts["p"], counts["c"], counts["d"],
            counts["s"]),
        "Mem: %dk total, %dk used, %dk free    CPUs: %u @ %dMHz" % (  # noqa: UP031
            total_kib, total_kib - free_kib, free_kib, cpus, cpu_khz // 1000),
    ]


# xentop.c fields[]: header and default width; NETTX/NETRX/VBD_RD/VBD_WR/VBD_RSECT/
# VBD_WSECT widen to the largest value (adjust_field_widths).
TOP_FIELDS = (("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
              ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
              ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
              ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4))


def top_state(*, dying: bool = False, shutdown: bool = False, blocked: bool = False,
              crashed: bool = False, paused: bool = False, running: bool = False) -> str:
    """xentop.c print_state: state_funcs[] in order d s b c p r, '-' where not so."""
    flags = (dying, shutdown, blocked, crashed, paused, running)
    return "".join(c if on else "-" for c, on in zip("dsbcpr", flags, strict=True))


def top_lines(entries: Sequence[TopEntry], total_kib: int) -> list[str]:
    """One batch-mode frame: do_header then do_domain per domain, sorted by name
    (sort_field FIELD_DOMID selects fields[0], compare_name: strcasecmp). VBD request
    and sector counts are not kept here; xentop prints '-' for a VBD with no statistics
    (tot_vbd_reqs false), and so do we."""
    widths = [w for _, w in TOP_FIELDS]
    for e in entries:  # adjust_field_widths: INT_FIELD_WIDTH(value + 1)
        widths[10] = max(widths[10], len(str(e.net_tx // 1024 + 1)))
        widths[11] = max(widths[11], len(str(e.net_rx // 1024 + 1)))
    header = " ".join("%*s" % (w, h) for (h, _), w in zip(TOP_FIELDS, widths, strict=True))  # noqa: UP031
    lines = [header]
    for e in sorted(entries, key=lambda e: e.name.lower()):
        vbd = "-" if e.vbds else "0"  # tot_vbd_reqs: no VBD at all shows totals of 0
        cols = [
            "%10.10s" % e.name, e.state, "%10d" % (e.cpu_ns // 1_000_000_000),  # noqa: UP031
            "%6.1f" % e.cpu_pct, "%10d" % e.mem_kib,  # noqa: UP031
            "%6.1f" % (e.mem_kib / total_kib * 100 if total_kib else 0.0),  # noqa: UP031
            "%10s" % "no limit" if e.maxmem_kib is None else "%10d" % e.maxmem_kib,  # noqa: UP031
            "%9s" % "n/a" if e.maxmem_kib is None else  # noqa: UP031
            "%9.1f" % (e.maxmem_kib / total_kib * 100 if total_kib else 0.0),  # noqa: UP031
            "%5u" % e.vcpus, "%4u" % e.nets,  # noqa: UP031
            "%*d" % (widths[10], e.net_tx // 1024), "%*d" % (widths[11], e.net_rx // 1024),  # noqa: UP031
            "%4u" % e.vbds, "%8s" % vbd, "%*s" % (widths[14], vbd),  # noqa: UP031
            "%*s" % (widths[15], vbd), "%*s" % (widths[16], vbd), "%*s" % (widths[17], vbd),  # noqa: UP031
            "%4u" % 0,  # noqa: UP031 - no XSM/FLASK: every ssid is 0
        ]
        lines.append(" ".join(cols))
    return lines


# -- xl list -l (libxl_types.idl libxl_domain_config, as libxl_domain_config_gen_json) --
# libxl's generated JSON leaves out every field still at its default; enums are their
# lower-case names, libxl_defbool "True"/"False", a bitmap the list of its set bits.
ACTIONS = {"destroy": "destroy", "restart": "restart", "preserve": "preserve",
           "rename-restart": "restart_rename", "coredump-destroy": "coredump_destroy",
           "coredump-restart": "coredump_restart", "soft-reset": "soft_reset"}
DEFAULT_ACTION = "destroy"  # libxl_action_on_shutdown's init_val


def libxl_disk(disk: DiskSpec, xen: bool = True) -> dict[str, object]:
    """libxl_device_disk for one `disk=` entry. The backend is ours, a user-space one
    like QEMU's: libxl's "qdisk"; `specification` says Xen PV (blkif) or virtio."""
    d = disk.to_dict()
    out: dict[str, object] = {"pdev_path": d["target"], "vdev": d["vdev"], "backend": "qdisk",
                              "format": d["format"]}
    if d["devtype"] == "cdrom":
        out.update(removable=1, is_cdrom=1)
    if not d["read_only"]:
        out["readwrite"] = 1
    if d["direct_io_safe"]:
        out["direct_io_safe"] = True
    if d["discard"] is not None:
        out["discard_enable"] = str(d["discard"])
    out["specification"] = disk.kind_for(xen)
    if d["trusted"] is not None:
        out["trusted"] = str(d["trusted"])
    return out


def libxl_nic(devid: int, vif: VifSpec, xen: bool = True) -> dict[str, object]:
    """libxl_device_nic for one `vif=` entry: a PV vif ("vif"), or a virtio NIC, which
    libxl describes as an emulated one of that model ("vif_ioemu")."""
    v = vif.to_dict()
    out: dict[str, object] = {"devid": devid}
    if v["mtu"] is not None:
        out["mtu"] = v["mtu"]
    model = vif.kind_for(xen)
    if model != "xen":
        out["model"] = model
    for key, name in (("mac", "mac"), ("bridge", "bridge"), ("vifname", "ifname")):
        if v[key] is not None:
            out[name] = v[key]
    out["nictype"] = "vif" if model == "xen" else "vif_ioemu"
    return out


def libxl_cpuid(value: str | list[str]) -> list[dict[str, object]]:
    """libxl_cpuid_policy_list as libxl's JSON writes it (libxl_cpuid.c,
    libxl_cpuid_policy_list_gen_json): one map per leaf, "leaf", "subleaf" where the leaf
    has subleaves, and a 32-character string per register given."""
    from xenopus.arch.x86 import CPUID_REGS
    from xenopus.domain.cpuid_spec import parse_cpuid

    leaves: dict[tuple[int, int], dict[str, object]] = {}
    for o in parse_cpuid(value):
        entry = leaves.setdefault((o.leaf, o.subleaf), {"leaf": o.leaf})
        if o.subleaf or o.leaf in SUBLEAF_LEAVES:
            entry["subleaf"] = o.subleaf
        entry[CPUID_REGS[o.reg]] = o.bits
    return list(leaves.values())


# Leaves indexed by ECX (SDM 2A, CPUID): their subleaf is part of the input.
SUBLEAF_LEAVES = (0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F, 0x8000001D)


def libxl_domain_config(config: DomainConfig, uuid: str, avail_vcpus: int | None = None
                        ) -> dict[str, object]:
    """`config` as libxl_domain_config: c_info (libxl_domain_create_info), b_info
    (libxl_domain_build_info, with the PVH arm of its keyed union as "type.pvh"), the
    device arrays and the on_* actions. No hotplug script runs here (xenopus makes the
    tap and joins the bridge itself): run_hotplug_scripts is "False". `avail_vcpus`: the
    vCPUs available now, where `xl vcpu-set` has moved them (libxl_retrieve_domain_
    configuration puts a running domain's, not its config's, in b_info.avail_vcpus)."""
    c_info: dict[str, object] = {"type": "pvh" if config.pvshim else config.type,
                                 "name": config.name, "uuid": uuid,
                                 "run_hotplug_scripts": "False"}
    maxvcpus = config.maxvcpus or config.vcpus
    avail = config.vcpus if avail_vcpus is None else avail_vcpus
    b_info: dict[str, object] = {"max_vcpus": maxvcpus, "avail_vcpus": list(range(avail))}
    if config.cpus is not None:
        # vcpu_hard_affinity: one bitmap per vCPU; an unpinned vCPU has every host CPU,
        # which libxl's JSON cannot say without the host's CPU count: it gets [].
        b_info["vcpu_hard_affinity"] = [sorted(c) if c is not None else [] for c in config.cpus]
    b_info["max_memkb"] = (config.maxmem or config.memory) * 1024
    b_info["target_memkb"] = config.memory * 1024
    b_info["sched_params"] = {k: v for k, v in (("weight", config.cpu_weight),
                                                ("cap", config.cap)) if v is not None}
    b_info["kernel"] = config.kernel
    if config.cmdline:
        b_info["cmdline"] = config.cmdline
    if config.ramdisk:
        b_info["ramdisk"] = config.ramdisk
    if config.cpuid is not None:
        b_info["cpuid"] = libxl_cpuid(config.cpuid)
    # A shimmed PV guest is PVH to libxl (libxl_types.idl: pvshim* in the pvh arm).
    b_info["type.pvh"] = {} if not config.pvshim else {
        "pvshim": "True", "pvshim_path": config.pvshim_path,
        "pvshim_cmdline": config.pvshim_cmdline,
        **({"pvshim_extra": config.pvshim_extra} if config.pvshim_extra is not None else {}),
    }
    b_info["arch_arm"] = {}
    b_info["arch_x86"] = {"msr_relaxed": "True"} if config.msr_relaxed else {}
    out: dict[str, object] = {"c_info": c_info, "b_info": b_info}
    xen = config.xen_platform != "0"  # "auto" is decided at build time; mostly on
    if config.disks:
        out["disks"] = [libxl_disk(d, xen) for d in config.disks]
    if config.vifs:
        # devid: the one network-attach recorded, else the entry's index (vif_devids)
        out["nics"] = [libxl_nic(i if v.devid is None else v.devid, v, xen)
                       for i, v in enumerate(config.vifs)]
    if config.channels:
        # libxl_device_channel; its keyed union as "<keyvar>.<member>", like b_info's
        out["channels"] = [{"devid": i + 1, "name": c.name, "connection": c.connection,
                            f"connection.{c.connection}": {"path": c.path} if c.path else {}}
                           for i, c in enumerate(config.channels)]
    for key in ("on_poweroff", "on_reboot", "on_watchdog", "on_crash"):
        action = ACTIONS[getattr(config, key)]
        if action != DEFAULT_ACTION:
            out[key] = action
    return out


# -- xl sched-credit / sched-credit2 (xl_sched.c sched_credit{,2}_domain_output) -----------
SCHED_HEADER = "%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap")  # noqa: UP031
POOL_NAME = "Pool-0"  # libxl's name of the one cpupool


def sched_row(name: str, domid: int, weight: int, cap: int) -> str:
    return "%-33s %4d %6d %4d" % (name, domid, weight, cap)  # noqa: UP031


def sched_pool_line(pool: str = POOL_NAME) -> str:
    """sched_credit{,2}_pool_output when the pool's parameters cannot be had: the Linux
    scheduler has no credit time slice, rate limit or migration delay to report."""
    return f"Cpupool {pool}: [sched params unavailable]"


# xl cpupool-list (xl_cpupool.c main_cpupoollist): xenopus has one pool, POOL.
def cpupool_list(cpus: Iterable[int], n_dom: int, scheduler: str, show_cpus: bool) -> list[str]:
    """The header, then the pool: "%-19s" and either its CPUs comma-separated (-c) or
    "%3d %9s       y       %4d" (CPU count, scheduler, active, domains)."""
    cpus = sorted(cpus)
    header = "%-19s" % "Name" + (  # noqa: UP031
        "CPU list" if show_cpus else "CPUs   Sched     Active   Domain count")
    detail = ",".join(map(str, cpus)) if show_cpus else "%3d %9s       y       %4d" % (  # noqa: UP031
        len(cpus), scheduler, n_dom)
    return [header, "%-19s" % POOL + detail]  # noqa: UP031


# xl sharing (xl_mem.c sharing()): the header, then "%-40s %5d %5lu  %5lu" per domain (name,
# domid, memory MiB, shared MiB).
SHARING_HEADER = "Name                                        ID   Mem Shared"


def sharing_row(name: str, domid: int, mem_mib: int, shared_mib: int) -> str:
    return "%-40s %5d %5d  %5d" % (name, domid, mem_mib, shared_mib)  # noqa: UP031
