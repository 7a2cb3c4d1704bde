"""A domain's CPU policy as its guest sees it (needs /dev/kvm), through the CLI.

The `cpupolicy` guest prints CPUID leaves and RDMSR results read at CPL 0. On the build
machines' nested KVM, leaf 0 and the extended leaves (0x8000_0000+) read at CPL 0 follow
KVM_SET_CPUID2 while leaf 1 and 7 feature bits show the outer host's (measured; see
ENVIRONMENT.md), so masking is checked on NX (CPUID.8000_0001:EDX[20], SDM 2A / APM 3)
and the maximum basic leaf (CPUID.0:EAX)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import Xenopus
from tests.vm.test_cli import read_until
from tests.vm.test_save_restore import COUNT, _start_counter, receiver  # noqa: F401
from xenopus.arch import x86
from xenopus.stream import REC_PART, StreamReader, StreamWriter, decode_state

pytestmark = pytest.mark.kvm

NX = 1 << 20
VM_HSAVE_PA = 0xC0010117  # SVM's (APM 2 §15.30.4): outside the policy, which hides SVM
LEAVES = "leaves=0x0,0x80000001"


def run_guest(x: Xenopus, name: str, cmdline: str, **keys: object) -> str:
    cfg = x.config(name, "cpupolicy.elf", cmdline=cmdline, on_poweroff="destroy",
                   xen_platform=0, **keys)
    r = x.run("create", "-c", "-F", str(cfg), timeout=120)
    assert "RESULT: PASS cpupolicy" in r.stdout, r.stdout + r.stderr
    return r.stdout


def leaf(out: str, n: int) -> tuple[int, ...]:
    m = re.search(rf"cpuid 0x{n:08x}: eax=(\S+) ebx=(\S+) ecx=(\S+) edx=(\S+)", out)
    assert m, out
    return tuple(int(v, 16) for v in m.groups())


def rdmsr(out: str, index: int) -> str:
    m = re.search(rf"rdmsr 0x{index:08x}: (\S+)", out)
    assert m, out
    return m.group(1)


def host_policy(x: Xenopus, tmp_path: Path) -> dict:
    path = tmp_path / "host.policy"
    r = x.run("cpu-policy", "--host", "-o", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(path.read_text())


def test_the_guest_sees_the_masked_leaves_in_both_forms(xenopus: Xenopus, tmp_path: Path) -> None:
    plain = run_guest(xenopus, "cpuid-plain", LEAVES)
    assert leaf(plain, 0x80000001)[3] & NX  # x86-64 KVM hosts all offer NX
    assert leaf(plain, 0)[0] > 7
    masked = run_guest(xenopus, "cpuid-string", LEAVES, cpuid="host,nx=0,maxleaf=7")
    assert not leaf(masked, 0x80000001)[3] & NX
    assert leaf(masked, 0)[0] == 7
    # The list form (bit 31 first: NX, bit 20, is the 12th character).
    edx = "x" * 11 + "0" + "x" * 20
    listed = run_guest(xenopus, "cpuid-list", LEAVES, cpuid=[f"0x80000001:edx={edx}"])
    assert not leaf(listed, 0x80000001)[3] & NX
    assert leaf(listed, 0x80000001)[3] == leaf(plain, 0x80000001)[3] & ~NX


def test_an_unknown_feature_name_is_refused_with_its_name(xenopus: Xenopus) -> None:
    cfg = xenopus.config("cpuid-bad", "cpupolicy.elf", cpuid="host,sse3=0,warp-drive=1")
    r = xenopus.run("create", "-F", str(cfg))
    assert r.returncode != 0 and "cpuid: unknown CPUID feature 'warp-drive'" in r.stderr, r.stderr
    assert "cpuid-bad" not in xenopus.domains()


def test_a_policy_levelled_with_a_host_file_hides_what_that_host_lacks(
    xenopus: Xenopus, tmp_path: Path,
) -> None:
    other = host_policy(xenopus, tmp_path)  # this host's, then NX taken away: "host B"
    for row in other["cpuid"]:
        if int(row[0], 16) == 0x80000001:
            row[5] = f"{int(row[5], 16) & ~NX:#010x}"
    (tmp_path / "b.policy").write_text(json.dumps(other))
    out = run_guest(xenopus, "levelled", LEAVES, cpu_policy_hosts=[str(tmp_path / "b.policy")])
    assert not leaf(out, 0x80000001)[3] & NX


def test_an_msr_outside_the_policy_gets_gp(xenopus: Xenopus) -> None:
    msrs = f"msrs={VM_HSAVE_PA:#x},{x86.MSR_IA32_TSC:#x}"
    out = run_guest(xenopus, "msr-strict", msrs)
    assert rdmsr(out, VM_HSAVE_PA) == "#GP"
    assert rdmsr(out, x86.MSR_IA32_TSC) != "#GP"  # inside the policy: KVM answers
    # msr_relaxed: the same read reaches xenopus (the filter sent it) and reads 0.
    relaxed = run_guest(xenopus, "msr-relaxed", msrs, msr_relaxed=1)
    assert rdmsr(relaxed, VM_HSAVE_PA) == "0x0"


SPEC_CTRL_FEATURES = ("ibrsb", "stibp", "ssbd", "ibrs", "amd-stibp", "amd-ssbd")


def test_spec_ctrl_is_the_guest_s_exactly_when_its_cpuid_announces_it(xenopus: Xenopus) -> None:
    """IA32_SPEC_CTRL (SDM 2.1 / AMD's "Indirect Branch Control Extension") is readable
    when the policy announces IBRS, STIBP or SSBD (either vendor's bits), as this host's
    default policy does or does not; with those bits off in `cpuid=`, it is #GP."""
    shown = xenopus.run("cpu-policy", "--host")
    assert shown.returncode == 0, shown.stderr
    features = set(shown.stdout.split("Features:")[1].split())
    msrs = f"msrs={x86.MSR_IA32_SPEC_CTRL:#x}"
    out = run_guest(xenopus, "spec-default", msrs)
    announced = bool(features & set(SPEC_CTRL_FEATURES))
    assert (rdmsr(out, x86.MSR_IA32_SPEC_CTRL) != "#GP") == announced, (features, out)
    off = "host," + ",".join(f"{name}=0" for name in SPEC_CTRL_FEATURES)
    out = run_guest(xenopus, "spec-off", msrs, cpuid=off)
    assert rdmsr(out, x86.MSR_IA32_SPEC_CTRL) == "#GP"


def test_arch_capabilities_reads_back_what_the_policy_says(xenopus: Xenopus) -> None:
    """The policy a domain of this config gets here (asked of one created paused), and
    what a guest of the same config reads (the policy is the config's and the host's)."""
    cmdline = f"msrs={x86.MSR_IA32_ARCH_CAPABILITIES:#x}"
    cfg = xenopus.config("archcaps", "cpupolicy.elf", on_poweroff="destroy", xen_platform=0,
                         cmdline=cmdline)
    assert xenopus.run("create", "-p", str(cfg)).returncode == 0
    shown = xenopus.run("cpu-policy", "archcaps")
    assert xenopus.run("destroy", "archcaps").returncode == 0
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Domain archcaps policy: ")
    assert " CPUID:\n  leaf     subleaf  -> eax      ebx      ecx      edx\n" in shown.stdout
    msrs = dict(re.findall(r"^  ([0-9a-f]{8}) -> ([0-9a-f]{16})$", shown.stdout, re.M))
    out = run_guest(xenopus, "archcaps", cmdline)
    value = msrs.get(f"{x86.MSR_IA32_ARCH_CAPABILITIES:08x}")
    if value is None:  # the policy hides the MSR (the build machines' KVM takes no value)
        assert "arch-caps " not in shown.stdout.split("Features:")[1] + " "
        assert rdmsr(out, x86.MSR_IA32_ARCH_CAPABILITIES) == "#GP"
    else:
        assert int(rdmsr(out, x86.MSR_IA32_ARCH_CAPABILITIES), 16) == int(value, 16)


def test_cpu_policy_needs_a_domain_or_host(xenopus: Xenopus) -> None:
    r = xenopus.run("cpu-policy")
    assert r.returncode != 0 and "give a domain or --host" in r.stderr


def _with_policy(image: Path, out: Path, change) -> None:
    """A copy of a save image with its cpu-policy part's state changed by `change`."""
    with image.open("rb") as inp, out.open("wb") as dst:
        reader = StreamReader(inp)
        writer = StreamWriter(dst)
        for record in reader:
            if record.type == REC_PART:
                part = decode_state(record.body())
                assert isinstance(part, dict)
                if part["kind"] == "cpu-policy":
                    change(part["state"]["policy"])
                writer.part(part["kind"], part["name"], part["state"])
            else:
                writer.record(record.type, record.body())
        writer.end()


def test_restore_refuses_a_policy_this_host_cannot_offer(xenopus: Xenopus, tmp_path: Path) -> None:
    host = host_policy(xenopus, tmp_path)
    have = {(int(r[0], 16), r[1]): [int(v, 16) for v in r[2:]] for r in host["cpuid"]}
    lacking = next(name for name, (lf, sub, reg, bit, width) in x86.CPUID_FIELDS.items()
                   if width == 1 and (lf, sub or 0, reg) in x86.FEATURE_WORDS
                   and (lf, sub or 0) in have and not have[(lf, sub or 0)][reg] >> bit & 1)
    lf, sub, reg, bit, _ = x86.CPUID_FIELDS[lacking]

    console = _start_counter(xenopus, "moved")
    read_until(console.stdout, b"count 5\r\n")
    image = tmp_path / "moved.img"
    assert xenopus.run("save", "moved", str(image)).returncode == 0
    console.communicate(timeout=60)

    def add_feature(policy: dict) -> None:  # as saved on a host that has `lacking`
        for row in policy["cpuid"]:
            if (int(row[0], 16), row[1]) == (lf, sub or 0):
                row[2 + reg] = f"{int(row[2 + reg], 16) | 1 << bit:#010x}"

    _with_policy(image, tmp_path / "richer.img", add_feature)
    r = xenopus.run("restore", str(tmp_path / "richer.img"))
    assert r.returncode != 0
    assert "this host cannot offer the domain's CPU policy" in r.stderr, r.stderr
    assert lacking in r.stderr
    assert "moved" not in xenopus.domains()
    # The untouched image restores (and the policy it carries is this host's).
    restored = xenopus.run("restore", str(image))
    assert restored.returncode == 0, restored.stderr
    assert xenopus.run("destroy", "moved").returncode == 0


def test_a_migration_the_receiver_refuses_for_its_cpu_policy_resumes_the_source(
    xenopus: Xenopus, receiver: Xenopus, tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    """The stream reaches the receiver through a filter that adds a CPU feature this host
    lacks to its policy (as a richer host would have sent it): migrate-receive refuses
    it, naming the feature, before any RAM; the source resumes and counts on, nothing
    lost, and the receiver holds no domain."""
    import os
    import sys

    from tests.vm.test_save_restore import _checksum, _counts

    host = host_policy(xenopus, tmp_path)
    have = {(int(r[0], 16), r[1]): [int(v, 16) for v in r[2:]] for r in host["cpuid"]}
    lacking = next(name for name, (lf, sub, reg, bit, width) in x86.CPUID_FIELDS.items()
                   if width == 1 and (lf, sub or 0, reg) in x86.FEATURE_WORDS
                   and (lf, sub or 0) in have and not have[(lf, sub or 0)][reg] >> bit & 1)
    lf, sub, reg, bit, _ = x86.CPUID_FIELDS[lacking]
    console = _start_counter(xenopus, "refused")
    before = read_until(console.stdout, b"count 20\r\n")
    richer = Path(__file__).with_name("richer_policy.py")
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    far = (f"{sys.executable} {richer} {lf} {sub or 0} {reg} {bit} | env PATH={path} "
           f"XENOPUS_RUN_DIR={receiver.run_dir} xenopus migrate-receive")
    failed = xenopus.run("migrate", "-s", "", "refused", far)
    assert failed.returncode != 0
    assert "this host cannot offer the domain's CPU policy" in failed.stderr, failed.stderr
    assert lacking in failed.stderr and "domain refused resumed" in failed.stderr, failed.stderr
    assert "refused" not in receiver.domains()
    assert xenopus.domains()["refused"][4] in ("r-----", "-b----")
    text = (before + console.communicate(timeout=120)[0]).decode()
    assert _counts(text) == list(range(COUNT)) and _checksum(COUNT) in text


def test_restore_keeps_the_saved_policy(xenopus: Xenopus, tmp_path: Path) -> None:
    """A domain saved with NX hidden comes back with NX hidden, whatever its config says
    now: the policy travels in the image (restore with a config that does not hide it)."""
    cfg = xenopus.config("kept-policy", "counter.elf", cmdline="count=100000",
                         on_poweroff="destroy", xen_platform=0, cpuid="host,nx=0")
    assert xenopus.run("create", "-q", str(cfg)).returncode == 0
    image = tmp_path / "kept.img"
    assert xenopus.run("save", "kept-policy", str(image)).returncode == 0
    plain = xenopus.config("kept-policy", "counter.elf", cmdline="count=100000",
                           on_poweroff="destroy", xen_platform=0)
    r = xenopus.run("restore", "-p", str(plain), str(image))
    assert r.returncode == 0, r.stderr
    shown = xenopus.run("cpu-policy", "kept-policy").stdout
    row = re.search(r"^  80000001:\S+ -> \S+:\S+:\S+:(\S+)$", shown, re.M)
    assert row and not int(row.group(1), 16) & NX, shown
    assert xenopus.run("destroy", "kept-policy").returncode == 0


@pytest.fixture(autouse=True)
def _no_leftovers(xenopus: Xenopus):
    yield
    for name in list(xenopus.domains()):
        if name != "Domain-0":
            subprocess.run(xenopus.cmd("destroy", name), env=xenopus.env, capture_output=True)
