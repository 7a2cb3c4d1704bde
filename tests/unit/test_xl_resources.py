"""xl's resource verbs without a guest: the size grammar, the scheduler table, the
command lines, the config keys, the nodes libxl changes, and the Xen/ACPI sides.

Expected values come from Xen's sources, quoted beside each test:

tools/xl/xl_parse.c parse_mem_size_kb:
    kbytes = strtoll(mem, &endptr, 10); if (strlen(endptr) > 1) return -1;
    switch (tolower(*endptr)) { case 't': <<10  case 'g': <<10  case '\\0': case 'm': <<10
                                case 'k': break;  case 'b': kbytes >>= 10;  default: -1 }
tools/xl/xl_sched.c sched_credit{,2}_domain_output:
    printf("%-33s %4s %6s %4s\\n", "Name", "ID", "Weight", "Cap");
    printf("%-33s %4d %6d %4d\\n", domname, domid, scinfo.weight, scinfo.cap);
tools/libs/light/libxl_mem.c libxl_set_memory_target / libxl_domain_setmaxmem: memory/target
    and memory/static-max in KiB, /vm/UUID/memory in MiB.
tools/libs/light/libxl_domain.c libxl__set_vcpuonline_xenstore: cpu/%u/availability
    "online" / "offline" for i = 0 .. vcpu_max_id.
"""

from __future__ import annotations

import os
import struct
import threading

import pytest

from tests.unit.test_virtio_console_rng import Sink
from tests.unit.test_virtqueue import VqDriver
from tests.unit.test_xen_backends import TIMEOUT, BlkRig, blk, memory, xs  # noqa: F401 - fixtures
from xenopus.acpi import AcpiPlatform, build_tables
from xenopus.devices.disk import DiskError, DiskImage
from xenopus.devices.virtio.balloon import VirtioBalloon
from xenopus.domain.config import ConfigError, DomainConfig
from xenopus.memory.guest import GuestMemory
from xenopus.toolstack.cli import fast_parse, parse_mem_size_kb
from xenopus.toolstack.xenstored import XenStored
from xenopus.toolstack.xlformat import SCHED_HEADER, libxl_domain_config, sched_row
from xenopus.xen.backends.xenbus import State
from xenopus.xen.p2m import PhysMap
from xenopus.xen.xenstore.store import Store


@pytest.mark.parametrize(("text", "kib"), [
    ("48", 48 << 10), ("48m", 48 << 10), ("48M", 48 << 10), ("2g", 2 << 20), ("1t", 1 << 30),
    ("1024k", 1024), ("1048576b", 1024), ("1000b", 0), ("", 0), (" 7m", 7 << 10),
])
def test_mem_sizes_as_xl_reads_them(text: str, kib: int) -> None:
    assert parse_mem_size_kb(text) == kib


@pytest.mark.parametrize("text", ["12xy", "12q", "1 m", "5mb"])
def test_mem_sizes_xl_refuses(text: str) -> None:
    assert parse_mem_size_kb(text) is None


def test_sched_table_is_xls() -> None:
    assert SCHED_HEADER == "Name                              " + "  ID Weight  Cap"
    assert sched_row("web", 3, 512, 150) == "web" + " " * 31 + "   3    512  150"
    assert len(sched_row("x" * 40, 12345, 65535, 0).split()) == 4  # wide values push, as %d does


def test_resource_command_lines() -> None:
    args = fast_parse(["mem-set", "web", "256m"])
    assert args is not None and (args.op, args.dom, args.size) == ("mem-set", "web", "256m")
    args = fast_parse(["vcpu-set", "web", "4", "--ignore-host"])
    assert args is not None and (args.op, args.count, args.ignore_host) == ("vcpu-set", "4", True)
    args = fast_parse(["sched-credit", "-d", "web", "-w", "512", "-c", "50"])
    assert args is not None and (args.op, args.dom, args.weight, args.cap) == ("sched", "web", "512", "50")
    args = fast_parse(["sched-credit2"])
    assert args is not None and args.dom is None and args.weight is None
    args = fast_parse(["block-attach", "web", "/img,raw,xvdb,rw"])
    assert args is not None and args.spec == ["/img,raw,xvdb,rw"]
    args = fast_parse(["block-attach", "web", "format=raw", "vdev=xvdb", "target=/img"])
    assert args is not None and args.spec == ["format=raw", "vdev=xvdb", "target=/img"]
    args = fast_parse(["block-detach", "-f", "web", "xvdb"])
    assert args is not None and (args.force, args.dev) == (True, "xvdb")
    assert fast_parse(["mem-set", "web"]) is None  # argparse explains


def test_cpu_weight_and_cap_keys() -> None:
    c = DomainConfig(name="w", kernel="/k", vcpus=2, cpu_weight=512, cap=150)
    assert libxl_domain_config(c, "u")["b_info"]["sched_params"] == {"weight": 512, "cap": 150}
    assert DomainConfig.from_dict(c.to_dict()) == c
    assert libxl_domain_config(DomainConfig(name="w", kernel="/k"), "u")["b_info"]["sched_params"] == {}
    with pytest.raises(ConfigError, match="cpu_weight"):
        DomainConfig(name="w", kernel="/k", cpu_weight=0)
    with pytest.raises(ConfigError, match="cap: 250 is more than 100 per vCPU"):
        DomainConfig(name="w", kernel="/k", vcpus=1, maxvcpus=2, cap=250)
    DomainConfig(name="w", kernel="/k", vcpus=1, maxvcpus=2, cap=200)  # maxvcpus counts


def test_memory_and_vcpu_nodes_as_libxl_changes_them() -> None:
    xs = XenStored()  # noqa: F811 - not the backends' fixture
    config = DomainConfig(name="w", kernel="/k", memory=64, maxmem=80, vcpus=1, maxvcpus=3)
    xs.write_domain(7, "w", config, "00000000-0000-0000-0000-000000000007", 0.0)

    def read(path: str) -> str:
        return xs.store.read(xs.dom0, path).decode()

    assert xs.read_kib(7, "memory/target") == 64 * 1024
    assert xs.read_kib(7, "memory/static-max") == 80 * 1024
    assert xs.read_kib(7, "memory/videoram") == 0
    assert xs.read_kib(7, "memory/none") is None
    xs.set_memory_target(7, 48 * 1024)
    assert read("/local/domain/7/memory/target") == "49152"
    assert read("/vm/00000000-0000-0000-0000-000000000007/memory") == "48"
    xs.set_static_max(7, 100 * 1024)
    assert read("/local/domain/7/memory/static-max") == "102400"
    assert xs.vcpus_available(7) == 1
    xs.set_vcpus_online(7, 2, 3)
    assert [read(f"/local/domain/7/cpu/{i}/availability") for i in range(3)] == [
        "online", "online", "offline"]
    assert xs.vcpus_available(7) == 2
    assert xs.vcpus_available(8) is None
    assert isinstance(xs.store, Store)


def test_madt_lists_offline_vcpus_disabled() -> None:
    """ACPI 6.3 §5.2.12.2: Local APIC Flags bit 0 Enabled; a processor not enabled at boot
    is listed with it clear (Xen's libacpi build_madt for vCPUs not in vcpu_online) and
    bit 1 Online Capable set (table 5-47), which Linux needs to count it possible."""
    d = build_tables(AcpiPlatform(vcpus=4, online=2)).get("APIC").data
    off, flags = 44, []
    while off < len(d):
        kind, length = d[off], d[off + 1]
        if kind == 0:
            flags.append(struct.unpack_from("<I", d, off + 4)[0])
        off += length
    assert flags == [1, 1, 2, 2]


def test_toolstack_removal_closes_through_the_frontend(blk: BlkRig) -> None:  # noqa: F811 - the fixture
    """libxl__initiate_device_generic_remove: online 0 and the backend Closing; the
    frontend closes (Closing, Closed) and the backend follows to Closed."""
    store, be, fe = blk.xs, blk.back.be, blk.back.fe
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    done: list[bool] = []
    closer = threading.Thread(target=lambda: done.append(blk.back.close(TIMEOUT)))
    closer.start()
    assert blk.back.wait_for(State.Closing, TIMEOUT)
    assert store.read(f"{be}/online") == "0" and store.read(f"{be}/state") == "5"
    assert blk.host.live == 0  # the ring is unmapped before the frontend is told
    store.fe_write(f"{fe}/state", str(int(State.Closing)))
    store.fe_write(f"{fe}/state", str(int(State.Closed)))
    closer.join(TIMEOUT)
    assert done == [True] and store.read(f"{be}/state") == "6"


def test_removal_times_out_when_the_frontend_stays(blk: BlkRig) -> None:  # noqa: F811 - the fixture
    assert blk.back.wait_for(State.InitWait, TIMEOUT)
    blk.connect()
    assert blk.back.close(0.2) is False  # the device stays, Closing
    assert blk.back.state == State.Closing


def test_disk_image_from_an_open_file(tmp_path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(bytes(4096))
    ro = os.open(image, os.O_RDONLY)
    with pytest.raises(DiskError, match="opened read-only, attached writable"):
        DiskImage.from_fd(ro, str(image), read_only=False)
    with pytest.raises(OSError):
        os.fstat(ro)  # closed with the refusal: it was handed over
    disk = DiskImage.from_fd(os.open(image, os.O_RDWR), str(image), read_only=False)
    assert disk.size == 4096 and disk.describe()["target"] == str(image)
    disk.close()


def test_max_pages_follows_the_toolstack(memory: GuestMemory) -> None:  # noqa: F811 - the fixture
    """XEN_DOMCTL_max_mem: below the pages held it is taken as given; then nothing more
    may be populated until the domain is under it."""

    class Machine:
        def __init__(self, mem: GuestMemory):
            self.memory = mem

    p2m = PhysMap(Machine(memory), 0)  # type: ignore[arg-type]
    held = p2m.current_pages()
    gpfn = (memory.ram_size >> 12) - 1
    assert p2m.release(gpfn, 1, ())
    p2m.set_max_pages(held - 2)
    assert p2m.max_pages == held - 2
    assert not p2m.populate(gpfn, 1)  # over max_pages: refused
    p2m.set_max_pages(held)
    assert p2m.populate(gpfn, 1)


def test_virtio_balloon_inflates_and_deflates() -> None:
    """virtio 1.2 §5.5: device id 5; inflateq 0, deflateq 1; config le32 num_pages at 0
    (the device's) and le32 actual at 4 (the driver's); PFNs le32 in 4 KiB units."""
    with GuestMemory.create(16 << 20) as ram:
        check_balloon(ram)


def check_balloon(memory: GuestMemory) -> None:  # noqa: F811 - not the fixture
    balloon = VirtioBalloon(memory)
    assert balloon.device_id == 5 and len(balloon.config) == 8
    sink = Sink()
    balloon.bind(sink)
    balloon.set_target(3)
    assert balloon.config_read(0, 4) == 3 and sink.wait() == "config"
    balloon.config_write(0, 4, 99)  # num_pages is not the driver's
    balloon.config_write(4, 4, 2)
    assert balloon.config_read(0, 4) == 3 and balloon.config_read(4, 4) == 2
    inflate, deflate = (VqDriver(memory, base=0x10000, buf_base=0x100000),
                        VqDriver(memory, base=0x20000, buf_base=0x400000))
    balloon.queues = [inflate.queue(), deflate.queue()]
    page = 0x800000  # clear of the drivers' rings and buffers
    memory.write(page, b"\xaa" * 4096)
    pfns = struct.pack("<3I", page >> 12, (page >> 12) + 1, 0xFFFFFFF)  # the last: not RAM
    inflate.post(inflate.chain([(*inflate.buffer(pfns), False)]))
    balloon.process(0)
    assert inflate.used_elem(0) == (0, 0)
    assert balloon.ballooned_pages() == 2 and memory.read(page, 4096) == bytes(4096)
    deflate.post(deflate.chain([(*deflate.buffer(struct.pack("<I", page >> 12)), False)]))
    balloon.process(1)
    assert balloon.ballooned_pages() == 1
    balloon.reset()
    assert balloon.ballooned_pages() == 0 and balloon.config_read(4, 4) == 0
