"""Open a desk over an SQLite file in one call, as the tests of the business layer do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.collector.desk.catalog import Catalog, HostGroup, Service
from vigil.collector.desk.engine import IncidentRules
from vigil.collector.desk.service import Desk
from vigil.collector.storage.sqlite.backend import SqliteStorage

DAY = 86400.0
# The catalog and rules of the desk tests, and those the schema-2 fixture
# (tests/fixtures/schema2.sql) was written with.
CATALOG = Catalog(
    services=(
        Service("email", "mail for all", "msg-team", "high", ("mail.*",)),
        Service("health", "workstation health", "desk", "low", ("disk.*",)),
    ),
    groups=(
        HostGroup("servers", {"role": "server"}, "high", silence_expected=False),
        HostGroup("laptops", {"role": "laptop"}, "medium", silence_expected=True),
    ),
    default_impact="low",
)
RULES = IncidentRules(
    remediation_wait_s=600.0,
    heartbeat_grace_s=30.0,
    flap_window_s=3600.0,
    flap_changes=4,
    recurrence_window_s=7 * DAY,
    recurrence_count=3,
    fleet_window_s=300.0,
    fleet_min_hosts=3,
    fleet_min_share=0.0,
)


def open_desk(path: Path, **options: Any) -> Desk:
    """A :class:`Desk` over a :class:`SqliteStorage` at ``path`` (``options`` go to the
    desk: ``remediation_wait_s``, ``catalog``, ``rules``)."""
    storage = SqliteStorage(path)
    try:
        return Desk(storage, **options)
    except BaseException:
        storage.close()
        raise
