"""The satisfaction survey repository (``SurveyRepository`` in ``protocols.py``), shared
by both backends (``sqlite/survey_repo.py``, ``postgres/survey_repo.py``, which keep
their tables' DDL): one text per query, the backend differences in the hooks of
``storage/sql_hooks.py``. Queries only; whom to ask and when is decided in
``collector/desk/satisfaction.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vigil.collector.storage.protocols import SURVEY_COLUMNS
from vigil.collector.storage.sql_hooks import SqlHooks, chunks

_SELECT = f"SELECT {', '.join(SURVEY_COLUMNS)} FROM surveys"
_ADDED = ("incident_id", "host", "hostname", "department", "service", "check_id", "title",
          "created_at", "expires_at", "console_user")  # fmt: skip


class SurveysSql(SqlHooks):
    """:class:`~collector.storage.protocols.SurveyRepository` in SQL both backends run."""

    def add(self, row: Mapping[str, Any]) -> int:
        return self._insert_id(
            f"INSERT INTO surveys ({', '.join(_ADDED)}) VALUES ({', '.join('?' * len(_ADDED))})",
            # console_user is optional: unknown (None) unless the caller knows it.
            tuple(row.get(c) if c == "console_user" else row[c] for c in _ADDED),
        )

    def last_asked(self, host: str) -> float | None:
        row = self._run("SELECT MAX(created_at) FROM surveys WHERE host = ?", (host,)).fetchone()
        return None if row is None else row[0]

    def last_asked_user(self, console_user: str, host: str) -> float | None:
        # Two index lookups (surveys_user, surveys_host) OR-ed; the host's surveys whose
        # user is unknown count too (see the protocol).
        row = self._run(
            "SELECT MAX(created_at) FROM surveys"
            " WHERE console_user = ? OR (host = ? AND console_user IS NULL)",
            (console_user, host),
        ).fetchone()
        return None if row is None else row[0]

    def undelivered(self, host: str, now: float, max_offers: int) -> list[dict[str, Any]]:
        rows = self._run(
            f"{_SELECT} WHERE host = ? AND state IN ('pending', 'offered') AND expires_at > ?"
            " AND offers < ? ORDER BY id",
            (host, now, max_offers),
        ).fetchall()
        return [dict(zip(SURVEY_COLUMNS, r, strict=True)) for r in rows]

    def hosts_undelivered(self, now: float, max_offers: int) -> set[str]:
        rows = self._run(
            "SELECT DISTINCT host FROM surveys"
            " WHERE state IN ('pending', 'offered') AND expires_at > ? AND offers < ?",
            (now, max_offers),
        ).fetchall()
        return {h for (h,) in rows}

    def mark_offered(self, survey_ids: Sequence[int], at: float) -> None:
        for chunk in chunks(survey_ids, self.in_max):
            condition, args = self._in("id", chunk)
            self._run(
                "UPDATE surveys SET offers = offers + 1, offered_at = COALESCE(offered_at, ?),"
                " state = CASE state WHEN 'pending' THEN 'offered' ELSE state END"
                f" WHERE {condition}",
                (at, *args),
            )

    def mark_delivery(self, survey_id: int, host: str, state: str, note: str, at: float) -> bool:
        cursor = self._run(
            "UPDATE surveys SET state = ?, shown_at = ?, delivery_note = ?"
            " WHERE id = ? AND host = ? AND state IN ('pending', 'offered')",
            (state, at, note, survey_id, host),
        )
        return bool(cursor.rowcount > 0)

    def get(self, survey_id: int) -> dict[str, Any] | None:
        row = self._run(f"{_SELECT} WHERE id = ?", (survey_id,)).fetchone()
        return None if row is None else dict(zip(SURVEY_COLUMNS, row, strict=True))

    def answer(self, survey_id: int, score: int, comment: str, at: float) -> bool:
        cursor = self._run(
            "UPDATE surveys SET state = 'answered', answered_at = ?, score = ?, comment = ?"
            " WHERE id = ? AND answered_at IS NULL",
            (at, score, comment, survey_id),
        )
        return bool(cursor.rowcount > 0)

    def score_counts(self, since: float | None) -> list[tuple[str, str, int, int]]:
        rows = self._run(
            "SELECT department, service, score, COUNT(*) FROM surveys"
            " WHERE answered_at IS NOT NULL AND answered_at >= ?"
            " GROUP BY department, service, score ORDER BY department, service, score",
            (float("-inf") if since is None else since,),  # both take -inf as a float
        ).fetchall()
        return [(d, s, int(sc), int(n)) for d, s, sc, n in rows]

    def of_incident(self, incident_id: int) -> list[dict[str, Any]]:
        rows = self._run(f"{_SELECT} WHERE incident_id = ? ORDER BY id", (incident_id,)).fetchall()
        return [dict(zip(SURVEY_COLUMNS, r, strict=True)) for r in rows]

    def state_counts(self) -> dict[str, int]:
        rows = self._run("SELECT state, COUNT(*) FROM surveys GROUP BY state").fetchall()
        return {s: int(n) for s, n in rows}

    def prune(self, before: float, limit: int) -> int:
        cursor = self._run(
            "DELETE FROM surveys WHERE id IN (SELECT id FROM surveys WHERE created_at < ?"
            " ORDER BY created_at LIMIT ?)",
            (before, limit),
        )
        return int(cursor.rowcount)

    def link_key(self, candidate: str) -> str:
        self._run(
            "INSERT INTO survey_key (id, key) VALUES (0, ?) ON CONFLICT DO NOTHING", (candidate,)
        )
        return str(self._run("SELECT key FROM survey_key WHERE id = 0").fetchone()[0])
