"""The collector's ``policy:`` section: defaults, keys from text or file, and bad values
refused naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil import policy_bundle
from vigil.collector.config import load_collector_config
from vigil.configio import ConfigError

TOKEN = "a" * 40


def config_file(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"auth: {{agent_tokens: [{TOKEN}]}}\npolicy: {policy}\n")
    return path


def test_defaults_and_a_key_given_as_text_or_as_a_file(tmp_path: Path) -> None:
    _, public = policy_bundle.generate_keypair()
    (tmp_path / "k.pub").write_text(public + "\n")
    config = load_collector_config(config_file(tmp_path, f"{{trusted_keys: [{public}, k.pub]}}"))
    assert config.policy.trusted_keys == (public, public)
    assert config.policy.rings == (0.05, 0.25, 1.0) and config.policy.soak_s == 600.0
    assert config.policy.guard.min_runs == 3 and config.policy.guard.failure_rate == 0.5


@pytest.mark.parametrize(
    ("policy", "key", "words"),
    [
        ("{trusted_keys: [ed25519:AAAA]}", "policy.trusted_keys[0]", "32 bytes"),
        ("{trusted_keys: [missing.pub]}", "policy.trusted_keys[0]", "readable file"),
        ("{rings: [0.5, 0.2, 1.0]}", "policy.rings", "cumulative"),
        ("{rings: [0.5]}", "policy.rings", "1.0"),
        ("{guard: {failure_rate: 2}}", "policy.guard.failure_rate", ""),
        ("{guard: {include: [error]}}", "policy.guard.include[0]", "needs_reboot"),
        ("{guard: {min_run: 3}}", "policy.guard.min_run", ""),
        ("{soak: soon}", "policy.soak", ""),
        ("{run_now_ttl: 1s}", "policy.run_now_ttl", ""),
    ],
)
def test_bad_policy_settings_name_the_key(
    tmp_path: Path, policy: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_collector_config(config_file(tmp_path, policy))
    assert error.value.key == key and words in str(error.value)
    assert error.value.file.endswith("collector.yaml")
