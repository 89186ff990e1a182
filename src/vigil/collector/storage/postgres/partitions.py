"""Monthly partitions of the history tables, and retention by dropping them.

``check_results`` and ``remediation_runs`` are range-partitioned on ``received_at``
(collector time, Unix seconds): one partition per calendar month in UTC, named
``<table>_YYYY_MM``, plus ``<table>_default`` for anything no month partition holds
(an insert never fails for want of a partition). Creating a month moves its rows out of
the default partition first, so a collector that ran past the months made ahead loses
nothing, it only waits for the next maintenance to tidy up.

The collector makes the current month and :data:`AHEAD_MONTHS` more at start-up; run
the maintenance daily (cron or a systemd timer) to keep making them and to apply
retention::

    python -m vigil.collector.storage.postgres.partitions postgresql://vigil@db/vigil \\
        --keep-days 90

Retention drops every month partition that ends at or before the cutoff (a whole
month at a time: ``DROP TABLE`` returns the space at once, no vacuum, no bloat) and
deletes the default partition's rows older than it. Incidents, problems and their
timelines are not partitioned: they grow with incidents, not with reports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

from vigil.collector.storage.postgres.schema import MIGRATE_LOCK, SchemaTooNew, migrate
from vigil.collector.storage.url import redact

PARTITIONED: dict[str, str] = {"check_results": "received_at", "remediation_runs": "received_at"}
AHEAD_MONTHS = 2  # months made beyond the current one


def month_start(at: float) -> dt.datetime:
    """The first instant (UTC) of the calendar month holding Unix time ``at``."""
    day = dt.datetime.fromtimestamp(at, dt.UTC)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: dt.datetime) -> dt.datetime:
    """The month after the one starting at ``start``."""
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def _name(table: str, start: dt.datetime) -> str:
    return f"{table}_{start.year:04d}_{start.month:02d}"


def months(table: str, db: psycopg.Connection) -> dict[str, dt.datetime]:
    """The month partitions of ``table`` in the current schema: name -> month start."""
    pattern = re.compile(rf"^{table}_(\d{{4}})_(\d{{2}})$")
    found: dict[str, dt.datetime] = {}
    for (name,) in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)",
        (table,),
    ).fetchall():
        match = pattern.match(name)
        if match:
            found[name] = dt.datetime(int(match[1]), int(match[2]), 1, tzinfo=dt.UTC)
    return found


def ensure(db: psycopg.Connection, since: float, until: float) -> list[str]:
    """Make the month partitions covering ``[since, until]`` that are missing, moving
    their rows out of the default partition; the names made. Runs in the caller's
    transaction (hold the migration lock: two makers of one month would collide)."""
    made: list[str] = []
    for table, column in PARTITIONED.items():
        have = months(table, db)
        start = month_start(since)
        last = month_start(until)
        for _ in range(1200):  # bounded: a century of months
            if start > last:
                break
            name = _name(table, start)
            if name not in have:
                _attach(db, table, column, name, start, next_month(start))
                made.append(name)
            start = next_month(start)
    return made


def adopt_default(db: psycopg.Connection) -> list[str]:
    """Make a month partition for every month that has rows in a default partition
    (moving them there); the names made. Caller's transaction, migration lock held."""
    made: list[str] = []
    for table, column in PARTITIONED.items():
        have = months(table, db)
        rows = db.execute(
            sql.SQL(
                "SELECT DISTINCT date_trunc('month', to_timestamp({c}) AT TIME ZONE 'UTC')"
                " FROM {d} WHERE {c} >= 0 AND {c} < 253402300800 LIMIT 1200"
            ).format(c=sql.Identifier(column), d=sql.Identifier(f"{table}_default"))
        ).fetchall()
        for (start,) in rows:
            start = start.replace(tzinfo=dt.UTC)
            name = _name(table, start)
            if name not in have:
                _attach(db, table, column, name, start, next_month(start))
                made.append(name)
    return made


def _attach(
    db: psycopg.Connection,
    table: str,
    column: str,
    name: str,
    start: dt.datetime,
    end: dt.datetime,
) -> None:
    low, high = start.timestamp(), end.timestamp()
    ids = {
        "t": sql.Identifier(table),
        "p": sql.Identifier(name),
        "d": sql.Identifier(f"{table}_default"),
        "c": sql.Identifier(column),
        "low": sql.Literal(low),
        "high": sql.Literal(high),
    }
    # A plain table first, filled from the default partition, then attached: attaching
    # checks the default holds no row of the new range, which the move guarantees.
    db.execute(
        sql.SQL("CREATE TABLE {p} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            **ids
        )
    )
    db.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM {d} WHERE {c} >= {low} AND {c} < {high} RETURNING *)"
            " INSERT INTO {p} SELECT * FROM moved"
        ).format(**ids)
    )
    db.execute(
        sql.SQL("ALTER TABLE {t} ATTACH PARTITION {p} FOR VALUES FROM ({low}) TO ({high})").format(
            **ids
        )
    )


def drop_before(db: psycopg.Connection, cutoff: float) -> list[str]:
    """Drop the month partitions that end at or before ``cutoff`` (Unix seconds) and
    delete the default partitions' rows older than it; the partitions dropped."""
    dropped: list[str] = []
    for table, column in PARTITIONED.items():
        for name, start in sorted(months(table, db).items(), key=lambda kv: kv[1]):
            if next_month(start).timestamp() <= cutoff:
                db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                dropped.append(name)
        db.execute(
            sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                sql.Identifier(f"{table}_default"), sql.Identifier(column)
            ),
            (cutoff,),
        )
    return dropped


def maintain(
    db: psycopg.Connection, now: float, keep_s: float | None
) -> tuple[list[str], list[str]]:
    """Make this month's and the next :data:`AHEAD_MONTHS` partitions and those the
    default partitions have rows of (:func:`adopt_default`), and with
    ``keep_s`` drop history older than ``now - keep_s``; ``(made, dropped)``. One
    transaction under the migration lock (``db`` in autocommit mode)."""
    with db.transaction():
        db.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(COALESCE(current_schema(), '')))",
            (MIGRATE_LOCK,),
        )
        ahead = month_start(now)
        for _ in range(AHEAD_MONTHS):
            ahead = next_month(ahead)
        made = ensure(db, now, ahead.timestamp()) + adopt_default(db)
        dropped = [] if keep_s is None else drop_before(db, now - keep_s)
    return made, dropped


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``URL [--keep-days N]``; exit 0 done, 1 failed, 2 bad arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m vigil.collector.storage.postgres.partitions",
        description="Make the coming months' history partitions and drop expired ones.",
    )
    parser.add_argument("url", help="postgresql://user@host:port/database")
    parser.add_argument(
        "--keep-days",
        type=float,
        default=None,
        help="drop check results and remediation runs older than this (whole months)",
    )
    args = parser.parse_args(argv)
    if args.keep_days is not None and not 1 <= args.keep_days <= 36500:
        parser.error(f"--keep-days: must be between 1 and 36500, got {args.keep_days}")
    keep = None if args.keep_days is None else args.keep_days * 86400.0
    try:
        with psycopg.connect(args.url, autocommit=True, connect_timeout=10) as db:
            migrate(db)  # a database no collector opened yet gets its tables first
            made, dropped = maintain(db, time.time(), keep)
    except (SchemaTooNew, psycopg.Error) as exc:
        print(f"{redact(args.url)}: maintenance failed: {exc}", file=sys.stderr)
        return 1
    print(f"made: {', '.join(made) or 'none'}; dropped: {', '.join(dropped) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
