"""SQLite repository of satisfaction surveys (``SurveyRepository`` in ``protocols.py``).
Queries only; whom to ask and when is decided in ``collector/desk/satisfaction.py``."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from vigil.collector.storage.protocols import SURVEY_COLUMNS

_SELECT = f"SELECT {', '.join(SURVEY_COLUMNS)} FROM surveys"
_ADDED = ("incident_id", "host", "hostname", "department", "service", "check_id", "title",
          "created_at", "expires_at")  # fmt: skip

SURVEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS surveys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id   INTEGER NOT NULL,
    host          TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    department    TEXT NOT NULL,
    service       TEXT NOT NULL,
    check_id      TEXT NOT NULL,
    title         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending',
    offered_at    REAL,
    offers        INTEGER NOT NULL DEFAULT 0,
    shown_at      REAL,
    delivery_note TEXT NOT NULL DEFAULT '',
    answered_at   REAL,
    score         INTEGER,
    comment       TEXT
);
CREATE INDEX IF NOT EXISTS surveys_host ON surveys (host, created_at);
CREATE INDEX IF NOT EXISTS surveys_created ON surveys (created_at);
CREATE INDEX IF NOT EXISTS surveys_incident ON surveys (incident_id);
CREATE INDEX IF NOT EXISTS surveys_state ON surveys (state, expires_at);
CREATE INDEX IF NOT EXISTS surveys_answered ON surveys (answered_at);
CREATE TABLE IF NOT EXISTS survey_key (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    key TEXT NOT NULL
);
"""


def migrate_surveys(db: sqlite3.Connection) -> None:
    """Create the survey tables if missing (schema 8; idempotent)."""
    for statement in SURVEYS_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


class SqliteSurveys:
    """:class:`~collector.storage.protocols.SurveyRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, row: Mapping[str, Any]) -> int:
        cursor = self._db.execute(
            f"INSERT INTO surveys ({', '.join(_ADDED)}) VALUES ({', '.join('?' * len(_ADDED))})",
            tuple(row[c] for c in _ADDED),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def last_asked(self, host: str) -> float | None:
        row = self._db.execute("SELECT MAX(created_at) FROM surveys WHERE host = ?", (host,))
        return row.fetchone()[0]

    def undelivered(self, host: str, now: float, max_offers: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"{_SELECT} WHERE host = ? AND state IN ('pending', 'offered') AND expires_at > ?"
            " AND offers < ? ORDER BY id",
            (host, now, max_offers),
        )
        return [dict(zip(SURVEY_COLUMNS, r, strict=True)) for r in rows]

    def hosts_undelivered(self, now: float, max_offers: int) -> set[str]:
        rows = self._db.execute(
            "SELECT DISTINCT host FROM surveys"
            " WHERE state IN ('pending', 'offered') AND expires_at > ? AND offers < ?",
            (now, max_offers),
        )
        return {h for (h,) in rows}

    def mark_offered(self, survey_ids: Sequence[int], at: float) -> None:
        self._db.executemany(
            "UPDATE surveys SET offers = offers + 1, offered_at = COALESCE(offered_at, ?),"
            " state = CASE state WHEN 'pending' THEN 'offered' ELSE state END WHERE id = ?",
            [(at, i) for i in survey_ids],
        )

    def mark_delivery(self, survey_id: int, host: str, state: str, note: str, at: float) -> bool:
        cursor = self._db.execute(
            "UPDATE surveys SET state = ?, shown_at = ?, delivery_note = ?"
            " WHERE id = ? AND host = ? AND state IN ('pending', 'offered')",
            (state, at, note, survey_id, host),
        )
        return cursor.rowcount > 0

    def get(self, survey_id: int) -> dict[str, Any] | None:
        row = self._db.execute(f"{_SELECT} WHERE id = ?", (survey_id,)).fetchone()
        return None if row is None else dict(zip(SURVEY_COLUMNS, row, strict=True))

    def answer(self, survey_id: int, score: int, comment: str, at: float) -> bool:
        cursor = self._db.execute(
            "UPDATE surveys SET state = 'answered', answered_at = ?, score = ?, comment = ?"
            " WHERE id = ? AND answered_at IS NULL",
            (at, score, comment, survey_id),
        )
        return cursor.rowcount > 0

    def score_counts(self, since: float | None) -> list[tuple[str, str, int, int]]:
        rows = self._db.execute(
            "SELECT department, service, score, COUNT(*) FROM surveys"
            " WHERE answered_at IS NOT NULL AND answered_at >= ?"
            " GROUP BY department, service, score ORDER BY department, service, score",
            (float("-inf") if since is None else since,),
        )
        return [(d, s, int(sc), int(n)) for d, s, sc, n in rows]

    def of_incident(self, incident_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(f"{_SELECT} WHERE incident_id = ? ORDER BY id", (incident_id,))
        return [dict(zip(SURVEY_COLUMNS, r, strict=True)) for r in rows]

    def state_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM surveys GROUP BY state")
        return {s: int(n) for s, n in rows}

    def prune(self, before: float, limit: int) -> int:
        cursor = self._db.execute(
            "DELETE FROM surveys WHERE id IN (SELECT id FROM surveys WHERE created_at < ?"
            " ORDER BY created_at LIMIT ?)",
            (before, limit),
        )
        return cursor.rowcount

    def link_key(self, candidate: str) -> str:
        self._db.execute("INSERT OR IGNORE INTO survey_key (id, key) VALUES (0, ?)", (candidate,))
        return self._db.execute("SELECT key FROM survey_key WHERE id = 0").fetchone()[0]
