"""`xl info`, `uptime`, `list -v`, `top -b` and `list -l`, checked against Xen's sources.

The expected strings are typed from Xen's printf formats (quoted beside each test), never
taken from our own output:

tools/xl/xl_info.c output_physinfo / output_xeninfo / print_info:
    maybe_printf("nr_cpus                : %d\\n", info.nr_cpus);
    maybe_printf("virt_caps              :%s%s%s%s%s%s%s%s%s%s%s\\n", " pv"..., " hvm"...);
    maybe_printf("xend_config_format     : 4\\n");
  maybe_printf with `xl info NAME`: prints &s[2] (the text after ": ") of each line
  whose text starts with NAME (strncmp over strlen(NAME)).
tools/xl/xl_info.c print_uptime / uptime_to_string:
    printf("%-33s %4s %s\\n", "Name", "ID", "Uptime");
    printf("%-33s %4d %s\\n", domname, domid, uptime_str);
    printf(" %s up %s, %s (%d)\\n", now_str, uptime_str, domname, domid);   (-s)
    "%d days, %2d:%02d:%02d" / "%d day, %2d:%02d:%02d" / "%2d:%02d:%02d" (short: no secs)
tools/xl/xl_info.c list_domains (-v):
    printf("   UUID                            Reason-Code\\tSecurity Label");
    printf(" " LIBXL_UUID_FMT, ...); printf(" %8x", reason) or printf(" %8s", "-");
    printf(" %16s", info[i].ssid_label ? : "-");
tools/xentop/xentop.c fields[] / do_header / do_domain: see test_top_*.
tools/libs/light/libxl_types.idl libxl_domain_config: see test_libxl_*.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from xenopus.domain.config import DomainConfig
from xenopus.domain.devspec import DiskSpec, VifSpec
from xenopus.toolstack import xlconf
from xenopus.toolstack.cli import fast_parse
from xenopus.toolstack.xlformat import (
    LIST_VERBOSE_HEADER,
    SHARING_HEADER,
    UPTIME_HEADER,
    VM_LIST_HEADER,
    TopEntry,
    cpupool_list,
    info_lines,
    info_select,
    libxl_domain_config,
    list_header,
    list_options_columns,
    list_options_header,
    sharing_row,
    top_lines,
    top_state,
    top_summary,
    uptime_row,
    uptime_text,
    vm_list_row,
)


# -- xl info ------------------------------------------------------------------------------
def test_info_lines_use_xls_column():
    lines = info_lines({"nr_cpus": 2, "host": "h", "xend_config_format": 4,
                        "cpu_mhz": "2445.412", "xen_version": "4.11.0-xenopus"})
    assert lines == [
        "host                   : h",  # "host                   : %s\n"
        "nr_cpus                : 2",  # "nr_cpus                : %d\n"
        "cpu_mhz                : 2445.412",  # "cpu_mhz                : %d.%03d\n"
        "xen_version            : 4.11.0-xenopus",  # "xen_version            : %d.%d%s\n"
        "xend_config_format     : 4",  # "xend_config_format     : 4\n"
    ]


def test_virt_caps_has_no_space_after_its_colon():
    # "virt_caps              :%s%s..." with each capability " name"
    assert info_lines({"virt_caps": ["hvm", "hap"]}) == ["virt_caps              : hvm hap"]
    assert info_lines({"virt_caps": []}) == ["virt_caps              :"]


def test_info_lines_follow_print_infos_order():
    # print_info: output_nodeinfo, output_physinfo, output_xeninfo, xend_config_format
    values = {"xend_config_format": 4, "xen_major": 4, "total_memory": 1, "release": "r",
              "host": "h"}
    names = [line.split()[0] for line in info_lines(values)]
    assert names == ["host", "release", "total_memory", "xen_major", "xend_config_format"]


def test_info_name_prints_values_of_lines_it_begins():
    lines = info_lines({"xen_major": 4, "xen_minor": 11, "xen_extra": ".0", "nr_cpus": 2})
    assert info_select(lines, "xen_m") == ["4", "11"]
    assert info_select(lines, "nr_cpus") == ["2"]
    assert info_select(lines, "nothing") == []


def test_info_numa_tables():
    # output_topologyinfo: "cpu_topology           :\n", "cpu:    core    socket     node\n",
    #   "%3d:    %4d     %4d     %4d\n"; "device topology        :\n",
    #   "device           node\n", "%04x:%02x:%02x.%01x      %d\n" or
    #   "No device topology data available\n";
    # output_numainfo: "numa_info              :\n", "node:    memsize    memfree    distances\n",
    #   "%4d:    %6"PRIu64"     %6"PRIu64"      %d" then ",%d" per further distance.
    values = {"nr_cpus": 2, "xen_major": 4, "cpu_topology": [[0, 0, 0, 0], [1, 1, 0, 1]],
              "device_topology": [["0000:00:1f.2", 1]],
              "numa_info": [[0, 7129, 4206, [10, 21]], [1, 8000, 10, [21, 10]]]}
    assert info_lines(values) == [
        "nr_cpus                : 2",
        "cpu_topology           :",
        "cpu:    core    socket     node",
        "  0:       0        0        0",
        "  1:       1        0        1",
        "device topology        :",
        "device           node",
        "0000:00:1f.2      1",
        "numa_info              :",
        "node:    memsize    memfree    distances",
        "   0:      7129       4206      10,21",
        "   1:      8000         10      21,10",
        "xen_major              : 4",
    ]
    values["device_topology"] = []
    assert "No device topology data available" in info_lines(values)


# -- xl uptime ----------------------------------------------------------------------------
def test_uptime_header():
    assert UPTIME_HEADER == "Name                                ID Uptime"


@pytest.mark.parametrize(("seconds", "short", "text"), [
    (0, False, " 0:00:00"),
    (3661, False, " 1:01:01"),
    (86400 + 3600 * 13 + 61, False, "1 day, 13:01:01"),
    (2 * 86400 + 5, False, "2 days,  0:00:05"),
    (3661, True, " 1:01"),
    (86400, True, "1 day,  0:00"),
    (3 * 86400 + 600, True, "3 days,  0:10"),
])
def test_uptime_to_string(seconds, short, text):
    assert uptime_text(seconds, short) == text


def test_uptime_rows():
    assert uptime_row("Domain-0", 0, 3661, False, 0.0) == \
        "Domain-0                             0  1:01:01"
    now = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert uptime_row("web", 7, 3661, True, now) == " 03:04:05 up  1:01, web (7)"


# -- xl list -v / -Z / -c / -n ------------------------------------------------------------
def test_list_option_headers():
    base = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert list_header() + list_options_header(verbose=True) == (
        base + "   UUID                            Reason-Code\tSecurity Label")
    assert list_options_header(context=True) == "   Security Label"
    assert list_options_header(verbose=True, context=True) == LIST_VERBOSE_HEADER
    assert list_options_header(cpupool=True, numa=True) == "         Cpupool NODE Affinity"


def test_list_option_columns():
    uuid = "13a1cf29-2421-4f41-8005-b537fb6e4024"
    assert list_options_columns(uuid, None, False, verbose=True) == f" {uuid}        -                -"
    # shutdown_reason crash is 3 (libxl_shutdown_reason), printed "%8x"
    assert list_options_columns(uuid, "crash", True, verbose=True) == f" {uuid}        3                -"
    assert list_options_columns(uuid, "reboot", True, verbose=True) == f" {uuid}        1                -"
    assert list_options_columns(uuid, None, False, context=True) == "                -"
    assert list_options_columns(uuid, None, False, cpupool=True, nodes="all") == "          Pool-0 all"
    assert list_options_columns(uuid, None, False) == ""


# -- xl vm-list ---------------------------------------------------------------------------
def test_vm_list():
    # list_vm: printf("UUID                                  ID    name\n");
    #          printf(LIBXL_UUID_FMT "  %d    %-30s\n", uuid, domid, domname);
    assert VM_LIST_HEADER == "UUID                                  ID    name"
    assert vm_list_row(UUID, 12, "web") == f"{UUID}  12    web" + " " * 27
    assert VM_LIST_HEADER.index(" ID") + 1 == len(UUID) + 2  # the domid starts under "ID"


# -- xl top -b (xentop) ---------------------------------------------------------------------
# fields[]: NAME 10, STATE 6, CPU(sec) 10, CPU(%) 6, MEM(k) 10, MEM(%) 6, MAXMEM(k) 10,
# MAXMEM(%) 9, VCPUS 5, NETS 4, NETTX(k) 8, NETRX(k) 8, VBDS 4, VBD_OO 8, VBD_RD 8,
# VBD_WR 8, VBD_RSECT 10, VBD_WSECT 10, SSID 4; do_header: print(" ") between fields,
# "%*s" each.
XENTOP_HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%)"
                 " VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT"
                 "  VBD_WSECT SSID")


def test_top_header_is_xentops():
    assert top_lines([], 1024)[0] == XENTOP_HEADER


def test_top_state_letters_in_xentops_order():
    # state_funcs[]: dying 'd', shutdown 's', blocked 'b', crashed 'c', paused 'p', running 'r'
    assert top_state(running=True) == "-----r"
    assert top_state(paused=True) == "----p-"
    assert top_state(shutdown=True, crashed=True) == "-s-c--"


def test_top_rows():
    dom0 = TopEntry("Domain-0", top_state(running=True), 4540 * 10**9 + 7, 12.25, 2048, None, 2)
    guest = TopEntry("averyveryverylongname", top_state(paused=True), 0, 0.0, 1024, 1024, 1,
                     nets=1, net_tx=10 * 1024, vbds=2)
    lines = top_lines([guest, dom0], 4096)
    # print_name "%10.10s"; print_cpu "%10llu" (seconds); print_cpu_pct "%6.1f";
    # print_mem "%10llu"; print_mem_pct "%6.1f"; maxmem "%10s" "no limit" / "%9s" "n/a";
    # print_vcpus "%5u"; print_nets "%4u"; net "%*llu" (width 8); print_vbds "%4u";
    # VBD counters "%8c"/"%*c" '-' without statistics, 0 with no VBD; print_ssid "%4u".
    assert lines[1:] == [
        "averyveryv ----p-          0    0.0       1024   25.0       1024      25.0     1"
        "    1       10        0    2        -        -        -          -          -    0",
        "  Domain-0 -----r       4540   12.2       2048   50.0   no limit       n/a     2"
        "    0        0        0    0        0        0        0          0          0    0",
    ]


def test_top_summary():
    # do_summary: print("xentop - %s   Xen %s\n", time_str, ver_str);
    #   print("%u domains: %u running, %u blocked, %u paused, "
    #         "%u crashed, %u dying, %u shutdown \n", ...);
    #   print("Mem: %lluk total, %lluk used, %lluk free    ", ...);
    #   print("CPUs: %u @ %lluMHz\n", ...);
    now = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    entries = [TopEntry("Domain-0", top_state(running=True), 0, 0.0, 1, None, 2),
               TopEntry("a", top_state(paused=True), 0, 0.0, 1, 1, 1),
               TopEntry("b", top_state(shutdown=True, crashed=True), 0, 0.0, 1, 1, 1)]
    assert top_summary(now, "4.11.0-xenopus", entries, 8000, 3000, 2, 2445412) == [
        "xentop - 03:04:05   Xen 4.11.0-xenopus",
        "3 domains: 1 running, 0 blocked, 1 paused, 0 crashed, 0 dying, 1 shutdown ",
        "Mem: 8000k total, 5000k used, 3000k free    CPUs: 2 @ 2445MHz",
    ]


# -- xl list -l (libxl_domain_config) ------------------------------------------------------
UUID = "13a1cf29-2421-4f41-8005-b537fb6e4024"


def test_libxl_config_has_libxls_shape_and_leaves_defaults_out():
    cfg = DomainConfig(name="web", kernel="/k", memory=64, maxmem=128, vcpus=2, maxvcpus=4,
                       cmdline="console=hvc0", on_reboot="destroy", on_crash="preserve")
    out = libxl_domain_config(cfg, UUID)
    assert out == {
        # libxl_domain_create_info: type (libxl_domain_type "pvh"), name, uuid
        "c_info": {"type": "pvh", "name": "web", "uuid": UUID, "run_hotplug_scripts": "False"},
        # libxl_domain_build_info: avail_vcpus is a bitmap (its set bits), MemKB in KiB,
        # the keyed union's PVH arm is "type.pvh"
        "b_info": {"max_vcpus": 4, "avail_vcpus": [0, 1], "max_memkb": 131072,
                   "target_memkb": 65536, "sched_params": {}, "kernel": "/k",
                   "cmdline": "console=hvc0", "type.pvh": {}, "arch_arm": {}, "arch_x86": {}},
        # libxl_action_on_shutdown: init_val DESTROY is left out; others by lower-case name
        "on_crash": "preserve",
    }


def test_libxl_config_avail_vcpus_follow_vcpu_set():
    # libxl_retrieve_domain_configuration: a running domain's avail_vcpus are those online
    # now (xl vcpu-set moved them), not the config's.
    cfg = DomainConfig(name="web", kernel="/k", vcpus=2, maxvcpus=4)
    assert libxl_domain_config(cfg, UUID, 3)["b_info"]["avail_vcpus"] == [0, 1, 2]
    assert libxl_domain_config(cfg, UUID)["b_info"]["avail_vcpus"] == [0, 1]


def test_libxl_devices():
    cfg = DomainConfig(
        name="d", kernel="/k",
        disks=[DiskSpec("/img", "xvda"), DiskSpec("/iso", "vdb", read_only=True,
                                                  devtype="cdrom")],
        vifs=[VifSpec(mac="00:16:3e:00:00:01", bridge="xenbr0"),
              VifSpec(vifname="tap9", model="virtio")])
    out = libxl_domain_config(cfg, UUID)
    # libxl_device_disk: pdev_path, vdev, backend (libxl_disk_backend), format
    # (libxl_disk_format), removable/readwrite/is_cdrom, specification (xen / virtio)
    assert out["disks"] == [
        {"pdev_path": "/img", "vdev": "xvda", "backend": "qdisk", "format": "raw",
         "readwrite": 1, "specification": "xen"},
        {"pdev_path": "/iso", "vdev": "vdb", "backend": "qdisk", "format": "raw",
         "removable": 1, "is_cdrom": 1, "specification": "virtio"},
    ]
    # libxl_device_nic: devid, mac, bridge, ifname, nictype (libxl_nic_type vif / vif_ioemu)
    assert out["nics"] == [
        {"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0", "nictype": "vif"},
        {"devid": 1, "model": "virtio", "ifname": "tap9", "nictype": "vif_ioemu"},
    ]
    assert out["on_reboot"] == "restart"  # DomainConfig's default, not libxl's init_val
    # with the Xen interface off, the vif without a model (and an sd* disk) are virtio
    off = libxl_domain_config(dataclasses.replace(
        cfg, xen_platform="0", disks=[DiskSpec("/img", "sda")]), UUID)
    assert off["nics"][0]["nictype"] == "vif_ioemu" and off["nics"][0]["model"] == "virtio"
    assert off["disks"][0]["specification"] == "virtio"


# -- xl.conf and finding config files ---------------------------------------------------------
def test_xl_conf_missing_means_defaults(tmp_path):
    conf = xlconf.load(str(tmp_path / "xl.conf"))
    assert conf == xlconf.XlConf()
    assert xlconf.lock_path(conf, "/run/xenopus", "/run/xenopus") == "/var/lock/xl"
    assert xlconf.lock_path(conf, str(tmp_path), "/run/xenopus") == str(tmp_path / "xl.lock")


def test_xl_conf_keys(tmp_path):
    path = tmp_path / "xl.conf"
    path.write_text('autoballoon="off"\nlockfile="/tmp/l"\ndefaultbridge="old"\n'
                    'vif.default.bridge="xenbr1"\nclaim_mode=1\n')
    conf = xlconf.load(str(path))
    assert (conf.autoballoon, conf.lockfile, conf.vif_bridge) == ("off", "/tmp/l", "xenbr1")
    assert xlconf.lock_path(conf, "/x", "/run/xenopus") == "/tmp/l"


def test_xl_conf_refuses_what_xl_refuses(tmp_path):
    path = tmp_path / "xl.conf"
    path.write_text('autoballoon="sometimes"\n')
    with pytest.raises(xlconf.XlConfError, match="invalid autoballoon option"):
        xlconf.load(str(path))
    path.write_text("lockfile=3\n")
    with pytest.raises(xlconf.XlConfError, match="lockfile: expected a string"):
        xlconf.load(str(path))


def test_config_found_by_name_in_the_xen_directory(tmp_path, monkeypatch):
    etc, cwd = tmp_path / "etc", tmp_path / "cwd"
    etc.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("XENOPUS_XEN_CONFIG_DIR", str(etc))
    (etc / "web.cfg").write_text("")
    (etc / "db").write_text("")
    assert xlconf.find_config("web", str(cwd)) == str(etc / "web.cfg")
    assert xlconf.find_config("db", str(cwd)) == str(etc / "db")
    (cwd / "web").write_text("")  # a file of that name here wins, as xl reads the path given
    assert xlconf.find_config("web", str(cwd)) == "web"
    assert xlconf.find_config("none", str(cwd)) == "none"
    assert xlconf.find_config(os.path.join("sub", "web"), str(cwd)) == os.path.join("sub", "web")


def test_xl_conf_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XENOPUS_XEN_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("XENOPUS_XL_CONF", raising=False)
    assert xlconf.xl_conf_path() == str(tmp_path / "xl.conf")
    monkeypatch.setenv("XENOPUS_XL_CONF", "/elsewhere/xl.conf")
    assert xlconf.xl_conf_path() == "/elsewhere/xl.conf"


# -- xl's argument order ----------------------------------------------------------------------
def test_options_may_follow_positionals_as_getopt_permutes_them():
    args = fast_parse(["create", "web.cfg", "-c", "memory=64", "-p"])
    assert args is not None
    assert (args.console, args.paused, args.words) == (True, True, ["web.cfg", "memory=64"])
    args = fast_parse(["list", "web", "-v"])
    assert args is not None and args.verbose and args.domains == ["web"]
    args = fast_parse(["top", "-b", "-i", "2", "-d", "1"])
    assert args is not None and (args.batch, args.iterations, args.delay) == (True, 2, 1)
    args = fast_parse(["create", "--", "-odd-name.cfg"])  # "--" ends the options
    assert args is not None and args.words == ["-odd-name.cfg"]
    assert fast_parse(["create", "web.cfg", "-Z"]) is None  # unknown: argparse explains


def test_cpupool_list_is_xls():
    """xl_cpupool.c main_cpupoollist: printf("%-19s", "Name") and the column titles, then
    per pool "%-19s" and "%3d %9s       y       %4d", or with -c the CPUs, comma-separated."""
    assert cpupool_list([0, 1, 2, 3], 3, "credit2", False) == [
        "Name               CPUs   Sched     Active   Domain count",
        "Pool-0               4   credit2       y          3"]
    assert cpupool_list([3, 0, 1], 1, "credit2", True) == [
        "Name               CPU list", "Pool-0             0,1,3"]


def test_claims_column():
    """xl_info.c list_domains with claim: "  Claimed" after -Z's label title, before -c's
    pool; per row " %5lu" after -v's UUID and reason, before the label."""
    assert list_options_header(claim=True) == "  Claimed"
    assert list_options_header(verbose=True, claim=True, cpupool=True) == (
        LIST_VERBOSE_HEADER + "  Claimed" + "         Cpupool")
    uuid = "13a1cf29-2421-4f41-8005-b537fb6e4024"
    assert list_options_columns(uuid, None, False, claim=True) == "     0"
    assert list_options_columns(uuid, None, False, verbose=True, claim=True) == (
        f" {uuid}        -     0                -")


def test_sharing_rows():
    """xl_mem.c sharing(): the header, then "%-40s %5d %5lu  %5lu"."""
    assert SHARING_HEADER == "Name" + " " * 40 + "ID   Mem Shared"
    row = sharing_row("web", 3, 256, 12)
    assert row == "web" + " " * 37 + "     3   256     12"
    assert row[45] == "3" and SHARING_HEADER[44:46] == "ID"  # the domid under its title
