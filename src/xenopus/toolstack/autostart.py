"""Start the domains of /etc/xen/auto at boot and shut them down at stop, as Xen's
xendomains script does (tools/hotplug/Linux/xendomains.in, run by xendomains.service):
the systemd unit dist/xenopus-autostart.service (`make install-autostart`) runs
`python -m xenopus.toolstack.autostart start|stop [DIR]`.

start: every config in DIR (default /etc/xen/auto; regular files or symlinks to them, in
name order, as `for dom in $XENDOMAINS_AUTO/*`) is created unless a domain of its name
already runs ("(skip)"); a config that fails is reported and the others still start.
stop: every domain is asked to shut down (xendomains' default XENDOMAINS_AUTO_ONLY=false
and `shutdown --all --wait`; `--auto-only`: only DIR's), with the ACPI button for guests
without a PV control interface (xl's -F; xendomains has no fallback, but a KVM guest often
has only ACPI), then waited for up to XENDOMAINS_STOP_MAXWAIT's 300 s; what is left is
destroyed. Differences: no XENDOMAINS_SAVE (domains are shut down, not saved).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from xenopus.client import Connection, NoParavirt, NoSuchDomain, XenopusError
from xenopus.domain.config import ConfigError, load_config
from xenopus.toolstack import xlconf

AUTO_DIR = "/etc/xen/auto"  # XENDOMAINS_AUTO
STOP_MAXWAIT = 300.0  # XENDOMAINS_STOP_MAXWAIT, seconds


def configs(directory: str) -> list[Path]:
    """The config files of `directory`, in name order (editor backups and hidden files
    are no configs)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith("~"))


def start(directory: str, out=sys.stdout) -> int:
    """Create each config's domain unless it runs; 1 if any failed."""
    files = configs(directory)
    if not files:
        return 0
    failed = 0
    bridge = xlconf.load().vif_bridge  # as `xl create` takes it from xl.conf
    out.write("Starting auto Xen domains:")
    with Connection() as conn:
        running = {d["name"] for d in conn.request("list")["domains"]}
        for path in files:
            out.write(f" {path.name}")
            try:
                name = load_config(path)[0].name
            except ConfigError as e:
                out.write(f"\nAn error occurred while creating domain {path.name}: {e}\n!")
                failed = 1
                continue
            if name in running:
                out.write("(skip)")
                continue
            try:
                conn.request("create", path=str(path), overrides=[], cwd=str(path.parent),
                             vif_bridge=bridge)
            except XenopusError as e:
                out.write(f"\nAn error occurred while creating domain {path.name}: {e}\n!")
                failed = 1
                continue
            running.add(name)
    out.write("\n")
    out.flush()
    return failed


def stop(directory: str, auto_only: bool = False, maxwait: float = STOP_MAXWAIT,
         out=sys.stdout) -> int:
    """Shut every domain (or DIR's) down, wait up to `maxwait` seconds, destroy the rest."""
    with Connection() as conn:
        domains = conn.request("list")["domains"]
    if auto_only:
        names = set()
        for path in configs(directory):
            try:
                names.add(load_config(path)[0].name)
            except ConfigError:
                continue
        domains = [d for d in domains if d["name"] in names]
    if not domains:
        return 0
    out.write("Shutting down Xen domains:")
    waiters = []
    for d in domains:
        out.write(f" {d['name']}({d['domid']})")
        waiters.append(threading.Thread(target=shut_down, args=(str(d["domid"]),), daemon=True))
        waiters[-1].start()
    for w in waiters:
        w.join(maxwait)
    with Connection() as conn:
        for d in conn.request("list")["domains"]:
            if d["domid"] in {x["domid"] for x in domains}:
                out.write(f"\nTimeout: destroying {d['name']}({d['domid']})")
                try:
                    conn.request("destroy", dom=str(d["domid"]))
                except NoSuchDomain:
                    continue
    out.write("\n")
    out.flush()
    return 0


def shut_down(dom: str) -> None:
    """`xl shutdown -F -ww DOM`, without its messages."""
    try:
        with Connection(autostart=False) as conn:
            conn.request("shutdown", dom=dom, fallback=True, wait=True)
    except (NoSuchDomain, NoParavirt, XenopusError, OSError):
        return  # gone already, or refused: the timeout destroys it


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xenopus-autostart", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("directory", nargs="?", default=os.environ.get("XENDOMAINS_AUTO", AUTO_DIR))
    p.add_argument("--auto-only", action="store_true",
                   help="stop only the domains of DIRECTORY (XENDOMAINS_AUTO_ONLY=true)")
    p.add_argument("--maxwait", type=float, default=STOP_MAXWAIT,
                   help="seconds to wait for domains to shut down before destroying them")
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            return start(args.directory)
        return stop(args.directory, args.auto_only, args.maxwait)
    except (XenopusError, xlconf.XlConfError) as e:
        print(f"xenopus-autostart: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
