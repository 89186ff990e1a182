"""Path walks: size, count and age of admin-named files and folders, reused within
their interval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.fake_psutil import (
    BOOT,
    GIB,
    FakeClock,
    FakePs,
    FullFakePs,
    full_sampler,
    sampler,
)
from vigil.agent.checks import evaluate
from vigil.agent.config import CheckSpec, PathSpec, SamplerConfig, load_agent_config
from vigil.agent.sampling.paths import PathStats, scan_path
from vigil.agent.sampling.sampler import Sampler
from vigil.configio import ConfigError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with two files (one nested) and symlinks to a big file and folder outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 10_000)
    os.utime(outside / "big.bin", (BOOT, BOOT))

    watched = tmp_path / "watched"
    (watched / "sub").mkdir(parents=True)
    (watched / "a.txt").write_bytes(b"a" * 100)
    (watched / "sub" / "b.bin").write_bytes(b"b" * 250)
    os.utime(watched / "a.txt", (BOOT + 1000, BOOT + 1000))
    os.utime(watched / "sub" / "b.bin", (BOOT + 1500, BOOT + 1500))
    (watched / "to-folder").symlink_to(outside, target_is_directory=True)
    (watched / "to-file").symlink_to(outside / "big.bin")
    return watched


def test_folder_series_sum_regular_files_and_never_follow_symlinks(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample_paths()

    assert values == {
        f"path.size_bytes[{tree}]": 350,
        f"path.count[{tree}]": 5,  # a.txt, sub, sub/b.bin and the two links themselves
        f"path.age_seconds[{tree}]": 2100.0,  # now is BOOT + 3600, newest file BOOT + 1500
    }


def test_series_are_named_by_the_watch_name_not_the_path(tree: Path) -> None:
    values = sampler(paths=(PathSpec("spool", tree),)).sample_paths()

    assert values["path.size_bytes[spool]"] == 350
    assert not any(str(tree) in k for k in values)


def test_file_series_are_its_size_and_age(tree: Path) -> None:
    path = tree / "a.txt"

    values = sampler(paths=(path,)).sample_paths()

    assert values == {
        f"path.size_bytes[{path}]": 100,
        f"path.count[{path}]": 1,
        f"path.age_seconds[{path}]": 2600.0,
    }


def test_a_missing_path_has_no_series_and_its_check_is_unknown_with_the_reason(
    tmp_path: Path,
) -> None:
    """A typo in the path must not read as an empty, healthy folder."""
    path = tmp_path / "nothing-here"
    s = sampler(paths=(PathSpec("logs", path),))
    spec = CheckSpec(id="logs.size", metric="path.size_bytes[logs]", critical=1000)

    values = s.sample(["paths"])
    status, _ = evaluate(spec, None, values.get(spec.metric), 0.0, reason=s.reason_for(spec.metric))

    assert not any(k.startswith("path.") for k in values)
    assert s.reason_for("path.count[logs]") == f"{path} does not exist"
    assert status.state == "unknown"
    assert "does not exist" in status.message


def test_a_missing_path_reads_empty_when_its_spec_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here"

    values = sampler(paths=(PathSpec("spool", path, missing="empty"),)).sample_paths()

    assert values == {"path.size_bytes[spool]": 0, "path.count[spool]": 0}


def test_a_path_below_a_regular_file_is_missing_too(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    s = sampler(paths=(PathSpec("p", tmp_path / "file" / "sub"),))

    assert s.sample_paths() == {}
    assert s.reason_for("path.size_bytes[p]").endswith("does not exist")


def test_a_path_that_appears_later_is_read_and_its_reason_cleared(tmp_path: Path) -> None:
    path = tmp_path / "later"
    s = sampler(paths=(PathSpec("later", path),))
    s.sample_paths()
    path.mkdir()
    (path / "f").write_bytes(b"x" * 7)

    assert s.sample_paths()["path.size_bytes[later]"] == 7
    assert "path.size_bytes[later]" not in s.reasons


@pytest.mark.parametrize(("given", "expected"), [(None, "unknown"), ("empty", "empty")])
def test_the_loader_reads_what_a_missing_path_means(
    tmp_path: Path, given: str | None, expected: str
) -> None:
    extra = "" if given is None else f", missing: {given}"
    path = tmp_path / "agent.yaml"
    path.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        f"sampler: {{paths: [{{name: spool, path: /tmp/spool{extra}}}]}}\n"
    )

    assert load_agent_config(path).sampler.paths[0].missing == expected


def test_the_loader_refuses_another_meaning_of_missing(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        "sampler: {paths: [{name: spool, path: /tmp/spool, missing: zero}]}\n"
    )

    with pytest.raises(ConfigError, match=r"sampler\.paths\[0\]\.missing"):
        load_agent_config(path)


def test_file_dated_in_the_future_has_age_zero(tmp_path: Path) -> None:
    path = tmp_path / "future.log"
    path.write_text("x")
    os.utime(path, (BOOT + 9999, BOOT + 9999))

    values = sampler(paths=(path,)).sample_paths()

    assert values[f"path.age_seconds[{path}]"] == 0.0


def test_sample_includes_the_path_series(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample()

    assert values[f"path.size_bytes[{tree}]"] == 350
    assert values["memory.total_bytes"] == 16 * GIB


def test_sample_paths_returns_only_path_series(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample_paths()

    assert all(k.startswith("path.") for k in values)


def test_folder_walk_stops_at_the_entry_bound(tree: Path) -> None:
    found = scan_path(tree, max_entries=3)

    assert (found.count, found.truncated) == (3, True)


def test_empty_folder_has_no_newest_file(tmp_path: Path) -> None:
    assert scan_path(tmp_path) == PathStats(size_bytes=0, count=0, newest_mtime=None)


def test_path_walk_is_reused_within_its_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    (tmp_path / "a").write_bytes(b"x" * 10)
    spec = PathSpec("t", tmp_path, interval_s=60.0)
    s = Sampler(SamplerConfig(paths=(spec,)), ps=FakePs(), clock=clock)
    s.sample(["paths"])
    (tmp_path / "b").write_bytes(b"x" * 5)

    cached = s.sample(["paths"])["path.size_bytes[t]"]
    clock.now += 60
    walked = s.sample(["paths"])["path.size_bytes[t]"]

    assert (cached, walked) == (10, 15)


def test_sample_paths_for_verification_always_walks_again(tmp_path: Path) -> None:
    spec = PathSpec("t", tmp_path, interval_s=3600.0)
    s = Sampler(SamplerConfig(paths=(spec,)), ps=FakePs(), clock=FakeClock())
    s.sample(["paths"])
    (tmp_path / "b").write_bytes(b"x" * 5)

    assert s.sample_paths()["path.size_bytes[t]"] == 5


def test_a_path_walk_blocks_only_when_it_is_due(tmp_path: Path) -> None:
    clock = FakeClock()
    s = full_sampler(
        FullFakePs(), clock, paths=(PathSpec(name="logs", path=str(tmp_path), interval_s=300),)
    )
    due_first = s.blocking(["paths"])
    s.sample(["paths"])
    clock.now += 60
    cached = s.blocking(["paths"])
    clock.now += 300

    assert (due_first, cached, s.blocking(["paths"])) == (True, False, True)
