"""remediation.manifest: loading manifests and libraries, and the shipped demo-cleanup
remediation run for real."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.manifest import (
    CheckTrigger,
    Remediation,
    current_platform,
    load_library,
    load_manifest,
)
from vigil.configio import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX sh script")


def manifest_dict(rem_id: str = "clear-spool") -> dict[str, Any]:
    return {
        "id": rem_id,
        "title": "Clear the spool",
        "description": "Deletes spooled files.\n",
        "platforms": ["linux", "darwin"],
        "scripts": {"linux": "fix.sh", "darwin": "fix.sh"},
        "timeout": "30s",
        "output_cap": "8KiB",
        "cooldown": "5m",
        "params": {"dir": "Folder to empty"},
    }


def make_remediation(
    library: Path, rem_id: str = "clear-spool", manifest: dict[str, Any] | None = None
) -> Path:
    """A remediation folder ``library/rem_id`` with ``fix.sh`` and the given manifest."""
    folder = library / rem_id
    folder.mkdir(parents=True)
    (folder / "fix.sh").write_text("echo fixed\n")
    data = manifest if manifest is not None else manifest_dict(rem_id)
    (folder / "remediation.yaml").write_text(yaml.safe_dump(data))
    return folder


# --- loading a manifest ---------------------------------------------------------------


def test_valid_manifest_loads(tmp_path: Path) -> None:
    folder = make_remediation(tmp_path)

    rem = load_manifest(folder)

    assert rem == Remediation(
        id="clear-spool",
        title="Clear the spool",
        description="Deletes spooled files.",
        folder=folder.resolve(),
        platforms=("linux", "darwin"),
        scripts={"linux": folder.resolve() / "fix.sh", "darwin": folder.resolve() / "fix.sh"},
        timeout_s=30.0,
        output_cap_bytes=8192,
        cooldown_s=300.0,
        params={"dir": "Folder to empty"},
    )


def test_optional_keys_have_defaults(tmp_path: Path) -> None:
    data = manifest_dict()
    for key in ("timeout", "output_cap", "cooldown", "params"):
        del data[key]

    rem = load_manifest(make_remediation(tmp_path, manifest=data))

    assert (rem.timeout_s, rem.output_cap_bytes, rem.cooldown_s, rem.params) == (
        60.0,
        16384,
        300.0,
        {},
    )


@pytest.mark.parametrize(
    ("platform", "has_script"),
    [("linux", True), ("darwin", True), ("windows", False)],
    ids=["linux", "darwin", "unlisted-platform"],
)
def test_script_for_platform(tmp_path: Path, platform: str, has_script: bool) -> None:
    rem = load_manifest(make_remediation(tmp_path))

    assert (rem.script_for(platform) is not None) == has_script


def test_script_for_defaults_to_this_platform(tmp_path: Path) -> None:
    rem = load_manifest(make_remediation(tmp_path))

    assert rem.script_for() == rem.scripts.get(current_platform())


def test_script_env_names_params_and_dry_run(tmp_path: Path) -> None:
    rem = load_manifest(make_remediation(tmp_path))

    env = rem.script_env({"dir": "/var/spool/demo"}, dry_run=True)

    assert env == {
        "VIGIL_PARAM_DIR": "/var/spool/demo",
        "VIGIL_DRY_RUN": "1",
        "VIGIL_REMEDIATION": "clear-spool",
    }


def test_script_env_rejects_an_undeclared_param(tmp_path: Path) -> None:
    rem = load_manifest(make_remediation(tmp_path))

    with pytest.raises(ValueError, match=r"'path'.*declared: dir"):
        rem.script_env({"path": "/tmp"})


def full_manifest(rem_id: str = "restart-thing") -> dict[str, Any]:
    """A manifest using every optional key (trigger by detection, verification script)."""
    data = manifest_dict(rem_id)
    data.update(
        trigger={"detection": {"linux": "fix.sh", "darwin": "fix.sh"}, "every": "30s"},
        verify={"delay": "2s", "scripts": {"linux": "fix.sh", "darwin": "fix.sh"}},
        attempts={"max": 5, "window": "2h"},
        run_as="nobody",
        dry_run=True,
        params={"dir": {"description": "Folder", "default": "/tmp"}, "n": "Count"},
    )
    return data


def test_optional_remediation_keys_load(tmp_path: Path) -> None:
    folder = make_remediation(tmp_path, "restart-thing", full_manifest())
    script = folder.resolve() / "fix.sh"

    rem = load_manifest(folder)

    assert (rem.detection, rem.detect_every_s) == ({"linux": script, "darwin": script}, 30.0)
    assert (rem.verify_scripts, rem.verify_delay_s) == ({"linux": script, "darwin": script}, 2.0)
    assert (rem.max_attempts, rem.attempts_window_s) == (5, 7200.0)
    assert (rem.run_as, rem.dry_run) == ("nobody", True)
    assert (rem.params, rem.param_defaults) == ({"dir": "Folder", "n": "Count"}, {"dir": "/tmp"})


def test_remediation_defaults_are_the_strict_ones(tmp_path: Path) -> None:
    """No trigger, verify by re-checking, 3 attempts an hour, the agent's user, no dry run."""
    rem = load_manifest(make_remediation(tmp_path))

    assert (rem.trigger_checks, rem.detection, rem.verify_scripts) == ((), {}, {})
    assert (rem.verify_delay_s, rem.max_attempts, rem.attempts_window_s) == (None, 3, 3600.0)
    assert (rem.run_as, rem.dry_run, rem.param_defaults) == (None, False, {})


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        (["disk.root"], (CheckTrigger("disk.root", ("critical",)),)),
        (
            [{"check": "logs.size", "states": ["warning", "critical"]}],
            (CheckTrigger("logs.size", ("warning", "critical")),),
        ),
    ],
    ids=["bare-check-id-means-critical", "check-with-states"],
)
def test_check_triggers_load(tmp_path: Path, checks: list[Any], expected: Any) -> None:
    data = manifest_dict()
    data["trigger"] = {"checks": checks}

    rem = load_manifest(make_remediation(tmp_path, manifest=data))

    assert rem.trigger_checks == expected
    assert rem.states_for(expected[0].check) == expected[0].states
    assert rem.states_for("other.check") == ()


def test_run_as_agent_means_the_agents_own_user(tmp_path: Path) -> None:
    data = manifest_dict()
    data["run_as"] = "agent"

    assert load_manifest(make_remediation(tmp_path, manifest=data)).run_as is None


def test_param_defaults_reach_the_script_and_values_override_them(tmp_path: Path) -> None:
    rem = load_manifest(make_remediation(tmp_path, "restart-thing", full_manifest()))

    assert rem.script_env({})["VIGIL_PARAM_DIR"] == "/tmp"
    assert rem.script_env({"dir": "/var/tmp"})["VIGIL_PARAM_DIR"] == "/var/tmp"


# --- manifest errors name the file and the key ----------------------------------------

Breaker = Callable[[Path, dict[str, Any]], None]


def _unknown_key(folder: Path, data: dict[str, Any]) -> None:
    data["colour"] = "red"


def _missing_script(folder: Path, data: dict[str, Any]) -> None:
    data["scripts"]["linux"] = "nope.sh"


def _dotdot_escape(folder: Path, data: dict[str, Any]) -> None:
    (folder.parent / "outside.sh").write_text("echo escaped\n")
    data["scripts"]["linux"] = "../outside.sh"


def _absolute_escape(folder: Path, data: dict[str, Any]) -> None:
    data["scripts"]["linux"] = "/bin/sh"


def _symlink_escape(folder: Path, data: dict[str, Any]) -> None:
    (folder.parent / "outside.sh").write_text("echo escaped\n")
    (folder / "link.sh").symlink_to(folder.parent / "outside.sh")
    data["scripts"]["linux"] = "link.sh"


def _script_is_a_folder(folder: Path, data: dict[str, Any]) -> None:
    (folder / "sub").mkdir()
    data["scripts"]["linux"] = "sub"


def _id_differs_from_folder(folder: Path, data: dict[str, Any]) -> None:
    data["id"] = "something-else"


def _unknown_platform(folder: Path, data: dict[str, Any]) -> None:
    data["platforms"] = ["linux", "amiga"]


def _script_for_unlisted_platform(folder: Path, data: dict[str, Any]) -> None:
    data["scripts"]["windows"] = "fix.ps1"


def _listed_platform_without_script(folder: Path, data: dict[str, Any]) -> None:
    del data["scripts"]["darwin"]


def _output_cap_over_wire_limit(folder: Path, data: dict[str, Any]) -> None:
    data["output_cap"] = "1MiB"


def _bad_timeout(folder: Path, data: dict[str, Any]) -> None:
    data["timeout"] = "soon"


def _bad_param_name(folder: Path, data: dict[str, Any]) -> None:
    data["params"] = {"Dir Name": "x"}


def _empty_title(folder: Path, data: dict[str, Any]) -> None:
    data["title"] = "  "


def _typo_in_trigger(folder: Path, data: dict[str, Any]) -> None:
    data["trigger"] = {"chekcs": ["disk.root"]}


def _unknown_trigger_state(folder: Path, data: dict[str, Any]) -> None:
    data["trigger"] = {"checks": [{"check": "disk.root", "states": ["critcal"]}]}


def _both_trigger_kinds(folder: Path, data: dict[str, Any]) -> None:
    data["trigger"] = {
        "checks": ["disk.root"],
        "detection": {"linux": "fix.sh", "darwin": "fix.sh"},
    }


def _missing_detection_script(folder: Path, data: dict[str, Any]) -> None:
    data["trigger"] = {"detection": {"linux": "detect.sh", "darwin": "fix.sh"}}


def _detection_every_too_short(folder: Path, data: dict[str, Any]) -> None:
    data["trigger"] = {"detection": {"linux": "fix.sh", "darwin": "fix.sh"}, "every": "100ms"}


def _verify_script_escapes(folder: Path, data: dict[str, Any]) -> None:
    data["verify"] = {"scripts": {"linux": "/bin/true", "darwin": "fix.sh"}}


def _zero_attempts(folder: Path, data: dict[str, Any]) -> None:
    data["attempts"] = {"max": 0}


def _bad_run_as(folder: Path, data: dict[str, Any]) -> None:
    data["run_as"] = "root; rm -rf /"


def _param_default_not_a_string(folder: Path, data: dict[str, Any]) -> None:
    data["params"] = {"dir": {"description": "Folder", "default": ["a"]}}


def _timeout_over_an_hour(folder: Path, data: dict[str, Any]) -> None:
    data["timeout"] = "2h"


@pytest.mark.parametrize(
    ("breaker", "key"),
    [
        (_unknown_key, "colour"),
        (_missing_script, "scripts.linux"),
        (_dotdot_escape, "scripts.linux"),
        (_absolute_escape, "scripts.linux"),
        (_symlink_escape, "scripts.linux"),
        (_script_is_a_folder, "scripts.linux"),
        (_id_differs_from_folder, "id"),
        (_unknown_platform, "platforms[1]"),
        (_script_for_unlisted_platform, "scripts.windows"),
        (_listed_platform_without_script, "scripts.darwin"),
        (_output_cap_over_wire_limit, "output_cap"),
        (_bad_timeout, "timeout"),
        (_bad_param_name, "params.Dir Name"),
        (_empty_title, "title"),
        (_typo_in_trigger, "trigger.chekcs"),
        (_unknown_trigger_state, "trigger.checks[0].states[0]"),
        (_both_trigger_kinds, "trigger.detection"),
        (_missing_detection_script, "trigger.detection.linux"),
        (_detection_every_too_short, "trigger.every"),
        (_verify_script_escapes, "verify.scripts.linux"),
        (_zero_attempts, "attempts.max"),
        (_bad_run_as, "run_as"),
        (_param_default_not_a_string, "params.dir.default"),
        (_timeout_over_an_hour, "timeout"),
    ],
    ids=[
        "unknown-key",
        "missing-script",
        "script-escapes-via-dotdot",
        "script-is-an-absolute-path-elsewhere",
        "script-escapes-via-symlink",
        "script-is-a-folder",
        "id-differs-from-folder-name",
        "unknown-platform",
        "script-for-an-unlisted-platform",
        "listed-platform-without-script",
        "output-cap-over-the-wire-limit",
        "unparseable-timeout",
        "param-name-not-env-safe",
        "empty-title",
        "typo-in-trigger-key",
        "unknown-trigger-state",
        "checks-and-detection-together",
        "missing-detection-script",
        "detection-more-often-than-every-second",
        "verification-script-outside-the-folder",
        "zero-attempts",
        "run-as-not-a-user-name",
        "param-default-not-a-string",
        "timeout-over-an-hour",
    ],
)
def test_bad_manifest_error_names_file_and_key(tmp_path: Path, breaker: Breaker, key: str) -> None:
    folder = make_remediation(tmp_path)
    data = manifest_dict()
    breaker(folder, data)
    (folder / "remediation.yaml").write_text(yaml.safe_dump(data))

    with pytest.raises(ConfigError) as caught:
        load_manifest(folder)

    assert caught.value.file == str(folder / "remediation.yaml")
    assert caught.value.key == key
    assert f"{folder / 'remediation.yaml'}: {key}:" in str(caught.value)


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    folder = make_remediation(tmp_path)
    (folder / "remediation.yaml").write_text("id: [unclosed\n")

    with pytest.raises(ConfigError, match=r"remediation\.yaml: invalid YAML"):
        load_manifest(folder)


# --- loading a library ------------------------------------------------------------------


def test_one_bad_manifest_does_not_stop_the_others(tmp_path: Path) -> None:
    make_remediation(tmp_path, "a-good-one")
    bad = manifest_dict("b-bad-one")
    bad["scripts"]["linux"] = "../../etc/passwd"
    make_remediation(tmp_path, "b-bad-one", bad)
    make_remediation(tmp_path, "c-good-too")

    found, errors = load_library([tmp_path])

    assert sorted(found) == ["a-good-one", "c-good-too"]
    assert [(e.file, e.key) for e in errors] == [
        (str(tmp_path / "b-bad-one" / "remediation.yaml"), "scripts.linux")
    ]


def test_duplicate_id_across_folders_is_an_error_and_the_first_wins(tmp_path: Path) -> None:
    first = make_remediation(tmp_path / "shipped", "clear-spool")
    second = make_remediation(tmp_path / "site", "clear-spool")

    found, errors = load_library([tmp_path / "shipped", tmp_path / "site"])

    assert found["clear-spool"].folder == first.resolve()
    assert [(e.file, e.key) for e in errors] == [(str(second / "remediation.yaml"), "id")]
    assert "duplicate id" in str(errors[0])


def test_subfolders_without_a_manifest_are_ignored(tmp_path: Path) -> None:
    make_remediation(tmp_path, "clear-spool")
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.md").write_text("# my fixes\n")

    found, errors = load_library([tmp_path])

    assert (sorted(found), errors) == (["clear-spool"], [])


def test_missing_library_folder_is_an_error_not_a_crash(tmp_path: Path) -> None:
    make_remediation(tmp_path / "real", "clear-spool")

    found, errors = load_library([tmp_path / "absent", tmp_path / "real"])

    assert sorted(found) == ["clear-spool"]
    assert [e.file for e in errors] == [str(tmp_path / "absent")]


def test_shipped_library_loads_cleanly() -> None:
    found, errors = load_library([SHIPPED])

    assert errors == []
    assert "demo-cleanup" in found


# --- the shipped demo-cleanup remediation, run for real ---------------------------------


def run_demo(env: dict[str, str]) -> ScriptResult:
    """Run demo-cleanup as the agent would: through the runner with its manifest limits."""
    rem = load_manifest(SHIPPED / "demo-cleanup")
    script = rem.script_for("linux")
    assert script is not None
    return asyncio.run(
        run_script(
            script,
            allowed_roots=[SHIPPED],
            env=env,
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
        )
    )


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool with files at two depths, plus symlinks to a file and a folder outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    root = tmp_path / "spool"
    (root / "sub").mkdir(parents=True)
    (root / "job1.dat").write_text("12345")
    (root / "sub" / "job2.dat").write_text("123")
    (root / "link-to-file").symlink_to(outside / "precious.txt")
    (root / "link-to-folder").symlink_to(outside)
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@posix_only
def test_demo_cleanup_removes_only_regular_files_inside(spool: Path) -> None:
    result = run_demo({"VIGIL_PARAM_DIR": str(spool)})

    assert result.exit_code == 0, result.output
    assert tree(spool) == ["link-to-file", "link-to-folder", "sub"]
    assert (spool.parent / "outside" / "precious.txt").read_text() == "keep me"
    assert f"removed 2 files, 8 bytes from {spool.resolve()}" in result.output


@posix_only
def test_demo_cleanup_dry_run_deletes_nothing(spool: Path) -> None:
    before = tree(spool)

    result = run_demo({"VIGIL_PARAM_DIR": str(spool), "VIGIL_DRY_RUN": "1"})

    assert result.exit_code == 0, result.output
    assert tree(spool) == before
    assert f"would remove {spool.resolve() / 'sub' / 'job2.dat'}" in result.output
    assert "dry run: would remove 2 files, 8 bytes" in result.output


@posix_only
def test_demo_cleanup_handles_hostile_file_names(tmp_path: Path) -> None:
    """Names with spaces, newlines, globs and leading dashes are files, not syntax."""
    names = ["a b", "new\nline", "*", "-rf", "$(touch pwned)"]
    for name in names:
        (tmp_path / name).write_text("x")

    result = run_demo({"VIGIL_PARAM_DIR": str(tmp_path)})

    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []
    assert not (SHIPPED / "demo-cleanup" / "pwned").exists()  # the script's working folder
    assert f"removed {len(names)} files, {len(names)} bytes" in result.output


def _root_link(tmp_path: Path) -> str:
    (tmp_path / "root-link").symlink_to("/")
    return str(tmp_path / "root-link")


def _a_file(tmp_path: Path) -> str:
    (tmp_path / "file").write_text("x")
    return str(tmp_path / "file")


@posix_only
@pytest.mark.parametrize(
    ("make_dir", "why"),
    [
        (lambda tmp: None, "not set"),
        (lambda tmp: "", "not set"),
        (lambda tmp: "relative/path", "absolute"),
        (lambda tmp: str(tmp / "absent"), "not a folder"),
        (_a_file, "not a folder"),
        (lambda tmp: "/", "root folder"),
        (_root_link, "root folder"),
    ],
    ids=["unset", "empty", "relative", "absent", "a-file", "root", "symlink-to-root"],
)
def test_demo_cleanup_refuses_bad_folders_with_exit_3(
    tmp_path: Path, make_dir: Callable[[Path], str | None], why: str
) -> None:
    # Dry run as a safety net: a broken refusal must not be able to delete anything.
    env = {"VIGIL_DRY_RUN": "1"}
    if (value := make_dir(tmp_path)) is not None:
        env["VIGIL_PARAM_DIR"] = value

    result = run_demo(env)

    assert result.exit_code == 3
    assert "refusing" in result.output
    assert why in result.output
