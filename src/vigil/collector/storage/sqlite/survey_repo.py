"""Satisfaction surveys on SQLite: the tables (schema 8, ``console_user`` schema 13) and
the shared queries of
``storage/survey_sql.py`` with the SQLite hooks (``sqlite/sql_hooks.py``)."""

from __future__ import annotations

import sqlite3

from vigil.collector.storage.sqlite.sql_hooks import SqliteHooks
from vigil.collector.storage.survey_sql import SurveysSql

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
    comment       TEXT,
    console_user  TEXT  -- whom it was for (the agent's opaque id), NULL: unknown
);
CREATE INDEX IF NOT EXISTS surveys_host ON surveys (host, created_at);
CREATE INDEX IF NOT EXISTS surveys_created ON surveys (created_at);
CREATE INDEX IF NOT EXISTS surveys_incident ON surveys (incident_id);
CREATE INDEX IF NOT EXISTS surveys_state ON surveys (state, expires_at);
CREATE INDEX IF NOT EXISTS surveys_answered ON surveys (answered_at);
CREATE INDEX IF NOT EXISTS surveys_user ON surveys (console_user, created_at);
CREATE TABLE IF NOT EXISTS survey_key (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    key TEXT NOT NULL
);
"""


def migrate_surveys(db: sqlite3.Connection) -> None:
    """Create the survey tables if missing (schema 8), and give an older ``surveys``
    table the ``console_user`` column and its index (schema 13: the rate limit per
    person, issue #19; older rows stay NULL, unknown). Idempotent."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'surveys'"
    ).fetchone()
    if exists is not None:
        have = {row[1] for row in db.execute("PRAGMA table_info(surveys)")}
        if "console_user" not in have:
            db.execute("ALTER TABLE surveys ADD COLUMN console_user TEXT")
    for statement in SURVEYS_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


class SqliteSurveys(SqliteHooks, SurveysSql):
    """:class:`~collector.storage.protocols.SurveyRepository` on SQLite."""
