"""The toolstack's side of the PV control protocol (docs/misc/xenstore-paths.pandoc
~/control/shutdown, ~/control/sysrq; libxl_domain.c libxl__domain_pvcontrol and
pvcontrol_acked, libxl.c libxl_send_sysrq), with a domain connection playing the guest;
and the command lines of the lifecycle verbs (xl_cmdtable.c)."""

from __future__ import annotations

import asyncio

import pytest

from xenopus.domain.config import DomainConfig
from xenopus.toolstack.cli import fast_parse, parser
from xenopus.toolstack.xenstored import PvControlTimeout, XenStored

DOMID = 4


@pytest.fixture
def xs() -> XenStored:
    x = XenStored()
    x.write_domain(DOMID, "guest", DomainConfig(name="guest", kernel="/k"),
                   "13a1cf29-2421-4f41-8005-b537fb6e4024", 1700000000.0)
    x.store.introduce(x.dom0, DOMID)
    return x


def guest_conn(x: XenStored, on_event=lambda path, token: None):
    return x.store.connect(DOMID, on_event)


def test_available_only_where_the_guest_advertises_the_feature(xs):
    g = guest_conn(xs)
    assert not xs.pvcontrol_available(DOMID, "poweroff")  # libxl's empty placeholder
    xs.store.write(g, "control/feature-poweroff", b"1")  # the guest's own node (rwperm)
    assert xs.pvcontrol_available(DOMID, "poweroff")
    assert not xs.pvcontrol_available(DOMID, "reboot")


def test_request_is_written_and_waits_for_the_guests_acknowledgement(xs):
    node = f"/local/domain/{DOMID}/control/shutdown"
    seen: list[bytes] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        g = None

        def on_event(path: str, token: str) -> None:
            # manage.c shutdown_handler: read the request, acknowledge with "" (later, as
            # a guest would, not inside the toolstack's write)
            value = xs.store.read(g, "control/shutdown")
            if value:
                seen.append(value)
                loop.call_soon(xs.store.write, g, "control/shutdown", b"")

        g = guest_conn(xs, on_event)
        xs.store.watch(g, "control/shutdown", "t")
        await asyncio.wait_for(xs.pvcontrol(DOMID, "reboot", timeout=5), 10)

    asyncio.run(run())
    assert seen == [b"reboot"]
    assert xs.store.read(xs.dom0, node) == b""


def test_unacknowledged_request_times_out(xs):
    with pytest.raises(PvControlTimeout, match="didn't acknowledge"):
        asyncio.run(xs.pvcontrol(DOMID, "poweroff", timeout=0.2))
    # the request stays for the guest to find, as libxl leaves it
    assert xs.store.read(xs.dom0, f"/local/domain/{DOMID}/control/shutdown") == b"poweroff"


def test_sysrq_lands_in_control_sysrq_which_the_guest_may_clear(xs):
    xs.sysrq(DOMID, "s")
    g = guest_conn(xs)
    assert xs.store.read(g, "control/sysrq") == b"s"
    xs.store.write(g, "control/sysrq", b"")  # rwperm: the guest acknowledges


def test_lifecycle_command_lines():
    a = fast_parse(["shutdown", "-a", "-ww", "-F"])
    assert (a.all, a.wait, a.fallback, a.dom) == (True, 2, True, None)
    a = fast_parse(["reboot", "web", "-w"])
    assert (a.all, a.wait, a.fallback, a.dom, a.op) == (False, 1, False, "web", "reboot")
    a = fast_parse(["trigger", "web", "nmi", "1"])
    assert (a.dom, a.trigger, a.vcpu, a.op) == ("web", "nmi", "1", "trigger")
    a = fast_parse(["button-press", "web", "power"])
    assert (a.button, a.op) == ("power", "trigger")
    a = fast_parse(["sysrq", "web", "s"])
    assert (a.dom, a.key) == ("web", "s")
    # argparse, built from the same table, counts -w the same way
    assert parser().parse_args(["shutdown", "-w", "-w", "web"]).wait == 2


def test_console_options_as_xl_and_xenconsole_take_them(capsys):
    """xl_console.c main_console and xenconsole's --escape (tools/console/client/main.c);
    each refusal comes before any daemon is asked."""
    from xenopus.toolstack import cli

    a = fast_parse(["console", "-t", "pv", "-n", "0", "-e", "^a", "web"])
    assert (a.type, a.num, a.escape, a.dom) == ("pv", 0, "^a", "web")
    assert fast_parse(["console", "web"]).num == 0
    assert cli.escape_character("^a") == 1 and cli.escape_character("^]") == 0x1D
    assert cli.escape_character("q") == ord("q")
    for args, message in (
        (["-t", "vga", "web"], "console type supported are: pv, serial, vuart"),
        (["-t", "vuart", "web"], "no virtual UART here"),
        (["-t", "pv", "-n", "1", "web"], "domain web has no pv console 1 (only 0)"),
        (["-t", "serial", "-n", "2", "web"], "domain web has no serial console 2"),
        (["-e", "^ab", "web"], "Invalid escape argument"),
        (["Domain-0"], "Can't specify Domain-0"),
    ):
        assert cli.main(["console", *args]) == 1
        assert message in capsys.readouterr().err
