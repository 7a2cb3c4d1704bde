"""The `xl` command (also installed as `xenopus`): xl's verbs, syntax and output formats.

Kept light on imports: every invocation pays for them, and `create -F` is benchmarked
against QEMU's start-up. The daemon is started on demand the first time a verb needs it.
"""

from __future__ import annotations

import os
import select
import sys
from collections import namedtuple
from types import SimpleNamespace as Namespace

from xenopus import host, ipc
from xenopus.client import Connection, NoSuchDomain, XenopusError, connect_console
from xenopus.control import DISK, NIC, Request
from xenopus.trace import mark

# `typing` costs every CLI command milliseconds of imports (with `re`): names for the
# type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import Any, NoReturn

DETACH = 0x1D  # Ctrl-], as for xl console and telnet


class CliError(XenopusError):
    """A command line the CLI itself refuses (the daemon's refusals are XenopusErrors)."""


# -- talking to the daemon ------------------------------------------------------------------
# Through xenopus.client, the transport the Python API uses too.
def connect(autostart: bool = True) -> Connection:
    return Connection(autostart)


def request(op: str, **args: Any) -> dict[str, Any]:
    """One request on a connection of its own; the reply's data, or a XenopusError."""
    with Connection() as conn:
        return conn.request(op, **args)


# -- console --------------------------------------------------------------------------------
def open_console(dom: str, kind: str | None = None) -> _socket.socket:
    reply = request("console", dom=dom, type=kind)
    return connect_console(reply["path"], dom)


def attach_console(dom: str, kind: str | None = None, escape: int = DETACH) -> None:
    sock = open_console(dom, kind)
    try:
        pump_console(sock, escape)
    finally:
        sock.close()


def pump_console(sock: _socket.socket, escape: int = DETACH) -> None:
    """Copy the console to stdout and stdin to the console until the domain goes away.

    On a terminal, stdin is put in raw mode and `escape` (Ctrl-]) detaches; otherwise
    stdin is forwarded until its end and the output streams until the domain dies.
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
                if tty and escape in data:
                    data = data[: data.index(escape)]
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
def config_words(verb: str, config: str | None, words: list[str]) -> tuple[str, list[str]]:
    """xl_vmcontrol.c main_create (and main_config_update): a word with "=" is a
    KEY=VALUE override, the first other one the config file (unless -f named it); a
    second one is an error. The config's path (found in /etc/xen too) and the overrides."""
    from xenopus.toolstack import xlconf

    overrides = []
    for word in words:
        if "=" in word:
            overrides.append(word)
        elif config is None:
            config = word
        else:
            raise CliError(f"{verb}: unexpected argument {word!r} (one config file)")
    if config is None:
        raise CliError(f"{verb}: no config file (xenopus needs at least name and kernel)")
    return xlconf.find_config(config, os.getcwd()), overrides


def xl_conf():
    from xenopus.toolstack import xlconf

    try:
        return xlconf.load()
    except xlconf.XlConfError as e:
        raise CliError(str(e)) from None


def cmd_create(args: Namespace) -> int:
    from xenopus.toolstack import xlconf

    conf = xl_conf()
    config, overrides = config_words("create", args.config_file, list(args.words))
    if not args.quiet:
        print(f"Parsing config from {config}", file=sys.stderr)
    if args.dryrun:
        # xl_vmcontrol.c create_domain: -n prints libxl_domain_config_to_json and stops
        import json

        made = request(args.op, path=config, overrides=overrides, cwd=os.getcwd(),
                       vif_bridge=conf.vif_bridge, dryrun=True)
        for warning in made.get("warnings", []):
            print(warning, file=sys.stderr)
        print(json.dumps(made["libxl"], indent=4))
        return 0
    chan = connect()  # first: a daemon started now makes the run directory
    # xl_vmcontrol.c create_domain takes the lock only when it may balloon dom0
    # (autoballoon); "auto" is off here, as xl makes it when dom0's memory is fixed.
    lock = (lock_creation(xlconf.lock_path(conf, ipc.run_dir(), ipc.DEFAULT_RUN_DIR))
            if conf.autoballoon == "on" else None)
    try:
        # The daemon parses the file (it has the parser loaded; the CLI stays small and
        # fast). With -c the domain is created paused, the console attached, then the
        # domain unpaused, so not a byte of output is missed (as xl create -c does).
        mark("cli: connected")
        try:
            reply = chan.ask(Request(args.op, {
                "path": config, "overrides": overrides, "cwd": os.getcwd(),
                "wait": args.foreground, "paused": args.paused, "attach": args.console,
                "vif_bridge": conf.vif_bridge,
            }))
        finally:
            if lock is not None:
                os.close(lock)  # xl holds it until the domain is made, not while it runs
        mark("cli: created")
        for warning in reply.data.get("warnings", []):
            print(warning, file=sys.stderr)
        if not reply.ok:
            raise CliError(str(reply.error))
        if args.console:
            try:
                sock = connect_console(reply.data["console"], reply.data["domid"])
            finally:
                chan.send(Request("unpause"))  # attached (or not): let the domain run
            if not args.foreground:
                chan.next_reply()
            mark("cli: console attached, unpause sent")
            try:
                pump_console(sock)
            finally:
                sock.close()
            mark("cli: console closed")
        if not args.foreground:
            return 0
        final = chan.next_reply()
        mark("cli: gone reply")
    finally:
        chan.close()
    if final is None:
        raise CliError("lost the connection to the daemon")
    end = final.data
    if end.get("reason") == "crash":
        print(f"Domain {end['domid']} crashed: {end.get('detail', '')}", file=sys.stderr)
        return 1
    return 0 if end.get("status") in (0, None) else 1


def cmd_config_update(args: Namespace) -> int:
    """xl config-update DOM [CFG] [KEY=VALUE...] (xl_misc.c main_config_update): the
    config the domain's next restart builds it from; -d prints it as libxl JSON."""
    print("WARNING: xl now has better capability to manage domain configuration, "
          "avoid using this command when possible", file=sys.stderr)
    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: it has no xl configuration")
    config, overrides = config_words("config-update", args.config_file, list(args.words))
    conf = xl_conf()
    query = {"path": config, "overrides": overrides, "cwd": os.getcwd(),
             "vif_bridge": conf.vif_bridge}
    if args.debug:
        import json

        print(json.dumps(request("create", dryrun=True, **query)["libxl"], indent=4))
    domid = request(args.op, dom=args.dom, **query)["domid"]
    print(f"setting dom{domid} configuration", file=sys.stderr)
    return 0


def lock_creation(path: str) -> int:
    """xl_vmcontrol.c acquire_lock: a whole-file write lock (F_SETLKW) on xl.conf's
    lockfile, waited for, so creations from several xl processes do not interleave.
    The fd; closing it releases the lock."""
    import fcntl

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CliError(f"cannot open the lockfile {path}: {e.strerror}") from None
    fcntl.lockf(fd, fcntl.LOCK_EX)
    return fd


def state_flags(entry: dict[str, object]):
    """The daemon's domain state as xl's six flags (libxl_dominfo)."""
    from xenopus.toolstack.xlformat import DomainState

    state, reason = entry["state"], entry.get("reason")
    if state == "crashed":
        return DomainState(shutdown=True, crashed=True, reason="crash")
    if state == "shutdown":
        return DomainState(shutdown=True, reason=reason)
    return DomainState(running=state == "running", paused=state == "paused", dying=state == "dying")


DOM0_UUID = "00000000-0000-0000-0000-000000000000"  # Xen's dom0 handle


def listed(args: Namespace, **query: Any) -> tuple[list[dict[str, Any]], bool]:
    """The domains named in `args.domains` (every one when none is), and whether
    Domain-0 is among them."""
    domains = request("list", **query)["domains"]
    if not args.domains:
        return domains, True
    wanted = set(args.domains)
    missing = wanted - {str(d["domid"]) for d in domains} - {d["name"] for d in domains} - set(DOM0)
    if missing:
        raise CliError(f"Domain '{sorted(missing)[0]}' does not exist.")
    chosen = [d for d in domains if str(d["domid"]) in wanted or d["name"] in wanted]
    return chosen, bool(wanted.intersection(DOM0))


def cmd_list(args: Namespace) -> int:
    from xenopus.toolstack import xlformat

    domains, show_dom0 = listed(args, long=args.long)
    if args.long:
        # xl_info.c list_domains_details: dom0 has no stored configuration and is skipped.
        print(xlformat.list_long([
            {"domid": d["domid"], "config": d["libxl"],
             # jail: each layer "on", or "missing: why" where this host lacks it
             "xenopus": {k: d.get(k) for k in ("state", "pid", "protocol", "xen_path", "jail")}}
            for d in domains]))
        return 0
    shown = {"verbose": args.verbose, "context": args.context, "cpupool": args.cpupool,
             "claim": getattr(args, "claim", False)}
    print(xlformat.list_header() + xlformat.list_options_header(**shown, numa=args.numa))
    # -n: every domain may use every node (no NUMA placement here): print_bitmap's "all"
    nodes = "all" if args.numa else None
    if show_dom0:
        row = xlformat.list_row("Domain-0", 0, host.memory_mib(), len(host.host_cpus()),
                                xlformat.DomainState(running=True), host.busy_cpu_seconds())
        print(row + xlformat.list_options_columns(DOM0_UUID, None, False, **shown, nodes=nodes))
    for d in domains:
        flags = state_flags(d)
        # xl_info.c list_domains: libxl_dominfo.vcpu_online, the vCPUs up now
        row = xlformat.list_row(d["name"], d["domid"], d["memory"], d["online_vcpus"], flags,
                                d["cpu_time"])
        print(row + xlformat.list_options_columns(d["uuid"], flags.reason, flags.shutdown,
                                                  **shown, nodes=nodes))
    return 0


def cmd_claims(args: Namespace) -> int:
    """xl claims (xl_info.c main_claims): `xl list` with the Claimed column."""
    return cmd_list(Namespace(domains=[], long=False, verbose=False, context=False,
                              cpupool=False, numa=False, claim=True))


def cmd_sharing(args: Namespace) -> int:
    """xl sharing [DOM] (xl_mem.c main_sharing): each domain's memory and how much of it is
    shared, here the pages kernel same-page merging merged in its process (Xen's page
    sharing has no KVM counterpart; KSM is the nearest thing, and `xl info` shows its
    totals). Domain-0, the host, shares none of a guest's kind."""
    from xenopus.toolstack import xlformat

    domains, show_dom0 = listed(Namespace(domains=[args.dom] if args.dom else []))
    print(xlformat.SHARING_HEADER)
    if show_dom0:
        print(xlformat.sharing_row("Domain-0", 0, host.memory_mib(), 0))
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    for d in domains:
        shared = host.ksm_process_pages(d["pid"]) * page_kib // 1024 if d.get("pid") else 0
        print(xlformat.sharing_row(d["name"], d["domid"], d["memory"], shared))
    return 0


def cmd_vm_list(args: Namespace) -> int:
    from xenopus.toolstack import xlformat

    print(xlformat.VM_LIST_HEADER)
    for d in request(args.op)["domains"]:
        print(xlformat.vm_list_row(d["uuid"], d["domid"], d["name"]))
    return 0


def cmd_cpupool_list(args: Namespace) -> int:
    """xl cpupool-list [-c] [POOL]: the one pool, Pool-0, with every host CPU, the
    scheduler `xl info` names and every domain, Domain-0 included."""
    from xenopus.toolstack import hostinfo, xlformat

    if args.pool is not None and args.pool != xlformat.POOL:
        raise CliError(f"Pool '{args.pool}' does not exist")
    n_dom = 1 + len(request("list")["domains"])  # and Domain-0
    for line in xlformat.cpupool_list(host.host_cpus(), n_dom, hostinfo.SCHEDULER, args.cpus):
        print(line)
    return 0


def cmd_info(args: Namespace) -> int:
    """xl_info.c main_info: every line, or with NAME the values of the lines it begins."""
    from xenopus.toolstack import xlformat

    lines = xlformat.info_lines(request(args.op, numa=args.numa))
    if args.name and not args.numa:  # main_info: with -n, NAME is ignored
        lines = xlformat.info_select(lines, args.name)
    for line in lines:
        print(line)
    return 0


def cmd_uptime(args: Namespace) -> int:
    """xl_info.c print_uptime: Domain-0 (the host's /proc/uptime) then each domain, or
    those named, in the order named."""
    import time

    from xenopus.toolstack import xlformat

    now = time.time()
    domains = request("list")["domains"]
    by_key = {str(d["domid"]): d for d in domains} | {d["name"]: d for d in domains}
    rows: list[tuple[str, int, float]] = []
    dom0 = ("Domain-0", 0, host.uptime_seconds())
    for dom in args.domains or ["0", *(str(d["domid"]) for d in domains)]:
        if dom in DOM0:
            rows.append(dom0)
        elif dom in by_key:
            d = by_key[dom]
            rows.append((d["name"], d["domid"], now - d["start_time"]))
        else:
            raise CliError(f"Domain '{dom}' does not exist.")
    if not args.short:
        print(xlformat.UPTIME_HEADER)
    for name, domid, up in rows:
        print(xlformat.uptime_row(name, domid, int(up), args.short, now))
    return 0


def cmd_domid(args: Namespace) -> int:
    """xl_info.c main_domid: "%u\n"."""
    if args.name == "Domain-0":
        print(0)
        return 0
    for d in request("list")["domains"]:
        if d["name"] == args.name:
            print(d["domid"])
            return 0
    raise CliError(f"Can't get domid of domain name '{args.name}', maybe this domain does not exist.")


def cmd_domname(args: Namespace) -> int:
    """xl_info.c main_domname: "%s\n"."""
    if not args.domid.isdigit():
        raise CliError("Invalid domain id.")
    domid = int(args.domid)
    if domid == 0:
        print("Domain-0")
        return 0
    for d in request("list")["domains"]:
        if d["domid"] == domid:
            print(d["name"])
            return 0
    raise CliError(f"Can't get domain name of domain id '{domid}', maybe this domain does not exist.")


def cmd_rename(args: Namespace) -> int:
    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: it keeps its name")
    request(args.op, dom=args.dom, name=args.name)
    return 0


def top_entries(domains: list[dict[str, Any]], before: dict[int, float], elapsed: float,
                dom0_cpu: tuple[float, float]) -> list[Any]:
    """xentop's figures for Domain-0 (the host) and each domain; CPU(%) over `elapsed`
    seconds since the `before` CPU times (xentop.c get_cpu_pct: 0 on the first frame)."""
    from xenopus.toolstack import xlformat

    def pct(key: int, now: float) -> float:
        return (now - before[key]) / elapsed * 100 if key in before and elapsed > 0 else 0.0

    meminfo = host.meminfo()
    dom0_now, _ = dom0_cpu
    entries = [xlformat.TopEntry(
        "Domain-0", xlformat.top_state(running=True), int(dom0_now * 1e9), pct(0, dom0_now),
        meminfo.get("MemTotal", 0), None, len(host.host_cpus()))]
    for d in domains:
        flags = state_flags(d)
        devices = d.get("devices", [])
        nics = [dev for dev in devices if dev.get("kind") == "nic"]
        # xenstat_linux.c: a vif's tbytes/rbytes are its backend interface's own tx/rx
        # counters (the host's view); here the backend interface is the tap.
        counts = [host.net_bytes(str(nic["tap"])) for nic in nics if nic.get("tap")]
        entries.append(xlformat.TopEntry(
            d["name"], xlformat.top_state(dying=flags.dying, shutdown=flags.shutdown,
                                          crashed=flags.crashed, paused=flags.paused,
                                          running=flags.running),
            int(d["cpu_time"] * 1e9), pct(d["domid"], d["cpu_time"]), d["memory"] * 1024,
            # xenstat.c: num_vcpus = max_vcpu_id + 1, every vCPU the domain has
            d["maxmem"] * 1024, d["maxvcpus"], nets=len(nics),
            net_tx=sum(tx for _, tx in counts), net_rx=sum(rx for rx, _ in counts),
            vbds=sum(1 for dev in devices if dev.get("kind") == "disk")))
    return entries


def cmd_top(args: Namespace) -> int:
    """xl top (xentop): with -b, `-i` frames of xentop's batch output `-d` seconds apart;
    without, xentop's screen (its summary, the table) redrawn every `-d` seconds until
    q, Q or Esc (on a terminal) or Ctrl-C. xentop's other keys are not handled."""
    import time

    from xenopus.toolstack import xlformat

    if args.delay <= 0:
        raise CliError("top: the delay (-d) must be at least 1 second")
    keys = None if args.batch else TerminalKeys.open()
    version = "" if args.batch else request("host-info")["xen_version"]
    before: dict[int, float] = {}
    then = time.monotonic()
    frame = 0
    try:
        while args.iterations is None or frame < args.iterations:
            domains = request("list")["domains"]
            for d in domains:
                d["devices"] = devices_of(str(d["domid"]))
            now = time.monotonic()
            mem = host.meminfo()
            dom0 = (host.busy_cpu_seconds(), now)
            entries = top_entries(domains, before, now - then, dom0)
            lines = xlformat.top_lines(entries, mem.get("MemTotal", 0))
            if not args.batch:
                lines = [*xlformat.top_summary(
                    time.time(), version, entries, mem.get("MemTotal", 0),
                    mem.get("MemAvailable", 0), len(host.host_cpus()), host.cpu_khz()),
                    *lines, "", "Quit: q"]
                sys.stdout.write("\x1b[H\x1b[2J")  # ECMA-48: cursor home, erase display
            print("\n".join(lines), flush=True)
            before = {d["domid"]: d["cpu_time"] for d in domains} | {0: dom0[0]}
            then = now
            frame += 1
            if args.iterations is not None and frame >= args.iterations:
                break
            # The refresh interval, as xentop's sleep(delay) / halfdelay; a key ends it.
            if keys is None:
                time.sleep(args.delay)
            elif keys.wait_for_quit(args.delay):
                break
    except KeyboardInterrupt:
        pass
    finally:
        if keys is not None:
            keys.close()
    return 0


class TerminalKeys:
    """Single keys from a terminal stdin (cbreak mode, no echo) for xl top's screen."""

    QUIT = (b"q", b"Q", b"\x1b")

    def __init__(self, fd: int, saved: list[Any]):
        self.fd, self.saved = fd, saved

    @classmethod
    def open(cls) -> TerminalKeys | None:
        """None when stdin is not a terminal (then only Ctrl-C stops the screen)."""
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError, AttributeError):
            return None
        if not os.isatty(fd):
            return None
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return cls(fd, saved)

    def wait_for_quit(self, seconds: float) -> bool:
        """Wait up to `seconds` for a key; whether it was a quitting one."""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        return bool(ready) and os.read(self.fd, 1) in self.QUIT

    def close(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def devices_of(dom: str) -> list[dict[str, Any]]:
    """A domain's device inventory; none when it cannot answer (stopped, gone)."""
    try:
        return request("devices", dom=dom)["devices"]
    except XenopusError:
        return []


CONSOLE_TYPES = ("pv", "serial", "vuart")  # xl_console.c console_names


def escape_character(text: str) -> int:
    """xenconsole's --escape (tools/console/client/main.c): "^X" is Ctrl-X, else one
    character."""
    if len(text) == 2 and text[0] == "^":
        return ord(text[1]) & 0x1F
    if len(text) == 1:
        return ord(text)
    raise CliError("Invalid escape argument")


def cmd_console(args: Namespace) -> int:
    """xl console [-t pv|serial|vuart] [-n N] [-e ESC] DOM (xl_console.c main_console and
    the xenconsole it runs). Without -t, the primary console (PV for a Xen-aware guest,
    else the serial port) and -n is ignored, as libxl_primary_console_exec does; `virtio`
    is xenopus's own type (the virtio console port)."""
    kind = args.type
    if kind is not None and kind not in (*CONSOLE_TYPES, "virtio"):
        raise CliError(f"console type supported are: {', '.join(CONSOLE_TYPES)}")
    if args.dom in DOM0:
        raise CliError("Can't specify Domain-0")  # xenconsole
    if kind == "vuart":
        raise CliError("console type vuart: no virtual UART here (an Arm console); use"
                       " serial or pv")
    if kind is not None and args.num != 0:
        # xenconsole reads serial/N/tty, or device/console/N/tty for a secondary PV
        # console: a domain here has one serial port and one PV console, number 0.
        raise CliError(f"domain {args.dom} has no {kind} console {args.num} (only 0)")
    escape = DETACH if args.escape is None else escape_character(args.escape)
    attach_console(args.dom, kind, escape)
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
    """xl shutdown / reboot [-a] [-w[w]] [-F] [DOM] (xl_vmcontrol.c main_shutdown_or_reboot,
    shutdown_domain, reboot_domain, wait_for_domain_deaths): their messages, on stderr."""
    reboot = args.op == "reboot"
    if args.dom is None and not args.all:
        raise CliError("You must specify -a or a domain id.")
    if args.all:
        # every domain but Domain-0 (and none that has already stopped: nothing listens)
        domids = [d["domid"] for d in request("list")["domains"]
                  if d["state"] in ("running", "paused")]
    elif args.dom in DOM0:
        raise CliError("Domain-0 is the host: shut it down with the host's own tools")
    else:
        domids = [find_domid(args.dom)]
    asked: list[tuple[int, int]] = []  # (domid, stops seen when asked)
    for domid in domids:
        print(f"{'Rebooting' if reboot else 'Shutting down'} domain {domid}", file=sys.stderr)
        with connect() as conn:
            reply = conn.ask(Request(args.op, {"dom": str(domid), "fallback": args.fallback}))
        if not reply.ok and reply.data.get("code") == "noparavirt":
            what = ("graceful reboot", "ACPI reset") if reboot else ("graceful shutdown", "ACPI power")
            print("PV control interface not available: external"
                  f" {what[0]} not possible.", file=sys.stderr)
            print(f'Use "-F" to fallback to {what[1]} event.', file=sys.stderr)
            print(f"{args.op} failed (rc={LIBXL_ERROR_NOPARAVIRT})", file=sys.stderr)
            return 1
        if not reply.ok:
            raise CliError(str(reply.error))
        if reply.data.get("method") == "acpi":
            print("PV control interface not available: sending ACPI"
                  f" {'reset' if reboot else 'power'} button event.", file=sys.stderr)
        asked.append((domid, int(reply.data.get("stops", 0))))
    if not args.wait:
        return 0
    # -w: until each has shut down (or gone); -ww: until each is gone.
    print(f"Waiting for {len(asked)} domains", file=sys.stderr)
    until = "shutdown" if args.wait == 1 else "death"
    for domid, stops in asked:
        try:
            event = request("wait", dom=str(domid), until=until, after=stops)
        except NoSuchDomain:
            event = {"event": "death"}  # gone before we asked
        if event["event"] == "death":
            print(f"Domain {domid} has been destroyed", file=sys.stderr)
        else:
            print(f"Domain {domid} has been shut down, reason code {event['reason_code']}",
                  file=sys.stderr)
    return 0


LIBXL_ERROR_NOPARAVIRT = -10  # libxl_types.idl libxl_error
TRIGGERS = ("power", "sleep", "nmi", "init", "reset", "s3resume")  # libxl_trigger, in order


def find_domid(dom: str) -> int:
    """xl's find_domain: a domid or a name, as a domid ("Domain 'x' does not exist.")."""
    for d in request("list")["domains"]:
        if dom in (str(d["domid"]), d["name"]):
            return int(d["domid"])
    raise CliError(f"Domain '{dom}' does not exist.")


def cmd_sysrq(args: Namespace) -> int:
    """xl sysrq DOM KEY (xl_misc.c main_sysrq): one character, else "Invalid sysrq."."""
    if len(args.key) != 1:
        raise CliError("Invalid sysrq.")
    request(args.op, dom=args.dom, key=args.key)
    return 0


def cmd_trigger(args: Namespace) -> int:
    """xl trigger DOM NAME [VCPU] (xl_misc.c main_trigger)."""
    if args.trigger not in TRIGGERS:
        raise CliError(f'Invalid trigger "{args.trigger}"')
    vcpu = 0
    if args.vcpu is not None:
        # main_trigger: strtol; a word that is not a number means vCPU 0, with a warning
        try:
            vcpu = int(args.vcpu)
        except ValueError:
            print("Invalid vcpuid, using default vcpuid=0.\n", file=sys.stderr)
    request(args.op, dom=args.dom, trigger=args.trigger, vcpu=vcpu)
    return 0


def cmd_button_press(args: Namespace) -> int:
    """xl button-press DOM power|sleep (xl_misc.c main_button_press): deprecated, a
    trigger."""
    print('WARNING: "button-press" is deprecated. Please use "trigger"', file=sys.stderr)
    if args.button not in ("power", "sleep"):
        raise CliError(f"{args.button} is an invalid button identifier")
    request(args.op, dom=args.dom, trigger=args.button, vcpu=0)
    return 0


def cmd_devices(kind: str):
    """block-list / network-list: the domain's devices of one kind, virtio and Xen PV."""

    def run(args: Namespace) -> int:
        from xenopus.toolstack import xlformat

        found = [d for dom in args.doms for d in request(args.op, dom=dom)["devices"]
                 if d["kind"] == kind]
        listing = xlformat.block_list if kind == DISK else xlformat.network_list
        print("\n".join(listing(found)))
        return 0

    return run


def cmd_channel_list(args: Namespace) -> int:
    """xl channel-list DOM...: the named PV consoles (channels) of each domain."""
    from xenopus.toolstack import xlformat

    doms = request(args.op, doms=list(args.doms))["domains"]
    print("\n".join(xlformat.channel_list([c for d in doms for c in d["channels"]])))
    return 0


DOM0 = ("0", "Domain-0")


def host_cpu_rows(nr_cpus: int) -> list[str]:
    """Domain-0's `xl vcpu-list` rows: the host is Domain-0 here, one "vCPU" per host CPU.
    CPU and Time(s) (the CPU's non-idle time in /proc/stat) are exact; the state is an
    approximation: "r" for the CPU this command runs on, "b" for the others; affinity is
    "all / all", as for an unpinned Xen dom0."""
    from xenopus.toolstack import xlformat

    here = host.current_cpu()
    return [xlformat.vcpu_list_row("Domain-0", 0, cpu, cpu, running=cpu == here,
                                   blocked=cpu != here, cpu_time=busy, nr_cpus=nr_cpus)
            for cpu, busy in host.busy_seconds_per_cpu().items()]


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
                cpu_time=v["cpu_time"], hard=v["affinity"], soft=v.get("soft", "all"),
                nr_cpus=nr_cpus))
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


def cmd_dump_core(args: Namespace) -> int:
    """xl dump-core DOM FILE (xl_misc.c core_dump_domain): FILE is opened here, as the
    user who named it, and handed over; "core dump failed" on a refusal."""
    from xenopus.toolstack import transfer

    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CliError(f"core dump failed: {args.file}: {e.strerror}") from None
    try:
        transfer.send_file(Request(args.op, {"dom": args.dom}), fd, None, None, "dump-core")
    except CliError as e:
        raise CliError(f"core dump failed: {e}") from None
    finally:
        os.close(fd)


def cmd_cpu_policy(args: Namespace) -> int:
    """A domain's effective CPU policy, or with --host the one this host gives a domain by
    default (computed here, from /dev/kvm), as Xen's `xen-cpuid -p` prints one; with -o
    saved as a file instead (for `cpu_policy_hosts = [...]` and `cpuid=` checks)."""
    from xenopus.vm import cpu_policy

    if args.host == (args.dom is not None):
        raise CliError("give a domain or --host (not both)")
    if args.host:
        from xenopus.kvm import Kvm

        with Kvm() as kvm:
            policy = cpu_policy.host_policy(kvm, f"host {os.uname().nodename}")
        title = "Host policy"
    else:
        policy = cpu_policy.CpuPolicy.from_dict(request(args.op, dom=args.dom)["policy"])
        title = f"Domain {args.dom} policy"
    if args.output:
        cpu_policy.save_policy_file(args.output, policy)
    else:
        print("\n".join(policy.table(title)))
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


def cmd_clone(args: Namespace) -> int:
    from xenopus.toolstack import transfer

    return transfer.clone(args)


def cmd_daemon(args: Namespace) -> int:
    if args.stop:
        from xenopus.client import DaemonUnavailable

        try:
            conn = connect(autostart=False)
        except DaemonUnavailable:
            return 0  # nothing to stop
        with conn:
            conn.ask(Request(args.op))
            while conn.next_reply() is not None:  # the daemon closes us when it has gone
                pass
        return 0
    from pathlib import Path

    from xenopus.toolstack import zygote

    try:
        spares = zygote.spares_wanted(args.spares)
    except ValueError as e:
        print(f"xenopus daemon: {e}", file=sys.stderr)
        return 1
    # First, before this process imports the daemon: the zygote's spares import every
    # layer meanwhile (on a fresh daemon the first domain waits for them).
    started = zygote.start(spares)
    from xenopus.toolstack import daemon

    base = Path(ipc.run_dir())
    log_file = base / "xenopus.log" if args.background else None
    return daemon.run(base, ready_fd=args.ready_fd, log_file=log_file, spares=spares,
                      started_zygote=started)


# -- resources and devices (xl_mem.c, xl_vcpu.c, xl_sched.c, xl_block.c) --------------------
def parse_mem_size_kb(text: str) -> int | None:
    """xl_parse.c parse_mem_size_kb: strtoll's number and at most one suffix letter, any
    case — t, g, m (also none: MiB is the default), k, or b (bytes) — as KiB; None where
    xl gets -1 (a longer or unknown suffix)."""
    import re

    m = re.match(r"\s*([+-]?\d+)", text)
    value, rest = (int(m.group(1)), text[m.end():]) if m else (0, text)
    if len(rest) > 1:
        return None
    shift = {"t": 30, "g": 20, "": 10, "m": 10, "k": 0}.get(rest.lower())
    if rest.lower() == "b":
        return value >> 10
    return None if shift is None else value << shift


def cmd_mem(args: Namespace) -> int:
    """xl mem-set / mem-max DOM SIZE."""
    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: its memory is not xenopus's to set")
    kib = parse_mem_size_kb(args.size)
    if kib is None or kib < 0:
        raise CliError(f"invalid memory size: {args.size}")
    request(args.op, dom=args.dom, kib=kib, size=args.size)
    return 0


def cmd_xenstore_quota_get(args: Namespace) -> int:
    """xl xenstore-quota-get <Domain>|-g (xl_xsquota.c main_xsquota_get)."""
    if bool(args.glob) == bool(args.dom):
        raise CliError('Domain or "-g" must be specified.')
    quota = request("xenstore-quota-get", dom=args.dom, **{"global": args.glob})["quota"]
    print("Quota name           Quota value")
    print("-" * 32)
    for name, value in quota:
        print(f"{name:<20} {value:8d}")
    return 0


def parse_xsquota_item(text: str) -> tuple[str, int]:
    """xl_parse.c parse_xsquota_item: <quota>=<val>, val read whole as strtoul(…, 0)
    does (0x hex, 0 octal, else decimal) and within an unsigned int."""
    import re

    name, eq, value = text.partition("=")
    if not eq:
        raise CliError(f'Quota specification "{text}" lacks "=".')
    m = re.fullmatch(r"0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*)", value)
    number = None if m is None else (int(m[1], 16) if m[1] else int(m[2], 8) if m[2]
                                     else int(m[3]))
    if number is None or number > 0xFFFFFFFF:
        raise CliError(f'Quota specification "{text}" uses illegal value "{value}".')
    return name, number


def cmd_xenstore_quota_set(args: Namespace) -> int:
    """xl xenstore-quota-set <Domain>|-g <quota>=<val>... (main_xsquota_set)."""
    words = ([args.dom] if args.dom else []) + list(args.items or [])
    target, items = (None, words) if args.glob else (words[0] if words else None, words[1:])
    if not items or (target is None and not args.glob):
        raise CliError("Not enough parameters.\nUsage: xl xenstore-quota-set <Domain>|-g"
                       " <quota>=<val>...")
    quota = [list(parse_xsquota_item(item)) for item in items]
    request("xenstore-quota-set", dom=target, quota=quota, **{"global": args.glob})
    return 0


def _strtol(text: str) -> int | None:
    """The leading decimal number of `text` as strtol/strtoul read it; None if none."""
    import re

    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else None


def cmd_vcpu_set(args: Namespace) -> int:
    """xl vcpu-set [-i] DOM N (xl_vcpu.c vcpuset): more vCPUs than the host has CPUs (and
    than are online) is refused unless -i."""
    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: its CPUs are not xenopus's to set")
    count = _strtol(args.count)
    if count is None or count < 0:
        raise CliError("Error: Invalid argument.")
    if not args.ignore_host:
        host_cpus = max(host.host_cpus()) + 1  # libxl_get_max_cpus
        rows = [d for d in request("list")["domains"] if args.dom in (str(d["domid"]), d["name"])]
        online = rows[0]["online_vcpus"] if rows else 0  # xl_vcpu.c: dominfo.vcpu_online
        if count > online and count > host_cpus:
            raise CliError(f"You are overcommmitting! You have {host_cpus} physical CPUs and"
                           f" want {count} vCPUs! Aborting, use --ignore-host to continue")
    request(args.op, dom=args.dom, count=count)
    return 0


def cmd_sched(credit2: bool):
    """xl sched-credit / sched-credit2 [-d DOM [-w WEIGHT] [-c CAP]] [-p POOL] [-s]: one
    Linux fair scheduler stands behind both; the weights and caps are the domains'
    cgroups' (main_sched_credit{,2} for the checks and messages)."""

    def run(args: Namespace) -> int:
        from xenopus.toolstack import xlformat

        weight = None if args.weight is None else _strtol(args.weight) or 0
        cap = None if args.cap is None else _strtol(args.cap) or 0
        domain_opts = args.dom is not None or weight is not None or cap is not None
        if credit2 and args.cpupool and domain_opts:
            raise CliError("Specifying a cpupool is not allowed with other options.")
        if not credit2 and (args.cpupool or args.schedparam) and domain_opts:
            raise CliError("Specifying a cpupool or schedparam is not allowed with domain options.")
        if args.dom is None and (weight is not None or cap is not None):
            raise CliError("Must specify a domain.")
        if args.cpupool not in (None, xlformat.POOL_NAME, "0"):
            raise CliError(f"unknown cpupool '{args.cpupool}'")
        pool_params = (args.tslice, args.ratelimit, args.migration_delay)
        if not args.schedparam and any(p is not None for p in pool_params):
            raise CliError("Must specify schedparam to set schedule parameter values.")
        if args.schedparam:
            if any(p is not None for p in pool_params):
                raise CliError("the Linux scheduler has no credit time slice, rate limit or"
                               " migration delay to set")
            print(xlformat.sched_pool_line())
            return 0
        if args.dom in DOM0:
            if domain_opts and (weight is not None or cap is not None):
                raise CliError("Domain-0 is the host: its scheduling is not xenopus's to set")
            print(xlformat.SCHED_HEADER)
            print(xlformat.sched_row("Domain-0", 0, 256, 0))
            return 0
        query: dict[str, Any] = {} if args.dom is None else {"dom": args.dom}
        if weight is not None:
            query["weight"] = weight
        if cap is not None:
            query["cap"] = cap
        domains = request(args.op, **query)["domains"]
        if weight is not None or cap is not None:
            return 0
        if args.dom is None:  # sched_domain_output: the pool, then its every domain
            print(xlformat.sched_pool_line())
            print(xlformat.SCHED_HEADER)
            print(xlformat.sched_row("Domain-0", 0, 256, 0))
        else:
            print(xlformat.SCHED_HEADER)
        for d in domains:
            print(xlformat.sched_row(d["name"], d["domid"], d["weight"], d["cap"]))
        return 0

    return run


def cmd_block_attach(args: Namespace) -> int:
    """xl block-attach DOM DISKSPEC...: the words are one disk spec
    (parse_disk_config_multistring); the CLI opens the image as its user and hands the
    open file over, so neither the daemon nor the jailed domain opens the path."""
    from xenopus.domain.devspec import parse_disk
    from xenopus.toolstack import transfer

    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: it has no xenopus disks")
    spec = ",".join(args.spec)
    try:
        disk = parse_disk(spec)
    except ValueError as e:
        raise CliError(str(e)) from None
    try:
        fd = os.open(disk.target, (os.O_RDONLY if disk.read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as e:
        raise CliError(f"cannot open {disk.target}: {e.strerror}") from None
    try:
        transfer.send_file(Request(args.op, {"dom": args.dom, "spec": spec,
                                             "target": os.path.abspath(disk.target)}),
                           fd, None, None, f"Attaching {disk.target}")
    finally:
        os.close(fd)
    return 0


def cmd_block_detach(args: Namespace) -> int:
    """xl block-detach [-f] DOM DEV (a vdev name or device number)."""
    request(args.op, dom=args.dom, dev=args.dev, force=args.force)
    return 0


def cmd_cd(args: Namespace) -> int:
    """xl cd-insert DOM VDEV FILE / cd-eject DOM VDEV (xl_cdrom.c): libxl_cdrom_insert
    refuses every domain that is not HVM, and every domain here is PVH (or PV in a PVH
    shim), so these end as they do under Xen for such a domain, after xl's own checks."""
    if args.dom not in DOM0 and not any(args.dom in (d["name"], str(d["domid"]))
                                        for d in request("list")["domains"]):
        raise CliError(f"Domain '{args.dom}' does not exist.")  # find_domain, first
    file = getattr(args, "file", None)
    if file is not None and not os.path.exists(file):
        raise CliError(f"Cannot stat file: {file}")
    raise CliError("cdrom-insert requires an HVM domain")


def cmd_network_attach(args: Namespace) -> int:
    """xl network-attach DOM VIFSPEC...: each word one key=value of the vif spec
    (parse_nic_config); xl.conf's vif.default.bridge where the spec names none."""
    if args.dom in DOM0:
        raise CliError("Domain-0 is the host: it has no xenopus NICs")
    request(args.op, dom=args.dom, spec=",".join(args.spec), vif_bridge=xl_conf().vif_bridge)
    return 0


def cmd_network_detach(args: Namespace) -> int:
    """xl network-detach DOM DEVID|MAC."""
    request(args.op, dom=args.dom, dev=args.dev)
    return 0


# xl_cmdtable.c's verbs that xenopus does not take, each with why. They are refused by name
# (exit 1, as xl's "command not implemented") rather than as unknown words; the README's
# verb table says the same (tests/unit/test_xl_verbs.py keeps the two in step).
_NO_PASSTHROUGH = "not yet: no PCI passthrough (VFIO would be KVM's way)"
_NO_BACKEND = "n/a: no such PV backend here (only vbd, vif, console and channels)"
_NO_POOLS = "n/a: one CPU pool, Pool-0 (cgroup cpusets would be the KVM way to make more)"
_NO_XSM = "n/a: no XSM/FLASK (security labels show '-')"
_NO_RDT = "n/a: Intel RDT is Linux's resctrl, not a hypervisor call"
_NO_USB = "n/a: no USB emulation"
UNAVAILABLE: dict[str, str] = {
    **dict.fromkeys(("pci-attach", "pci-detach", "pci-list", "pci-assignable-add",
                     "pci-assignable-remove", "pci-assignable-list"), _NO_PASSTHROUGH),
    "vncviewer": "n/a: no framebuffer is emulated",
    "sched-rtds": "n/a: Linux has no RTDS scheduler (SCHED_DEADLINE is a different model)",
    "debug-keys": "n/a: no Xen console keys",
    "set-parameters": "n/a: no hypervisor parameters (the host kernel's are sysctls)",
    **dict.fromkeys([f"{dev}-{op}" for dev in ("vtpm", "vkb", "vdispl", "vsnd")
                     for op in ("attach", "list", "detach")], _NO_BACKEND),
    **dict.fromkeys(("cpupool-create", "cpupool-destroy", "cpupool-rename",
                     "cpupool-cpu-add", "cpupool-cpu-remove", "cpupool-migrate",
                     "cpupool-numa-split"), _NO_POOLS),
    **dict.fromkeys(("getenforce", "setenforce", "loadpolicy"), _NO_XSM),
    "remus": "n/a: no checkpointed replication",
    "devd": "n/a: no driver domains (backends run in each domain's own process)",
    **dict.fromkeys(("psr-hwinfo", "psr-cmt-attach", "psr-cmt-detach", "psr-cmt-show",
                     "psr-cat-set", "psr-cat-show", "psr-mba-set", "psr-mba-show"), _NO_RDT),
    **dict.fromkeys(("usbctrl-attach", "usbctrl-detach", "usbdev-attach", "usbdev-detach",
                     "usb-list"), _NO_USB),
    "qemu-monitor-command": "n/a: no QEMU device model",
    "dt-overlay": "n/a: device-tree overlays are Arm's (and no Xen interface on arm64)",
}


def cmd_help(args: Namespace) -> int:
    """xl.c help(): the verb list in xl's layout, or one verb's usage."""
    if args.verb_name in (None, "help"):
        print("Usage xl [-vfNtT] <subcommand> [args]\n\nxl full list of subcommands:\n")
        for v in VERBS:
            if v.name == "help":
                continue
            gap = f"\n {'':19} " if len(v.name) > 19 else ""
            print(f" {v.name:<19} {gap}{v.help}")
        return 0
    if args.verb_name in UNAVAILABLE:
        print(f"command \"{args.verb_name}\": {UNAVAILABLE[args.verb_name]}")
        return 0
    if not any(v.name == args.verb_name for v in VERBS):
        print(f"command \"{args.verb_name}\" not implemented")  # xl's words
        return 0
    parser("xl").parse_args([args.verb_name, "--help"])  # argparse prints, then exits 0
    return 0


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
Opt.__doc__ = """An option: a flag if `takes` is None, a flag counted (-ww) if COUNT, else its
value's type; `help` None hides it."""
COUNT = object()
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
        Opt(("-q", "--quiet"), "quiet", "quiet"),
        Opt(("-f", "--defconfig"), "config_file", "the config file (also the first argument)",
            str),
        Opt(("-n", "--dryrun"), "dryrun", "print the configuration as libxl JSON; create nothing"),
    ), (Pos("words", "CFG KEY=VALUE", "*",
            "the config file (by name in /etc/xen too), then KEY=VALUE overrides"),)),
    Verb("config-update", "update a running domain's saved configuration, used when it is"
         " rebuilt after a reboot (deprecated in xl)", "config-update", cmd_config_update, (
             Opt(("-f", "--defconfig"), "config_file", "the config file", str),
             Opt(("-d",), "debug", "print the configuration as libxl JSON"),
             Opt(("-q",), "quiet", None),  # xl_misc.c takes -q and does nothing with it
         ), (_dom(), Pos("words", "CFG KEY=VALUE", "*",
                         "the config file (by name in /etc/xen too), then KEY=VALUE overrides"))),
    Verb("list", "list domains", "list", cmd_list, (
        Opt(("-l", "--long"), "long", "each domain's configuration as libxl JSON"),
        Opt(("-v", "--verbose"), "verbose", "also UUIDs, shutdown reason codes, security labels"),
        Opt(("-Z", "--context"), "context", "also security labels (always '-': no XSM)"),
        Opt(("-c", "--cpupool"), "cpupool", "also each domain's CPU pool"),
        Opt(("-n", "--numa"), "numa", "also each domain's NUMA node affinity"),
    ), (Pos("domains", "DOM", "*"),)),
    Verb("vm-list", "list guest domains (not Domain-0) with their UUIDs", "list", cmd_vm_list),
    Verb("claims", "list domains with their outstanding memory claims (none here)", "list",
         cmd_claims),
    Verb("sharing", "domains' shared memory (pages merged by the kernel's KSM)", "list",
         cmd_sharing, (), (Pos("dom", "DOM", "?", "only this domain"),)),
    Verb("info", "information about the host", "host-info", cmd_info,
         (Opt(("-n", "--numa"), "numa", "also the CPU, device and NUMA topology"),),
         (Pos("name", "NAME", "?", "print only the values of the fields named so"),)),
    Verb("uptime", "print the uptime of all or some domains", "list", cmd_uptime,
         (Opt(("-s",), "short", "short format"),), (Pos("domains", "DOM", "*"),)),
    Verb("domid", "print the ID of a domain", "list", cmd_domid, (), (Pos("name", "NAME"),)),
    Verb("domname", "print the name of a domain", "list", cmd_domname, (),
         (Pos("domid", "ID"),)),
    Verb("rename", "rename a domain", "rename", cmd_rename, (),
         (_dom(), Pos("name", "NEWNAME"))),
    Verb("top", "monitor the host and domains (xentop)", "list", cmd_top, (
        Opt(("-b", "--batch"), "batch", "batch mode: print frames, accept no input"),
        Opt(("-i", "--iterations"), "iterations", "frames to print before exiting", int),
        Opt(("-d", "--delay"), "delay", "seconds between frames (default 3)", int, None, 3),
    )),
    Verb("console", "attach to a domain's console (Ctrl-] detaches)", "console", cmd_console, (
        Opt(("-t",), "type", "pv (Xen PV console), serial (COM1), vuart (refused) or virtio;"
            " default: pv for Xen-aware guests, else serial", str),
        Opt(("-n",), "num", "console number (0: the only one of each type here)", int, None, 0),
        Opt(("-e",), "escape", "escape character to detach, ^X or one character (default ^])",
            str),
    ), (_dom(),)),
    Verb("dmesg", "print the host log: xenopus's (XEN) lines, guests' console_io and"
         " port-0xE9 lines", "dmesg", cmd_dmesg,
         (Opt(("-c", "--clear"), "clear", "clear the log after printing it"),)),
    Verb("destroy", "destroy a domain immediately", "destroy", cmd_domain_op,
         # xl's -f permits destroying domain 0; Domain-0 is the host here, never destroyed
         (Opt(("-f",), "force", "taken for xl's sake: Domain-0 is the host, never destroyed"),),
         (_dom(),)),
    Verb("pause", "pause all vCPUs of a domain", "pause", cmd_domain_op, (), (_dom(),)),
    Verb("unpause", "resume a paused domain", "unpause", cmd_domain_op, (), (_dom(),)),
    Verb("shutdown", "issue a shutdown signal to a domain (PV control/shutdown)", "shutdown",
         cmd_shutdown, (
             Opt(("-a", "--all"), "all", "shut down all guest domains"),
             Opt(("-w", "--wait"), "wait", "wait for the guest(s) to shut down (-ww: to be"
                 " destroyed)", COUNT),
             Opt(("-F",), "fallback", "fall back to the ACPI power button for guests with no"
                 " PV control interface"),
         ), (Pos("dom", "DOM", "?"),)),
    Verb("reboot", "issue a reboot signal to a domain (PV control/shutdown)", "reboot",
         cmd_shutdown, (
             Opt(("-a", "--all"), "all", "reboot all guest domains"),
             Opt(("-w", "--wait"), "wait", "wait for the guest(s) to reboot (-ww: for the"
                 " incarnation to be destroyed)", COUNT),
             Opt(("-F",), "fallback", "fall back to the ACPI reset trigger for guests with no"
                 " PV control interface"),
         ), (Pos("dom", "DOM", "?"),)),
    Verb("suspend", "suspend a domain to RAM (control/shutdown \"suspend\")", "suspend",
         cmd_domain_op, (), (_dom(),)),
    Verb("resume", "resume a suspended domain (its suspend call returns: cancelled)",
         "resume", cmd_domain_op, (), (_dom(),)),
    Verb("dump-core", "core dump a domain (ELF, guest RAM as PT_LOADs)", "dump-core",
         cmd_dump_core, (), (_dom(), Pos("file", "FILE"))),
    Verb("sysrq", "send a sysrq to a domain (control/sysrq)", "sysrq", cmd_sysrq, (),
         (_dom(), Pos("key", "LETTER"))),
    Verb("trigger", "send a trigger to a domain", "trigger", cmd_trigger, (),
         (_dom(), Pos("trigger", "nmi|reset|init|power|sleep|s3resume"),
          Pos("vcpu", "VCPU", "?", "the vCPU for nmi and init (default 0)"))),
    Verb("button-press", "indicate an ACPI button press to the domain (deprecated: trigger)",
         "trigger", cmd_button_press, (), (_dom(), Pos("button", "power|sleep"))),
    Verb("block-list", "list a domain's disks", "devices", cmd_devices(DISK), (),
         (Pos("doms", "DOM", "+"),)),
    Verb("network-list", "list a domain's network interfaces", "devices",
         cmd_devices(NIC), (), (Pos("doms", "DOM", "+"),)),
    Verb("channel-list", "list a domain's PV channels (named consoles)", "channel-list",
         cmd_channel_list, (), (Pos("doms", "DOM", "+"),)),
    Verb("vcpu-list", "list the vCPUs of domains (all when none is named)", "vcpu-list",
         cmd_vcpu_list, (), (Pos("domains", "DOM", "*"),)),
    Verb("vcpu-pin", "set the host CPUs a vCPU may run on", "vcpu-pin", cmd_vcpu_pin,
         (Opt(("-f", "--force"), "force", "accepted for xl compatibility"),),
         (_dom(), Pos("vcpu", "VCPU", None, "a vCPU number or 'all'"),
          Pos("hard", "CPUS", None, "xl CPU list: all, 0-3,5, ^1, nodes:0 ('-': keep)"),
          Pos("soft", "SOFT", "?", "soft affinity: only 'all' or '-'"))),
    # -- save, restore, migrate (docs/snapshot-stream.md) --
    Verb("cpu-policy", "print a domain's CPUID and MSR policy (xen-cpuid -p), or the host's",
         "cpu-policy", cmd_cpu_policy, (
             Opt(("--host",), "host", "the policy this host gives a domain by default"),
             Opt(("-o", "--output"), "output", "save the policy to this file instead", str),
         ), (Pos("dom", "DOM", "?"),)),
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
        Opt(("--clone",), "clone", "map the image's RAM copy-on-write instead of reading it"),
    ), (Pos("paths", "[CFG] FILE", "+", "a config to build from instead of the image's, "
            "and the image"),)),
    Verb("migrate", "move a domain to another host (over `SSHCMD HOST xenopus migrate-receive`)",
         "save", cmd_migrate, (
             Opt(("-s",), "ssh", "the command that reaches HOST (default: ssh; passed to"
                 " sh; empty: run HOST itself as the receiver)", str),
             Opt(("-e",), "no_wait", "accepted for xl compatibility (the daemon always watches)"),
             Opt(("-C",), "config", "send this config instead of the domain's", str),
             Opt(("--debug",), "debug", "report what was sent (and, from the receiver, "
                 "what was received)"),
             Opt(("-p",), "paused", "leave the domain paused on the receiver"),
             Opt(("--live",), "live", "accepted for xl compatibility (always live)"),
         ), (_dom(), Pos("host", "HOST"))),
    Verb("migrate-receive", "receive a migrating domain on stdin (run by migrate)", "restore",
         cmd_migrate_receive, (
             Opt(("-e",), "no_wait", "accepted for xl compatibility"),
             Opt(("-d",), "debug", "report what was received"),
             Opt(("-p",), "paused", "leave the received domain paused"),
         )),
    Verb("clone", "new running domains NAME... from DOM (saved, left running) or a saved"
         " FILE, their RAM mapped copy-on-write from one image", "clone", cmd_clone,
         (Opt(("-p",), "paused", "leave the clones paused"),
          Opt(("-d",), "debug", "report each clone's restore time")),
         (Pos("source", "DOM|FILE", None, "a domain, or a file `save` wrote (a path with"
              " a '/', or a file that exists)"), Pos("names", "NAME", "+"))),
    # -- end of save, restore, migrate --
    # -- resources and devices (xl_mem.c, xl_vcpu.c, xl_sched.c, xl_block.c) --
    Verb("mem-set", "set a domain's memory target (its balloon driver follows it)", "mem-set",
         cmd_mem, (), (_dom(), Pos("size", "SIZE", None, "KiB, or with a suffix b/k/m/g/t;"
                                   " MiB without one"))),
    Verb("mem-max", "set a domain's maximum memory", "mem-max", cmd_mem, (),
         (_dom(), Pos("size", "SIZE", None, "KiB, or with a suffix b/k/m/g/t; MiB without one"))),
    Verb("xenstore-quota-get", "list global or domain specific Xenstore quotas",
         "xenstore-quota-get", cmd_xenstore_quota_get,
         (Opt(("-g",), "glob", "the global values (new domains start from them)"),),
         (Pos("dom", "DOM", "?", "the domain (or -g)"),)),
    Verb("xenstore-quota-set", "set global or domain specific Xenstore quotas",
         "xenstore-quota-set", cmd_xenstore_quota_set,
         (Opt(("-g",), "glob", "set the global values (new domains start from them)"),),
         (Pos("dom", "DOM", "?", "the domain (or -g)"),
          Pos("items", "QUOTA=VAL", "*", "quota names as GET_QUOTA lists them"))),
    Verb("vcpu-set", "set the number of a domain's vCPUs online (cpu/N/availability)",
         "vcpu-set", cmd_vcpu_set,
         (Opt(("-i", "--ignore-host"), "ignore_host", "allow more vCPUs than host CPUs"),),
         (_dom(), Pos("count", "N"))),
    *(Verb(name, "get or set domains' CPU weight and cap (the fair scheduler's cgroups)",
           "sched", cmd_sched(name == "sched-credit2"), (
               Opt(("-d", "--domain"), "dom", "the domain", str),
               Opt(("-w", "--weight"), "weight", "its weight, 1 to 65535 (default 256)", str),
               Opt(("-c", "--cap"), "cap", "its cap, percent of one CPU (0: none)", str),
               Opt(("-p", "--cpupool"), "cpupool", "the CPU pool (only Pool-0)", str),
               Opt(("-s", "--schedparam"), "schedparam", "the pool's scheduler parameters"),
               Opt(("-t", "--tslice_ms"), "tslice", None, str),
               Opt(("-r", "--ratelimit_us"), "ratelimit", None, str),
               Opt(("-m", "--migration_delay_us"), "migration_delay", None, str),
           )) for name in ("sched-credit", "sched-credit2")),
    Verb("block-attach", "attach a Xen PV disk to a running domain", "block-attach",
         cmd_block_attach, (), (_dom(), Pos("spec", "DISKSPEC", "+", "an xl disk spec"))),
    Verb("block-detach", "detach a Xen PV disk from a domain", "block-detach",
         cmd_block_detach,
         (Opt(("-f", "--force"), "force", "remove it without waiting for the guest"),),
         (_dom(), Pos("dev", "DEV", None, "its vdev (xvdb) or device number (51728)"))),
    Verb("cd-insert", "insert a CD into a guest's CD drive (HVM only, as in libxl)", "list",
         cmd_cd, (), (_dom(), Pos("vdev", "VDEV"), Pos("file", "FILE"))),
    Verb("cd-eject", "eject a CD from a guest's CD drive (HVM only, as in libxl)", "list",
         cmd_cd, (), (_dom(), Pos("vdev", "VDEV"))),
    Verb("network-attach", "attach a Xen PV network interface to a running domain",
         "network-attach", cmd_network_attach, (),
         (_dom(), Pos("spec", "VIFSPEC", "+", "xl vif spec keys (mac=, bridge=, vifname=, ...)"))),
    Verb("network-detach", "detach a Xen PV network interface from a domain",
         "network-detach", cmd_network_detach, (),
         (_dom(), Pos("dev", "DEVID|MAC", None, "its device id or MAC address"))),
    # -- end of resources and devices --
    Verb("cpupool-list", "list CPU pools on host (one here: Pool-0)", "list",
         cmd_cpupool_list, (Opt(("-c", "--cpus"), "cpus", "the pool's CPUs"),),
         (Pos("pool", "POOL", "?", "only this pool"),)),
    Verb("help", "list the verbs, or show one verb's usage", None, cmd_help, (),
         (Pos("verb_name", "VERB", "?", "the verb"),)),
    Verb("daemon", "run the host daemon in the foreground", "stop", cmd_daemon, (
        Opt(("--stop",), "stop", "stop a running daemon and its domains"),
        Opt(("--background",), "background", None),
        Opt(("--ready-fd",), "ready_fd", None, int),
        Opt(("--spares",), "spares", "exec'd spare domain processes to keep warm, each domain "
            "with its own address-space layout (default 2, or $XENOPUS_SPARES; 0: fork all "
            "domains from one zygote, sharing its layout)", int),
    )),
)


def fast_parse(argv: list[str]) -> Namespace | None:
    """Parse a well-formed command line from VERBS; None means "let argparse explain"."""
    verb = next((v for v in VERBS if argv and v.name == argv[0]), None)
    if verb is None:
        return None
    ns = Namespace(func=verb.func, op=verb.op)
    for o in verb.opts:
        setattr(ns, o.dest, False if o.takes is None else 0 if o.takes is COUNT else o.default)
    by_name = {n: o for o in verb.opts for n in o.names}
    # Options may come before, between and after the positionals, as GNU getopt (which
    # xl uses) permutes them: `xl create CFG -c KEY=VALUE`; "--" ends the options.
    rest = argv[1:]
    words: list[str] = []
    while rest:
        word = rest.pop(0)
        if word == "--":
            words += rest
            break
        if not word.startswith("-") or word == "-":
            words.append(word)
            continue
        name, eq, value = word.partition("=")
        # Short flags may be bundled (-cF); anything else goes word by word.
        names = [f"-{c}" for c in word[1:]] if not word.startswith("--") and not eq else [name]
        for n in names:
            o = by_name.get(n)
            if o is None:
                return None
            if o.takes is None or o.takes is COUNT:
                if eq:
                    return None
                setattr(ns, o.dest, True if o.takes is None else getattr(ns, o.dest) + 1)
                continue
            if not eq:
                if len(names) > 1 or not rest:
                    return None
                value = rest.pop(0)
            try:
                v = o.takes(value)
            except ValueError:
                return None
            if o.choices and v not in o.choices:
                return None
            setattr(ns, o.dest, v)
    for p in verb.pos:
        if p.nargs in ("*", "+"):
            if p.nargs == "+" and not words:
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


def parser(prog: str = "xenopus"):
    """The argparse version of VERBS, for help text and error messages."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="A Xen-style hypervisor on KVM (xl-compatible verbs).")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        v = sub.add_parser(verb.name, help=verb.help)
        for o in verb.opts:
            text = argparse.SUPPRESS if o.help is None else o.help
            if o.takes is None:
                v.add_argument(*o.names, dest=o.dest, action="store_true", help=text)
            elif o.takes is COUNT:
                v.add_argument(*o.names, dest=o.dest, action="count", default=0, help=text)
            else:
                v.add_argument(*o.names, dest=o.dest, type=o.takes, choices=o.choices,
                               default=o.default, help=text)
        for pos in verb.pos:
            v.add_argument(pos.dest, metavar=pos.metavar, nargs=pos.nargs, help=pos.help)
        v.set_defaults(func=verb.func, op=verb.op)
    return p


def run() -> NoReturn:
    """The `xenopus` and `xl` programs: `main`, then out without the interpreter's
    teardown, which frees every imported module's objects one by one (several ms of a
    `create -c` of a small guest; benchmarks/startup_trace.py) for nothing: by then the
    verb has closed its connections and files. SystemExit (argparse's) exits as usual."""
    status: object = main()  # as sys.exit takes it: some verbs return None
    mark("cli: done")
    if status is None or isinstance(status, int):
        code = status or 0
    else:
        print(status, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: as Python's own exit reports it
        code = code or 120
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    mark("cli: imported")
    prog = os.path.basename(sys.argv[0]) if argv is None else "xenopus"
    if prog not in ("xl", "xenopus"):
        prog = "xenopus"  # python -m xenopus
    argv = sys.argv[1:] if argv is None else argv
    # xl's global options before the verb (xl.c main): -v (verbosity), -t and -T (progress
    # and log formats) change only xl's own logging and are taken and ignored; -f and -N
    # would change what a verb does, which xenopus does not offer.
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help") \
            and not argv[0].startswith("--"):
        bad = set(argv[0][1:]) - set("vtT")
        if bad:
            print(f"{prog}: global option -{''.join(sorted(bad))} is not supported "
                  "(only -v, -t, -T, which are ignored)", file=sys.stderr)
            return 1
        argv = argv[1:]
    if not argv:  # xl.c main: the verb list, and failure
        cmd_help(Namespace(verb_name=None))
        return 1
    if argv[0] in UNAVAILABLE:
        print(f"{prog}: {argv[0]}: {UNAVAILABLE[argv[0]]}", file=sys.stderr)
        return 1
    args = fast_parse(argv) or parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except XenopusError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except PermissionError as e:
        print(f"{prog}: {e.filename or ''}: permission denied (xenopus needs root for {ipc.run_dir()})", file=sys.stderr)
        return 1
