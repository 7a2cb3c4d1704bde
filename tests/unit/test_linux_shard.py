"""`--shard I/N` of the Linux suite (tests/linux/conftest.py) and the merged summary of a
sharded run (scripts/linux-shards-summary): every selected test in exactly one part, the
parts balanced by the measured seconds, a missing or failed test failing the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.linux.conftest import parse_shard, partition

ROOT = Path(__file__).resolve().parents[2]


def test_partition_covers_every_test_once_in_collection_order() -> None:
    ids = [f"t{i}" for i in range(11)]
    seconds = {f"t{i}": float(i * 7 % 5 + 1) for i in range(11)}
    parts = partition(ids, seconds, 3)
    assert sorted(n for part in parts for n in part) == sorted(ids)
    for part in parts:
        assert part == sorted(part, key=ids.index)


def test_partition_balances_by_seconds() -> None:
    seconds = {"long": 100.0, "a": 40.0, "b": 35.0, "c": 30.0, "d": 5.0}
    parts = partition(list(seconds), seconds, 2)
    assert parts == [["long", "d"], ["a", "b", "c"]]  # 105 s each


def test_partition_counts_an_unknown_test_as_the_median() -> None:
    seconds = {"a": 10.0, "b": 20.0, "c": 90.0}
    parts = partition(["a", "b", "c", "new"], seconds, 2)
    assert parts == [["c"], ["a", "b", "new"]]  # new as 20: 90 against 10 + 20 + 20


def test_partition_keeps_tests_that_share_a_fixture_together() -> None:
    seconds = {"a": 50.0, "b": 10.0, "c": 10.0, "d": 45.0}
    parts = partition(list(seconds), seconds, 2, together={"b": "fx", "c": "fx"})
    assert parts == [["a"], ["b", "c", "d"]]  # b and c as one of 20 s


def test_partition_is_the_same_every_time() -> None:
    ids = [f"t{i}" for i in range(20)]
    assert partition(ids, {}, 4) == partition(list(ids), {}, 4)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="--shard"):
        parse_shard(text)


def junit(cases: str) -> str:
    return f'<testsuites><testsuite name="pytest" time="12.5">{cases}</testsuite></testsuites>'


def summary(tmp_path: Path, expected: list[str], shards: dict[int, tuple[str, str]]) -> subprocess.CompletedProcess:
    (tmp_path / "expected.txt").write_text("\n".join(expected) + "\n\n53 tests collected\n")
    for i, (status, cases) in shards.items():
        (tmp_path / f"shard-{i}").mkdir()
        (tmp_path / f"shard-{i}" / "junit.xml").write_text(junit(cases))
        (tmp_path / f"shard-{i}.status").write_text(status)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "linux-shards-summary"),
                           str(tmp_path / "expected.txt"), str(tmp_path)],
                          capture_output=True, text=True)


PASS_A = '<testcase classname="tests.linux.test_a" name="test_x[1]" time="3"/>'
XFAIL_B = ('<testcase classname="tests.linux.test_b" name="test_y" time="4">'
           '<skipped type="pytest.xfail" message="x"/></testcase>')
FAIL_B = ('<testcase classname="tests.linux.test_b" name="test_y" time="4">'
          '<failure message="boom"/></testcase>')
EXPECTED = ["tests/linux/test_a.py::test_x[1]", "tests/linux/test_b.py::test_y"]


def test_summary_passes_when_every_test_ran_and_passed(tmp_path: Path) -> None:
    done = summary(tmp_path, EXPECTED, {1: ("0 60", PASS_A), 2: ("0 61", XFAIL_B)})
    assert done.returncode == 0, done.stdout
    assert "2 of 2 tests reported, 0 failed, 0 missing" in done.stdout


def test_summary_fails_on_a_failed_test(tmp_path: Path) -> None:
    done = summary(tmp_path, EXPECTED, {1: ("0 60", PASS_A), 2: ("1 61", FAIL_B)})
    assert done.returncode == 1
    assert "FAILURE tests/linux/test_b.py::test_y" in done.stdout


def test_summary_fails_on_a_missing_test(tmp_path: Path) -> None:
    done = summary(tmp_path, EXPECTED, {1: ("0 60", PASS_A), 2: ("0 61", "")})
    assert done.returncode == 1
    assert "MISSING (no shard reported it): tests/linux/test_b.py::test_y" in done.stdout


def test_summary_fails_when_a_nested_host_failed(tmp_path: Path) -> None:
    done = summary(tmp_path, EXPECTED, {1: ("0 60", PASS_A), 2: ("124 14400", XFAIL_B)})
    assert done.returncode == 1
