"""The xl.cfg parser and DomainConfig.

Syntax references: xl.cfg(5); Xen tools/libs/util libxlu_cfg_l.l (tokens),
libxlu_cfg_y.y (grammar), libxlu_cfg.c (escapes, `+=`); tools/xl/xl_parse.c
parse_cmdline (cmdline/root/extra) and action_on_shutdown_names.
"""

import json
import textwrap

import pytest

from xenopus.domain.config import (
    CMDLINE_WARNING,
    ConfigError,
    ConfigSyntaxError,
    DomainConfig,
    combine_cmdline,
    load_config,
    parse_config,
)

# -- syntax: valid -------------------------------------------------------------------


def test_basic_settings_and_comments():
    cfg = parse_config(textwrap.dedent("""\
        # a comment line
        name = "hello"   # trailing comment
        memory = 256

        kernel='guests/hello.elf'
    """))
    assert cfg == {"name": "hello", "memory": 256, "kernel": "guests/hello.elf"}


def test_both_quote_styles_and_quotes_inside():
    cfg = parse_config("""a = "it's"\nb = 'say "hi"'\nc = ""\n""")
    assert cfg == {"a": "it's", "b": 'say "hi"', "c": ""}


@pytest.mark.parametrize(
    ("src", "value"),
    [
        (r'"a\"b"', 'a"b'),
        (r"'a\'b'", "a'b"),
        (r'"back\\slash"', "back\\slash"),
        (r'"tab\there"', "tab\there"),
        (r'"nl\n"', "nl\n"),
        (r'"\a\b\f\r\v"', "\a\b\f\r\v"),
        (r'"\x41\x7e"', "A~"),
        (r'"\101\0"', "A\0"),  # octal, as in C (ISO C11 6.4.4.4)
        (r'"#not a comment"', "#not a comment"),
    ],
)
def test_string_escapes(src, value):
    assert parse_config(f"k = {src}\n")["k"] == value


@pytest.mark.parametrize(
    ("src", "value"),
    [("0", 0), ("42", 42), ("0x10", 16), ("0xfF", 255), ("010", 8)],  # strtol base 0
)
def test_numbers(src, value):
    assert parse_config(f"n = {src}")["n"] == value


def test_lists_across_lines_with_trailing_comma_and_comments():
    cfg = parse_config(textwrap.dedent("""\
        disk = [ 'a',
                 "b",   # second
                 3,
               ]
        empty = []
        nested = [ [1, 2], ['x'] ]
        one = [ 'x' ,]
    """))
    assert cfg["disk"] == ["a", "b", 3]
    assert cfg["empty"] == []
    assert cfg["nested"] == [[1, 2], ["x"]]
    assert cfg["one"] == ["x"]


def test_semicolons_separate_settings():
    assert parse_config('a = 1; b = "x";c=2') == {"a": 1, "b": "x", "c": 2}


def test_last_line_needs_no_newline_and_crlf_works():
    assert parse_config("a = 1") == {"a": 1}
    assert parse_config("a = 1\r\nb = 2\r\n# c\r\n") == {"a": 1, "b": 2}
    assert parse_config("a = 1\n# final comment without newline") == {"a": 1}


def test_later_setting_replaces_earlier_and_plus_equals_appends():
    cfg = parse_config('a = 1\na = 2\ns = "ab"\ns += "cd"\nl = [1]\nl += [2, 3]\nn += "x"\n')
    assert cfg == {"a": 2, "s": "abcd", "l": [1, 2, 3], "n": "x"}


def test_empty_text():
    assert parse_config("") == {}
    assert parse_config("\n\n# only comments\n;;\n") == {}


# -- syntax: errors name file and line ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('name = "x"\nkernel = "k\n', 2, "unterminated string"),
        ("name = 'x\\'\n", 1, "unterminated string"),  # the escaped quote does not close it
        ('name = "x"\n\nmemory 128\n', 3, "expected `='"),
        ("name =\n", 1, "missing value"),
        ("a = [1 2]\n", 1, "expected `,' or `]'"),
        ("a = [1,,]\n", 1, "expected a list item"),
        ('name = "x"\na = [1,\n 2,\n', 2, "unterminated list"),
        ("a = 1 @\n", 1, "unexpected character `@'"),
        ("\n\nmemory = 1024 * 2\n", 3, "unexpected character `*'"),
        ("a = 1 b = 2\n", 1, "expected end of line"),
        ("a = foo\n", 1, "expected a value"),
        ("= 3\n", 1, "expected a setting name"),
        ("Name = 'x'\n", 1, "lowercase"),
        ("a = 12ab\n", 1, "invalid number `12ab'"),
        ("a = 09\n", 1, "invalid number `09'"),
        (r"a = '\q'", 1, "invalid character after backslash"),
        (r"a = '\x4'", 1, "hex escape"),
        ('a = "x"\na += [1]\n', 2, "can't add [list]"),
        ("a = 1\na += 2\n", 2, "can't use += with numbers"),
    ],
)
def test_syntax_errors(text, line, fragment):
    with pytest.raises(ConfigSyntaxError) as exc:
        parse_config(text, "hello.cfg")
    assert exc.value.line == line
    assert exc.value.filename == "hello.cfg"
    assert str(exc.value).startswith(f"hello.cfg:{line}: ")
    assert fragment in str(exc.value)


def test_python_looking_config_gets_a_hint():
    with pytest.raises(ConfigSyntaxError, match="Python"):
        parse_config("memory = int(128)\n")


def test_unterminated_string_message_exact():
    with pytest.raises(ConfigSyntaxError) as exc:
        parse_config('name = "a"\nb = 1\nkernel = "oops\n', "hello.cfg")
    assert str(exc.value) == "hello.cfg:3: unterminated string"


# -- load_config ----------------------------------------------------------------------------


def write(tmp_path, text, name="hello.cfg"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """\
    name = "hello"
    kernel = "hello.elf"
"""


def test_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg, warnings = load_config(path)
    assert warnings == []
    assert cfg.name == "hello"
    assert cfg.type == "pvh"
    assert (cfg.memory, cfg.maxmem, cfg.vcpus, cfg.maxvcpus) == (128, 128, 1, 1)
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash) == ("destroy", "restart", "destroy")
    assert cfg.ramdisk is None
    assert cfg.cmdline == ""
    assert cfg.path == str(path)


def test_full_config(tmp_path):
    path = write(tmp_path, """\
        name = "web"; type = "pvh"
        memory = 0x200      # hex works: 512 MiB
        maxmem = 1024
        vcpus = 1
        maxvcpus = 1
        kernel = "/boot/vmlinuz"
        ramdisk = "/boot/initrd.img"
        cmdline = "console=ttyS0"
        on_poweroff = "preserve"
        on_reboot = "destroy"
        on_crash = "restart"
    """)
    cfg, warnings = load_config(path)
    assert warnings == []
    assert (cfg.memory, cfg.maxmem) == (512, 1024)
    assert (cfg.kernel, cfg.ramdisk) == ("/boot/vmlinuz", "/boot/initrd.img")
    assert cfg.cmdline == "console=ttyS0"
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash) == ("preserve", "destroy", "restart")


def test_relative_paths_resolve_beside_the_config(tmp_path, monkeypatch):
    sub = tmp_path / "guests"
    sub.mkdir()
    path = write(sub, 'name = "a"\nkernel = "k/hello.elf"\nramdisk = "../initrd"\n')
    monkeypatch.chdir("/")
    cfg, _ = load_config(path)
    assert cfg.kernel == str(sub / "k" / "hello.elf")
    assert cfg.ramdisk == str(tmp_path / "initrd")


def test_relative_config_path_is_made_absolute(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config("hello.cfg")
    assert cfg.path == str(tmp_path / "hello.cfg")
    assert cfg.kernel == str(tmp_path / "hello.elf")


def test_unknown_keys_warn_with_file_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + 'vfb = ["vnc=1"]\nfoo = 1\n')
    _, warnings = load_config(path)
    assert warnings == [
        f"{path}:3: warning: ignoring unknown parameter `vfb'",
        f"{path}:4: warning: ignoring unknown parameter `foo'",
    ]


def test_overrides_replace_and_add(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL + "memory = 64\n")
    monkeypatch.chdir(tmp_path)
    cfg, warnings = load_config(path, ["memory=256", 'name="web1"', "extra=console=hvc0",
                                       "ramdisk=initrd.img"])
    assert (cfg.memory, cfg.name, cfg.cmdline) == (256, "web1", "console=hvc0")
    # A path typed on the command line resolves against the cwd.
    assert cfg.ramdisk == str(tmp_path / "initrd.img")
    assert warnings == []


def test_override_bare_word_is_a_string_and_later_wins(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg, _ = load_config(path, ["name=web1", "name=web2", 'extra="a"', 'extra+=" b"'])
    assert cfg.name == "web2"
    assert cfg.cmdline == "a b"


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="malformed override `memory256'"):
        load_config(path, ["memory256"])
    with pytest.raises(ConfigError, match="malformed override `=5'"):
        load_config(path, ["=5"])
    with pytest.raises(ConfigError, match=r"<command line>:2: memory: expected a number"):
        load_config(path, ["vcpus=1", "memory=lots"])


def test_syntax_error_in_file_names_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "x"\nkernel = "k"\nmemory = [\n')
    with pytest.raises(ConfigSyntaxError, match=rf"^{path}:3: unterminated list"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unable to open configuration file"):
        load_config(tmp_path / "nope.cfg")


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('kernel = "k"\n', r"name: must be specified"),
        ('name = "a"\n', r"kernel: must be specified"),
        ('name = "123"\nkernel = "k"\n', r":1: name: .*all digits"),
        ('name = "a b"\nkernel = "k"\n', r":1: name: .*whitespace"),
        ('name = "a/b"\nkernel = "k"\n', r":1: name: .*'/'"),
        ('name = ""\nkernel = "k"\n', r":1: name: must not be empty"),
        (f'name = "{"x" * 65}"\nkernel = "k"\n', r":1: name: is 65 characters long"),
        ('name = "a"\nkernel = "k"\nmemory = "lots"\n',
         r":3: memory: expected a number, got a string `lots'"),
        ('name = "a"\nkernel = "k"\nmemory = [1]\n', r":3: memory: expected a number, got a list"),
        ('name = "a"\nkernel = "k"\nmemory = 1\n', r":3: memory: 1 MiB is too small"),
        ('name = "a"\nkernel = "k"\nmemory = 256\nmaxmem = 128\n',
         r":4: maxmem: 128 MiB is less than memory"),
        ('name = "a"\nkernel = "k"\nvcpus = 65\n', r":3: vcpus: 65 vCPUs requested; the limit is 64"),
        ('name = "a"\nkernel = "k"\nmaxvcpus = 100\n', r":3: maxvcpus: 100 vCPUs .*limit is 64"),
        ('name = "a"\nkernel = "k"\nvcpus = 4\nmaxvcpus = 2\n',
         r":4: maxvcpus: 2 is less than vcpus \(4\)"),
        ('name = "a"\nkernel = "k"\nvcpus = 0\n', r":3: vcpus: .*at least 1"),
        ('name = "a"\nkernel = "k"\ntype = "hvm"\n', r":3: type: `hvm' guests are not supported"),
        ('name = "a"\nkernel = "k"\ntype = "pv"\n',
         r":3: type: \"pv\" guests run on KVM only inside Xen's PV shim .*set pvshim = 1"),
        ('name = "a"\nkernel = "k"\nbuilder = "hvm"\n', r":3: type: `hvm' guests"),
        ('name = "a"\nkernel = "k"\ntype = "xyz"\n', r":3: type: unknown guest type"),
        ('name = "a"\nkernel = "k"\non_crash = "explode"\n', r":3: on_crash: unknown action"),
        ('name = "a"\nkernel = "k"\non_reboot = "soft-reset"\n',
         r":3: on_reboot: action `soft-reset' is not supported yet"),
        ('name = ["a"]\nkernel = "k"\n', r":1: name: expected a string, got a list"),
        ('name = "a"\nkernel = ""\n', r":2: kernel: must not be empty"),
    ],
)
def test_validation_errors(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_quoted_number_is_accepted_like_xl(tmp_path):
    # libxlu keeps every atom as text and xl reads numbers with strtol().
    cfg, _ = load_config(write(tmp_path, MINIMAL + 'memory = "0x100"\n'))
    assert cfg.memory == 256


def test_number_as_string_value(tmp_path):
    cfg, _ = load_config(write(tmp_path, 'name = "a"\nkernel = "k"\nextra = 7\n'))
    assert cfg.cmdline == "7"


# -- cmdline / root / extra (xl_parse.c parse_cmdline) ----------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "root", "extra", "result", "warned"),
    [
        (None, None, None, "", False),
        ("console=hvc0", None, None, "console=hvc0", False),
        (None, "/dev/xvda1", None, "root=/dev/xvda1", False),
        (None, "/dev/xvda1", "ro quiet", "root=/dev/xvda1 ro quiet", False),
        (None, None, "ro quiet", "ro quiet", False),
        ("console=hvc0", "/dev/xvda1", None, "console=hvc0", True),
        ("console=hvc0", None, "quiet", "console=hvc0", True),
    ],
)
def test_combine_cmdline(cmdline, root, extra, result, warned):
    assert combine_cmdline(cmdline, root, extra) == (result, [CMDLINE_WARNING] if warned else [])


def test_cmdline_warning_text_is_xls(tmp_path):
    path = write(tmp_path, MINIMAL + 'cmdline = "a"\nroot = "/dev/xvda"\nextra = "b"\n')
    cfg, warnings = load_config(path)
    assert cfg.cmdline == "a"
    assert warnings == ["Warning: ignoring root= and extra= in favour of cmdline="]


def test_root_and_extra_from_file(tmp_path):
    path = write(tmp_path, MINIMAL + 'root = "/dev/xvda1"\nextra = "console=hvc0"\n')
    cfg, _ = load_config(path)
    assert cfg.cmdline == "root=/dev/xvda1 console=hvc0"


# -- DomainConfig ----------------------------------------------------------------------------


def test_dict_round_trip_through_json(tmp_path):
    path = write(tmp_path, MINIMAL + 'memory = 64\nramdisk = "/i"\nextra = "x"\n')
    cfg, _ = load_config(path)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert DomainConfig.from_dict(data) == cfg
    assert data["maxmem"] == 64
    assert data["path"] == str(path)


def test_from_dict_validates():
    with pytest.raises(ConfigError, match="vcpus"):
        DomainConfig.from_dict({"name": "a", "kernel": "/k", "vcpus": 65})
    with pytest.raises(ConfigError, match="unknown DomainConfig field"):
        DomainConfig.from_dict({"name": "a", "kernel": "/k", "colour": "red"})
    with pytest.raises(ConfigError, match="kernel: missing"):
        DomainConfig.from_dict({"name": "a"})
    with pytest.raises(ConfigError, match="memory: expected an int"):
        DomainConfig.from_dict({"name": "a", "kernel": "/k", "memory": "128"})


def test_constructor_defaults_maxmem_and_maxvcpus():
    cfg = DomainConfig(name="a", kernel="/k", memory=300)
    assert (cfg.maxmem, cfg.maxvcpus) == (300, 1)


# -- disk, vif, cpus and vcpus ---------------------------------------------------------------


def test_vcpus_up_to_the_limit(tmp_path):
    cfg, _ = load_config(write(tmp_path, MINIMAL + "vcpus = 4\nmaxvcpus = 64\n"))
    assert (cfg.vcpus, cfg.maxvcpus) == (4, 64)
    cfg, _ = load_config(write(tmp_path, MINIMAL + "vcpus = 64\n"))
    assert (cfg.vcpus, cfg.maxvcpus) == (64, 64)
    cfg, _ = load_config(write(tmp_path, MINIMAL + "maxvcpus = 8\n"))
    assert (cfg.vcpus, cfg.maxvcpus) == (1, 8)


def test_disks_and_vifs(tmp_path):
    from xenopus.domain.devspec import DiskSpec, VifSpec

    path = write(tmp_path, MINIMAL + """\
        disk = [ '/dev/vg/guest-volume,,hda',
                 '/root/image.iso,,hdc,cdrom',
                 'format=raw, vdev=vdb, access=ro, target=/srv/a,b.img' ]
        vif = [ 'mac=00:16:3E:74:34:32', 'bridge=xenbr1,mtu=9000', '' ]
    """)
    cfg, warnings = load_config(path)
    assert warnings == []
    assert cfg.disks == [
        DiskSpec(target="/dev/vg/guest-volume", vdev="hda"),
        DiskSpec(target="/root/image.iso", vdev="hdc", read_only=True, devtype="cdrom"),
        DiskSpec(target="/srv/a,b.img", vdev="vdb", read_only=True),
    ]
    assert cfg.vifs == [VifSpec(mac="00:16:3e:74:34:32"),
                        VifSpec(bridge="xenbr1", mtu=9000), VifSpec()]


def test_no_disks_or_vifs_by_default(tmp_path):
    cfg, _ = load_config(write(tmp_path, MINIMAL))
    assert (cfg.disks, cfg.vifs, cfg.cpus) == ([], [], None)


def test_relative_disk_targets_resolve_beside_the_config(tmp_path, monkeypatch):
    sub = tmp_path / "guests"
    sub.mkdir()
    path = write(sub, MINIMAL + "disk = ['img/root.img,,vda', 'tap:aio:../data.img,vdb',"
                                " '/abs.img,,vdc']\n")
    monkeypatch.chdir("/")
    cfg, _ = load_config(path)
    assert [d.target for d in cfg.disks] == [
        str(sub / "img" / "root.img"), str(tmp_path / "data.img"), "/abs.img"]
    # On the command line, relative to the cwd where it was typed.
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config(path, ["disk=['x.img,,vda']"])
    assert cfg.disks[0].target == str(tmp_path / "x.img")


def test_disk_appended_with_plus_equals(tmp_path):
    path = write(tmp_path, MINIMAL + "disk = ['/a,,vda']\ndisk += ['/b,,vdb']\n")
    cfg, _ = load_config(path)
    assert [d.vdev for d in cfg.disks] == ["vda", "vdb"]


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ("disk = ['/a,,vda', '/b,raw']\n", r":3: disk: disk 1 '/b,raw': no vdev specified$"),
        ("disk = ['/a,,xvda1']\n", r":3: disk: disk 0 '/a,,xvda1': vdev `xvda1' names a partition"),
        ("disk = ['qcow2:/a,vda']\n", r":3: disk: disk 0 .*format `qcow2' is not supported"),
        ("disk = '/a,,vda'\n", r":3: disk: expected a list of strings .*got a string"),
        ("disk = [1]\n", r":3: disk: entry 0: expected a string, got a number"),
        ("disk = [['/a,,vda']]\n", r":3: disk: entry 0: expected a string, got a list"),
        ("disk = ['/a,,vda', '/b,,vda']\n",
         r":3: disk: disk 1 'vda' is disk 0 'vda' \(duplicate vdev\)"),
        ("disk = ['/a,,vda', '/b,,sdb', '/c,,sda']\n",
         r":3: disk: disk 2 'sda' is the same virtio-blk disk \(0\) as disk 0 'vda'"),
        ("\n\nvif = ['mac=01:00:5e:00:00:01']\n",
         r":5: vif: vif 0 'mac=01:00:5e:00:00:01': mac .* is a multicast address"),
        ("vif = ['', 'model=e1000']\n", r":3: vif: vif 1 'model=e1000': model `e1000'"),
        ("vif = 'bridge=br0'\n", r":3: vif: expected a list of strings"),
        ("vif = ['mac=00:16:3e:00:00:01', 'mac=00:16:3E:00:00:01']\n",
         r":3: vif: vif 1 has the same mac \(00:16:3e:00:00:01\) as vif 0"),
        ("vif = ['vifname=t0', 'vifname=t0']\n", r":3: vif: vif 1 has the same vifname"),
    ],
)
def test_device_errors_name_file_line_and_entry(tmp_path, lines, pattern):
    path = write(tmp_path, MINIMAL + lines)
    with pytest.raises(ConfigError, match=f"^{path}{pattern}"):
        load_config(path)


def test_vif_warnings_carry_file_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "vif = ['bridge=br0,rate=10Mb/s,foo=1']\n")
    cfg, warnings = load_config(path)
    assert cfg.vifs[0].bridge == "br0"
    assert warnings == [
        f"{path}:3: warning: vif 0 'bridge=br0,rate=10Mb/s,foo=1': rate limiting is not"
        " supported; ignored",
        f"{path}:3: warning: vif 0 'bridge=br0,rate=10Mb/s,foo=1': unrecognized argument"
        " `foo=1'",
    ]


@pytest.mark.parametrize(
    ("lines", "cpus"),
    [
        ('cpus = "0-3,5"\n', [[0, 1, 2, 3, 5]]),
        ('vcpus = 2\ncpus = "0-3,^1"\n', [[0, 2, 3], [0, 2, 3]]),
        ("vcpus = 2\ncpus = 3\n", [[3], [3]]),
        ('cpus = "all"\n', None),
        ('cpus = "all,3"\n', None),
        ('vcpus = 3\ncpus = ["2", "3-4"]\n', [[2], [3, 4]]),
        ('vcpus = 2\ncpus = ["all", "1"]\n', [None, [1]]),
        # xl ignores entries past the last vCPU.
        ('cpus = ["0", "1", "2"]\n', [[0]]),
        ('maxvcpus = 2\ncpus = "1,,2"\n', [[1, 2], [1, 2]]),
    ],
)
def test_cpus(tmp_path, lines, cpus):
    cfg, _ = load_config(write(tmp_path, MINIMAL + lines))
    assert cfg.cpus == cpus


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ('cpus = "node:0"\n', r":3: cpus: `node:0': NUMA node affinity is not supported"),
        ('cpus = "3-1"\n', r":3: cpus: invalid CPU range `3-1': 1 is less than 3"),
        ('cpus = "x"\n', r":3: cpus: invalid CPU range `x'"),
        ('cpus = "^all"\n', r":3: cpus: can't combine \"\^\" and \"all\""),
        ('cpus = "all,^0"\n', r":3: cpus: \"all\" with \"\^\" exclusions is not supported"),
        ('cpus = "1,^1"\n', r":3: cpus: `1,\^1' selects no CPUs"),
        ('cpus = "0-99999999"\n', r":3: cpus: CPU 99999999 .* is beyond any host"),
        ('cpus = [["0"]]\n', r":3: cpus: expected a string or a list of strings"),
    ],
)
def test_cpus_errors(tmp_path, lines, pattern):
    path = write(tmp_path, MINIMAL + lines)
    with pytest.raises(ConfigError, match=f"^{path}{pattern}"):
        load_config(path)


def test_dict_round_trip_with_devices_through_json(tmp_path):
    path = write(tmp_path, MINIMAL + """\
        vcpus = 2
        cpus = ["0-1", "all"]
        disk = [ 'img.raw,,vda,discard', '/root/image.iso,,hdc,cdrom' ]
        vif = [ 'mac=00:16:3e:01:02:03,bridge=br0,vifname=web0,mtu=1400', '' ]
    """)
    cfg, _ = load_config(path)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["disks"][0]["target"] == str(tmp_path / "img.raw")
    assert data["vifs"][0]["mac"] == "00:16:3e:01:02:03"
    back = DomainConfig.from_dict(data)
    assert back == cfg
    assert back.disks[1].read_only and back.cpus == [[0, 1], None]


def test_from_dict_validates_devices():
    base = {"name": "a", "kernel": "/k"}
    with pytest.raises(ConfigError, match="disks: unknown DiskSpec field"):
        DomainConfig.from_dict({**base, "disks": [{"target": "/x", "vdev": "vda", "x": 1}]})
    with pytest.raises(ConfigError, match="disks: vdev `xvda1'"):
        DomainConfig.from_dict({**base, "disks": [{"target": "/x", "vdev": "xvda1"}]})
    with pytest.raises(ConfigError, match="duplicate vdev"):
        DomainConfig.from_dict({**base, "disks": [{"target": "/x", "vdev": "vda"},
                                                  {"target": "/y", "vdev": "vda"}]})
    with pytest.raises(ConfigError, match="vifs: mac"):
        DomainConfig.from_dict({**base, "vifs": [{"mac": "01:00:00:00:00:00"}]})
    with pytest.raises(ConfigError, match="disk: expected a list of DiskSpec"):
        DomainConfig(name="a", kernel="/k", disks=["/x,,vda"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="cpus: 2 entries for 1 vCPUs"):
        DomainConfig(name="a", kernel="/k", cpus=[[0], [1]])
    with pytest.raises(ConfigError, match="cpus: entry 0 is not a sorted list"):
        DomainConfig(name="a", kernel="/k", cpus=[[1, 0]])
