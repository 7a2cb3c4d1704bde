"""xl's output formats, byte for byte.

Sources (Xen): tools/xl/xl_info.c `list_domains` for `xl list`, tools/xl/xl_vcpu.c
`vcpulist`/`print_vcpuinfo` for `xl vcpu-list`, tools/xl/xl_utils.c `print_bitmap` for
CPU affinity sets, tools/xl/xl_block.c `main_blocklist` and tools/xl/xl_nic.c
`main_networklist` for Xen PV disks and NICs. Each function returns one line without its trailing newline.
The printf formats are kept verbatim as %-formats (hence the UP031 waivers) so they can
be compared with xl's source at a glance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# xl_info.c: shutdown_reason_letters[] = "-rscw", indexed by libxl_shutdown_reason
# (poweroff, reboot, suspend, crash, watchdog).
SHUTDOWN_LETTERS = {"poweroff": "-", "reboot": "r", "suspend": "s", "crash": "c",
                    "watchdog": "w"}


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
    """`xl list -l`: a JSON array, indent 4, of one object per domain (domid, config and
    runtime fields). Values with a `to_dict()` (e.g. DomainConfig) are converted."""
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
    if xen:
        lines += [xl_header, *map(xl_row, xen)]
    if others or not xen:
        if lines:
            lines.append("")
        lines += [virtio[0], *(virtio[1].format(**d) for d in others)]
    return lines


def block_list(disks: Iterable[Mapping[str, object]]) -> list[str]:
    """`block-list`'s lines for these disks (inventory descriptions of kind "disk")."""
    return _listing(disks, XL_BLOCK_HEADER, xl_block_row, VIRTIO_BLOCK)


def network_list(nics: Iterable[Mapping[str, object]]) -> list[str]:
    """`network-list`'s lines for these NICs (inventory descriptions of kind "nic")."""
    return _listing(nics, XL_NETWORK_HEADER, xl_network_row, VIRTIO_NETWORK)
