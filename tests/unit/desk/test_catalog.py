"""The service catalog: loading with precise errors, and impact x urgency -> priority."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.collector.desk.catalog import EMPTY_CATALOG, load_catalog
from vigil.configio import ConfigError

REPO = Path(__file__).resolve().parents[3]

CATALOG = """\
groups:
  - {name: servers, match: {role: server}, urgency: high}
  - {name: laptops, match: {role: laptop}, urgency: medium, silence_expected: true}
services:
  - {name: email, owner: msg, criticality: high, checks: ["mail.*"], sla: {P1: 2h}}
  - {name: health, owner: desk, criticality: low, checks: [disk.root, "memory.*"]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def catalog(tmp_path: Path):
    return load_catalog(write(tmp_path, CATALOG))


def test_the_shipped_example_catalog_loads() -> None:
    catalog = load_catalog(REPO / "config" / "catalog.yaml")
    assert [s.name for s in catalog.services] == ["email", "printing", "workstation-health"]


@pytest.mark.parametrize(
    ("check", "labels", "fleet", "expected"),
    [
        ("mail.imap", {"role": "server"}, False, ("email", "high", "high", "P1")),
        ("mail.imap", {"role": "laptop"}, False, ("email", "high", "medium", "P2")),
        ("disk.root", {"role": "laptop"}, False, ("health", "low", "medium", "P4")),
        ("disk.root", {"role": "laptop"}, True, ("health", "low", "high", "P3")),
        ("memory.used", {"role": "server"}, False, ("health", "low", "high", "P3")),
        ("unmapped.check", {}, False, (None, "low", "medium", "P4")),
        ("mail.imap", {}, True, ("email", "high", "high", "P1")),
    ],
    ids=[
        "critical service on a server is P1",
        "critical service on a laptop is P2",
        "minor issue on one laptop is P4",
        "the same minor issue fleet-wide is raised to P3",
        "low-impact check on a server is P3",
        "a check no service claims gets the default impact",
        "fleet-wide outage of a critical service is P1",
    ],
)
def test_priority_is_impact_times_urgency(catalog, check, labels, fleet, expected) -> None:
    c = catalog.classify(check, labels, fleet=fleet)
    assert (c.service, c.impact, c.urgency, c.priority) == expected


def test_a_minor_laptop_issue_never_ranks_with_a_critical_service_outage(catalog) -> None:
    minor = catalog.classify("disk.root", {"role": "laptop"})
    outage = catalog.classify("mail.imap", {"role": "server"}, fleet=True)
    assert minor.priority > outage.priority  # "P4" > "P1": lower number is more urgent


def test_a_service_sla_overrides_the_default_for_its_priority(catalog) -> None:
    assert catalog.classify("mail.imap", {"role": "server"}).sla_s == 2 * 3600
    assert catalog.classify("mail.imap", {"role": "laptop"}).sla_s == 8 * 3600


def test_silence_is_expected_only_where_the_group_says_so(catalog) -> None:
    assert catalog.silence_expected({"role": "laptop"})
    assert not catalog.silence_expected({"role": "server"})
    assert not catalog.silence_expected({})


def test_without_a_catalog_everything_is_p3() -> None:
    assert EMPTY_CATALOG.classify("anything", {}).priority == "P3"


def test_a_custom_matrix_replaces_the_defaults(tmp_path: Path) -> None:
    rows = "\n".join(
        f"    {impact}: {{high: P1, medium: P1, low: P1}}" for impact in ("high", "medium", "low")
    )
    catalog = load_catalog(write(tmp_path, f"priorities:\n  matrix:\n{rows}\n"))
    assert catalog.classify("x", {}).priority == "P1"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("servics: []\n", "servics", "unknown key"),
        (
            "services:\n  - {name: a, owner: o, criticality: huge, checks: [x]}\n",
            "services[0].criticality",
            "must be one of",
        ),
        ("services:\n  - {name: a, owner: o, criticality: high, checks: []}\n",
         "services[0].checks", "at least one"),
        ("services:\n  - {name: a, criticality: high, checks: [x]}\n",
         "services[0].owner", "missing required key"),
        (
            "services:\n"
            "  - {name: a, owner: o, criticality: high, checks: [x]}\n"
            "  - {name: a, owner: o, criticality: low, checks: [y]}\n",
            "services[1].name",
            "duplicate",
        ),
        ("priorities:\n  matrix:\n    high: {high: P1, medium: P2, low: P3}\n",
         "priorities.matrix.medium", "missing required key"),
        ("priorities:\n  sla: {P5: 1h}\n", "priorities.sla.P5", "unknown key"),
        ("priorities:\n  sla: {P1: soon}\n", "priorities.sla.P1", "duration"),
        ("groups:\n  - {name: g, match: {}}\n", "groups[0].match", "at least one label"),
        ("groups:\n  - {name: 'bad name', match: {a: b}}\n", "groups[0].name", "letters"),
    ],
    ids=[
        "unknown top-level key",
        "bad criticality",
        "service with no checks",
        "service without owner",
        "duplicate service",
        "matrix row missing",
        "sla for an unknown priority",
        "sla not a duration",
        "group matching nothing",
        "group name with a space",
    ],
)  # fmt: skip
def test_bad_catalogs_are_refused_naming_the_key(tmp_path: Path, text, key, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    assert err.value.key == key
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_a_bad_catalog_makes_the_collector_config_fail(tmp_path: Path) -> None:
    from vigil.collector.config import load_collector_config

    write(tmp_path, "services: 3\n")
    config = tmp_path / "collector.yaml"
    config.write_text(
        "auth: {agent_tokens: [t-0123456789abcdef0123456789abcdef]}\ncatalog: catalog.yaml\n"
    )
    with pytest.raises(ConfigError, match="services"):
        load_collector_config(config)
