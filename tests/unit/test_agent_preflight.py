"""agent.preflight: one broken bundle never stops the agent, and the checks every command
shares; plus the per-check unknown counter of the metrics summary (issue #14)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil import wire
from vigil.agent.config import load_agent_config
from vigil.agent.preflight import REMEDIATIONS_CHECK, preflight
from vigil.agent.remediation.manifest import load_library, load_manifest
from vigil.agent.service import AgentService, build_service
from vigil.configio import ConfigError

T0 = 1_700_000_000.0


class FakeSampler:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        return dict(self.values)

    def sample_paths(self) -> dict[str, float]:
        return {}

    def reason_for(self, metric: str) -> str:
        return f"no such series {metric}"


def bundle(library: Path, rem_id: str, extra: bytes = b"", **manifest: Any) -> Path:
    folder = library / rem_id
    folder.mkdir(parents=True)
    (folder / "fix.sh").write_text("echo fixed\n")
    data: dict[str, Any] = {
        "id": rem_id,
        "title": "A fix",
        "description": "Fixes a thing.",
        "platforms": ["linux", "darwin", "windows"],
        "scripts": {"linux": "fix.sh", "darwin": "fix.sh", "windows": "fix.sh"},
    }
    data.update(manifest)
    (folder / "remediation.yaml").write_bytes(yaml.safe_dump(data).encode() + extra)
    return folder


def agent_config(tmp_path: Path, library: Path, checks: list[dict[str, Any]], **rem: Any) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agent": {"state_dir": str(tmp_path / "state")},
                "collector": {"url": "http://127.0.0.1:9", "token": "t"},
                "remediation": {"folders": [str(library)], **rem},
                "checks": checks,
            }
        )
    )
    return path


def stored_checks(svc: AgentService) -> list[wire.CheckEvent]:
    batch = svc.outbox.next_batch(1000)
    return [e for e in (batch.events if batch else ()) if isinstance(e, wire.CheckEvent)]


CPU = {"id": "cpu", "metric": "cpu.busy_percent", "critical": 90}


def test_broken_bundles_are_left_out_and_reported_as_a_critical_check(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    bundle(lib, "good")
    bundle(lib, "latin1", extra=b"# caf\xe9\n")
    bundle(lib, "nan-timeout", extra=b"timeout: .nan\n")
    checks = [{**CPU, "remediation": {"id": "latin1"}}]
    config = load_agent_config(agent_config(tmp_path, lib, checks, enable=["nan-timeout"]))

    svc = build_service(config, sampler=FakeSampler({}), clock=lambda: T0)
    svc.report_library()

    assert sorted(svc.flow.library) == ["good"]
    assert svc.config.checks[0].remediation is None  # the check runs, without its fix
    assert svc.config.remediation.enable == ()
    (event,) = stored_checks(svc)
    assert (event.check, event.state, event.value) == (REMEDIATIONS_CHECK, "critical", 2.0)
    assert event.message.startswith("2 remediation(s) not loaded: latin1, nan-timeout (")
    assert "latin1: not valid UTF-8" in event.message
    svc.outbox.close()


def test_a_library_that_loads_whole_reports_ok(tmp_path: Path) -> None:
    bundle(tmp_path / "lib", "good")
    config = load_agent_config(agent_config(tmp_path, tmp_path / "lib", [CPU]))

    svc = build_service(config, sampler=FakeSampler({}), clock=lambda: T0)
    svc.report_library()

    (event,) = stored_checks(svc)
    assert (event.check, event.state, event.message) == (
        REMEDIATIONS_CHECK,
        "ok",
        "all 1 remediations loaded",
    )
    svc.outbox.close()


def test_a_bundle_linked_from_outside_its_library_is_not_loaded(tmp_path: Path) -> None:
    bundle(tmp_path / "elsewhere", "sneaky")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sneaky").symlink_to(tmp_path / "elsewhere" / "sneaky")

    found, errors = load_library([tmp_path / "lib"])

    assert found == {}
    assert "outside the allowed folders" in str(errors[0])


def test_an_unexpected_failure_in_one_manifest_is_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a manifest makes the loader raise, the other bundles still load."""
    from vigil.agent.remediation import manifest

    bundle(tmp_path, "a-good")
    bundle(tmp_path, "b-cursed")
    real = manifest.load_manifest

    def cursed(folder: Path, roots: Any = None) -> Any:
        if folder.name == "b-cursed":
            raise RecursionError("maximum recursion depth exceeded")
        return real(folder, roots)

    monkeypatch.setattr(manifest, "load_manifest", cursed)

    found, errors = load_library([tmp_path])

    assert sorted(found) == ["a-good"]
    assert [e.file for e in errors] == [str(tmp_path / "b-cursed" / "remediation.yaml")]
    assert "maximum recursion depth" in errors[0].message


def test_a_required_param_is_recorded_and_cannot_have_a_default(tmp_path: Path) -> None:
    ok = bundle(tmp_path, "needs-dir", params={"dir": {"description": "d", "required": True}})
    bad = bundle(
        tmp_path,
        "both",
        params={"dir": {"description": "d", "required": True, "default": "/tmp"}},
    )

    assert load_manifest(ok).required_params == ("dir",)
    with pytest.raises(ConfigError, match=r"params\.dir\.required: a parameter with a default"):
        load_manifest(bad)


def test_a_check_that_names_a_remediation_must_supply_its_required_params(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    bundle(lib, "needs-dir", params={"dir": {"description": "d", "required": True}})
    path = agent_config(tmp_path, lib, [{**CPU, "remediation": {"id": "needs-dir"}}])

    with pytest.raises(ConfigError) as caught:
        preflight(path)

    assert (caught.value.key, caught.value.message) == (
        "checks[0].remediation.params",
        "remediation needs-dir requires dir (here or in remediation.params.needs-dir)",
    )


def test_the_host_params_satisfy_a_required_param(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    bundle(lib, "needs-dir", params={"dir": {"description": "d", "required": True}})
    path = agent_config(
        tmp_path,
        lib,
        [{**CPU, "remediation": {"id": "needs-dir"}}],
        params={"needs-dir": {"dir": "/tmp"}},
    )

    assert sorted(preflight(path).library) == ["needs-dir"]


def test_check_leaves_a_missing_state_dir_uncreated(tmp_path: Path) -> None:
    bundle(tmp_path / "lib", "good")
    path = agent_config(tmp_path, tmp_path / "lib", [CPU])

    preflight(path)
    assert not (tmp_path / "state").exists()
    preflight(path, create_state=True)
    assert (tmp_path / "state").is_dir()


def test_the_metrics_summary_counts_unknown_readings_per_check(tmp_path: Path) -> None:
    path = agent_config(
        tmp_path,
        tmp_path / "lib",
        [CPU, {"id": "typo", "metric": "cpu.busy_prcent", "critical": 90}],
    )
    (tmp_path / "lib").mkdir()
    svc = build_service(
        load_agent_config(path), sampler=FakeSampler({"cpu.busy_percent": 5.0}), library={}
    )

    async def cycles() -> None:
        for _ in range(3):
            await svc.cycle()
        await svc.metrics_summary()

    asyncio.run(cycles())

    batch = svc.outbox.next_batch(1000)
    (summary,) = [e for e in batch.events if isinstance(e, wire.MetricsEvent)]  # type: ignore[union-attr]
    assert summary.values["agent.unknown_total[typo]"] == 3.0
    assert "agent.unknown_total[cpu]" not in summary.values
    svc.outbox.close()
