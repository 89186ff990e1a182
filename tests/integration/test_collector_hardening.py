"""A real collector process under hostile load: idle and half-sent connections, more
connections than it may hold, a lowered open-files limit, and rows in its store that no
report could write any more. It must keep serving, shed politely and start again."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.procs import collector_config, start_collector, stop, wait_for
from tests.support.wirefuzz import JSON_VALUES, REPORT_PATHS, replaced, valid_report
from vigil import wire

TOKEN = "hardening-agent-token-0123456789abcdef"
ADMIN = "hardening-admin-token-0123456789abcdef"


def metrics_request(url: str) -> urllib.request.Request:
    """``GET url/metrics`` with the admin token (``/metrics`` needs an operator token)."""
    return urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"})


def healthz(url: str) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
        return r.status


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def sockets(url: str, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connected, idle client sockets, closed on exit."""
    opened: list[socket.socket] = []
    try:
        for _ in range(n):
            opened.append(socket.create_connection(address(url), timeout=5))
        yield opened
    finally:
        for s in opened:
            s.close()


def closed_by_peer(s: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``s`` within ``within_s`` (reading what it sends)."""
    s.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if not s.recv(4096):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def test_connections_past_the_cap_get_503_and_idle_ones_are_closed(tmp_path: Path) -> None:
    config = collector_config(
        tmp_path,
        agent_token=TOKEN,
        extra="",
    )
    # listen: is written by collector_config; replace it with one carrying the limits.
    text = config.read_text().replace(
        "listen: {host: 127.0.0.1, port: 0}",
        "listen: {host: 127.0.0.1, port: 0, max_connections: 20, idle_timeout: 3s}",
    )
    config.write_text(text)
    log = tmp_path / "collector.log"
    proc, url = start_collector(config, log)
    try:
        with sockets(url, 20) as idle:
            time.sleep(0.5)  # the server accepts them (the kernel completed the handshakes)
            # The cap is reached: one more connection is answered 503 and closed at once.
            with socket.create_connection(address(url), timeout=5) as extra:
                extra.settimeout(5)
                reply = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := extra.recv(4096):
                        reply += chunk
            assert reply.startswith(b"HTTP/1.1 503"), reply[:80]
            assert b"Retry-After:" in reply
            # A half-sent request (a slow client) is closed after the idle timeout, as
            # are the idle connections; then the collector serves again.
            idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert closed_by_peer(idle[0], 10.0)
            assert all(closed_by_peer(s, 10.0) for s in idle[1:])
        assert wait_for("healthz", lambda: healthz(url) == 200, 10)
        # A flood past the cap: bounded, and it neither kills the process nor floods the log.
        for _ in range(3):
            with sockets(url, 40):
                pass
        assert wait_for("healthz after the flood", lambda: healthz(url) == 200, 10)
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("shedding new ones") <= 3


def raw_reply(url: str, request: bytes) -> bytes:
    """Send ``request`` bytes as they are on a fresh connection; the reply's first line."""
    with socket.create_connection(address(url), timeout=5) as s:
        s.sendall(request)
        reply = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n" not in reply and (chunk := s.recv(4096)):
                reply += chunk
    return reply.split(b"\r\n", 1)[0]


def test_malformed_requests_are_400_without_a_traceback_per_request(tmp_path: Path) -> None:
    """A request line or header aiohttp cannot parse is answered 400; the log gets one
    short line per 10 s, not an ERROR with a traceback per request."""
    log = tmp_path / "collector.log"
    proc, url = start_collector(collector_config(tmp_path, agent_token=TOKEN), log)
    try:
        long_line = b"GET /api/v1/incidents?check=" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n"
        long_header = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"y" * 20_000 + b"\r\n\r\n"
        bad_header = b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"
        replies = [raw_reply(url, r) for r in (long_line, long_header, bad_header) * 10]
        assert all(r.split(b" ")[1] == b"400" for r in replies), set(replies)
        assert healthz(url) == 200
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert 1 <= text.count("malformed HTTP request answered 400") <= 2
    assert len(text) < 4000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/limits")
def test_the_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    config = collector_config(tmp_path, agent_token=TOKEN)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        proc, url = start_collector(config, tmp_path / "collector.log")  # inherits 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3] == str(hard), line
        assert healthz(url) == 200
    finally:
        assert stop(proc) == 0


# ------------------------------------------------------------------------ memory

MiB = 2**20


def gzip_of(piece: bytes, total: int, head: bytes, tail: bytes) -> bytes:
    """``head + piece * n + tail`` (about ``total`` bytes) gzipped without holding it."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = piece * (MiB // len(piece))
    parts = [packer.compress(head)]
    parts += [packer.compress(block) for _ in range(total // len(block))]
    return b"".join(parts) + packer.compress(tail) + packer.flush()


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
@pytest.mark.parametrize(
    ("piece", "head", "tail"),
    [
        (b"{},", b"[", b"{}]"),
        (b'"k":0,', b"{", b'"z":0}'),
        (b'"aaaa":1.5,', b'{"labels":{', b'"z":1}}'),
        (b"0.5,", b"[", b"0]"),
    ],
    ids=["empty objects", "repeated keys", "a huge map", "numbers"],
)
def test_a_tiny_body_costs_a_real_collector_little_more_than_its_unpacked_size(
    tmp_path: Path, piece: bytes, head: bytes, tail: bytes
) -> None:
    """About 16 KiB of gzip that unpacks to 15 MiB of values: refused with a 400 naming
    the body, and the process's peak memory (VmHWM, reset just before) grows by the
    unpacked bytes plus a few MiB, not by what parsing millions of values would take
    (up to 140 MB before the bounds)."""
    body = gzip_of(piece, 15 * MiB, head, tail)
    assert len(body) < 64 * 1024
    proc, url = start_collector(collector_config(tmp_path, agent_token=TOKEN), None)
    try:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = proc_kib(proc.pid, "VmRSS")
        status, reply = post_raw_gzipped(url, body)
        growth_mib = (proc_kib(proc.pid, "VmHWM") - before) / 1024
    finally:
        assert stop(proc) == 0
    assert (status, reply["field"]) == (400, "body"), reply
    assert growth_mib < 15 + 10, f"peak grew {growth_mib:.0f} MiB"


# ------------------------------------------------------------------------ start-up


def bad_rows(db: Path) -> None:
    """Rows no report can write any more (out-of-range and non-numeric values), written
    straight into the store, as an older version or a hand edit could have left them."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s)"
            " VALUES ('huge', 'h1', '{}', '1', 1, 1700000000, -1e308, 1e308, 90)"
        )
        conn.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s)"
            " VALUES ('text', 'h2', 'not json', '1', 1, 'yesterday', 'x', 'x', 'y')"
        )
        conn.execute("INSERT INTO metric_names (id, names) VALUES (9000, '[]')")
        conn.execute(
            "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss,"
            " names_id, vals) VALUES ('huge', 1e308, 1, 1e308, -1e308, 9000, x'')"
        )
        # Text that is not UTF-8 in TEXT columns, BLOBs where names belong, text where a
        # count belongs, absurd times: SQLite stores them all as given.
        conn.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s)"
            " VALUES ('latin1', CAST(x'e9' AS TEXT), CAST(x'ff' AS TEXT), '1', 1,"
            " 1700000000, 1, 0, 90)"
        )
        conn.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s)"
            " VALUES (x'00ff', x'01', '{}', '1', 1, 1700000000, 1, 0, 90)"
        )
        for check, state in (("CAST(x'ff' AS TEXT)", "unknown"), ("x'00ff'", "critical"),
                             ("x'00fe'", "unknown")):  # fmt: skip
            conn.execute(
                "INSERT INTO check_state (host, check_id, state, message, updated_at)"
                f" VALUES ('latin1', {check}, '{state}', CAST(x'ff' AS TEXT), 1)"
            )
        conn.execute(
            "INSERT INTO incidents (host, hostname, check_id, state, priority, opened_at,"
            " resolved_at, message) VALUES"
            " ('latin1', 'h', x'00', 'resolved', x'01', -1e308, 1e308, 'm'),"
            " ('latin1', 'h', x'00', 'open', x'01', 1, NULL, CAST(x'ff' AS TEXT))"
        )
        conn.execute("INSERT INTO counters (name, value) VALUES ('reports_accepted', 'lots')")


def post_report(url: str, agent_id: str) -> int:
    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname=agent_id,
        labels={},
        batch_id=f"b-{agent_id}",
        sent_at=time.time(),
        agent_version="test",
        events=(
            wire.MetricsEvent(
                event_id=f"e-{agent_id}", seq=1, time=time.time(), values={"cpu": 1.0}
            ),
        ),
    )
    req = urllib.request.Request(
        f"{url}/api/v1/reports",
        data=gzip.compress(wire.encode_report(report)),
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def test_a_collector_starts_and_serves_over_bad_rows_in_its_store(tmp_path: Path) -> None:
    config = collector_config(tmp_path, agent_token=TOKEN, admin_token=ADMIN)
    proc, url = start_collector(config, tmp_path / "first.log")
    assert stop(proc) == 0  # the store now exists, with its schema
    bad_rows(tmp_path / "collector.db")
    columns = [
        r[1]
        for r in sqlite3.connect(tmp_path / "collector.db").execute(
            "PRAGMA table_info(remediation_runs)"
        )
    ]
    with contextlib.closing(sqlite3.connect(tmp_path / "collector.db")) as conn, conn:
        row = {c: "x" for c in columns if c != "id"}
        row.update(duration_s=1e308, remediation="r", outcome="fixed")
        marks = ", ".join("?" * len(row))
        conn.execute(
            f"INSERT INTO remediation_runs ({', '.join(row)}) VALUES ({marks})",
            tuple(row.values()),
        )
    log = tmp_path / "second.log"
    proc, url = start_collector(config, log)
    try:
        assert healthz(url) == 200
        with urllib.request.urlopen(metrics_request(url), timeout=10) as r:
            assert r.status == 200
            metrics = r.read().decode()
        assert 'vigil_checks_unknown{check="\ufffd"} 1.0' in metrics
        assert "\\x00" not in metrics  # no BLOB became a label value
        # Ingest works, for a host with a bad row too.
        assert post_report(url, "huge") == 200
        assert post_report(url, "fresh") == 200
        # The tick (every 5 s) still ages every host: the silent ones with usable rows
        # get their incident, the unusable rows are skipped, and the tick never fails.
        assert wait_for("a tick", lambda: "tick opened incidents" in log.read_text(), 15)
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    assert "desk tick failed" not in text
    assert "tick: skipping text: hosts.last_seen is 'yesterday'" in text
    assert "skipping a bad hosts row" in text
    assert "skipping a bad check_state row" in text
    assert "skipping a bad counters row" in text
    assert "not valid UTF-8" in text
    assert "Traceback" not in text


# ------------------------------------------------------------------------ fuzzing


def post_raw(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    return post_raw_gzipped(url, gzip.compress(body, 1))


def post_raw_gzipped(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        f"{url}/api/v1/reports",
        data=data,
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_fuzzed_reports_are_200_or_a_4xx_naming_the_field_and_the_store_restarts(
    tmp_path: Path,
) -> None:
    """Any field of a valid report replaced by any JSON value, posted to a real
    collector: never a 5xx, every refusal names its field, and a collector restarted
    on the store those reports left behind starts and serves."""
    config = collector_config(tmp_path, agent_token=TOKEN, admin_token=ADMIN)
    log = tmp_path / "fuzz.log"
    proc, url = start_collector(config, log)
    statuses: Counter[int] = Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(REPORT_PATHS), JSON_VALUES)
    # The inputs that once stored a report and then broke the aggregates, always tried.
    @example(("sent_at",), 1e308)
    @example(("sent_at",), -1e308)
    @example(("events", 2, "duration_s"), 1e308)
    def post_one(path: tuple[object, ...], value: object) -> None:
        data = valid_report()
        unique = uuid.uuid4().hex  # a new batch each time, so it is applied, not a duplicate
        data["batch_id"] = unique
        for event in data["events"]:
            event["event_id"] = f"{unique}-{event['event_id']}"
        status, reply = post_raw(url, json.dumps(replaced(data, path, value)).encode())
        statuses[status] += 1
        assert status == 200 or 400 <= status < 500, (status, reply)
        if status != 200:
            assert isinstance(reply["field"], str) and reply["field"], reply

    try:
        post_one()
    finally:
        assert stop(proc) == 0
    assert statuses[200] > 0 and sum(statuses.values()) > statuses[200]
    proc, url = start_collector(config, tmp_path / "restart.log")
    try:
        assert healthz(url) == 200
        with urllib.request.urlopen(metrics_request(url), timeout=10) as r:
            assert r.status == 200
    finally:
        assert stop(proc) == 0
    assert "Traceback" not in log.read_text()
