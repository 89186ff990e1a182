"""Pages of the list endpoints: ``limit``, keyset ``cursor`` and a bounded ``offset``.

Every list answers with its rows and ``next``: the URL of the following page (the same
query with ``cursor`` set and ``offset`` dropped), or null when this page was not full.
A full last page is followed by one empty page. A cursor is opaque to clients:
URL-safe base64 of a JSON list holding the last row's sort key (an id, for lists
ordered newest first; an agent_id for ``/hosts``). A keyset page costs the same at any
depth, where ``offset`` costs what it skips (issue #17: ``offset=500000`` took 0.1-2 s
at 1M incidents), so ``offset`` is kept for compatibility but bounded by
:data:`MAX_OFFSET`.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from vigil.collector.api.http import MAX_ID, ApiError, int_param

# Rows per page of every list endpoint: the default and the most a client may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# The deepest ``offset`` accepted; deeper pages are reached with ``cursor``.
MAX_OFFSET = 10_000
# A cursor longer than this is not one we issued (an agent_id is at most a few hundred
# characters; see wire.py).
_MAX_CURSOR = 1024


def encode_cursor(key: int | str) -> str:
    """The opaque ``cursor`` for a page that continues after sort key ``key``."""
    raw = json.dumps([key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str, kind: type[int] | type[str]) -> Any:
    """The sort key in ``raw``, which must be a cursor holding a ``kind``; else 400
    naming ``cursor`` (a client may only pass back a ``next`` link's cursor)."""
    bad = ApiError(400, "cursor is not one this collector issued (use the next link)", "cursor")
    if not raw or len(raw) > _MAX_CURSOR:
        raise bad
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not (isinstance(decoded, list) and len(decoded) == 1):
        raise bad
    key = decoded[0]
    if kind is int:
        if isinstance(key, bool) or not isinstance(key, int) or not 0 < key <= MAX_ID:
            raise bad
    elif not isinstance(key, str) or not key:
        raise bad
    return key


def page(query: Mapping[str, str]) -> dict[str, int | None]:
    """``limit`` (1..:data:`MAX_LIMIT`, default :data:`DEFAULT_LIMIT`), ``offset``
    (0..:data:`MAX_OFFSET`, default 0) and ``before`` (the id in ``cursor``, or None) as
    keyword arguments for a desk ``list_*`` call ordered newest first. ``cursor`` and
    ``offset`` together are a 400 naming ``offset``."""
    offset = query.get("offset")
    if offset is not None and "cursor" in query:
        raise ApiError(400, "offset cannot be combined with cursor", "offset")
    if offset is not None and offset.isdigit() and int(offset) > MAX_OFFSET:
        raise ApiError(
            400,
            f"offset must be at most {MAX_OFFSET}, got {offset[:20]!r};"
            " page deeper with cursor (the next link)",
            "offset",
        )
    cursor = query.get("cursor")
    return {
        "limit": int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        "offset": int_param(query, "offset", 0, 0, MAX_OFFSET),
        "before": None if cursor is None else decode_cursor(cursor, int),
    }


def host_page(query: Mapping[str, str]) -> dict[str, Any]:
    """``limit`` and ``after`` (the agent_id in ``cursor``, or None) for
    ``/api/v1/hosts``, ordered by agent_id. It never had ``offset``, nor gets one."""
    cursor = query.get("cursor")
    return {
        "limit": int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        "after": None if cursor is None else decode_cursor(cursor, str),
    }


def next_link(
    request: web.Request,
    query: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
    limit: int,
    key: str = "id",
) -> str | None:
    """The URL (path and query) of the page after ``rows``, or None if ``rows`` is not a
    full page of ``limit``: the same query with ``cursor`` after the last row's ``key``
    and no ``offset``."""
    if len(rows) < limit or not rows:
        return None
    params = {k: v for k, v in query.items() if k not in ("cursor", "offset")}
    params["cursor"] = encode_cursor(rows[-1][key])
    return f"{request.path}?{urllib.parse.urlencode(params)}"
