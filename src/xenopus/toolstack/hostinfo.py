"""What `xl info` reports about this host (xl_info.c print_info), with honest values.

xl fills the lines from uname(2), libxl_get_physinfo (XEN_SYSCTL_physinfo) and
libxl_get_version_info (the XENVER_* calls); here dom0 is the Linux host and the
hypervisor is KVM plus xenopus, so each field says the nearest true thing:

  host, release, version, machine   uname(2), as xl (output_nodeinfo)
  nr_cpus, max_cpu_id               the host's online CPUs (host.py)
  nr_nodes, cores_per_socket,
  threads_per_core                  the host's topology from sysfs
  cpu_mhz                           the first CPU's clock (/proc/cpuinfo)
  hw_caps                           Xen's first eight featureset words (public/arch-x86/
                                    cpufeatureset.h: 1d 1c e1d e1c Da1 7b0 7c0 e7d) as
                                    KVM offers them to guests (KVM_GET_SUPPORTED_CPUID)
  virt_caps                         hvm (every domain is a KVM HVM container; no PV
                                    guests), hap where KVM uses EPT/NPT else shadow,
                                    vpmu where KVM exposes a PMU, gnttab-v1 (no v2)
  total_memory, free_memory         MemTotal and MemAvailable (what new domains can get)
  sharing_freed_memory,
  sharing_used_memory               kernel same-page merging: pages saved, pages shared
  outstanding_claims                0: there are no memory claims
  free_cpus                         0: every CPU is in the one pool (Xen's Pool-0)
  xen_major ... xen_version, xen_caps,
  xen_pagesize, platform_params,
  xen_changeset                     what the xen_version hypercall tells our guests
  xen_scheduler                     credit2: the Linux fair scheduler runs the vCPU
                                    threads, a weighted fair share as credit2's
  xen_commandline                   the daemon's command line (the "hypervisor"'s)
  cc_*                              xenopus is not compiled: the Python that runs it,
                                    the user the daemon runs as, no domain, the
                                    interpreter's build date
  xend_config_format                4, the constant xl prints
Not printed: build_id (no binary to identify), arm_sve_vector_length (x86 only).
"""

from __future__ import annotations

import getpass
import os
import platform
from typing import Any

from xenopus import host
from xenopus.xen import abi
from xenopus.xen.hypercall import XEN_VERSION
from xenopus.xen.hypercalls import version

MIB = 1 << 20
# (CPUID leaf, subleaf, register) of featureset words 0-7, in Xen's order.
FEATURE_WORDS = ((0x1, 0, "edx"), (0x1, 0, "ecx"), (0x80000001, 0, "edx"),
                 (0x80000001, 0, "ecx"), (0xD, 1, "eax"), (0x7, 0, "ebx"), (0x7, 0, "ecx"),
                 (0x80000007, 0, "edx"))
HAP_PARAMS = ("/sys/module/kvm_intel/parameters/ept", "/sys/module/kvm_amd/parameters/npt")
PMU_PARAM = "/sys/module/kvm/parameters/enable_pmu"
SCHEDULER = "credit2"
XEND_CONFIG_FORMAT = 4


def _flag(path: str) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() in ("Y", "1")
    except OSError:
        return False


def hw_caps() -> list[int]:
    """Featureset words 0-7 as KVM offers them; zeros where /dev/kvm cannot be opened."""
    from xenopus.kvm.system import Kvm, KvmError

    try:
        with Kvm() as kvm:
            cpuid = kvm.supported_cpuid()
    except (OSError, KvmError):
        return [0] * len(FEATURE_WORDS)
    leaves = {(e.function, e.index): e for e in cpuid.entries[: cpuid.nent]}
    words = []
    for leaf, sub, reg in FEATURE_WORDS:
        entry = leaves.get((leaf, sub))
        words.append(getattr(entry, reg) if entry is not None else 0)
    return words


def virt_caps() -> list[str]:
    caps = ["hvm", "hap" if any(_flag(p) for p in HAP_PARAMS) else "shadow"]
    if _flag(PMU_PARAM):
        caps.append("vpmu")
    return [*caps, "gnttab-v1"]


def _daemon_cmdline() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def topology() -> dict[str, Any]:
    """`xl info -n`'s tables (output_topologyinfo, output_numainfo): each CPU's core,
    socket and node, each PCI device's node, each node's memory (MiB) and distances."""
    return {
        "cpu_topology": [list(t) for t in host.cpu_topology()],
        "device_topology": [list(d) for d in host.pci_nodes()],
        "numa_info": [[n, total // 1024, free // 1024, dists]
                      for n, total, free, dists in host.numa_nodes()],
    }


def gather() -> dict[str, Any]:
    """Every `xl info` field by name (xlformat.INFO_FIELDS orders and formats them)."""
    uts = os.uname()
    cpus = host.host_cpus()
    nodes, cores, threads = host.topology()
    mem = host.meminfo()
    sharing, shared = host.ksm_pages()
    page_mib = MIB // abi.PAGE_SIZE
    khz = host.cpu_khz()
    major, minor = XEN_VERSION
    extra = version.EXTRAVERSION.decode()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "host": uts.nodename, "release": uts.release, "version": uts.version,
        "machine": uts.machine,
        "nr_cpus": len(cpus), "max_cpu_id": max(cpus), "nr_nodes": nodes,
        "cores_per_socket": cores, "threads_per_core": threads,
        "cpu_mhz": "%d.%03d" % (khz // 1000, khz % 1000),  # noqa: UP031
        "hw_caps": ":".join("%08x" % w for w in hw_caps()),  # noqa: UP031
        "virt_caps": virt_caps(),
        "total_memory": mem.get("MemTotal", 0) // 1024,
        "free_memory": mem.get("MemAvailable", mem.get("MemFree", 0)) // 1024,
        "sharing_freed_memory": sharing // page_mib,
        "sharing_used_memory": shared // page_mib,
        "outstanding_claims": 0,
        "free_cpus": 0,
        "xen_major": major, "xen_minor": minor, "xen_extra": extra,
        "xen_version": f"{major}.{minor}{extra}",
        "xen_caps": version.CAPABILITIES.decode(),
        "xen_scheduler": SCHEDULER,
        "xen_pagesize": abi.PAGE_SIZE,
        "platform_params": "virt_start=0x0",  # XENVER_platform_parameters for HVM vCPUs
        "xen_changeset": version.CHANGESET.decode(),
        "xen_commandline": _daemon_cmdline(),
        "cc_compiler": f"{platform.python_implementation()} {platform.python_version()}",
        "cc_compile_by": user,
        "cc_compile_domain": "",
        "cc_compile_date": platform.python_build()[1],
        "xend_config_format": XEND_CONFIG_FORMAT,
    }
