"""xl's disk and vif specs.

References: Xen docs/misc/xl-disk-configuration.txt (the disk grammar and its examples),
tools/libs/util/libxlu_disk_l.l and libxlu_disk.c (the scanner and its checks),
docs/misc/vbd-interface.txt and libxl's disk-number limits (hd 0..3, sd 0..15),
Linux drivers/block/virtio_blk.c virtblk_name_format (vda..vdz, vdaa..);
docs/misc/xl-network-configuration.markdown and tools/xl/xl_parse.c parse_nic_config
(vif), libxlu_vif.c (rate syntax).
"""

import json
import re

import pytest

from xenopus.domain.devspec import (
    XEN_DPN_REFUSAL,
    DevSpecError,
    DiskSpec,
    VifSpec,
    parse_disk,
    parse_vif,
    vdev_index,
)

# -- disk: the examples of xl-disk-configuration.txt ------------------------------------------

# "For example, these strings are equivalent:"
VOLUME = [
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "raw:/dev/vg/guest-volume,hda,w",
]
# "As are these:"
CDROM = [
    "/root/image.iso,,hdc,cdrom",
    "/root/image.iso,,hdc,,cdrom",
    "/root/image.iso,raw,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
    "raw:/root/image.iso,hdc:cdrom,ro",
]


@pytest.mark.parametrize("spec", VOLUME)
def test_doc_examples_volume(spec):
    assert parse_disk(spec) == DiskSpec(target="/dev/vg/guest-volume", vdev="hda",
                                        format="raw", read_only=False, devtype="disk")


@pytest.mark.parametrize("spec", CDROM)
def test_doc_examples_cdrom(spec):
    assert parse_disk(spec) == DiskSpec(target="/root/image.iso", vdev="hdc", format="raw",
                                        read_only=True, devtype="cdrom")


def test_doc_xend_empty_cdrom_is_parsed_then_refused():
    # ",<vdev>:<devtype>,<access>": xend's empty cdrom. libxlu accepts it (format
    # "empty"); virtio-blk has no removable media, so we refuse it by name.
    with pytest.raises(DevSpecError, match=r"^disk 3 ',hdc:cdrom,r': empty cdrom drives"):
        parse_disk(",hdc:cdrom,r", 3)


# -- disk: positional and key=value forms ------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "target", "vdev", "read_only"),
    [
        ("/img,,vdb,", "/img", "vdb", False),  # empty access: rw (libxlu setaccess(""))
        ("/img,,vdb,ro", "/img", "vdb", True),
        ("/img,,vdb,r", "/img", "vdb", True),
        ("/img,,vdb,w", "/img", "vdb", False),
        ("/img,,vdb", "/img", "vdb", False),
        ("/img,raw,vdb", "/img", "vdb", False),
        # Named parameters fill their slot; later positionals take the next free one.
        ("format=raw,/img,vdc", "/img", "vdc", False),
        ("vdev=vdd,/img,raw,ro", "/img", "vdd", True),
        ("access=ro,vdev=vde,target=/img", "/img", "vde", True),
        # Whitespace before a parameter is ignored; inside a value it is kept.
        ("  /my disk.img , , vdb", "/my disk.img ", "vdb", False),
        # An empty positional target may be given again by name (the doc says so).
        (",,vda,rw,target=/img", "/img", "vda", False),
    ],
)
def test_positional_and_named(spec, target, vdev, read_only):
    d = parse_disk(spec)
    assert (d.target, d.vdev, d.read_only, d.format) == (target, vdev, read_only, "raw")


def test_target_takes_the_rest_including_commas_and_trailing_spaces():
    d = parse_disk("vdev=vda, access=rw, target=/srv/a,b,c.img ")
    assert d.target == "/srv/a,b,c.img "
    # Its one trailing comma is stripped (STRIP(',') in the target rule).
    assert parse_disk("vdev=vda,target=/x,").target == "/x"
    # Even things that look like parameters belong to the target.
    assert parse_disk("vdev=vda,target=/x,vdev=vdb").target == "/x,vdev=vdb"


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ("phy:/dev/vg/d,vda,w", "/dev/vg/d"),
        ("file:/img,vda,w", "/img"),
        ("tap:aio:/img,vda,w", "/img"),
        ("tap2:aio:/img,vda,w", "/img"),
        ("tapdisk:aio:/img,vda,w", "/img"),
        ("ioemu:/img,vda,w", "/img"),
        ("aio:/img,vda,w", "/img"),
        ("tap:raw:/img,vda,w", "/img"),
        ("raw:/img,vda,w", "/img"),
    ],
)
def test_deprecated_prefixes_are_stripped(spec, target):
    d = parse_disk(spec)
    assert (d.target, d.vdev, d.read_only, d.format) == (target, "vda", False, "raw")


def test_a_prefix_takes_the_format_slot():
    # After a deprecated prefix the second positional is the vdev, not the format.
    d = parse_disk("phy:/img,vdb,ro")
    assert (d.vdev, d.read_only) == ("vdb", True)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("qcow2:/img,vda,w", r"format `qcow2' is not supported yet \(only raw\)"),
        ("tap:qcow:/img,vda,w", r"format `qcow' is not supported yet"),
        ("vhd:/img,vda,w", r"format `vhd' is not supported yet"),
        ("/img,qed,vda", r"format `qed' is not supported yet"),
        ("format=qcow2,vdev=vda,target=/img", r"format `qcow2' is not supported yet"),
        ("nbd:host:1234,vda", r"script= disks \(block-nbd\) are not supported"),
        ("iscsi:iqn.x,vda", r"script= disks \(block-iscsi\)"),
        ("script=block-drbd,vdev=vda,target=r0", r"script= disks \(block-drbd\)"),
        ("foo:/img,vda", r"unknown deprecated disk prefix near `foo:'"),
    ],
)
def test_refused_formats_scripts_and_prefixes(spec, reason):
    with pytest.raises(DevSpecError, match=reason):
        parse_disk(spec)


def test_cdrom_forms():
    assert parse_disk("/iso,,hdc:cdrom").devtype == "cdrom"
    assert parse_disk("/iso,,hdc:disk").devtype == "disk"
    assert parse_disk("/iso,,hdc,devtype=disk").devtype == "disk"
    # libxlu_disk.c: a cdrom is read-only whatever access says.
    assert parse_disk("/iso,,hdc,rw,cdrom").read_only is True
    with pytest.raises(DevSpecError, match="unknown deprecated type near `floppy'"):
        parse_disk("/iso,,hdc:floppy")
    with pytest.raises(DevSpecError, match="unknown value for type near `devtype=floppy'"):
        parse_disk("/iso,,hdc,devtype=floppy")


def test_flags():
    d = parse_disk("/img,,vda,discard,direct-io-safe,trusted")
    assert (d.discard, d.direct_io_safe, d.trusted) == (True, True, True)
    d = parse_disk("no-discard,untrusted,/img,,vda")
    assert (d.discard, d.direct_io_safe, d.trusted) == (False, False, False)
    d = parse_disk("/img,,vda")
    assert (d.discard, d.direct_io_safe, d.trusted) == (None, False, None)
    # Accepted, no effect here.
    for extra in ("backendtype=phy", "backendtype=qdisk", "backend=0", "backend=Domain-0",
                  "specification=virtio", "grant_usage=1", "no-colo"):
        assert parse_disk(f"{extra},/img,,vda").vdev == "vda"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("/img,raw", "no vdev specified"),
        ("format=raw,vdev=vda", "no target specified (and device not removable)"),
        (",,vda", "no target specified"),
        ("/a,,vda,target=/b", "target respecified near `/b'"),
        ("/a,,vda,vdev=vdb", "vdev respecified near `vdb'"),
        ("format=raw,format=vhd,/a,,vda", "format respecified near `vhd'"),
        ("/a,,vda,rw,extra", "too many positional parameters near `extra'"),
        ("/a,,vda,rx", "unknown value for access near `rx'"),
        ("/a,qcow3,vda", "unknown value for format near `qcow3'"),
        ("/a,,vda,access=maybe", "unknown value for access near `maybe'"),
        ("backendtype=lvm,/a,,vda", "unknown value for backendtype near `lvm'"),
        ("specification=scsi,/a,,vda", "unknown value for specification"),
        ("/a,,vda,colour=red", "unknown parameter `colour'"),
        ("/a,,vda,=x", "bad disk syntax near `=x'"),
        ("specification=xen,/a,,vda", "specification=xen with a vdX vdev"),
        ("specification=virtio,/a,,xvda", "specification=virtio with an xvdX vdev"),
        ("backend=driverdom,/a,,vda", "backend domain `driverdom': driver domains"),
        ("colo,/a,,vda", "COLO is not supported"),
        ("colo-host=h,/a,,vda", "COLO is not supported"),
    ],
)
def test_disk_errors_name_the_entry(spec, reason):
    with pytest.raises(DevSpecError) as info:
        parse_disk(spec, 2)
    assert str(info.value).startswith(f"disk 2 '{spec}': ")
    assert reason in str(info.value)
    assert (info.value.index, info.value.spec) == (2, spec)


def test_disk_error_without_index():
    with pytest.raises(DevSpecError, match=r"^disk '/a': no vdev specified$"):
        parse_disk("/a")


# -- vdev names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vdev", "index"),
    [
        # Linux's virtblk_name_format / sd_format_disk_name: bijective base 26.
        ("vda", 0), ("vdb", 1), ("vdz", 25), ("vdaa", 26), ("vdab", 27), ("vdaz", 51),
        ("vdba", 52), ("vdzz", 701), ("vdaaa", 702),
        ("sda", 0), ("sdp", 15), ("hda", 0), ("hdd", 3),
    ],
)
def test_vdev_index(vdev, index):
    assert vdev_index(vdev) == index
    assert DiskSpec(target="/x", vdev=vdev).vdev_index == index


@pytest.mark.parametrize(
    ("vdev", "reason"),
    [
        ("xvdb1", "names a partition"),
        ("d0p0", XEN_DPN_REFUSAL),  # vbd-interface.txt: the dNpM form is Xen virtual disk
        ("d1", XEN_DPN_REFUSAL),
        ("vda1", "names a partition"),
        ("sdb3", "names a partition"),
        ("51712", "numeric (xenstore) vdevs are not supported"),
        ("hde", "hd* names go up to disk 3"),  # libxl: hd disks 0..3
        ("sdq", "sd* names go up to disk 15"),  # libxl: sd disks 0..15
        ("vdaaaa", "vd* names go up to disk 18277"),
        ("vd", "is not a disk name"),
        ("nvme0n1", "is not a disk name"),
        ("VDA", "is not a disk name"),
        ("hda ", "is not a disk name"),
    ],
)
def test_bad_vdevs(vdev, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        vdev_index(vdev)
    with pytest.raises(DevSpecError, match=re.escape(f"disk 0 '/x,,{vdev}': vdev `{vdev}'")):
        parse_disk(f"/x,,{vdev}", 0)


def test_xvd_disks_are_xen_pv_disks():
    d = parse_disk("/x,,xvdb")
    assert (d.kind_for(True), d.kind_for(False), d.vdev_index) == ("xen", "xen", 1)
    assert parse_disk("/x,,vdb").kind_for(True) == "virtio"


def test_with_xen_on_every_disk_is_pv_unless_virtio_is_asked_for():
    """libxl makes every disk of a PVH domU a PV vbd; here vd* or specification=virtio
    asks for virtio-blk, and with the Xen interface off every non-xvd disk is virtio."""
    for vdev in ("sda", "hda"):
        d = parse_disk(f"/x,,{vdev}")
        assert (d.kind_for(True), d.kind_for(False)) == ("xen", "virtio")
        assert parse_disk(f"specification=virtio,/x,,{vdev}").kind_for(True) == "virtio"
        assert parse_disk(f"specification=xen,/x,,{vdev}").kind_for(False) == "xen"
    assert parse_disk("/x,,vda").kind_for(True) == "virtio"


def test_a_vif_without_a_model_follows_the_xen_interface():
    v = parse_vif("bridge=br0")
    assert v.model is None and (v.kind_for(True), v.kind_for(False)) == ("xen", "virtio")
    assert parse_vif("model=virtio").kind_for(True) == "virtio"
    assert parse_vif("model=netfront").kind_for(False) == "xen"


# -- DiskSpec ---------------------------------------------------------------------------------


def test_diskspec_round_trip_through_json():
    d = parse_disk("/root/image.iso,,hdc,cdrom,no-discard,direct-io-safe")
    data = json.loads(json.dumps(d.to_dict()))
    assert DiskSpec.from_dict(data) == d


def test_diskspec_validates_when_built_directly():
    with pytest.raises(ValueError, match="a cdrom is read-only"):
        DiskSpec(target="/x", vdev="vda", devtype="cdrom")
    with pytest.raises(ValueError, match="read_only: unexpected str"):
        DiskSpec(target="/x", vdev="vda", read_only="yes")
    with pytest.raises(ValueError, match="unknown DiskSpec field"):
        DiskSpec.from_dict({"target": "/x", "vdev": "vda", "size": 1})
    with pytest.raises(ValueError, match="format `qcow2' is not supported"):
        DiskSpec(target="/x", vdev="vda", format="qcow2")


# -- vif ----------------------------------------------------------------------------------------


def test_vif_doc_examples():
    # xl-network-configuration: 'mac=00:16:3E:74:34:32', '' and a bridge.
    assert parse_vif("mac=00:16:3E:74:34:32") == VifSpec(mac="00:16:3e:74:34:32")
    assert parse_vif("") == VifSpec()
    assert parse_vif("mac=00:16:3e:5f:48:e4,bridge=xenbr1") == VifSpec(
        mac="00:16:3e:5f:48:e4", bridge="xenbr1")
    # ...and 'mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0': not an emulated NIC here.
    with pytest.raises(DevSpecError, match="model `rtl8139' is not supported"):
        parse_vif("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", 0)


def test_vif_keys():
    v = parse_vif("mac=0:16:3e:1:2:3, bridge=br0, model=virtio, vifname=tap-web, mtu=9000")
    assert v == VifSpec(mac="00:16:3e:01:02:03", bridge="br0", model="virtio",
                        vifname="tap-web", mtu=9000)
    assert parse_vif("model=virtio-net").model == "virtio"
    assert parse_vif("type=ioemu") == VifSpec()
    # strtok: empty pieces are skipped; a later key replaces an earlier one.
    assert parse_vif(",,bridge=a,,bridge=b,").bridge == "b"
    # All zeros: "generate one" (libxl__mac_is_default).
    assert parse_vif("mac=00:00:00:00:00:00").mac is None


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("mac=00:16:3e:00:00", "is not six colon-separated hex octets"),
        ("mac=00:16:3e:00:00:00:00", "is not six colon-separated hex octets"),
        ("mac=00:16:3e:zz:00:00", "is not six colon-separated hex octets"),
        ("mac=00-16-3e-00-00-01", "is not six colon-separated hex octets"),
        ("mac=01:00:5e:00:00:01", "is a multicast address"),
        ("mac=ff:ff:ff:ff:ff:ff", "is a multicast address"),
        ("model=e1000", "model `e1000' is not supported: xenopus emulates virtio-net only"),
        ("model=banana", "unknown model `banana'"),
        ("type=pv", "invalid type `pv'"),
        ("mtu=67", "mtu 67 is outside 68..65535"),
        ("mtu=65536", "mtu 65536 is outside"),
        ("mtu=jumbo", "mtu `jumbo' is not a number"),
        ("vifname=abcdefghijklmnop", "is longer than 15 bytes"),
        ("vifname=a/b", "is not a valid interface name"),
        ("bridge=br 0", "is not a valid interface name"),
        ("bridge=", "must not be empty"),
        ("rate=fast", "invalid rate"),
        ("rate=0Mb/s", "invalid rate"),
        ("rate=10Mb/s@0ms", "invalid replenishment interval"),
        ("rate=@20ms", "no rate specified"),
        ("backend=driverdom", "driver domains are not supported"),
        ("devid=x", "devid `x' is not a number"),
    ],
)
def test_vif_errors_name_the_entry(spec, reason):
    with pytest.raises(DevSpecError) as info:
        parse_vif(spec, 1)
    assert str(info.value).startswith(f"vif 1 '{spec}': ")
    assert reason in str(info.value)


def test_vif_unknown_and_ignored_keys_warn_like_xl():
    notes: list[str] = []
    v = parse_vif("bridge=br0,foo=1,rate=10Mb/s@20ms,ip=10.0.0.2,script=vif-nat,"
                  "backend=0,bogus", 4, notes)
    assert v == VifSpec(bridge="br0")
    assert notes[0] == ("vif 4 'bridge=br0,foo=1,rate=10Mb/s@20ms,ip=10.0.0.2,script=vif-nat,"
                        "backend=0,bogus': unrecognized argument `foo=1'")
    reasons = [n.split("': ", 1)[1] for n in notes]
    assert reasons[1] == "rate limiting is not supported; ignored"
    assert reasons[2].startswith("ip= only informs Xen's hotplug scripts")
    assert reasons[3].startswith("hotplug scripts are not run")
    assert reasons[4] == "unrecognized argument `bogus'"
    assert len(notes) == 5
    # Without a list to collect them, warnings are dropped, not raised.
    assert parse_vif("foo=1") == VifSpec()


def test_vifspec_round_trip_and_direct_validation():
    v = parse_vif("mac=00:16:3e:aa:bb:cc,bridge=br0,mtu=1400,vifname=t0")
    assert VifSpec.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(ValueError, match="not a canonical unicast MAC"):
        VifSpec(mac="00:16:3E:AA:BB:CC")
    with pytest.raises(ValueError, match="model `e1000' is not supported"):
        VifSpec(model="e1000")
    with pytest.raises(ValueError, match="unknown VifSpec field"):
        VifSpec.from_dict({"ip": "10.0.0.1"})


def test_a_vifs_devid_is_its_recorded_one_else_its_index():
    from xenopus.domain.devspec import vif_devids, without_vif

    vifs = [VifSpec(), VifSpec(devid=5), VifSpec()]
    assert vif_devids(vifs) == [0, 5, 2]
    # Detaching vif 0 keeps the others' devids (recorded), though their indexes move.
    assert vif_devids(without_vif(vifs, 0)) == [5, 2]
    assert [v.devid for v in without_vif(vifs, 0)] == [5, 2]
    with pytest.raises(ValueError, match="devid -1 is not a device number"):
        VifSpec(devid=-1)
    with pytest.raises(ValueError, match="devid True"):
        VifSpec.from_dict({"devid": True})
    warnings: list[str] = []  # from vif= ignored: only network-attach records one
    assert parse_vif("devid=3", 0, warnings).devid is None
    assert warnings and "devid= is not supported" in warnings[0], warnings


def test_after_a_prefix_an_empty_positional_is_the_vdev():
    # libxlu skips the format slot after a deprecated prefix, so in "phy:/img,,vdb" the
    # empty field is the vdev and "vdb" the access: xl refuses it too.
    with pytest.raises(DevSpecError, match="unknown value for access near `vdb'"):
        parse_disk("phy:/img,,vdb")


