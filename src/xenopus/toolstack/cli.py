"""The `xenopus` command: xl's verbs, syntax and output formats.

Kept light on imports: every invocation pays for them, and `create -F` is benchmarked
against QEMU's start-up. The daemon is started on demand the first time a verb needs it.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from collections import namedtuple
from types import SimpleNamespace as Namespace
from typing import Any

from xenopus import host, ipc
from xenopus.control import ProtocolError, Reply, Request

DETACH = 0x1D  # Ctrl-], as for xl console and telnet


class CliError(Exception):
    pass


# -- talking to the daemon ------------------------------------------------------------------
def connect(autostart: bool = True) -> ipc.Channel:
    path = ipc.daemon_socket_path()
    try:
        return ipc.Channel.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        if not autostart:
            raise CliError(f"no xenopus daemon is running (socket {path})") from None
    start_daemon()
    return ipc.Channel.connect(path)


def start_daemon(timeout: float = 15.0) -> None:
    import subprocess

    base = ipc.run_dir()
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create the run directory {base}: {e.strerror}") from None
    logfile = os.path.join(base, "xenopus.log")
    r, w = os.pipe()
    with open(logfile, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "xenopus", "daemon", "--background", f"--ready-fd={w}"],
            pass_fds=[w],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    answer = os.read(r, 64) if ready else b""
    os.close(r)
    if answer != b"ready\n":
        raise CliError(f"the xenopus daemon did not start; see {logfile}")


def ask(chan: ipc.Channel, req: Request) -> Reply:
    return daemon_reply(chan.request(req.to_wire()))


def next_reply(chan: ipc.Channel) -> Reply | None:
    """A further reply to the request in flight (create -c, -F); None if the daemon went."""
    msg = chan.recv()
    return None if msg is None else daemon_reply(msg)


def daemon_reply(msg: dict[str, object]) -> Reply:
    try:
        return Reply.from_wire(msg)
    except ProtocolError as e:
        raise CliError(f"the daemon sent a malformed reply: {e}") from None


def request(op: str, **args: Any) -> dict[str, Any]:
    """One request on a connection of its own; the reply's data, or CliError."""
    chan = connect()
    try:
        reply = ask(chan, Request(op, args))
    finally:
        chan.close()
    if not reply.ok:
        raise CliError(reply.error or "request failed")
    return dict(reply.data)


# -- console --------------------------------------------------------------------------------
def open_console(dom: str, kind: str | None = None) -> socket.socket:
    reply = request("console", dom=dom, type=kind)
    return connect_console(reply["path"], dom)


def connect_console(path: str, dom: object) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise CliError(f"cannot attach to the console of domain {dom}: {e.strerror}") from None
    return sock


def attach_console(dom: str, kind: str | None = None) -> None:
    with open_console(dom, kind) as sock:
        pump_console(sock)


def pump_console(sock: socket.socket) -> None:
    """Copy the console to stdout and stdin to the console until the domain goes away.

    On a terminal, stdin is put in raw mode and Ctrl-] detaches; otherwise stdin is
    forwarded until its end and the output streams until the domain dies.
    """
    out = sys.stdout.buffer
    try:
        stdin_fd: int | None = sys.stdin.fileno()
        os.fstat(stdin_fd)
    except (OSError, ValueError, AttributeError):
        stdin_fd = None
    tty = stdin_fd is not None and os.isatty(stdin_fd)
    saved = None
    if tty:
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(stdin_fd)
        ttymod.setraw(stdin_fd)
    try:
        while True:
            fds = [sock] + ([stdin_fd] if stdin_fd is not None else [])
            readable, _, _ = select.select(fds, [], [])
            if sock in readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return
                out.write(data)
                out.flush()
            if stdin_fd is not None and stdin_fd in readable:
                try:
                    data = os.read(stdin_fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    stdin_fd = None
                    continue
                if tty and DETACH in data:
                    data = data[: data.index(DETACH)]
                    if data:
                        sock.sendall(data)
                    return
                sock.sendall(data)
    except BrokenPipeError:
        return
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


# -- verbs ----------------------------------------------------------------------------------
def cmd_create(args: Namespace) -> int:
    if not args.quiet:
        print(f"Parsing config from {args.config}", file=sys.stderr)
    chan = connect()
    try:
        # The daemon parses the file (it has the parser loaded; the CLI stays small and
        # fast). With -c the domain is created paused, the console attached, then the
        # domain unpaused, so not a byte of output is missed (as xl create -c does).
        reply = ask(chan, Request(args.op, {
            "path": args.config, "overrides": args.overrides, "cwd": os.getcwd(),
            "wait": args.foreground, "paused": args.paused, "attach": args.console,
        }))
        for warning in reply.data.get("warnings", []):
            print(warning, file=sys.stderr)
        if not reply.ok:
            raise CliError(str(reply.error))
        if args.console:
            try:
                sock = connect_console(reply.data["console"], reply.data["domid"])
            finally:
                chan.send(Request("unpause").to_wire())  # attached (or not): let the domain run
            if not args.foreground:
                next_reply(chan)
            with sock:
                pump_console(sock)
        if not args.foreground:
            return 0
        final = next_reply(chan)
    finally:
        chan.close()
    if final is None:
        raise CliError("lost the connection to the daemon")
    end = final.data
    if end.get("reason") == "crash":
        print(f"Domain {end['domid']} crashed: {end.get('detail', '')}", file=sys.stderr)
        return 1
    return 0 if end.get("status") in (0, None) else 1


def state_flags(entry: dict[str, object]):
    """The daemon's domain state as xl's six flags (libxl_dominfo)."""
    from xenopus.toolstack.xlformat import DomainState

    state, reason = entry["state"], entry.get("reason")
    if state == "crashed":
        return DomainState(shutdown=True, crashed=True, reason="crash")
    if state == "shutdown":
        return DomainState(shutdown=True, reason=reason)
    return DomainState(running=state == "running", paused=state == "paused", dying=state == "dying")


def cmd_list(args: Namespace) -> int:
    from xenopus.toolstack import xlformat

    domains = request(args.op)["domains"]
    if args.domains:
        wanted = set(args.domains)
        missing = wanted - {str(d["domid"]) for d in domains} - {d["name"] for d in domains} - set(DOM0)
        if missing:
            raise CliError(f"domain '{sorted(missing)[0]}' does not exist")
        domains = [d for d in domains if str(d["domid"]) in wanted or d["name"] in wanted]
        show_dom0 = bool(wanted.intersection(DOM0))
    else:
        show_dom0 = True
    if args.long:
        print(xlformat.list_long(domains))
        return 0
    print(xlformat.list_header())
    if show_dom0:
        print(xlformat.list_row("Domain-0", 0, host.memory_mib(), len(host.host_cpus()),
                                xlformat.DomainState(running=True), host.busy_cpu_seconds()))
    for d in domains:
        print(xlformat.list_row(d["name"], d["domid"], d["memory"], d["vcpus"],
                                state_flags(d), d["cpu_time"]))
    return 0


def cmd_console(args: Namespace) -> int:
    attach_console(args.dom, args.type)
    return 0


def cmd_domain_op(args: Namespace) -> int:
    """A verb whose whole CLI step is to send its op for one domain (pause, reboot, ...)."""
    request(args.op, dom=args.dom)
    return 0


def cmd_dmesg(args: Namespace) -> int:
    for line in request(args.op, clear=args.clear)["lines"]:
        print(line)
    return 0


def cmd_shutdown(args: Namespace) -> int:
    """Press the domain's ACPI power button; with -w, wait until the domain is gone."""
    request(args.op, dom=args.dom, wait=args.wait)
    return 0


def cmd_devices(kind: str):
    """block-list / network-list: the domain's devices of one kind, virtio and Xen PV."""

    def run(args: Namespace) -> int:
        from xenopus.toolstack import xlformat

        found = [d for dom in args.doms for d in request(args.op, dom=dom)["devices"]
                 if d["kind"] == kind]
        listing = xlformat.block_list if kind == "disk" else xlformat.network_list
        print("\n".join(listing(found)))
        return 0

    return run


DOM0 = ("0", "Domain-0")


def host_cpu_rows(nr_cpus: int) -> list[str]:
    """Domain-0's `xl vcpu-list` rows: the host is Domain-0 here, one "vCPU" per host CPU.
    CPU and Time(s) (the CPU's non-idle time in /proc/stat) are exact; the state is an
    approximation: "r" for the CPU this command runs on, "b" for the others; affinity is
    "all / all", as for an unpinned Xen dom0."""
    from xenopus.toolstack import xlformat

    try:  # proc(5) /proc/PID/stat field 39: the CPU this process last ran on
        with open("/proc/self/stat") as f:
            here = int(f.read().rsplit(")", 1)[1].split()[39 - 3])
    except (OSError, ValueError, IndexError):
        here = -1
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    for line in lines:
        name, *ticks = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        # user nice system idle iowait irq softirq steal (proc(5)): all but idle and iowait
        busy = sum(int(v) for i, v in enumerate(ticks[:8]) if i not in (3, 4)) / hz
        rows.append(xlformat.vcpu_list_row(
            "Domain-0", 0, cpu, cpu, running=cpu == here, blocked=cpu != here,
            cpu_time=busy, nr_cpus=nr_cpus))
    return rows


def cmd_vcpu_list(args: Namespace) -> int:
    from xenopus.toolstack import xlformat

    others = [d for d in args.domains if d not in DOM0]
    show_dom0 = not args.domains or len(others) < len(args.domains)
    domains = request(args.op, doms=others)["domains"] if others or not args.domains else []
    nr_cpus = max(host.host_cpus()) + 1
    print(xlformat.vcpu_list_header())
    if show_dom0:
        print("\n".join(host_cpu_rows(nr_cpus)))
    for d in domains:
        paused = d["state"] == "paused"  # a paused vCPU is neither running nor blocked
        for v in d["vcpus"]:
            online = v["online"] and v["cpu"] is not None
            print(xlformat.vcpu_list_row(
                d["name"], d["domid"], v["vcpu"], v["cpu"] if online else None,
                running=not paused and v["state"] == "running",
                blocked=not paused and v["state"] == "blocked",
                cpu_time=v["cpu_time"], hard=v["affinity"], soft="all", nr_cpus=nr_cpus))
    return 0


def cmd_vcpu_pin(args: Namespace) -> int:
    from xenopus.domain import cpulist

    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: pin its processes with taskset(1)")
    if args.vcpu != "all" and not args.vcpu.isdigit():
        raise CliError(f"invalid vCPU {args.vcpu!r}: a number or 'all'")
    if args.soft not in (None, "-", "all"):
        # Linux schedules threads with one (hard) affinity mask; there is nothing to set.
        raise CliError("soft affinity is not supported on KVM: give 'all' or '-' (or leave it out)")
    if args.hard == "-":
        return 0  # xl: leave the hard affinity alone
    try:
        cpus = cpulist.parse_cpus(args.hard)
    except ValueError as e:
        raise CliError(str(e)) from None
    if not cpus:
        raise CliError(f"'{args.hard}' selects no CPU")
    vcpu: int | str = "all" if args.vcpu == "all" else int(args.vcpu)
    request(args.op, dom=args.dom, vcpu=vcpu, cpus=sorted(cpus))
    return 0


def cmd_save(args: Namespace) -> int:
    from xenopus.toolstack import transfer

    return transfer.save(args)


def cmd_restore(args: Namespace) -> int:
    from xenopus.toolstack import transfer

    return transfer.restore(args)


def cmd_migrate(args: Namespace) -> int:
    from xenopus.toolstack import transfer

    return transfer.migrate(args)


def cmd_migrate_receive(args: Namespace) -> int:
    from xenopus.toolstack import transfer

    return transfer.migrate_receive(args)


def cmd_daemon(args: Namespace) -> int:
    if args.stop:
        try:
            chan = connect(autostart=False)
        except CliError:
            return 0  # nothing to stop
        ask(chan, Request(args.op))
        while chan.recv() is not None:  # the daemon closes us when it has gone
            pass
        chan.close()
        return 0
    from pathlib import Path

    from xenopus.toolstack import daemon

    base = Path(ipc.run_dir())
    log_file = base / "xenopus.log" if args.background else None
    return daemon.run(base, ready_fd=args.ready_fd, log_file=log_file)


# -- the command line ----------------------------------------------------------------------
# One table describes every verb: its xl grammar, the request it sends and its CLI step.
# The request's op names the daemon step that answers it (`daemon_step` in
# toolstack/daemon.py) or, when the daemon has none, the domain step its domain's process
# answers (`domain_step` in domain/process.py), which the daemon forwards unchanged.
# A well-formed command line is parsed straight from the table; argparse (built from the
# same table) is imported only for --help and for errors, since importing it costs every
# command several milliseconds (measured by benchmarks/startup).
# (namedtuples, not dataclasses: importing dataclasses costs the CLI ~5 ms of inspect)
Opt = namedtuple("Opt", "names dest help takes choices default", defaults=(None, None, None))
Opt.__doc__ = """An option: a flag if `takes` is None, else its value's type; `help` None hides it."""
Pos = namedtuple("Pos", "dest metavar nargs help", defaults=(None, None))
Pos.__doc__ = """A positional: `nargs` None (exactly one), "?", "*" or "+"."""
Verb = namedtuple("Verb", "name help op func opts pos", defaults=((), ()))
Verb.__doc__ = """A verb: `func(args)` is its CLI step, `args.op` the request it sends."""


def _dom(dest: str = "dom") -> Pos:
    return Pos(dest, "DOM")


VERBS = (
    Verb("create", "create a domain from an xl.cfg file", "create", cmd_create, (
        Opt(("-c",), "console", "attach the console after creating"),
        Opt(("-F",), "foreground", "stay in the foreground until the domain dies"),
        Opt(("-p",), "paused", "leave the domain paused after creating it"),
        Opt(("-q",), "quiet", "quiet"),
    ), (Pos("config", "CFG"), Pos("overrides", "KEY=VALUE", "*"))),
    Verb("list", "list domains", "list", cmd_list,
         (Opt(("-l", "--long"), "long", "JSON with each domain's configuration"),),
         (Pos("domains", "DOM", "*"),)),
    Verb("console", "attach to a domain's console (Ctrl-] detaches)", "console", cmd_console,
         (Opt(("-t",), "type", "serial (COM1), pv (Xen PV console) or virtio; default: pv for"
              " Xen-aware guests, else serial", str, ("serial", "virtio", "pv"), None),),
         (_dom(),)),
    Verb("dmesg", "print the host log: guests' console_io and port-0xE9 lines", "dmesg",
         cmd_dmesg, (Opt(("-c",), "clear", "clear the log after printing it"),)),
    Verb("destroy", "destroy a domain immediately", "destroy", cmd_domain_op, (), (_dom(),)),
    Verb("pause", "pause all vCPUs of a domain", "pause", cmd_domain_op, (), (_dom(),)),
    Verb("unpause", "resume a paused domain", "unpause", cmd_domain_op, (), (_dom(),)),
    Verb("reboot", "reset a domain (on_reboot applies)", "reboot", cmd_domain_op, (), (_dom(),)),
    Verb("shutdown", "ask a domain to shut down (ACPI power button)", "shutdown", cmd_shutdown,
         (Opt(("-w",), "wait", "wait for the domain to go away"),), (_dom(),)),
    Verb("block-list", "list a domain's disks", "devices", cmd_devices("disk"), (),
         (Pos("doms", "DOM", "+"),)),
    Verb("network-list", "list a domain's network interfaces", "devices",
         cmd_devices("nic"), (), (Pos("doms", "DOM", "+"),)),
    Verb("vcpu-list", "list the vCPUs of domains (all when none is named)", "vcpu-list",
         cmd_vcpu_list, (), (Pos("domains", "DOM", "*"),)),
    Verb("vcpu-pin", "set the host CPUs a vCPU may run on", "vcpu-pin", cmd_vcpu_pin,
         (Opt(("-f", "--force"), "force", "accepted for xl compatibility"),),
         (_dom(), Pos("vcpu", "VCPU", None, "a vCPU number or 'all'"),
          Pos("hard", "CPUS", None, "xl CPU list: all, 0-3,5, ^1, nodes:0 ('-': keep)"),
          Pos("soft", "SOFT", "?", "soft affinity: only 'all' or '-'"))),
    # -- save, restore, migrate (docs/snapshot-stream.md) --
    Verb("save", "save a domain's state to a file (then destroy it, unless -c or -p)", "save",
         cmd_save, (
             Opt(("-c",), "checkpoint", "leave the domain running after saving it"),
             Opt(("-p",), "paused", "leave the domain paused after saving it"),
         ), (_dom(), Pos("file", "FILE"),
             Pos("config", "CFG", "?", "store this config in the image instead of the domain's"))),
    Verb("restore", "build a domain from a file `save` wrote", "restore", cmd_restore, (
        Opt(("-p",), "paused", "leave the restored domain paused"),
        Opt(("-e",), "no_wait", "accepted for xl compatibility (the daemon always watches)"),
        Opt(("-d",), "debug", "report what was restored"),
    ), (Pos("paths", "[CFG] FILE", "+", "a config to build from instead of the image's, "
            "and the image"),)),
    Verb("migrate", "move a domain to another host (over `SSHCMD HOST xenopus migrate-receive`)",
         "save", cmd_migrate, (
             Opt(("-s",), "ssh", "the command that reaches HOST (default: ssh)", str),
             Opt(("-e",), "no_wait", "accepted for xl compatibility (the daemon always watches)"),
             Opt(("-C",), "config", "send this config instead of the domain's", str),
             Opt(("--debug",), "debug", "report what was sent"),
         ), (_dom(), Pos("host", "HOST"))),
    Verb("migrate-receive", "receive a migrating domain on stdin (run by migrate)", "restore",
         cmd_migrate_receive, (
             Opt(("-e",), "no_wait", "accepted for xl compatibility"),
             Opt(("-d",), "debug", "report what was received"),
         )),
    # -- end of save, restore, migrate --
    Verb("daemon", "run the host daemon in the foreground", "stop", cmd_daemon, (
        Opt(("--stop",), "stop", "stop a running daemon and its domains"),
        Opt(("--background",), "background", None),
        Opt(("--ready-fd",), "ready_fd", None, int),
    )),
)


def fast_parse(argv: list[str]) -> Namespace | None:
    """Parse a well-formed command line from VERBS; None means "let argparse explain"."""
    verb = next((v for v in VERBS if argv and v.name == argv[0]), None)
    if verb is None:
        return None
    ns = Namespace(func=verb.func, op=verb.op)
    for o in verb.opts:
        setattr(ns, o.dest, False if o.takes is None else o.default)
    by_name = {n: o for o in verb.opts for n in o.names}
    words = argv[1:]
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        name, eq, value = word.partition("=")
        # Short flags may be bundled (-cF); anything else goes word by word.
        names = [f"-{c}" for c in word[1:]] if not word.startswith("--") and not eq else [name]
        for n in names:
            o = by_name.get(n)
            if o is None:
                return None
            if o.takes is None:
                if eq:
                    return None
                setattr(ns, o.dest, True)
                continue
            if not eq:
                if len(names) > 1 or not words:
                    return None
                value = words.pop(0)
            try:
                v = o.takes(value)
            except ValueError:
                return None
            if o.choices and v not in o.choices:
                return None
            setattr(ns, o.dest, v)
    for p in verb.pos:
        if p.nargs in ("*", "+"):
            if any(w.startswith("-") and w != "-" for w in words) or (p.nargs == "+" and not words):
                return None
            setattr(ns, p.dest, words)
            words = []
        elif words:
            setattr(ns, p.dest, words.pop(0))
        elif p.nargs == "?":
            setattr(ns, p.dest, None)
        else:
            return None
    return None if words else ns


def parser():
    """The argparse version of VERBS, for help text and error messages."""
    import argparse

    p = argparse.ArgumentParser(prog="xenopus", description="A Xen-style hypervisor on KVM (xl-compatible verbs).")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        v = sub.add_parser(verb.name, help=verb.help)
        for o in verb.opts:
            text = argparse.SUPPRESS if o.help is None else o.help
            if o.takes is None:
                v.add_argument(*o.names, dest=o.dest, action="store_true", help=text)
            else:
                v.add_argument(*o.names, dest=o.dest, type=o.takes, choices=o.choices,
                               default=o.default, help=text)
        for pos in verb.pos:
            v.add_argument(pos.dest, metavar=pos.metavar, nargs=pos.nargs, help=pos.help)
        v.set_defaults(func=verb.func, op=verb.op)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = fast_parse(argv) or parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"xenopus: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except PermissionError as e:
        print(f"xenopus: {e.filename or ''}: permission denied (xenopus needs root for {ipc.run_dir()})", file=sys.stderr)
        return 1
