"""The domain process: one per domain, holding its VM and device backends.

It is forked by the zygote (see `xenopus.toolstack.zygote`) with a control channel to
the daemon already connected. It never sees another domain, so a crash or compromise of
one domain's process touches nothing else. Guest stops (`StopReason`) are mapped to
the configured `on_poweroff`/`on_reboot`/`on_crash` action here, as Xen's toolstack does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from xenopus import held_files, host, ipc, stream
from xenopus.arch import x86
from xenopus.control import DISK, NIC, Reply, Request
from xenopus.devices.mac import format_mac, parse_mac
from xenopus.devices.ratelimit import RateLimit
from xenopus.devices.tap import Tap
from xenopus.domain import coredump, snapshot
from xenopus.domain.builder import Guest, build_guest
from xenopus.domain.channel import ChannelEnd, ChannelError, close_channels, open_channels
from xenopus.domain.config import DomainConfig
from xenopus.domain.console import Console
from xenopus.domain.devspec import DiskSpec, VifSpec, vif_devids, without_vif
from xenopus.domain.interdomain_port import InterdomainPort
from xenopus.domain.inventory import Inventory, PvDevicePart
from xenopus.domain.jail import Jail, debug_flags, set_process_title
from xenopus.domain.protocol import (
    EXIT_REBUILD,
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
from xenopus.domain.vif import VifEnd, VifTaps
from xenopus.domain.xenguest import StoreProxy
from xenopus.kvm import Kvm
from xenopus.memory import PAGE_SIZE
from xenopus.sampler import ENV, StackSampler
from xenopus.trace import mark
from xenopus.vm import CpuState, StopReason
from xenopus.xen.xenstore.peer import peer_of

log = logging.getLogger("xenopus.domain")

# console_io and port-0xE9 lines a guest may send to the host log: a burst, then a
# steady rate (Xen's printk limit allows 10, then one per 5 s; these are our guests'
# debug output, so more, but a guest printing in a loop no longer floods every log).
GUEST_LOG_BURST = 1000
GUEST_LOG_RATE = 100  # lines per second

# xl.cfg on_* actions that leave the stopped guest in place for the daemon's next step
HELD_ACTIONS = ("preserve", "rename-restart", "coredump-destroy", "coredump-restart")
# A restored domain process's start-up, phase by phase (`DomainProcess._phases`).
PHASES = ("setup", "build", "jail", "handover", "restore")
EXIT_OK = 0
# Seconds a restore waits for its image: the request travels with the spawn and a
# clone's image comes once the daemon has checked it (every record's CRC: ~1 s a GiB here).
IMAGE_TIMEOUT = 120.0
EXIT_CRASHED = 1
EXIT_START_FAILED = 2
ADOPT_TIMEOUT = 10.0  # seconds an adopting daemon has to send its request
DETACH_NOTICE = 5.0  # seconds for the lost daemon's stream end to reach us (the loop)
DETACH_TIMEOUT = 10.0  # libxl's LIBXL_DESTROY_TIMEOUT: a frontend's time to close


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


# A step that takes long (save, restore) returns an awaitable: it runs as a task of its
# own and its reply goes when it is done, while the channel serves other requests.
DomainStep = Callable[["DomainProcess", Request], Reply | Awaitable[Reply]]
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
        self, domid: int, config: DomainConfig, control: socket.socket, run_dir: str,
        paused: bool = False, xenstore: socket.socket | None = None,
        interdomain: socket.socket | None = None, jail: Jail | None = None,
        first: Request | None = None,
    ):
        self.start_paused = paused
        self.first_request = first  # answered once Ready is sent (`Spawn.first`)
        self.jail = jail or Jail(domid, config, str(run_dir))
        self.kvm: Kvm | None = None  # opened once: a jailed process cannot open it again
        self.taps = VifTaps()  # likewise
        self.channels: list[ChannelEnd] = []  # likewise, opened before the jail
        self.channel_error: str | None = None
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
        self.rebuild_by_daemon = False  # xl config-update: see _hand_back
        self._started = False  # whether the current incarnation's vCPUs have run
        self._guest_log_limit = RateLimit(GUEST_LOG_RATE, GUEST_LOG_BURST)
        self.crash_backoff = RestartBackoff()
        self._boot_state: CpuState | None = None  # where they start (None: as restored)
        self.busy: str | None = None  # a save or restore under way: no live step meanwhile
        self.born = time.monotonic()  # when the process started (run_domain sets it)
        self.born_cpu = 0.0  # its CPU seconds then (those of a spare's imports before)
        self.marks: dict[str, float] = {}  # the end of each start-up phase (PHASES)
        self._work: set[asyncio.Task[None]] = set()
        self.debug = DebugLog(domid, self.hv_log)
        self._writer: asyncio.StreamWriter | None = None
        self._finished = asyncio.Event()
        self._control: asyncio.Task | None = None
        self._attached = True  # the spawning daemon is, until its control stream ends
        self._detached = asyncio.Event()  # set when it has ended
        self._daemon_uid = os.geteuid()  # the daemon's: the one that may adopt us

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
        self._build_guest()
        self._run_or_pause(paused)

    def _build_guest(self, restoring: bool = False) -> None:
        """A new incarnation of the guest (`restoring`: its RAM about to be replaced by
        an image's, `build_guest`)."""
        if self.kvm is None:
            self.kvm = Kvm()
        if host.architecture() == "arm64":
            from xenopus.domain.builder_arm64 import build_arm64_domain  # arm64 hosts only

            # The arm64 guest answers the names read below (Xen: None).
            guest = build_arm64_domain(  # type: ignore[assignment]
                self.config, console_out=self.console.write, vconsole_out=self.vconsole.write,
                domid=self.domid, taps=self.taps, kvm=self.kvm)
        else:
            guest = build_guest(
                self.config, console_out=self.console.write, debug_out=self.debug.write,
                vconsole_out=self.vconsole.write, domid=self.domid, hv_log=self.hv_log,
                pv_console_out=self.pvconsole.write, store=self.store,
                xenstore_path=ipc.xenstored_socket_path(self.run_dir) if self.xenstore else None,
                kvm=self.kvm, taps=self.taps, channels=self.channels, restoring=restoring,
            )
        self.guest = guest
        self.crash_backoff.started()
        self._boot_state = guest.boot.cpu
        if guest.xen is not None and self.interdomain is not None:
            guest.xen.connect_interdomain(self.interdomain)
        if guest.serial is not None:  # Xen's PVH platform has no UART
            self.console.on_input = guest.serial.receive
        if guest.vconsole is not None:
            self.vconsole.on_input = guest.vconsole.receive
        if guest.xen is not None:
            self.pvconsole.on_input = guest.xen.receive
            if guest.xen.domain is not None:
                loop = self._loop
                guest.xen.domain.on_suspend = lambda vcpu: loop.call_soon_threadsafe(
                    self._suspended, guest, vcpu)
        self.suspended = False
        self._started = False

    def _run_or_pause(self, paused: bool) -> None:
        if paused:
            self._set_state("paused")
        else:
            self._run_vcpus()

    def _run_vcpus(self) -> None:
        loop = asyncio.get_running_loop()
        guest = self.guest
        assert guest is not None
        guest.machine.start(
            self._boot_state, lambda reason: loop.call_soon_threadsafe(self._on_stop, guest, reason)
        )
        if guest.cpu_hotplug is not None and guest.xen is None:
            # The vCPUs ACPI has absent do not run (wait-for-SIPI would start on a SIPI the
            # MADT does not allow) until xl vcpu-set inserts them. A Xen guest's come up by
            # VCPUOP_up or INIT/SIPI as cpu/N/availability says, as before.
            for i in guest.cpu_hotplug.offline():
                guest.machine.vcpu_down(i)
        self._started = True
        self._set_state("running")

    def _teardown(self) -> None:
        if self.guest is not None:
            if os.environ.get(ENV) and self.guest.xen is not None:  # debug: the sampler's
                log.info("%s: hypercalls that reached us, by number: %s", ENV,
                         sorted(self.guest.xen.table.counts.items()))
            self.guest.close()
            self.guest = None
            self.console.on_input = self.vconsole.on_input = self.pvconsole.on_input = lambda d: None

    def _on_stop(self, guest: Guest, reason: StopReason) -> None:
        if guest is not self.guest:
            return  # a late report from an incarnation already torn down
        mark("domain: guest stopped")
        action = self.config.action_for(reason.kind)
        if reason.kind == "crash":
            log.error("domain %d (%s) crashed: %s", self.domid, self.config.name, reason.detail)
        else:
            log.info("domain %d (%s) %s: %s", self.domid, self.config.name, reason.kind, reason.detail)
        self._send(Stopped(reason.kind, reason.detail, action))
        if action in HELD_ACTIONS:
            # Keep memory and state for inspection; for the others the daemon follows
            # up (it renames this one and creates another, or has the core dumped
            # before a destroy or a "restart").
            guest.machine.stop()
            self._set_state("crashed" if reason.kind == "crash" else "shutdown")
            return
        if action == "restart":
            self._teardown()
            # After xl config-update the daemon builds the next incarnation.
            restart = self._hand_back if self.rebuild_by_daemon else self._restart
            delay = self.crash_backoff.delay() if reason.kind == "crash" else 0.0
            if delay:
                log.warning("domain %d (%s) crashed after %.1f s; restarting in %.0f s",
                            self.domid, self.config.name, self.crash_backoff.ran, delay)
                self._set_state("crashed")
                self._loop.call_later(delay, restart)
                return
            restart()
            return
        if reason.kind == "crash":
            self.exit_code = EXIT_CRASHED
        self._finished.set()  # run() reports the end, then tears the VM down

    def _suspended(self, guest: Guest, vcpu: int) -> None:
        """The guest suspended itself (SHUTDOWN_suspend): shut down, reason suspend, its
        memory and vCPUs held until `resume` or a destroy (libxl_domain_suspend_only)."""
        if guest is not self.guest:
            return
        self.suspended = True
        self._send(Stopped("suspend", f"SCHEDOP_shutdown(SHUTDOWN_suspend) on vCPU {vcpu}",
                           "preserve"))
        self._set_state("shutdown")

    def _hand_back(self) -> None:
        """End this process so that the daemon builds the next incarnation."""
        if not self._finished.is_set():
            self.exit_code = EXIT_REBUILD
            self._finished.set()

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
    def _command(self, req: Request) -> Reply | Awaitable[Reply]:
        entry = STEPS.get(req.op)
        if entry is None:
            return self._refused(req, f"unknown operation {req.op!r}")
        handler, live = entry
        if live and (self.guest is None or self.state in ("shutdown", "crashed")):
            return self._refused(req, f"domain is {self.state}")
        if live and self.busy:
            return self._refused(req, f"domain is busy: {self.busy}")
        return handler(self, req)

    def _refused(self, req: Request, why: str) -> Reply | Awaitable[Reply]:
        """A request not served: the files the daemon handed over for it (a tap, an
        image, a save file) are taken and closed before the answer, not kept until the
        domain ends (a refused network-attach leaves no tap on the host)."""
        token = req.args.get("files")
        port = self.interdomain
        if not isinstance(token, int) or isinstance(token, bool) or port is None:
            return Reply.failure(why)

        async def closing() -> Reply:
            with contextlib.suppress(ConnectionError):  # they never came: nothing to close
                for fd in await port.take_files(token):
                    os.close(fd)
            return Reply.failure(why)

        return closing()

    def _answer(self, req: Request) -> None:
        """Carry out the daemon's request and reply (now, or when a long step is done)."""
        try:
            reply = self._command(req)
        except Exception as e:  # noqa: BLE001 - a bad request must not take the domain down
            log.exception("control request %r failed", req.op)
            reply = Reply.failure(str(e))
        if inspect.isawaitable(reply):
            self._answer_later(reply, req)
            return
        self._send(reply.numbered(req.seq))

    def _answer_later(self, pending: Awaitable[Reply], req: Request) -> None:
        async def answer() -> None:
            try:
                reply = await pending
            except Exception as e:  # noqa: BLE001 - reported to the daemon, the domain lives on
                log.exception("control request %r failed", req.op)
                reply = Reply.failure(str(e))
            self._send(reply.numbered(req.seq))

        task = asyncio.create_task(answer())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _live_guest(self) -> Guest:
        """The guest of a `live` step (`_command` has checked there is one)."""
        assert self.guest is not None
        return self.guest

    @domain_step("info")
    def _info(self, req: Request) -> Reply:
        guest = self.guest
        online: dict[str, int] = {}
        if req.args.get("vcpus") and guest is not None:
            # Xen's nr_online_vcpus (XEN_DOMCTL_getdomaininfo: each vCPU not VPF_down),
            # what xl list's VCPUs column shows: the vCPUs the guest has up now, not the
            # config's. Asked for by list only: it kicks every vCPU (vcpu_info).
            count = sum(1 for v in guest.machine.vcpu_info() if v["online"])
            # created paused: Xen's domain builder brought vCPU0 up
            online["online_vcpus"] = count if self._started else max(count, 1)
        return Reply.success(
            state=self.state, cpu_time=guest.machine.cpu_time() if guest else 0.0,
            **online,
            pid=self.jail.host_pid, protocol=guest.boot.protocol if guest else None,
            jail=self.jail.layers,
            memory=guest.memory_mib() if guest else None,
        )

    if "hooks" in debug_flags():  # test-only, never registered in production

        @domain_step("debug-forbidden-syscall")
        def _forbidden_syscall(self, req: Request) -> Reply:
            """Make a system call outside the seccomp allow-list (chroot)."""
            os.chroot("/")
            return Reply.success()

    @domain_step("destroy")
    def _destroy(self, req: Request) -> Reply:
        self._finished.set()
        return Reply.success()

    @domain_step("vcpu-list")
    def _vcpu_list(self, req: Request) -> Reply:
        # Also of a preserved domain: its vCPUs, stopped.
        return Reply.success(vcpus=self.guest.machine.vcpu_info() if self.guest else [])

    @domain_step("cpu-policy")
    def _cpu_policy(self, req: Request) -> Reply:
        """The domain's effective CPU policy (vm/cpu_policy.py), as `to_dict` writes it."""
        policy = self.guest.machine.cpu_policy if self.guest else None
        if policy is None:
            return Reply.failure("the domain has no guest, so no CPU policy")
        return Reply.success(policy=policy.to_dict())

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
            mark("domain: vcpus started")
        elif self.state == "paused":
            self._live_guest().machine.resume()
            self._set_state("running")
        return Reply.success()

    @domain_step("trigger", live=True)
    def _trigger(self, req: Request) -> Reply:
        """xl trigger DOM NAME [VCPU] (libxl_send_trigger, XEN_DOMCTL_sendtrigger in
        xen/arch/x86/domctl.c) on KVM: `power` presses the ACPI power button (GED event
        → \\_SB.PWRB, Notify 0x80; the guest's own shutdown ends in S5, which on_poweroff
        handles); `reset` resets the machine (on_reboot applies; Xen answers ENOSYS on
        x86); `nmi` and `init` reach the vCPU's local APIC as an MSI of that delivery
        mode (what KVM_NMI and an INIT IPI do). `sleep` and `s3resume` are refused: the
        platform has no sleep button and no S3."""
        guest = self._live_guest()
        name, vcpu = req.args.get("trigger"), req.args.get("vcpu", 0)
        if not isinstance(vcpu, int) or not 0 <= vcpu < len(guest.machine.vcpus):
            # domctl.c: -ESRCH for a vCPU the domain does not have
            return Reply.failure(f"trigger: domain has no vCPU {vcpu!r}")
        if name == "reset":
            if not self._started:
                self._run_vcpus()
            elif self.state == "paused":
                guest.machine.resume()
            guest.machine.request_stop(StopReason("reboot", "reset trigger from the toolstack"))
            return Reply.success()
        if name in ("sleep", "s3resume"):
            return Reply.failure(f"trigger {name}: not available on this platform (no ACPI"
                                 " sleep button, no S3 state)")
        if name not in ("power", "nmi", "init"):
            return Reply.failure(f"Invalid trigger \"{name}\"")
        if not self._started:
            return Reply.failure("domain has not run yet; unpause or destroy it")
        if name == "power":
            if self.state == "paused":
                return Reply.failure("domain is paused; unpause it to let it shut down")
            if guest.power is None:
                return Reply.failure("trigger power: this guest has no power button")
            guest.power.press_power_button()
            return Reply.success()
        if host.architecture() == "arm64":
            return Reply.failure(f"trigger {name}: not available on arm64 (it is a local"
                                 " APIC delivery mode)")
        mode = x86.MSI_DELIVERY_NMI if name == "nmi" else x86.MSI_DELIVERY_INIT
        # The MADT gives vCPU i the APIC ID i (acpi/tables.py).
        route = guest.machine.allocate_msi()
        try:
            route.update(x86.MSI_ADDRESS_BASE | vcpu << x86.MSI_ADDRESS_DEST_SHIFT,
                         mode << x86.MSI_DATA_DELIVERY_SHIFT)
            route.trigger()
        finally:
            route.release()  # KVM's irqfd shutdown flushes a pending injection first
        return Reply.success()

    @domain_step("resume")
    def _resume(self, req: Request) -> Reply:
        """xl resume (libxl_domain_resume with suspend_cancel: xc_domain_resume's fast
        path): a suspended guest's SCHEDOP_shutdown returns 1 and it runs on."""
        if self.guest is None or not self.suspended:
            # xc_resume.c modify_returncode's refusal
            return Reply.failure(f"domain {self.domid} is not suspended (it is {self.state})")
        self.suspended = False
        self._set_state("running")
        self.guest.machine.resume()
        return Reply.success()

    @domain_step("rebuild-by-daemon")
    def _rebuild_by_daemon(self, req: Request) -> Reply:
        """xl config-update: the domain's next restart is the daemon's, from the new
        config (this process, jailed, could not open its files)."""
        self.rebuild_by_daemon = True
        return Reply.success()

    @domain_step("restart")
    def _restart_step(self, req: Request) -> Reply:
        """Build the next incarnation of a guest held after its stop (coredump-restart,
        once the core is written)."""
        if self.guest is None or self.state not in ("shutdown", "crashed"):
            return Reply.failure(f"restart: domain is {self.state}, not stopped")
        self._teardown()
        self._restart()
        return Reply.success()

    @domain_step("dump-core")
    def _dump_core(self, req: Request) -> Awaitable[Reply]:
        return self._while_busy("dumping core", self._dumping_core(req))

    async def _dumping_core(self, req: Request) -> Reply:
        """xl dump-core: guest RAM as an ELF core (domain/coredump.py) into the file the
        daemon handed over; a running guest is paused meanwhile."""
        out = await self._take_file(req, "wb")  # first: a refusal must not leave it open
        guest = self.guest
        if guest is None:
            out.close()
            return Reply.failure(f"domain is {self.state}: it has no memory to dump")
        running = self.state == "running" and self._started
        with out:
            if running:
                guest.machine.pause()
            try:
                size = await asyncio.to_thread(
                    coredump.write_core, out.fileno(), guest.memory.ram_ranges(),
                    guest.memory.view)
            finally:
                if running and self.guest is guest:
                    guest.machine.resume()
        return Reply.success(octets=size)

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

    # -- resources and PV hotplug (xl mem-set/mem-max, block-attach/block-detach) ----------
    @domain_step("set-maxmem", live=True)
    def _set_maxmem(self, req: Request) -> Reply:
        """xc_domain_setmaxmem: the domain's max_pages, `kib` KiB (the daemon computed it
        as libxl does and writes memory/target or static-max itself)."""
        kib = req.args.get("kib")
        xen = self._live_guest().xen
        if xen is None or xen.domain is None:
            return Reply.failure("the domain has no Xen interface")
        if not isinstance(kib, int) or isinstance(kib, bool) or kib < 0:
            return Reply.failure(f"set-maxmem needs a size in KiB, not {kib!r}")
        xen.domain.p2m.set_max_pages(kib * 1024 // PAGE_SIZE)
        return Reply.success()

    @domain_step("balloon-target", live=True)
    def _balloon_target(self, req: Request) -> Reply:
        """xl mem-set of a guest without Xen: its virtio balloon holds its RAM less `kib`
        (a balloon cannot give more than the RAM the guest was built with)."""
        guest = self._live_guest()
        kib = req.args.get("kib")
        if guest.balloon is None:
            return Reply.failure("the domain has neither the Xen interface nor a virtio"
                                 " balloon (virtio_balloon = 1): its memory cannot change")
        if not isinstance(kib, int) or isinstance(kib, bool) or kib < 0:
            return Reply.failure(f"balloon-target needs a size in KiB, not {kib!r}")
        ram = guest.memory.ram_size // 1024
        if kib > ram:
            return Reply.failure(f"{kib} KiB is more than the {ram} KiB of RAM the guest was"
                                 " built with (a virtio balloon only gives back)")
        guest.balloon.set_target((ram - kib) * 1024 // PAGE_SIZE)
        return Reply.success()

    @domain_step("cpu-hotplug", live=True)
    def _cpu_hotplug(self, req: Request) -> Reply:
        """xl vcpu-set of a guest without Xen: ACPI CPU hotplug (devices/cpu_hotplug.py)
        — vCPUs 0..count-1 present, the rest asked to leave (the guest ejects them)."""
        guest = self._live_guest()
        count = req.args.get("count")
        if guest.cpu_hotplug is None:
            return Reply.failure("vCPU hotplug: this guest has no ACPI CPU hotplug"
                                 " (arm64 guests: not implemented)")
        if not isinstance(count, int) or isinstance(count, bool):
            return Reply.failure(f"cpu-hotplug needs a vCPU count, not {count!r}")
        try:
            inserted, removing = guest.cpu_hotplug.set_online(count)
        except ValueError as e:
            return Reply.failure(str(e))
        return Reply.success(inserted=inserted, removing=removing)

    @domain_step("block-attach", live=True)
    def _block_attach(self, req: Request) -> Awaitable[Reply]:
        return self._attaching(req)

    async def _attaching(self, req: Request) -> Reply:
        """A Xen PV disk (`disk`, a DiskSpec's dict) on the image the daemon handed over."""
        guest = self._live_guest()
        token = req.args.get("files")
        if self.interdomain is None or not isinstance(token, int):
            return Reply.failure("no file was handed over")
        fds = await self.interdomain.take_files(token)
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            return Reply.failure("no file was handed over")
        try:
            disk = DiskSpec.from_dict(dict(req.args.get("disk") or {}))
            if guest.xen is None:
                raise ValueError("the domain has no Xen interface: its disks are virtio")
        except (ValueError, TypeError) as e:
            os.close(fds[0])
            return Reply.failure(str(e))
        try:
            be = await asyncio.to_thread(guest.xen.attach_disk, disk, fds[0])
        except (ValueError, OSError) as e:
            return Reply.failure(str(e))
        guest.inventory.add(PvDevicePart(DISK, disk.vdev, be))
        # libxl__device_disk_add: the disk is part of the domain's config from now on, so
        # the next incarnation (a restart) has it too — opened again through the file
        # handed over, which the jailed process could not open by its path.
        held_files.keep(disk.target, be.disk.fd)
        self.config = dataclasses.replace(self.config, disks=[*self.config.disks, disk])
        log.info("domain %d: attached %s (%s) as %s", self.domid, disk.vdev, disk.target, be.be)
        return Reply.success(devid=be.devid, backend=be.be)

    @domain_step("network-attach", live=True)
    def _network_attach(self, req: Request) -> Awaitable[Reply]:
        return self._attaching_nic(req)

    async def _attaching_nic(self, req: Request) -> Reply:
        """A Xen PV NIC `devid` on the tap the daemon made and handed over (`name`,
        `vnet_hdr_len`), for the guest's `mac`, on `bridge`."""
        guest = self._live_guest()
        token = req.args.get("files")
        if self.interdomain is None or not isinstance(token, int):
            return Reply.failure("no tap was handed over")
        fds = await self.interdomain.take_files(token)
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            return Reply.failure("no tap was handed over")
        a = req.args
        try:
            if guest.xen is None:
                raise ValueError("the domain has no Xen interface: its NICs are virtio")
            if not isinstance(a.get("devid"), int) or not isinstance(a.get("vnet_hdr_len"), int):
                raise ValueError("network-attach needs devid and vnet_hdr_len numbers")
            vif = VifSpec.from_dict(dict(a.get("vif") or {}))
            if vif.devid != a["devid"]:
                raise ValueError(f"the vif's devid {vif.devid} is not {a['devid']}")
            mac = parse_mac(str(a.get("mac")))
        except (ValueError, TypeError) as e:
            os.close(fds[0])
            return Reply.failure(str(e))
        devid = a["devid"]
        if devid in vif_devids(self.config.vifs):
            os.close(fds[0])
            return Reply.failure(f"vif {devid} is already attached")
        # Ours like a tap the domain made itself (domain/vif.py): a restart's netback gets
        # it again; the device a descriptor of its own.
        tap = self.taps.keep(devid, VifEnd(Tap(fds[0], str(a.get("name")), a["vnet_hdr_len"]),
                                           mac)).tap
        try:
            be = await asyncio.to_thread(guest.xen.attach_nic, devid, tap, mac,
                                         str(a.get("bridge") or ""))
        except (ValueError, OSError) as e:
            self.taps.release(devid)
            return Reply.failure(str(e))
        guest.inventory.add(PvDevicePart(NIC, f"nic{be.devid}", be))
        # libxl__device_nic_add (libxl__device_add_async, device_add_domain_config):
        # recorded in the domain's config, which the next incarnation is built from.
        self.config = dataclasses.replace(self.config, vifs=[*self.config.vifs, vif])
        log.info("domain %d: attached vif %d (%s) as %s", self.domid, be.devid, tap.name, be.be)
        return Reply.success(devid=be.devid, backend=be.be)

    @domain_step("network-detach", live=True)
    def _network_detach(self, req: Request) -> Awaitable[Reply]:
        return self._detaching(req, NIC)

    @domain_step("block-detach", live=True)
    def _block_detach(self, req: Request) -> Awaitable[Reply]:
        return self._detaching(req, DISK)

    async def _detaching(self, req: Request, kind: str) -> Reply:
        """Remove the PV device `dev` (a vdev name or a device id); `force`: at once,
        without waiting for the frontend (xl block-detach -f)."""
        guest = self._live_guest()
        dev = str(req.args.get("dev"))
        part = next((p for p in guest.inventory.of_kind(kind) if isinstance(p, PvDevicePart)
                     and dev in _device_names(p)), None)
        if part is None or guest.xen is None:
            return Reply.failure(f"Error: Device {dev} not connected." if kind == DISK
                                 else f"Unknown device {dev}.")
        force = bool(req.args.get("force"))
        done = await asyncio.to_thread(guest.xen.detach, part.backend, force, DETACH_TIMEOUT)
        if not done and kind == NIC:
            # libxl_device_nic_remove (not a safe remove): after the timeout, by force
            log.warning("domain %d: %s did not close; removing it", self.domid, part.backend.fe)
            done = await asyncio.to_thread(guest.xen.detach, part.backend, True, 0)
        if not done:
            # libxl_device_disk_safe_remove: no forced removal after the timeout
            return Reply.failure(f"the frontend of {part.backend.fe} did not close within"
                                 f" {DETACH_TIMEOUT:.0f} s\n" + ("libxl_device_disk_safe_remove"
                                 " failed." if kind == DISK else "libxl_device_nic_del failed."))
        guest.inventory.remove(part)
        log.info("domain %d: detached %s", self.domid, part.name)
        # Out of the config the next incarnation is built from (libxl's stored config
        # keeps only the devices present), and nothing of it held: the tap goes.
        cfg = self.config
        if kind == DISK:
            gone = [d for d in cfg.disks if d.vdev == part.name]
            self.config = dataclasses.replace(cfg, disks=[d for d in cfg.disks if d not in gone])
            for disk in gone:
                held_files.release(disk.target)
            return Reply.success(vdev=part.name)
        devid = part.backend.devid
        self.config = dataclasses.replace(cfg, vifs=without_vif(cfg.vifs, devid))
        self.taps.release(devid)
        return Reply.success(devid=devid)

    # -- save and restore (docs/snapshot-stream.md) --------------------------------------
    async def _take_file(self, req: Request, mode: str, timeout: float | None = None
                         ) -> BinaryIO:
        """The open file the daemon handed over for this request (never a path: the
        CLI opened it, as the user who named it), waited for `timeout` s (default: as
        long as for any request to the daemon)."""
        token = req.args.get("files")
        if self.interdomain is None or not isinstance(token, int):
            raise ValueError("no file was handed over")
        fds = await self.interdomain.take_files(token, timeout)
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            raise ValueError("no file was handed over")
        return open(fds[0], mode, buffering=0)  # noqa: SIM115 - the caller's to close

    @domain_step("save", live=True)
    def _save(self, req: Request) -> Awaitable[Reply]:
        return self._while_busy("saving", self._saving(req))

    def _while_busy(self, what: str, step: Awaitable[Reply]) -> Awaitable[Reply]:
        """A long step with the domain `busy` from now (no other live step gets in, even
        one already read) until it is done."""
        self.busy = what

        async def run() -> Reply:
            try:
                return await step
            finally:
                self.busy = None

        return run()

    async def _saving(self, req: Request) -> Reply:
        """Write the domain's image to the file handed over: paused meanwhile; after
        it, `then` says whether the domain goes on ("run"), stays paused ("pause") or
        waits paused for the daemon to destroy it ("stop"). A failed save resumes it."""
        guest = self._live_guest()
        out = await self._take_file(req, "wb")  # first: a refusal must not leave it open
        then = req.args.get("then")
        if then not in ("run", "pause", "stop") or not self._started:
            out.close()
            return Reply.failure(f"save: unknown 'then' {then!r}" if self._started
                                 else "domain has not run yet; unpause or destroy it")
        config = req.args.get("config") or self.config.to_dict()
        problems = _unrecorded_devices(guest.inventory, config)
        if problems:  # refused now, not when the image is restored
            out.close()
            return Reply.failure(f"{problems[0]}: the domain restored from it could not carry"
                                 " on (save with a config that matches the domain's devices)")
        was_running = self.state == "running"
        live = bool(req.args.get("live")) and was_running  # pre-copy while it runs
        try:
            with out:
                if was_running and not live:
                    guest.machine.pause()
                    self._set_state("paused")
                toolstack = {"xenstore": req.args["xenstore"]} if req.args.get("xenstore") else {}
                stats = await asyncio.to_thread(self._write_image, guest, out, config, live,
                                                toolstack, req.args.get("durable", True))
                if live:
                    self._set_state("paused")
        except BaseException:
            if was_running and self.guest is guest:
                guest.machine.resume()
                self._set_state("running")
            raise
        if then == "run" and was_running:
            guest.machine.resume()
            self._set_state("running")
        return Reply.success(pages=stats.pages, octets=stats.octets, seconds=stats.seconds,
                             rounds=stats.rounds, last_round=stats.last_round,
                             downtime=stats.downtime, stopped_at=stats.stopped_at)

    @staticmethod
    def _write_image(guest: Guest, out: BinaryIO, config: object, live: bool,
                     toolstack: dict[str, object], durable: bool = True) -> snapshot.Stats:
        stats = snapshot.save(guest.inventory, out, config,
                              live=guest.machine if live else None, toolstack=toolstack)
        fd = out.fileno()
        if durable and stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)  # on disk before the CLI renames it into place
        return stats

    @domain_step("restore", live=True)
    def _restore(self, req: Request) -> Awaitable[Reply]:
        return self._while_busy("restoring", self._restoring(req))

    async def _restoring(self, req: Request) -> Reply:
        """Read the rest of an image (the daemon has read its DOMAIN_CONFIG, up to
        `position`) into this incarnation, built from that config and never run; then
        run it, or leave it paused (`paused`). `run_unless_xen`: run it anyway if the
        guest has no Xen interface: then nothing of it reads the XenStore subtree the
        daemon restores once it has the reply (a Xen guest waits for that, paused: its
        watches and PV frontends' nodes come back then), and the reply's `running` says
        the daemon has no unpause to send."""
        guest = self._live_guest()
        mark("domain: restore request")
        # First: a refusal must not leave it open. A clone's image may come a while after
        # the request (the daemon checks a copied image meanwhile: `Daemon._restore_from`).
        inp = await self._take_file(req, "rb", IMAGE_TIMEOUT)
        self.marks["handover"] = time.monotonic()
        mark("domain: image taken")
        position = req.args.get("position")
        if self._started or not isinstance(position, dict):
            inp.close()
            return Reply.failure("domain has already run; a restore needs a fresh one"
                                 if self._started else "restore needs the stream position")
        clone = bool(req.args.get("clone"))  # RAM mapped copy-on-write from the file
        with inp:
            if clone and not stat.S_ISREG(os.fstat(inp.fileno()).st_mode):
                return Reply.failure("a clone maps its image: it must be a regular file")
            reader = stream.StreamReader.resume(inp, stream.StreamPosition(**position))
            stats = await asyncio.to_thread(snapshot.restore, guest.inventory, reader,
                                            clone_fd=inp.fileno() if clone else None,
                                            verified=bool(req.args.get("verified")))
        mark("domain: restored")
        self._boot_state = None  # the vCPUs carry on from the image
        run = not req.args.get("paused") or bool(req.args.get("run_unless_xen")
                                                  and guest.xen is None)
        if run:
            self._run_vcpus()
            mark("domain: vcpus started")
        self.marks["restore"] = time.monotonic()
        return Reply.success(pages=stats.pages, octets=stats.octets, seconds=stats.seconds,
                             since_start=time.monotonic() - self.born, phases=self._phases(),
                             cpu_since_start=_cpu_seconds() - self.born_cpu,
                             xenstore=stats.toolstack.get("xenstore"), running=run)

    def _phases(self) -> dict[str, float]:
        """Seconds each start-up phase took, in order from the process's start (PHASES):
        setup (logging, the early jail, consoles), build (the guest from its config), jail
        (the late jail), handover (until it has the image: the restore request travels
        with the spawn, its file beside it), restore."""
        out, before = {}, self.born
        for name in PHASES:
            if name in self.marks:
                out[name] = self.marks[name] - before
                before = self.marks[name]
        return out

    async def _serve_control(self, reader: asyncio.StreamReader) -> None:
        self._attached = True
        self._detached.clear()
        while True:
            try:
                msg = await ipc.read_message(reader)
                if msg is None:
                    break
                req = Request.from_wire(msg)
            except ConnectionError:
                # A daemon killed with our messages unread in its socket resets it
                # (ECONNRESET) instead of ending it: gone all the same.
                break
            except ValueError as e:  # not JSON, not an object, no op (ProtocolError): say so
                log.error("domain %d: malformed control request: %s", self.domid, e)
                self._send(Reply.failure(f"malformed request: {e}"))
                continue
            self._answer(req)
        self._attached = False  # the daemon is gone: a restarted one may adopt us
        self._detached.set()
        log.warning("domain %d: daemon connection closed; the domain keeps running until a"
                    " daemon adopts it", self.domid)

    # -- adoption by a restarted daemon ---------------------------------------------------
    def _listen_for_daemon(self) -> socket.socket:
        """control.sock: where a restarted daemon finds this domain (made before the jail:
        binding and listening are not in its seccomp allow-list)."""
        path = ipc.control_socket_path(self.domid, self.run_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(1)
        sock.setblocking(False)
        return sock

    async def _accept_daemons(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            try:
                await self._adopted_by(conn)
            except (OSError, ValueError) as e:  # a malformed adoption: the old daemon stays
                log.error("domain %d: refused an adoption: %s", self.domid, e)
                conn.close()

    async def _adopted_by(self, conn: socket.socket) -> None:
        """A daemon connected: `adopt` + its new XenStore streams (the guest ring's and
        the PV backends') and its interdomain broker's; then it is our daemon."""
        if peer_of(conn).uid != self._daemon_uid:
            raise ValueError(f"uid {peer_of(conn).uid} is not the daemon's")
        if self._attached:
            # A new daemon runs only once the old one is dead, whose end of our control
            # stream the kernel has closed: we may not have read that end yet.
            try:
                await asyncio.wait_for(self._detached.wait(), DETACH_NOTICE)
            except TimeoutError:
                raise ValueError("a daemon is attached") from None
        msg, fds = await asyncio.wait_for(ipc.recv_with_fds(conn, 3), ADOPT_TIMEOUT)
        socks = [socket.socket(fileno=fd) for fd in fds]
        req = Request.from_wire(msg or {})
        if req.op != "adopt" or len(socks) != 3:
            for sock in socks:
                sock.close()
            raise ValueError(f"expected adopt, two XenStore streams and the interdomain"
                             f" broker's, got {req.op!r} and {len(socks)}")
        if self._writer is not None:
            self._writer.close()  # the lost daemon's end
        reader, self._writer = await asyncio.open_unix_connection(sock=conn)
        await self.store.reconnect(socks[0])
        if self.interdomain is not None:
            self.interdomain.reconnect(socks[2])
        else:
            socks[2].close()
        xen = self.guest.xen if self.guest is not None else None
        if xen is not None:
            # Blocking XenStore requests to the daemon, which answers them on its loop
            # meanwhile (it waits for our reply asynchronously).
            try:
                count = await asyncio.get_running_loop().run_in_executor(
                    None, xen.reconnect_backends, socks[1])
            except Exception:  # noqa: BLE001 - the domain runs on; its devices say why
                log.exception("domain %d: the PV backends could not reconnect", self.domid)
            else:
                log.info("domain %d: %d PV backends reconnected to the new XenStore",
                         self.domid, count)
        else:
            socks[1].close()
        log.info("domain %d: adopted by a restarted daemon", self.domid)
        self._send(self._info(req).numbered(req.seq))
        self._control = asyncio.create_task(self._serve_control(reader))

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
        adoption = asyncio.create_task(self._accept_daemons(self._listen_for_daemon()))
        try:
            await self.console.serve(ipc.console_socket_path(self.domid, self.run_dir))
            if self.config.virtio_console:
                await self.vconsole.serve(ipc.console_socket_path(self.domid, self.run_dir, "virtio"))
            if self.config.xen_platform != "0":
                await self.pvconsole.serve(ipc.console_socket_path(self.domid, self.run_dir, "pv"))
            if self.channel_error:
                raise ValueError(self.channel_error)
            self.marks["setup"] = time.monotonic()
            mark("domain: consoles, control (setup)")
            first = self.first_request
            self._build_guest(restoring=first is not None and first.op == "restore")
            self.marks["build"] = time.monotonic()
            mark("domain: guest built")
            # Everything the guest needs is open; no guest code has run yet.
            self.jail.enter_late(threading.active_count())
            self.marks["jail"] = time.monotonic()
            mark("domain: late jail")
            self._run_or_pause(self.start_paused)
        except Exception as e:  # noqa: BLE001 - reported to the CLI, which names the problem
            log.error("domain %d (%s): cannot start: %s", self.domid, self.config.name, e)
            self._send(StartFailed(str(e)))
            await self._writer.drain()
            adoption.cancel()
            self._teardown()
            self.taps.close()
            close_channels(self.channels)
            if self.interdomain is not None:
                self.interdomain.shutdown()
            return EXIT_START_FAILED
        guest = self.guest
        # A Xen-aware image (one that names its OS in a Xen ELF note, or a PV guest in the
        # shim) gets its PV console by default, as under Xen, and so does any domain on
        # Xen's PVH platform (it has no serial port); everything else its serial port.
        xen_aware = guest.xen is not None and bool(
            guest.boot.details.get("guest_os") or guest.boot.details.get("pvshim")
            or guest.serial is None)
        self._send(Ready(
            self.jail.host_pid, guest.boot.protocol, guest.xen_path, "pv" if xen_aware else "serial",
            guest.xen.console_nodes() if guest.xen is not None else {},
            guest.xen.store_nodes() if guest.xen is not None else {},
        ))
        mark("domain: ready sent")
        self._control = asyncio.create_task(self._serve_control(reader))
        if self.first_request is not None:  # sent with the spawn (a restore's)
            self._answer(self.first_request)
        await self._finished.wait()
        mark("domain: finished")
        self._control.cancel()
        adoption.cancel()
        if self._work:  # a save or restore still reads or writes guest memory: let it end
            await asyncio.wait(self._work)
        # What the host sees of the domain goes before the end is reported, so the
        # daemon can retire it then (xl destroy returns with its vifs gone): the device
        # threads stop and close their tap descriptors, then ours of each tap (the tap
        # leaves the host on its last close) and the channels' sockets.
        if self.guest is not None:
            try:
                self.guest.close_devices()
            except Exception:  # noqa: BLE001 - still report the end, the process exits anyway
                log.exception("domain %d: closing its devices failed", self.domid)
        self.taps.close()
        close_channels(self.channels)
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
        mark("domain: finished sent")
        self._writer.close()
        self._teardown()
        mark("domain: torn down")
        if self.interdomain is not None:
            self.interdomain.shutdown()
        return self.exit_code


def _unrecorded_devices(inventory: Inventory, config: object) -> list[str]:
    """What does not match between the domain's Xen PV disks and NICs and `config` (a
    DomainConfig's dict, the image's DOMAIN_CONFIG), each said in words: the restored guest
    is built from that config, so a device it lacks would leave saved state with no part
    to go to, and a disk it has that the domain does not (one detached, or gone with a
    reboot's rebuild) would be built with no state in the image. A disk is named by its
    vdev, a NIC by its devid (block-attach and network-attach record both)."""
    disks = config.get("disks") if isinstance(config, dict) else None
    vifs = config.get("vifs") if isinstance(config, dict) else None
    vdevs = {d.get("vdev") for d in disks or [] if isinstance(d, dict)}
    # a vif's devid: its recorded one (network-attach), else its index (vif_devids)
    devids = {i if not isinstance(v, dict) or v.get("devid") is None else v.get("devid")
              for i, v in enumerate(vifs or [])}
    problems, have = [], set()
    lacking = " is not in the configuration the image would carry"
    for part in inventory.parts:
        if part.kind == DISK:
            have.add(part.name)
        if not isinstance(part, PvDevicePart):
            continue
        if part.kind == DISK and part.name not in vdevs:
            problems.append(f"disk {part.name}{lacking}")
        elif part.kind == NIC and part.backend.devid not in devids:
            problems.append(f"vif {part.backend.devid}{lacking}")
    problems += [f"disk {vdev} is in the configuration the image would carry but not in the"
                 " domain" for vdev in sorted(v for v in vdevs - have if isinstance(v, str))]
    return problems


def _device_names(part: PvDevicePart) -> set[str]:
    """What xl block-detach / network-detach may call a PV device: its vdev or devid; a
    vif also its MAC (xl_nic.c: an argument with ':' is a MAC), any case."""
    names = {part.name, str(part.backend.devid)}
    mac = getattr(part.backend, "mac", None)
    if isinstance(mac, bytes):
        text = format_mac(mac)
        names |= {text, text.upper()}
    return names


def _cpu_seconds() -> float:
    """The CPU time of this process, every thread's, so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_domain(
    spawn: Spawn, control_fd: int, xenstore_fd: int | None = None,
    interdomain_fd: int | None = None, *, fresh_layout: bool = False,
    seccomp_fd: int | None = None, kvm: Kvm | None = None,
) -> int:
    """Entry point of a new domain process: an exec'd spare (`fresh_layout`, an
    address-space layout of its own) or a fork of the zygote (the zygote's layout).
    `seccomp_fd`: the zygote's compiled seccomp filter, which the jail loads; `kvm`: the
    /dev/kvm a spare opened (and asked) while it waited."""
    born, born_cpu = time.monotonic(), _cpu_seconds()
    mark("domain: run_domain")
    domid, cfg = spawn.domid, spawn.config
    set_process_title(f"xenopus: domain {domid} ({cfg.name})")
    handler = logging.StreamHandler(ipc.open_log(os.path.join(spawn.run_dir, "log", f"{cfg.name}.log")))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    jail = Jail(domid, cfg, spawn.run_dir, seccomp_fd=seccomp_fd)
    jail.layers["aslr"] = "on" if fresh_layout else (
        "shared: forked from the zygote, whose layout every such domain has (daemon --spares 0)")
    try:  # before the jail: its root has none of the host's paths, and no pty
        channels, channel_error = open_channels(cfg.channels), None
    except ChannelError as e:
        channels, channel_error = [], str(e)
    mark("domain: logging, channels")
    jail.enter_early()
    mark("domain: early jail")
    control = socket.socket(fileno=control_fd)
    xenstore = socket.socket(fileno=xenstore_fd) if xenstore_fd is not None else None
    interdomain = socket.socket(fileno=interdomain_fd) if interdomain_fd is not None else None
    proc = DomainProcess(
        domid, cfg, control, spawn.run_dir, paused=spawn.paused, xenstore=xenstore,
        interdomain=interdomain, jail=jail, first=spawn.first,
    )
    proc.channels, proc.channel_error = channels, channel_error
    proc.kvm = kvm
    proc.born, proc.born_cpu = born, born_cpu
    sampler = StackSampler.from_env()  # debug only: XENOPUS_PROFILE
    if sampler is not None:
        sampler.start()
    try:
        return asyncio.run(proc.run())
    except Exception:
        log.exception("domain %d: fatal error in the domain process", domid)
        return EXIT_CRASHED
    finally:
        if sampler is not None:
            sampler.stop()
            log.info("%s", sampler.report())
