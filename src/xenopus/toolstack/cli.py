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

from xenopus import host, ipc

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


# Seconds the daemon gets to report ready. A daemon that dies closes the pipe at once; only
# a slow start (an emulated host runs Python 10-20 times slower) waits this long.
DAEMON_START_TIMEOUT = 60.0


def start_daemon(timeout: float = DAEMON_START_TIMEOUT) -> None:
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


def request(msg: dict[str, object]) -> dict[str, object]:
    chan = connect()
    try:
        reply = chan.request(msg)
    finally:
        chan.close()
    if not reply.get("ok"):
        raise CliError(reply.get("error", "request failed"))
    return reply


# -- console --------------------------------------------------------------------------------
def open_console(dom: str, kind: str | None = None) -> socket.socket:
    reply = request({"op": "console", "dom": dom, "type": kind})
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
        reply = chan.request({
            "op": "create", "path": args.config, "overrides": args.overrides,
            "cwd": os.getcwd(), "wait": args.foreground, "paused": args.paused,
            "attach": args.console,
        })
        for warning in reply.get("warnings", []):
            print(warning, file=sys.stderr)
        if not reply.get("ok"):
            raise CliError(str(reply.get("error")))
        if args.console:
            try:
                sock = connect_console(reply["console"], reply["domid"])
            finally:
                chan.send({"op": "unpause"})  # attached (or not): let the domain run
            if not args.foreground:
                chan.recv()
            with sock:
                pump_console(sock)
        if not args.foreground:
            return 0
        final = chan.recv()
    finally:
        chan.close()
    if final is None:
        raise CliError("lost the connection to the daemon")
    if final.get("reason") == "crash":
        print(f"Domain {final['domid']} crashed: {final.get('detail', '')}", file=sys.stderr)
        return 1
    return 0 if final.get("status") in (0, None) else 1


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

    domains = request({"op": "list"})["domains"]
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
        print(xlformat.list_row("Domain-0", 0, host.memory_mib(), os.cpu_count() or 1,
                                xlformat.DomainState(running=True), host.busy_cpu_seconds()))
    for d in domains:
        print(xlformat.list_row(d["name"], d["domid"], d["memory"], d["vcpus"],
                                state_flags(d), d["cpu_time"]))
    return 0


def cmd_console(args: Namespace) -> int:
    attach_console(args.dom, args.type)
    return 0


def simple_verb(op: str):
    def run(args: Namespace) -> int:
        request({"op": op, "dom": args.dom})
        return 0

    return run


def cmd_dmesg(args: Namespace) -> int:
    for line in request({"op": "dmesg", "clear": args.clear})["lines"]:
        print(line)
    return 0


def cmd_shutdown(args: Namespace) -> int:
    """Press the domain's ACPI power button; with -w, wait until the domain is gone."""
    request({"op": "shutdown", "dom": args.dom, "wait": args.wait})
    return 0


def cmd_devices(kind: str, header: str, row: str):
    """block-list / network-list: the domain's virtio devices of one kind."""

    def run(args: Namespace) -> int:
        print(header)
        for dom in args.doms:
            for d in request({"op": "devices", "dom": dom})["devices"]:
                if d["kind"] == kind:
                    bdf = f"00:{d['bdf'] >> 3:02x}.{d['bdf'] & 7}"
                    print(row.format(**{**d, "pci": bdf}))
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
    from xenopus.toolstack import cpulist, xlformat

    others = [d for d in args.domains if d not in DOM0]
    show_dom0 = not args.domains or len(others) < len(args.domains)
    domains = request({"op": "vcpu-list", "doms": others})["domains"] if others or not args.domains else []
    nr_cpus = max(cpulist.host_cpus()) + 1
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
    from xenopus.toolstack import cpulist

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
    request({"op": "vcpu-pin", "dom": args.dom, "vcpu": vcpu, "cpus": sorted(cpus)})
    return 0


def cmd_daemon(args: Namespace) -> int:
    if args.stop:
        try:
            chan = connect(autostart=False)
        except CliError:
            return 0  # nothing to stop
        chan.request({"op": "stop"})
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
# One table describes every verb. A well-formed command line is parsed straight from it;
# argparse (built from the same table) is imported only for --help and for errors, since
# importing it costs every command several milliseconds (measured by benchmarks/startup).
# (namedtuples, not dataclasses: importing dataclasses costs the CLI ~5 ms of inspect)
Opt = namedtuple("Opt", "names dest help takes choices default", defaults=(None, None, None))
Opt.__doc__ = """An option: a flag if `takes` is None, else its value's type; `help` None hides it."""
Pos = namedtuple("Pos", "dest metavar nargs help", defaults=(None, None))
Pos.__doc__ = """A positional: `nargs` None (exactly one), "?", "*" or "+"."""
Verb = namedtuple("Verb", "name help func opts pos", defaults=((), ()))


def _dom(dest: str = "dom") -> Pos:
    return Pos(dest, "DOM")


# xl prints Xen backend state (event channels, ring refs) in block-/network-list; a virtio
# device's equivalents are its PCI address and host backend.
BLOCK_LIST = ("Vdev  Idx PCI     Mode Target", "{vdev:<5} {index:<3} {pci:<7} {mode:<4} {target}")
NETWORK_LIST = (
    "Idx Mac Addr.         PCI     Tap             Bridge",
    "{index:<3} {mac:<17} {pci:<7} {tap:<15} {bridge}",
)

VERBS = (
    Verb("create", "create a domain from an xl.cfg file", cmd_create, (
        Opt(("-c",), "console", "attach the console after creating"),
        Opt(("-F",), "foreground", "stay in the foreground until the domain dies"),
        Opt(("-p",), "paused", "leave the domain paused after creating it"),
        Opt(("-q",), "quiet", "quiet"),
    ), (Pos("config", "CFG"), Pos("overrides", "KEY=VALUE", "*"))),
    Verb("list", "list domains", cmd_list,
         (Opt(("-l", "--long"), "long", "JSON with each domain's configuration"),),
         (Pos("domains", "DOM", "*"),)),
    Verb("console", "attach to a domain's console (Ctrl-] detaches)", cmd_console,
         (Opt(("-t",), "type", "serial (COM1), pv (Xen PV console) or virtio; default: pv for"
              " Xen-aware guests, else serial", str, ("serial", "virtio", "pv"), None),),
         (_dom(),)),
    Verb("dmesg", "print the host log: guests' console_io and port-0xE9 lines", cmd_dmesg,
         (Opt(("-c",), "clear", "clear the log after printing it"),)),
    Verb("destroy", "destroy a domain immediately", simple_verb("destroy"), (), (_dom(),)),
    Verb("pause", "pause all vCPUs of a domain", simple_verb("pause"), (), (_dom(),)),
    Verb("unpause", "resume a paused domain", simple_verb("unpause"), (), (_dom(),)),
    Verb("reboot", "reset a domain (on_reboot applies)", simple_verb("reboot"), (), (_dom(),)),
    Verb("shutdown", "ask a domain to shut down (ACPI power button)", cmd_shutdown,
         (Opt(("-w",), "wait", "wait for the domain to go away"),), (_dom(),)),
    Verb("block-list", "list a domain's virtio disks", cmd_devices("disk", *BLOCK_LIST), (),
         (Pos("doms", "DOM", "+"),)),
    Verb("network-list", "list a domain's virtio network interfaces",
         cmd_devices("nic", *NETWORK_LIST), (), (Pos("doms", "DOM", "+"),)),
    Verb("vcpu-list", "list the vCPUs of domains (all when none is named)", cmd_vcpu_list, (),
         (Pos("domains", "DOM", "*"),)),
    Verb("vcpu-pin", "set the host CPUs a vCPU may run on", cmd_vcpu_pin,
         (Opt(("-f", "--force"), "force", "accepted for xl compatibility"),),
         (_dom(), Pos("vcpu", "VCPU", None, "a vCPU number or 'all'"),
          Pos("hard", "CPUS", None, "xl CPU list: all, 0-3,5, ^1, nodes:0 ('-': keep)"),
          Pos("soft", "SOFT", "?", "soft affinity: only 'all' or '-'"))),
    Verb("daemon", "run the host daemon in the foreground", cmd_daemon, (
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
    ns = Namespace(func=verb.func)
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
        v.set_defaults(func=verb.func)
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
