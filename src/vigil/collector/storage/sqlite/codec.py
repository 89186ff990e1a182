"""How the SQLite backend encodes values SQLite has no type for: label sets and series
name lists as JSON text (label sets memoised, name lists stored once in ``metric_names``:
a fleet has few distinct ones), metrics values as one float64 blob per summary; TEXT
read back tolerantly (:class:`TextDecoder`)."""

from __future__ import annotations

import array
import functools
import json
import logging
import sqlite3
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("vigil.collector.storage")

_JSON_MEMO_SIZE = 4096  # distinct label sets kept as JSON text

# A late retry of an older summary must not overwrite a newer one, hence the WHERE on the
# agent's own timestamp. One row per host (not per series): a summary costs one B-tree
# write instead of ~40, which is most of what ingest spends in SQLite.
HOST_METRICS_UPSERT = (
    "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss, names_id,"
    " vals) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET"
    " time = excluded.time, received_at = excluded.received_at,"
    " agent_cpu = excluded.agent_cpu, agent_rss = excluded.agent_rss,"
    " names_id = excluded.names_id, vals = excluded.vals"
    " WHERE excluded.time >= host_metrics.time"
)


def names_id(db: sqlite3.Connection, names_json: str) -> int:
    """The ``metric_names`` id of a series-name list (JSON array text), stored if new."""
    db.execute(
        "INSERT INTO metric_names (names) VALUES (?) ON CONFLICT (names) DO NOTHING",
        (names_json,),
    )
    return int(
        db.execute("SELECT id FROM metric_names WHERE names = ?", (names_json,)).fetchone()[0]
    )


class TextDecoder:
    """The connection's ``text_factory``: TEXT values as ``str``, tolerating bytes that
    are not UTF-8.

    SQLite stores whatever bytes it is given in a TEXT column (a hand edit, a tool, an
    older version), and the standard ``str`` factory raises ``OperationalError`` on the
    first such value, failing the whole query: one bad row would stop the collector
    from starting, or make an API listing answer 500. Such a value reads with U+FFFD in
    place of the bad bytes, and the first few are logged. Costs about 0.2 us per value
    over the default; valid text takes the C fast path.
    """

    LOGGED = 3

    def __init__(self) -> None:
        self.bad = 0

    def __call__(self, raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.bad += 1
            if self.bad <= self.LOGGED:
                log.warning(
                    "a TEXT value in the store is not valid UTF-8 (%r...); read with"
                    " replacement characters",
                    raw[:40],
                )
            return raw.decode("utf-8", "replace")


def fetch_strict_text(db: sqlite3.Connection, sql: str) -> list[Any]:
    """All rows of ``sql``, TEXT decoded by the C default while it succeeds.

    For bulk reads (start-up reads every host): :class:`TextDecoder`'s Python call per
    value cost ~0.1 s at 100,000 hosts. A value that is not UTF-8 makes the strict read
    fail as a whole; the query then runs again through the connection's tolerant decoder,
    which reads it with replacement characters and logs it, as every other read does.
    Call on the connection's own thread (the factory is the connection's, briefly).
    """
    tolerant = db.text_factory
    db.text_factory = str
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        pass
    finally:
        db.text_factory = tolerant
    return db.execute(sql).fetchall()


class JsonMemo:
    """JSON text of label sets seen lately, bounded."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], str] = {}

    def labels(self, labels: Mapping[str, str]) -> str:
        """``labels`` as stored (sorted JSON)."""
        key = tuple(labels.items())
        text = self._memo.get(key)
        if text is None:
            text = json.dumps(labels, sort_keys=True)
            self._keep(key, text)
        return text

    def _keep(self, key: tuple[Any, ...], text: str) -> None:
        if len(self._memo) >= _JSON_MEMO_SIZE:  # bounded: hosts may all differ
            self._memo.clear()
        self._memo[key] = text


def pack_floats(values: Iterable[float]) -> bytes:
    """float64 little-endian, the storage form of a metrics summary's values."""
    items = tuple(values)
    # A struct per length (a fleet's summaries have a handful): 1.2 us for 39 values,
    # where building an array.array took 2.6 us (on every report's summary).
    return _packer(len(items)).pack(*items)


@functools.lru_cache(maxsize=64)
def _packer(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


def unpack_floats(blob: bytes) -> list[float]:
    """The inverse of :func:`pack_floats`."""
    packed = array.array("d")
    packed.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tolist()


def columns_to_keys(columns: str) -> tuple[str, ...]:
    """Dict keys for a column list: the API says ``check`` where SQL says ``check_id``."""
    names = (c.strip() for c in columns.split(","))
    return tuple("check" if n == "check_id" else n for n in names)
