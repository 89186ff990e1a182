"""The ``incidents.correlation`` keys of the collector config: loaded into the engine's
rules, and a bad value names the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.collector.config import load_collector_config
from vigil.configio import ConfigError

TOKEN = "t-0123456789abcdef0123456789abcdef"


def write_config(tmp_path: Path, correlation: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"auth: {{agent_tokens: [{TOKEN}]}}\nincidents:\n  correlation: {{{correlation}}}\n"
    )
    return path


def test_the_host_count_and_the_share_load_into_the_rules(tmp_path: Path) -> None:
    config = load_collector_config(write_config(tmp_path, "min_hosts: 5, min_share: 0.25"))
    assert (config.rules.fleet_min_hosts, config.rules.fleet_min_share) == (5, 0.25)


def test_the_defaults_are_three_hosts_and_half_the_group(tmp_path: Path) -> None:
    config = load_collector_config(write_config(tmp_path, "window: 5m"))
    assert (config.rules.fleet_min_hosts, config.rules.fleet_min_share) == (3, 0.5)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("min_hosts: -1", "incidents.correlation.min_hosts", -1),
        ("min_hosts: many", "incidents.correlation.min_hosts", "many"),
        ("min_share: 1.5", "incidents.correlation.min_share", 1.5),
        ("min_host: 3", "incidents.correlation.min_host", 3),
    ],
    ids=["negative count", "not a number", "share above one", "misspelt key"],
)
def test_a_bad_correlation_value_names_file_key_and_value(
    tmp_path: Path, text: str, key: str, value: object
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_collector_config(path)
    assert (err.value.file, err.value.key, err.value.value) == (str(path), key, value)
