"""xl's output formats, checked against strings typed from xl's printf formats.

xl_info.c list_domains:
    printf("Name                                        ID   Mem VCPUs\\tState\\tTime(s)");
    printf("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f", ...);
xl_vcpu.c vcpulist / print_vcpuinfo:
    printf("%-32s %5s %5s %5s %5s %9s %s\\n", "Name", "ID", "VCPU", "CPU", "State",
           "Time(s)", "Affinity (Hard / Soft)");
    printf("%-32s %5u %5u", ...); printf("%5u %3c%c- ", ...) or printf("%5c %3c%cp ", ...);
    printf("%9.1f  ", ...); print_bitmap(hard); printf(" / "); print_bitmap(soft);
"""

import json

import pytest

from xenopus.domain.config import DomainConfig
from xenopus.toolstack.xlformat import (
    DomainState,
    cpumap,
    list_header,
    list_long,
    list_row,
    vcpu_list_header,
    vcpu_list_row,
)


def test_list_header_is_xls():
    assert list_header() == "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def test_domain0_row():
    row = list_row("Domain-0", 0, 2048, 2, DomainState(running=True), 123.4)
    assert row == "Domain-0                                     0  2048     2     r-----     123.4"


def test_row_columns_line_up_under_header():
    row = list_row("guest", 7, 128, 1, DomainState(blocked=True), 0.0)
    assert row == "guest                                        7   128     1     -b----       0.0"
    # ID and Mem end in the same column as their header titles.
    assert row.index("7") == list_header().index("ID") + 1
    assert row.index("128") == list_header().index("Mem")


@pytest.mark.parametrize(
    ("state", "flags"),
    [
        (DomainState(), "------"),
        (DomainState(running=True), "r-----"),
        (DomainState(blocked=True), "-b----"),
        (DomainState(paused=True), "--p---"),
        (DomainState(shutdown=True), "---s--"),
        (DomainState(shutdown=True, crashed=True), "---sc-"),
        (DomainState(dying=True), "-----d"),
        (DomainState(True, True, True, True, True, True), "rbpscd"),
        # xl 4.x: the fifth column is shutdown_reason_letters[] = "-rscw"
        (DomainState(shutdown=True, reason="reboot"), "---sr-"),
        (DomainState(shutdown=True, reason="poweroff"), "---s--"),
        (DomainState(shutdown=True, reason="watchdog"), "---sw-"),
    ],
)
def test_state_flags(state, flags):
    assert state.flags() == flags


def test_long_names_are_not_truncated():
    name = "n" * 45
    row = list_row(name, 3, 64, 1, "------", 1.25)
    assert row == name + "     3    64     1     ------       1.2"


def test_cpu_time_rounds_to_one_decimal_and_widens():
    assert list_row("a", 1, 1, 1, "------", 0.06).endswith("  ------       0.1")
    assert list_row("a", 1, 1, 1, "------", 12345678.9).endswith("  ------  12345678.9")


def test_bad_flags_refused():
    with pytest.raises(ValueError):
        list_row("a", 1, 1, 1, "r--", 0.0)


def test_vcpu_list_header():
    assert vcpu_list_header() == (
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)")


def test_vcpu_row_online():
    row = vcpu_list_row("Domain-0", 0, 0, 1, running=True, cpu_time=42.0, nr_cpus=4)
    assert row == "Domain-0                             0     0    1   r--      42.0  all / all"


def test_vcpu_row_offline():
    row = vcpu_list_row("web", 5, 1, None, hard=[0, 1, 3], soft=[], nr_cpus=4)
    assert row == "web                                  5     1    -   --p       0.0  0-1,3 / none"


def test_vcpu_row_blocked():
    row = vcpu_list_row("web", 5, 0, 2, blocked=True, cpu_time=0.5, nr_cpus=4)
    assert row == "web                                  5     0    2   -b-       0.5  all / all"


@pytest.mark.parametrize(
    ("cpus", "nr", "text"),
    [
        (range(8), 8, "all"),
        ([], 8, "none"),
        ([0], 1, "all"),
        ([0], 2, "0"),
        ([1, 2, 3], 4, "1-3"),  # print_bitmap: a run reaching the end not from 0
        ([0, 1, 2], 4, "0-2"),
        ([0, 2, 4, 5, 6], 8, "0,2,4-6"),
        ("all", 8, "all"),
    ],
)
def test_cpumap_matches_print_bitmap(cpus, nr, text):
    assert cpumap(cpus, nr) == text


def test_list_long_is_json_array_indent_4():
    cfg = DomainConfig(name="web", kernel="/k")
    out = list_long([{"domid": 3, "config": cfg, "state": "r-----"}])
    assert out.startswith('[\n    {\n        "domid": 3,\n')
    data = json.loads(out)
    assert data[0]["config"]["name"] == "web"
    assert data[0]["config"]["memory"] == 128
    assert list_long([]) == "[]"
