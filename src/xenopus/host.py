"""Facts about the host machine (Domain-0 in xl's terms), read from /proc and sysfs.

The one place that asks which host CPUs (and NUMA nodes) exist.
"""

from __future__ import annotations

import os

ONLINE_CPUS = "/sys/devices/system/cpu/online"
NODE_CPUS = "/sys/devices/system/node/node{}/cpulist"


def kernel_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,8", Documentation/admin-guide/cputopology.rst) as a set."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def host_cpus() -> frozenset[int]:
    """The host's online CPUs (Documentation/ABI/testing/sysfs-devices-system-cpu), or
    0..cpu_count-1 where sysfs cannot be read."""
    try:
        with open(ONLINE_CPUS) as f:
            return frozenset(kernel_cpu_list(f.read()))
    except OSError:
        return frozenset(range(os.cpu_count() or 1))


def node_cpus(node: int) -> set[int]:
    """The CPUs of NUMA node `node`; ValueError when the host has no such node."""
    try:
        with open(NODE_CPUS.format(node)) as f:
            return kernel_cpu_list(f.read())
    except FileNotFoundError:
        raise ValueError(f"the host has no NUMA node {node}") from None


def memory_mib() -> int:
    """MemTotal from /proc/meminfo, or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def current_cpu() -> int:
    """The host CPU this process last ran on (proc(5) /proc/PID/stat field 39), or -1."""
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[39 - 3])
    except (OSError, ValueError, IndexError):
        return -1


def _busy_seconds(ticks: list[str]) -> float:
    """A /proc/stat "cpu" line's time outside idle and iowait: of user nice system idle
    iowait irq softirq steal (proc(5), in USER_HZ ticks), all but the 4th and 5th."""
    busy = sum(int(v) for i, v in enumerate(ticks[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the host spent outside idle and iowait (the first line of /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            return _busy_seconds(f.readline().split()[1:])
    except (OSError, ValueError):
        return 0.0


def busy_seconds_per_cpu() -> dict[int, float]:
    """`busy_cpu_seconds` of each host CPU (the "cpuN" lines of /proc/stat)."""
    per_cpu = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                per_cpu[int(name[3:])] = _busy_seconds(ticks)
    return per_cpu


CPU_TOPOLOGY = "/sys/devices/system/cpu/cpu{}/topology/{}"
NODES_ONLINE = "/sys/devices/system/node/online"
KSM = "/sys/kernel/mm/ksm/{}"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def topology() -> tuple[int, int, int]:
    """(NUMA nodes, cores per socket, threads per core) of the host, from CPU 0's
    sysfs topology (Documentation/ABI/stable/sysfs-devices-system-cpu) and the online
    nodes; 1 for whatever cannot be read."""
    first = min(host_cpus())
    threads = _read(CPU_TOPOLOGY.format(first, "thread_siblings_list"))
    package = _read(CPU_TOPOLOGY.format(first, "package_cpus_list")) or _read(
        CPU_TOPOLOGY.format(first, "core_siblings_list"))
    nodes = _read(NODES_ONLINE)
    per_core = len(kernel_cpu_list(threads)) if threads else 1
    per_socket = len(kernel_cpu_list(package)) if package else per_core
    return (len(kernel_cpu_list(nodes)) if nodes else 1, max(1, per_socket // per_core),
            per_core)


def cpu_khz() -> int:
    """The first CPU's clock in kHz ("cpu MHz" in /proc/cpuinfo), 0 where unknown."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return round(float(line.split(":", 1)[1]) * 1000)
            except ValueError:
                break
    return 0


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB by name (MemTotal, MemAvailable, ...)."""
    out: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            out[name] = int(value[0])
    return out


def ksm_process_pages(pid: int) -> int:
    """Pages of process `pid` that kernel same-page merging has merged
    (/proc/PID/ksm_merging_pages, Linux 5.19; Documentation/admin-guide/mm/ksm.rst); 0
    where the file is absent or unreadable."""
    text = _read(f"/proc/{pid}/ksm_merging_pages")
    return int(text) if text and text.strip().isdigit() else 0


def ksm_pages() -> tuple[int, int]:
    """(pages_sharing, pages_shared) of kernel same-page merging (Documentation/
    admin-guide/mm/ksm.rst): pages saved by merging, and the merged pages in use; 0
    where KSM is absent."""
    def count(name: str) -> int:
        text = _read(KSM.format(name))
        return int(text) if text and text.strip().isdigit() else 0

    return count("pages_sharing"), count("pages_shared")


def uptime_seconds() -> float:
    """Seconds since the host booted (the first field of /proc/uptime)."""
    text = _read("/proc/uptime")
    return float(text.split()[0]) if text else 0.0


NODE_DIR = "/sys/devices/system/node/node{}/{}"
PCI_DEVICES = "/sys/bus/pci/devices"


def cpu_topology() -> list[tuple[int, int, int, int]]:
    """(cpu, core, socket, node) of each online CPU, from sysfs topology (core_id,
    physical_package_id) and the node directories; -1 where unknown."""
    nodes = _read(NODES_ONLINE)
    node_of = {cpu: n for n in (kernel_cpu_list(nodes) if nodes else ())
               for cpu in kernel_cpu_list(_read(NODE_DIR.format(n, "cpulist")) or "")}

    def number(cpu: int, name: str) -> int:
        text = _read(CPU_TOPOLOGY.format(cpu, name))
        return int(text) if text and text.strip().lstrip("-").isdigit() else -1

    return [(cpu, number(cpu, "core_id"), number(cpu, "physical_package_id"),
             node_of.get(cpu, -1)) for cpu in sorted(host_cpus())]


def numa_nodes() -> list[tuple[int, int, int, list[int]]]:
    """(node, MemTotal KiB, MemFree KiB, distances to every node) of each online NUMA
    node (Documentation/ABI/stable/sysfs-devices-node)."""
    nodes = _read(NODES_ONLINE)
    out = []
    for n in sorted(kernel_cpu_list(nodes)) if nodes else ():
        mem: dict[str, int] = {}
        for line in (_read(NODE_DIR.format(n, "meminfo")) or "").splitlines():
            words = line.split()  # "Node 0 MemTotal:  7300856 kB"
            if len(words) >= 4 and words[3].isdigit():
                mem[words[2].rstrip(":")] = int(words[3])
        dists = [int(d) for d in (_read(NODE_DIR.format(n, "distance")) or "").split()]
        out.append((n, mem.get("MemTotal", 0), mem.get("MemFree", 0), dists))
    return out


def pci_nodes() -> list[tuple[str, int]]:
    """(PCI address, NUMA node) of each host PCI device that belongs to a node."""
    try:
        names = sorted(os.listdir(PCI_DEVICES))
    except OSError:
        return []
    out = []
    for name in names:
        text = (_read(os.path.join(PCI_DEVICES, name, "numa_node")) or "").strip()
        if text.isdigit():  # -1: no node (a single-node host's devices)
            out.append((name, int(text)))
    return out


NET_STATISTICS = "/sys/class/net/{}/statistics/{}"


def net_bytes(ifname: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host network interface (Documentation/ABI/testing/
    sysfs-class-net-statistics), as the host counts them; (0, 0) where it is gone."""
    def count(name: str) -> int:
        text = (_read(NET_STATISTICS.format(ifname, name)) or "").strip()
        return int(text) if text.isdigit() else 0

    return count("rx_bytes"), count("tx_bytes")


def machine() -> str:
    """uname(2)'s machine (what platform.machine() returns, without its imports)."""
    return os.uname().machine


def architecture() -> str:
    """The host's (and so its guests') architecture: "x86_64" or "arm64" (uname(2) machine,
    whose arm64 spelling is "aarch64"); other machines are named as uname says."""
    name = machine()
    return "arm64" if name in ("aarch64", "arm64") else name


# System calls glibc has no wrapper for, by architecture: x86-64's numbers from
# <asm/unistd_64.h>, arm64's from the generic table (include/uapi/asm-generic/unistd.h).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "capset": 126, "seccomp": 317},
    "arm64": {"pivot_root": 41, "capset": 91, "seccomp": 277},
}


def syscall_number(name: str) -> int:
    """The host architecture's number of system call `name` (one of those above)."""
    arch = architecture()
    try:
        return _SYSCALLS[arch][name]
    except KeyError:
        raise OSError(f"no number for system call {name} on {arch}") from None
