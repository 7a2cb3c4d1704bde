"""PV-in-PVH through Xen's PV shim: the xl.cfg keys, the boot layout libxl gives the shim,
and the hypercall-path refusal where KVM cannot catch the shim's vmcalls.

Layouts come from xen/include/public/arch-x86/hvm/start_info.h (offsets unpacked here
with struct, not through our ctypes classes); defaults and the module order from libxl
(tools/libs/light/libxl_internal.h PVSHIM_CMDLINE, libxl_dom.c libxl__domain_firmware,
libxl_create.c). Booting the real shim needs KVM_CAP_XEN_HVM: tests/linux/test_pvshim.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.unit.test_boot_pvh import build_elf
from xenopus.boot import BootImageError, load_pv_shim
from xenopus.domain.config import ConfigError, DomainConfig, keys, load_config
from xenopus.kvm import uapi
from xenopus.memory.guest import GuestMemory
from xenopus.toolstack.xlformat import libxl_domain_config
from xenopus.xen.hypercall import choose_path

MiB = 1 << 20
START_INFO = 0x7000  # boot/layout.py; %ebx at entry says the same (checked below)
# start_info.h, struct hvm_start_info: magic, version, flags, nr_modules (u32 each),
# modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr (u64), memmap_entries, reserved.
START_INFO_FMT = "<IIIIQQQQII"
MODLIST_FMT = "<QQQQ"  # struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved


def cstring(mem: GuestMemory, gpa: int) -> bytes:
    data = mem.read(gpa, 4096)
    return data[: data.index(b"\0")]


def write_cfg(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pv.elf").write_bytes(b"\x7fELF-pv")
    shim = tmp_path / "shim"
    shim.write_bytes(b"\x7fELF-shim")
    cfg = tmp_path / "pv.cfg"
    cfg.write_text(f'name = "pv"\nkernel = "pv.elf"\npvshim_path = "{shim}"\n' + body)
    return cfg


# --- xl.cfg -----------------------------------------------------------------------------------
def test_type_pv_needs_the_shim(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, 'type = "pv"\n')
    with pytest.raises(ConfigError, match=r'pv.cfg:4: type: "pv" guests run on KVM only inside'
                                          r" Xen's PV shim .*set pvshim = 1"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="set pvshim = 1"):
        load_config(write_cfg(tmp_path, 'type = "pv"\npvshim = 0\n'))


@pytest.mark.parametrize("kind", ["pv", "pvh"])  # xl 4.17 reads pvshim for type = "pvh"
def test_pvshim_keys_and_libxl_defaults(tmp_path: Path, kind: str) -> None:
    config, warnings = load_config(write_cfg(tmp_path, f'type = "{kind}"\npvshim = 1\n'
                                                       'extra = "console=hvc0"\n'))
    assert warnings == []
    assert (config.type, config.pvshim) == (kind, 1)
    assert config.pvshim_path == str(tmp_path / "shim")
    assert config.pvshim_cmdline == "pv-shim console=xen,pv"  # libxl's PVSHIM_CMDLINE
    assert config.shim_cmdline == "pv-shim console=xen,pv"
    assert config.cmdline == "console=hvc0"  # the PV kernel's, not the shim's
    # Across the daemon/domain-process boundary unchanged.
    assert DomainConfig.from_dict(config.to_dict()) == config
    # libxl_domain_config: a shimmed guest is PVH with the pvshim fields in its pvh arm.
    out = libxl_domain_config(config, "00000000-0000-0000-0000-000000000001")
    assert out["c_info"]["type"] == "pvh"  # type: ignore[index]
    assert out["b_info"]["type.pvh"]["pvshim"] == "True"  # type: ignore[index]


def test_pvshim_extra_is_appended_after_a_space(tmp_path: Path) -> None:
    config, _ = load_config(write_cfg(
        tmp_path, 'type = "pv"\npvshim = 1\npvshim_cmdline = "pv-shim"\npvshim_extra = "loglvl=all"\n'))
    assert config.shim_cmdline == "pv-shim loglvl=all"


def test_default_shim_is_found_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pv.elf").write_bytes(b"x")
    cfg = tmp_path / "pv.cfg"
    cfg.write_text('name = "pv"\nkernel = "pv.elf"\ntype = "pv"\npvshim = 1\n')
    monkeypatch.setattr(keys, "PVSHIM_PATHS", (str(tmp_path / "none"),))
    with pytest.raises(ConfigError, match=r"pvshim_path: no PV shim found .*`make shim`"):
        load_config(cfg)
    built = tmp_path / "xen-shim"
    built.write_bytes(b"x")
    monkeypatch.setattr(keys, "PVSHIM_PATHS", (str(tmp_path / "none"), str(built)))
    assert load_config(cfg)[0].pvshim_path == str(built)


def test_shim_with_xen_hidden_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="xen_platform: the PV shim is Xen running on Xen"):
        load_config(write_cfg(tmp_path, 'type = "pv"\npvshim = 1\nxen_platform = 0\n'))


def test_plain_pvh_ignores_the_shim_keys(tmp_path: Path) -> None:
    config, _ = load_config(write_cfg(tmp_path, "pvshim = 0\n"))
    assert config.pvshim == 0 and config.shim_cmdline == keys.PVSHIM_CMDLINE


# --- the hypercall path -----------------------------------------------------------------------
def test_shim_is_refused_without_the_in_kernel_xen_path() -> None:
    with pytest.raises(ValueError, match=r"vmcall/vmmcall .*KVM_CAP_XEN_HVM.*CONFIG_KVM_XEN"):
        choose_path(0, hypercall_page_note=False, linux=False, vmcall_only=True)
    path, why = choose_path(uapi.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, hypercall_page_note=False,
                            linux=False, vmcall_only=True)
    assert path == "kernel" and "shim" in why


# --- the boot layout --------------------------------------------------------------------------
@pytest.fixture
def mem():
    with GuestMemory.create(64 * MiB) as m:
        yield m


def test_shim_gets_the_pv_kernel_then_the_ramdisk_as_modules(mem: GuestMemory,
                                                             tmp_path: Path) -> None:
    shim = tmp_path / "xen-shim"
    shim.write_bytes(build_elf())  # a PVH ELF at 16 MiB
    pv = tmp_path / "pvkernel"
    pv.write_bytes(b"PV-KERNEL" * 1000)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD" * 3000)
    boot = load_pv_shim(mem, shim, pv_kernel=pv, ramdisk=initrd,
                        shim_cmdline="pv-shim console=xen,pv", pv_cmdline="root=/dev/xvda1")
    assert boot.cpu.gprs["rbx"] == START_INFO and boot.details["pvshim"] is True
    (magic, version, _flags, nr_modules, modlist, cmdline, _rsdp, _memmap, _entries, _r) = (
        struct.unpack_from(START_INFO_FMT, mem.read(START_INFO, 56)))
    assert (magic, version, nr_modules) == (0x336EC578, 1, 2)
    assert cstring(mem, cmdline) == b"pv-shim console=xen,pv"
    kernel = struct.unpack_from(MODLIST_FMT, mem.read(modlist, 32))
    ramdisk = struct.unpack_from(MODLIST_FMT, mem.read(modlist + 32, 32))
    assert mem.read(kernel[0], kernel[1]) == pv.read_bytes()
    assert cstring(mem, kernel[2]) == b"root=/dev/xvda1"
    assert mem.read(ramdisk[0], ramdisk[1]) == initrd.read_bytes()
    assert ramdisk[2] == 0  # libxl passes the ramdisk without a command line
    # Neither module overlaps the other or the shim's image.
    ranges = sorted([(kernel[0], kernel[0] + kernel[1]), (ramdisk[0], ramdisk[0] + ramdisk[1]),
                     boot.kernel_range])
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert "module " + str(pv) in boot.describe()


def test_shim_without_ramdisk_has_one_module(mem: GuestMemory, tmp_path: Path) -> None:
    shim = tmp_path / "xen-shim"
    shim.write_bytes(build_elf())
    pv = tmp_path / "pvkernel"
    pv.write_bytes(b"K" * 100)
    load_pv_shim(mem, shim, pv_kernel=pv, shim_cmdline="pv-shim")
    nr_modules = struct.unpack_from(START_INFO_FMT, mem.read(START_INFO, 56))[3]
    assert nr_modules == 1


@pytest.mark.parametrize(("what", "words"), [
    ("bzimage-shim", ["PV shim must be an ELF"]),
    ("empty-pv", ["PV kernel is empty"]),
    ("missing-pv", ["cannot open PV kernel"]),
])
def test_bad_shim_or_pv_kernel_is_named(mem: GuestMemory, tmp_path: Path, what: str,
                                        words: list[str]) -> None:
    shim = tmp_path / "xen-shim"
    shim.write_bytes(build_elf())
    pv = tmp_path / "pvkernel"
    pv.write_bytes(b"K" * 100)
    if what == "bzimage-shim":
        shim.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    elif what == "empty-pv":
        pv.write_bytes(b"")
    else:
        pv.unlink()
    with pytest.raises(BootImageError) as e:
        load_pv_shim(mem, shim, pv_kernel=pv, shim_cmdline="pv-shim")
    for w in words:
        assert w in str(e.value)
