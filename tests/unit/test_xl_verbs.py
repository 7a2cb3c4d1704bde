"""The README's table of xl's verbs against Xen's own list and against our CLI: every verb
of xl_cmdtable.c has a row; a verb marked yes is one the CLI takes, one marked n/a or not
yet is one the CLI refuses by name with the same reason (cli.UNAVAILABLE)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenopus.toolstack import cli

README = Path(__file__).resolve().parents[2] / "README.md"

# Every cmd_name of Xen's tools/xl/xl_cmdtable.c (xen-project/xen c447b7308b13, 2026-08-20),
# in its order, the x86 and LIBXL_HAVE_DT_OVERLAY ones included.
XL_CMDTABLE = """
create config-update list destroy shutdown reboot pci-attach pci-detach pci-list
pci-assignable-add pci-assignable-remove pci-assignable-list pause unpause console
vncviewer save migrate restore migrate-receive suspend resume dump-core cd-insert cd-eject
mem-max mem-set button-press vcpu-list vcpu-pin vcpu-set vm-list info sharing sched-credit
sched-credit2 sched-rtds domid domname rename trigger sysrq debug-keys set-parameters dmesg
top network-attach network-list network-detach channel-list block-attach block-list
block-detach vtpm-attach vtpm-list vtpm-detach vkb-attach vkb-list vkb-detach vdispl-attach
vdispl-list vdispl-detach vsnd-attach vsnd-list vsnd-detach uptime claims cpupool-create
cpupool-list cpupool-destroy cpupool-rename cpupool-cpu-add cpupool-cpu-remove
cpupool-migrate cpupool-numa-split getenforce setenforce loadpolicy remus devd psr-hwinfo
psr-cmt-attach psr-cmt-detach psr-cmt-show psr-cat-set psr-cat-show psr-mba-set
psr-mba-show usbctrl-attach usbctrl-detach usbdev-attach usbdev-detach usb-list
qemu-monitor-command dt-overlay xenstore-quota-get xenstore-quota-set
""".split()  # noqa: SIM905 - one word per verb, as xl_cmdtable.c reads


def readme_rows() -> dict[str, str]:
    """verb -> its status cell, from the table under "### xl's verbs" (a `prefix-*` name
    stands for every xl verb it matches)."""
    text = README.read_text()
    section = text.split("### xl's verbs", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 2:
            continue
        status = cells[1].rstrip(" |")
        for name in re.findall(r"`([a-z0-9-]+\*?)`", cells[0]):
            matches = [v for v in XL_CMDTABLE if v.startswith(name[:-1])] if name.endswith("*") else [name]
            assert matches, f"README row {name!r} matches no xl verb"
            for verb in matches:
                assert verb not in rows, f"{verb} has two README rows"
                rows[verb] = status
    return rows


def test_xl_cmdtable_has_no_duplicates() -> None:
    assert len(XL_CMDTABLE) == len(set(XL_CMDTABLE)) == 97


def test_every_xl_verb_has_a_readme_row_and_nothing_else_does() -> None:
    rows = readme_rows()
    assert sorted(set(XL_CMDTABLE) - set(rows)) == []
    assert sorted(set(rows) - set(XL_CMDTABLE)) == []


@pytest.mark.parametrize("verb", XL_CMDTABLE)
def test_readme_status_is_what_the_cli_does(verb: str) -> None:
    status = readme_rows()[verb]
    taken = {v.name for v in cli.VERBS}
    if status.startswith("yes"):
        assert verb in taken and verb not in cli.UNAVAILABLE, verb
    else:
        # "n/a: why" or "not yet: why", word for word what the CLI says when refusing it
        assert verb not in taken, verb
        assert status == cli.UNAVAILABLE[verb], (verb, status)
        assert status.startswith(("n/a: ", "not yet: ")), (verb, status)


@pytest.mark.parametrize("verb", sorted(cli.UNAVAILABLE))
def test_an_unavailable_verb_is_refused_by_name(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert verb in XL_CMDTABLE
    assert cli.main([verb, "1"]) == 1
    err = capsys.readouterr().err
    assert err == f"xenopus: {verb}: {cli.UNAVAILABLE[verb]}\n"


def test_help_lists_the_verbs_in_xls_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """xl.c help(): a header, then " %-19s " and the description per verb."""
    assert cli.main(["help"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["Usage xl [-vfNtT] <subcommand> [args]", "",
                       "xl full list of subcommands:", ""]
    listed = [line[1:20].rstrip() for line in out[4:] if line[1:2] != " "]
    assert listed == [v.name for v in cli.VERBS if v.name != "help"]
    assert out[4] == f" {'create':<19} {cli.VERBS[0].help}"
    assert cli.main(["help", "pci-list"]) == 0
    assert capsys.readouterr().out == f'command "pci-list": {cli.UNAVAILABLE["pci-list"]}\n'
    assert cli.main(["help", "frobnicate"]) == 0
    assert capsys.readouterr().out == 'command "frobnicate" not implemented\n'


def test_no_verb_lists_them_and_fails_as_xl_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 1
    assert capsys.readouterr().out.startswith("Usage xl [-vfNtT] <subcommand> [args]\n")


def test_xls_logging_options_before_the_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-vv", "-t", "help"]) == 0
    assert capsys.readouterr().out.startswith("Usage xl")
    assert cli.main(["-N", "list"]) == 1
    assert "global option -N is not supported" in capsys.readouterr().err


# The short options of each verb we take, from its SWITCH_FOREACH_OPT in Xen's tools/xl/*.c
# (the same tree as XL_CMDTABLE; 'h' is every verb's help); shutdown and reboot share
# main_shutdown_or_reboot's "awF".
XL_OPTIONS = {
    "block-detach": "f", "console": "ent", "cpupool-list": "c", "create": "AFVcdefinpq",
    "destroy": "f", "dmesg": "c", "info": "nx", "list": "Zchlnv", "migrate": "CDFeps",
    "migrate-receive": "Fdepr", "restore": "AFVcdep", "save": "Dcp",
    "sched-credit": "cdmprstw", "sched-credit2": "cdprsw", "uptime": "s", "vcpu-pin": "fi",
    "vcpu-set": "i", "shutdown": "awF", "reboot": "awF", "config-update": "dqf",
}


@pytest.mark.parametrize("verb", sorted(XL_OPTIONS))
def test_xls_options_we_do_not_take_are_named_in_the_readme(verb: str) -> None:
    (ours,) = [v for v in cli.VERBS if v.name == verb]
    taken = {name[1] for o in ours.opts for name in o.names if len(name) == 2}
    missing = sorted(set(XL_OPTIONS[verb]) - taken - {"h"})
    row = readme_rows()[verb]
    unnamed = [c for c in missing if not re.search(rf"-{c}\b", row)]
    assert not unnamed, f"{verb}: xl's -{', -'.join(unnamed)} neither taken nor named: {row}"
