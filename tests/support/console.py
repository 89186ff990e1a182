"""Helpers for the console's tests: operators through the real API, login through the
real form, CSRF tokens read from the served HTML."""

from __future__ import annotations

import gzip
import re
from typing import Any

import aiohttp

from vigil import wire

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The first form's CSRF token in ``html``; fails when the page has none."""
    found = _CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def add_operator(
    http: aiohttp.ClientSession, url: str, admin_token: str, name: str, role: str
) -> str:
    """Create operator ``name`` with ``role`` through ``POST /api/v1/operators``; its token."""
    async with http.post(
        f"{url}/api/v1/operators",
        json={"name": name, "role": role},
        headers={"Authorization": f"Bearer {admin_token}"},
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def post_report(
    http: aiohttp.ClientSession, url: str, report: wire.Report, agent_token: str
) -> None:
    """Send ``report`` gzipped as an agent does; it must be accepted."""
    async with http.post(
        f"{url}/api/v1/reports",
        data=gzip.compress(wire.encode_report(report)),
        headers={
            "Authorization": f"Bearer {agent_token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    ) as r:
        assert r.status == 200, await r.text()


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar skips IP hosts)
    and does not follow redirects on its own unless asked."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    """Log in through the real form (GET for its CSRF cookie, POST the token)."""
    async with http.get(f"{url}/console/login") as r:
        assert r.status == 200
        page = await r.text()
    async with http.post(
        f"{url}/console/login",
        data={"token": token, "csrf": csrf_of(page), "next": "/console/"},
        allow_redirects=False,
    ) as r:
        return r


async def page(http: aiohttp.ClientSession, url: str, path: str) -> tuple[int, str, Any]:
    """``GET url+path`` without following redirects: status, body text, headers."""
    async with http.get(f"{url}{path}", allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def submit(
    http: aiohttp.ClientSession, url: str, path: str, data: dict[str, str]
) -> tuple[int, str, Any]:
    """POST a console form without following the redirect: status, body, headers."""
    async with http.post(f"{url}{path}", data=data, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers
