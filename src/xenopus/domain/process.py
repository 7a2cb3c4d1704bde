"""The domain process: one per domain, holding its VM and device backends.

It is forked by the zygote (see `xenopus.toolstack.zygote`) with a control channel to
the daemon already connected. It never sees another domain, so a crash or compromise of
one domain's process touches nothing else. Guest stops (`StopReason`) are mapped to
the configured `on_poweroff`/`on_reboot`/`on_crash` action here, as Xen's toolstack does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from xenopus import ipc
from xenopus.control import Reply, Request
from xenopus.devices.ratelimit import RateLimit
from xenopus.domain.builder import Guest, build_guest
from xenopus.domain.config import DomainConfig
from xenopus.domain.console import Console
from xenopus.domain.interdomain_port import InterdomainPort
from xenopus.domain.protocol import (
    DomainEvent,
    Finished,
    LogLine,
    Ready,
    Spawn,
    StartFailed,
    StateChanged,
    Stopped,
)
from xenopus.domain.restart import RestartBackoff
from xenopus.domain.xenguest import StoreProxy
from xenopus.vm import StopReason

log = logging.getLogger("xenopus.domain")

# console_io and port-0xE9 lines a guest may send to the host log: a burst, then a
# steady rate (Xen's printk limit allows 10, then one per 5 s; these are our guests'
# debug output, so more, but a guest printing in a loop no longer floods every log).
GUEST_LOG_BURST = 1000
GUEST_LOG_RATE = 100  # lines per second

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_START_FAILED = 2


class DebugLog:
    """Port-0xE9 output, a line at a time, with Xen's `(dN) ` prefix: into the domain log
    and, through `sink`, the host log that `xenopus dmesg` prints (as Xen's hvm_print_line
    does for port 0xE9)."""

    def __init__(self, domid: int, sink: Callable[[str], None]):
        self.prefix = f"(d{domid}) "
        self.sink = sink
        self._line = bytearray()

    def write(self, data: bytes) -> None:
        for b in data:
            if b == 0x0A:
                self.sink(self.prefix + self._line.decode(errors="replace").rstrip("\r"))
                self._line.clear()
            elif len(self._line) < 4096:
                self._line.append(b)


DomainStep = Callable[["DomainProcess", Request], Reply]
STEPS: dict[str, tuple[DomainStep, bool]] = {}  # op -> (handler, needs a live guest)


def domain_step(op: str, *, live: bool = False) -> Callable[[DomainStep], DomainStep]:
    """Register the domain process's handler for the daemon's request `op` (the daemon
    forwards every per-domain request it has no step of its own for). A `live` step runs
    only while the guest exists and has not stopped; otherwise the reply names the state."""

    def register(handler: DomainStep) -> DomainStep:
        STEPS[op] = (handler, live)
        return handler

    return register


class DomainProcess:
    def __init__(
        self, domid: int, config: DomainConfig, control: socket.socket, run_dir: Path,
        paused: bool = False, xenstore: socket.socket | None = None,
        interdomain: socket.socket | None = None,
    ):
        self.start_paused = paused
        self.xenstore = xenstore  # the guest's XenStore ring traffic goes to the daemon here
        self.interdomain_sock = interdomain  # channels/grants to other domains, via the daemon
        self.interdomain: InterdomainPort | None = None
        self.domid = domid
        self.config = config
        self.control = control
        self.run_dir = run_dir
        self.guest: Guest | None = None
        self.state = "starting"  # running | paused | shutdown | crashed
        self.exit_code = EXIT_OK
        self._started = False  # whether the current incarnation's vCPUs have run
        self._guest_log_limit = RateLimit(GUEST_LOG_RATE, GUEST_LOG_BURST)
        self.crash_backoff = RestartBackoff()
        self.debug = DebugLog(domid, self.hv_log)
        self._writer: asyncio.StreamWriter | None = None
        self._finished = asyncio.Event()

    # -- daemon channel ---------------------------------------------------------------
    def _send(self, msg: Reply | DomainEvent) -> None:
        if self._writer is not None and not self._writer.is_closing():
            ipc.write_message(self._writer, msg.to_wire())

    def hv_log(self, line: str) -> None:
        """A line for the host log (`xenopus dmesg`): console_io and port-0xE9 output,
        rate-limited (a dropped run is reported as `(dN) N lines suppressed`)."""
        missed = self._guest_log_limit.take()
        if missed is None:
            return
        if missed:
            self._host_log(f"(d{self.domid}) {missed} lines suppressed")
        self._host_log(line)

    def _host_log(self, line: str) -> None:
        log.info("%s", line)
        if threading.current_thread() is threading.main_thread():
            self._send(LogLine(line))
        else:
            self._loop.call_soon_threadsafe(self._send, LogLine(line))

    def _set_state(self, state: str) -> None:
        self.state = state
        self._send(StateChanged(state))

    # -- guest lifecycle ----------------------------------------------------------------
    def _start_guest(self, paused: bool = False) -> None:
        """Build a fresh incarnation; with `paused`, its vCPUs wait for `unpause` (xl create -p)."""
        guest = build_guest(
            self.config, console_out=self.console.write, debug_out=self.debug.write,
            vconsole_out=self.vconsole.write, domid=self.domid, hv_log=self.hv_log,
            pv_console_out=self.pvconsole.write, store=self.store,
            xenstore_path=ipc.xenstored_socket_path(self.run_dir) if self.xenstore else None,
        )
        self.guest = guest
        self.crash_backoff.started()
        if guest.xen is not None and self.interdomain is not None:
            guest.xen.connect_interdomain(self.interdomain)
        self.console.on_input = guest.serial.receive
        if guest.vconsole is not None:
            self.vconsole.on_input = guest.vconsole.receive
        if guest.xen is not None:
            self.pvconsole.on_input = guest.xen.receive
        self._started = False
        if paused:
            self._set_state("paused")
        else:
            self._run_vcpus()

    def _run_vcpus(self) -> None:
        loop = asyncio.get_running_loop()
        guest = self.guest
        assert guest is not None
        guest.machine.start(
            guest.boot.cpu, lambda reason: loop.call_soon_threadsafe(self._on_stop, guest, reason)
        )
        self._started = True
        self._set_state("running")

    def _teardown(self) -> None:
        if self.guest is not None:
            self.guest.close()
            self.guest = None
            self.console.on_input = self.vconsole.on_input = self.pvconsole.on_input = lambda d: None

    def _on_stop(self, guest: Guest, reason: StopReason) -> None:
        if guest is not self.guest:
            return  # a late report from an incarnation already torn down
        action = self.config.action_for(reason.kind)
        if reason.kind == "crash":
            log.error("domain %d (%s) crashed: %s", self.domid, self.config.name, reason.detail)
        else:
            log.info("domain %d (%s) %s: %s", self.domid, self.config.name, reason.kind, reason.detail)
        self._send(Stopped(reason.kind, reason.detail, action))
        if action == "preserve":
            guest.machine.stop()  # keep memory and state for inspection
            self._set_state("crashed" if reason.kind == "crash" else "shutdown")
            return
        if action == "restart":
            self._teardown()
            delay = self.crash_backoff.delay() if reason.kind == "crash" else 0.0
            if delay:
                log.warning("domain %d (%s) crashed after %.1f s; restarting in %.0f s",
                            self.domid, self.config.name, self.crash_backoff.ran, delay)
                self._set_state("crashed")
                self._loop.call_later(delay, self._restart)
                return
            self._restart()
            return
        if reason.kind == "crash":
            self.exit_code = EXIT_CRASHED
        self._finished.set()  # run() reports the end, then tears the VM down

    def _restart(self) -> None:
        if self._finished.is_set():
            return  # destroyed while it waited
        try:
            self._start_guest()
        except Exception as e:  # noqa: BLE001 - any failure to rebuild ends the domain
            log.error("domain %d (%s): restart failed: %s", self.domid, self.config.name, e)
            self.exit_code = EXIT_START_FAILED
            self._finished.set()

    # -- requests from the daemon ------------------------------------------------------
    def _command(self, req: Request) -> Reply:
        entry = STEPS.get(req.op)
        if entry is None:
            return Reply.failure(f"unknown operation {req.op!r}")
        handler, live = entry
        if live and (self.guest is None or self.state in ("shutdown", "crashed")):
            return Reply.failure(f"domain is {self.state}")
        return handler(self, req)

    def _live_guest(self) -> Guest:
        """The guest of a `live` step (`_command` has checked there is one)."""
        assert self.guest is not None
        return self.guest

    @domain_step("info")
    def _info(self, req: Request) -> Reply:
        guest = self.guest
        return Reply.success(
            state=self.state, cpu_time=guest.machine.cpu_time() if guest else 0.0,
            pid=os.getpid(), protocol=guest.boot.protocol if guest else None,
            memory=guest.memory_mib() if guest else None,
        )

    @domain_step("destroy")
    def _destroy(self, req: Request) -> Reply:
        self._finished.set()
        return Reply.success()

    @domain_step("vcpu-list")
    def _vcpu_list(self, req: Request) -> Reply:
        # Also of a preserved domain: its vCPUs, stopped.
        return Reply.success(vcpus=self.guest.machine.vcpu_info() if self.guest else [])

    @domain_step("devices")
    def _devices(self, req: Request) -> Reply:
        return Reply.success(devices=self.guest.inventory.describe() if self.guest else [])

    @domain_step("pause", live=True)
    def _pause(self, req: Request) -> Reply:
        if self._started and self.state != "paused":
            self._live_guest().machine.pause()
            self._set_state("paused")
        return Reply.success()

    @domain_step("unpause", live=True)
    def _unpause(self, req: Request) -> Reply:
        if not self._started:
            self._run_vcpus()
        elif self.state == "paused":
            self._live_guest().machine.resume()
            self._set_state("running")
        return Reply.success()

    @domain_step("shutdown", live=True)
    def _shutdown(self, req: Request) -> Reply:
        # The ACPI power button (GED event → \_SB.PWRB, Notify 0x80): the guest's own
        # shutdown path runs and ends in S5, which on_poweroff then handles.
        if not self._started:
            return Reply.failure("domain has not run yet; unpause or destroy it")
        if self.state == "paused":
            return Reply.failure("domain is paused; unpause it to let it shut down")
        self._live_guest().power.press_power_button()
        return Reply.success()

    @domain_step("reboot", live=True)
    def _reboot(self, req: Request) -> Reply:
        guest = self._live_guest()
        if not self._started:
            self._run_vcpus()
        elif self.state == "paused":
            guest.machine.resume()
        guest.machine.request_stop(StopReason("reboot", "reboot requested by the toolstack"))
        return Reply.success()

    @domain_step("vcpu-pin", live=True)
    def _vcpu_pin(self, req: Request) -> Reply:
        """Hard-pin one vCPU ("all": every vCPU) to host CPUs. The pins last for this
        incarnation: a rebooted domain starts from its configuration, as under Xen."""
        machine = self._live_guest().machine
        vcpu, cpus = req.args.get("vcpu"), req.args.get("cpus")
        if not isinstance(cpus, list) or not all(isinstance(c, int) for c in cpus):
            return Reply.failure("vcpu-pin needs a list of host CPU numbers")
        if vcpu == "all":
            targets = range(len(machine.vcpus))
        elif isinstance(vcpu, int):
            targets = range(vcpu, vcpu + 1)
        else:
            return Reply.failure(f"invalid vCPU {vcpu!r}")
        try:
            for v in targets:
                machine.pin(v, cpus)
        except ValueError as e:
            return Reply.failure(str(e))
        return Reply.success()

    async def _serve_control(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await ipc.read_message(reader)
                if msg is None:
                    break
                req = Request.from_wire(msg)
            except ValueError as e:  # not JSON, not an object, no op (ProtocolError): say so
                log.error("domain %d: malformed control request: %s", self.domid, e)
                self._send(Reply.failure(f"malformed request: {e}"))
                continue
            try:
                reply = self._command(req)
            except Exception as e:  # noqa: BLE001 - a bad request must not take the domain down
                log.exception("control request %r failed", req.op)
                reply = Reply.failure(str(e))
            self._send(reply.numbered(req.seq))
        log.warning("domain %d: daemon connection closed; the domain keeps running", self.domid)

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self.console = Console(loop)
        self.vconsole = Console(loop)  # the virtio console port, when the config has one
        self.pvconsole = Console(loop)  # the Xen PV console ring
        self.store = StoreProxy(loop, self.xenstore)
        await self.store.start()
        if self.interdomain_sock is not None:
            self.interdomain = InterdomainPort(loop, self.interdomain_sock, self.domid)
        reader, self._writer = await asyncio.open_unix_connection(sock=self.control)
        os.makedirs(ipc.domain_dir(self.domid, self.run_dir), exist_ok=True)
        try:
            await self.console.serve(ipc.console_socket_path(self.domid, self.run_dir))
            if self.config.virtio_console:
                await self.vconsole.serve(ipc.console_socket_path(self.domid, self.run_dir, "virtio"))
            if self.config.xen_platform != "0":
                await self.pvconsole.serve(ipc.console_socket_path(self.domid, self.run_dir, "pv"))
            self._start_guest(paused=self.start_paused)
        except Exception as e:  # noqa: BLE001 - reported to the CLI, which names the problem
            log.error("domain %d (%s): cannot start: %s", self.domid, self.config.name, e)
            self._send(StartFailed(str(e)))
            await self._writer.drain()
            self._teardown()
            if self.interdomain is not None:
                self.interdomain.shutdown()
            return EXIT_START_FAILED
        guest = self.guest
        # A Xen-aware image (one that names its OS in a Xen ELF note) gets its PV console
        # by default, as under Xen; everything else its serial port.
        xen_aware = guest.xen is not None and bool(guest.boot.details.get("guest_os"))
        self._send(Ready(
            os.getpid(), guest.boot.protocol, guest.xen_path, "pv" if xen_aware else "serial",
            guest.xen.console_nodes() if guest.xen is not None else {},
        ))
        control = asyncio.create_task(self._serve_control(reader))
        await self._finished.wait()
        control.cancel()
        if self.guest is not None:
            self.guest.machine.stop()
        # Report the end before tearing the VM down: releasing a VM's memory and fds is
        # the kernel's slow part, and nobody needs to wait for it.
        await self.console.close()
        await self.vconsole.close()
        await self.pvconsole.close()
        await self.store.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._send(Finished(self.exit_code, usage.ru_maxrss, usage.ru_utime + usage.ru_stime))
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()
        self._writer.close()
        self._teardown()
        if self.interdomain is not None:
            self.interdomain.shutdown()
        return self.exit_code


def run_domain(
    spawn: Spawn, control_fd: int, xenstore_fd: int | None = None,
    interdomain_fd: int | None = None,
) -> int:
    """Entry point of a freshly forked domain process."""
    domid, cfg = spawn.domid, spawn.config
    logdir = Path(spawn.run_dir) / "log"
    logdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logdir / f"{cfg.name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    control = socket.socket(fileno=control_fd)
    xenstore = socket.socket(fileno=xenstore_fd) if xenstore_fd is not None else None
    interdomain = socket.socket(fileno=interdomain_fd) if interdomain_fd is not None else None
    proc = DomainProcess(
        domid, cfg, control, Path(spawn.run_dir), paused=spawn.paused, xenstore=xenstore,
        interdomain=interdomain,
    )
    try:
        return asyncio.run(proc.run())
    except Exception:
        log.exception("domain %d: fatal error in the domain process", domid)
        return EXIT_CRASHED
