"""The lean ingest front (``listen.ingest_front: lean``, collector/front.py) on a real
collector process: it serves reports with the same answers as aiohttp, hands every other
request to aiohttp at a request boundary, and keeps the limits of hostile input (body
size, slow clients, the connection cap)."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import collector_config, start_collector, stop
from tests.support.wirefuzz import valid_report

TOKEN = "front-agent-token-0123456789abcdef0123456789"
ADMIN = "front-admin-token-0123456789abcdef0123456789"


@contextlib.contextmanager
def collector(
    folder: Path, front: str = "lean", listen_extra: str = "", extra: str = ""
) -> Iterator[tuple[str, int]]:
    """A real collector with ``listen.ingest_front: front``; yields (host, port)."""
    config = collector_config(folder, agent_token=TOKEN, admin_token=ADMIN, extra=extra)
    config.write_text(
        config.read_text().replace(
            "listen: {host: 127.0.0.1, port: 0}",
            f"listen: {{host: 127.0.0.1, port: 0, ingest_front: {front}{listen_extra}}}",
        )
    )
    log = folder / "collector.log"
    proc, url = start_collector(config, log)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        yield host, int(port)
    finally:
        assert stop(proc) == 0
    assert "Traceback" not in log.read_text()


def report_body(batch: str, agent: str = "a1") -> bytes:
    report = valid_report()
    report.update(batch_id=batch, agent_id=agent)
    return gzip.compress(json.dumps(report).encode())


def post(body: bytes, *, token: str = TOKEN, extra: str = "") -> bytes:
    """A raw ``POST /api/v1/reports`` request (gzip JSON, Content-Length)."""
    head = (
        "POST /api/v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Client:
    """A raw keep-alive connection that reads whole responses (Content-Length framed)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.pending:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; got {self.pending[:200]!r}"
            self.pending += chunk
        head, rest = self.pending.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed inside a body"
            rest += chunk
        self.pending = rest[length:]
        return status, headers, rest[:length]

    def closed_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def test_reports_are_acked_and_other_requests_go_to_aiohttp_on_one_connection(
    tmp_path: Path,
) -> None:
    """A report, /healthz on the same keep-alive connection (handed to aiohttp), and a
    report after it (now answered by aiohttp): all correct, the retry a duplicate."""
    with collector(tmp_path) as address:
        c = Client(address)
        c.send(post(report_body("b1")))
        status, headers, body = c.response()
        ack = json.loads(body)
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert (ack["batch_id"], ack["accepted"], ack["duplicate"]) == ("b1", True, False)
        assert ack["events"] == 3 and "policy" in ack
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = c.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
        c.send(post(report_body("b1")))
        status, _, body = c.response()
        assert status == 200 and json.loads(body)["duplicate"] is True
        c.close()


@pytest.mark.parametrize("piece", [97, 1 << 20], ids=["split at odd places", "one write"])
def test_pipelined_reports_are_answered_in_order(tmp_path: Path, piece: int) -> None:
    """Three reports sent at once (each whole in the buffer: the callback lane takes
    one after the other's reply) or in small pieces: three acks, in order."""
    with collector(tmp_path) as address:
        c = Client(address)
        data = b"".join(post(report_body(f"p{i}", agent=f"agent{i}")) for i in range(3))
        for start in range(0, len(data), piece):
            c.send(data[start : start + piece])
        acks = [json.loads(c.response()[2]) for _ in range(3)]
        assert [a["batch_id"] for a in acks] == ["p0", "p1", "p2"]
        assert all(a["accepted"] and not a["duplicate"] for a in acks)
        c.close()


@pytest.mark.parametrize(
    ("token", "extra", "status", "field"),
    [
        ("not-a-token-0123456789abcdef0123456789", "", 401, None),
        (TOKEN, "X-Vigil-Policy: ???\r\n", 400, "X-Vigil-Policy"),
    ],
    ids=["unknown token 401", "bad policy header 400 naming it"],
)
def test_rejections_are_the_handlers_own(
    tmp_path: Path, token: str, extra: str, status: int, field: str | None
) -> None:
    with collector(tmp_path) as address:
        c = Client(address)
        c.send(post(report_body("r1"), token=token, extra=extra))
        got, headers, body = c.response()
        assert (got, json.loads(body)["field"]) == (status, field)
        if status == 401:
            assert headers["www-authenticate"].startswith("Bearer")
        c.close()


def test_a_body_over_the_limit_is_refused_from_its_length_and_the_connection_closes(
    tmp_path: Path,
) -> None:
    with collector(tmp_path) as address:
        c = Client(address)
        c.send(
            b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
            + b"Content-Length: 50000000\r\n\r\n"
            + b"x" * 1000
        )
        status, headers, body = c.response()
        assert status == 413 and "over" in json.loads(body)["error"]
        assert headers.get("connection") == "close"
        assert c.closed_within(5)
        c.close()


def test_a_chunked_report_is_served_by_aiohttp(tmp_path: Path) -> None:
    with collector(tmp_path) as address:
        c = Client(address)
        body = report_body("c1")
        head = (
            post(body)
            .split(b"\r\n\r\n", 1)[0]
            .replace(f"Content-Length: {len(body)}".encode(), b"Transfer-Encoding: chunked")
        )
        c.send(head + b"\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        status, _, reply = c.response()
        assert status == 200 and json.loads(reply)["batch_id"] == "c1"
        c.close()


def test_a_slow_head_and_a_slow_body_are_cut_off_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    with collector(tmp_path, listen_extra=", idle_timeout: 2s") as address:
        slow_head = Client(address)
        slow_head.send(b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\n")
        slow_body = Client(address)
        slow_body.send(post(report_body("s1"))[:-20])
        started = time.monotonic()
        assert slow_head.closed_within(8)
        status, _, body = slow_body.response()
        assert (status, json.loads(body)["field"]) == (400, None)
        assert slow_body.closed_within(8)
        assert time.monotonic() - started < 8
        slow_head.close()
        slow_body.close()


def test_the_connection_cap_counts_lean_connections(tmp_path: Path) -> None:
    """Five keep-alive connections that each sent a report fill a cap of five: the
    sixth is answered 503 and closed."""
    with collector(tmp_path, listen_extra=", max_connections: 5") as address:
        clients = [Client(address) for _ in range(5)]
        for i, c in enumerate(clients):
            c.send(post(report_body(f"k{i}", agent=f"k{i}")))
            assert c.response()[0] == 200
        extra = Client(address)
        extra.sock.settimeout(5)
        reply = extra.sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:80]
        for c in [*clients, extra]:
            c.close()


def sequenced_body(batch: str, first: int, last: int) -> bytes:
    report = valid_report()
    report["events"] = [e for e in report["events"] if first <= e["seq"] <= last]
    report.update(batch_id=batch, epoch="cd" * 16, seq_first=first, seq_last=last)
    return gzip.compress(json.dumps(report).encode())


def test_the_aiohttp_front_serves_the_same_answers(tmp_path: Path) -> None:
    """``ingest_front: aiohttp`` and the lean front (whose plain reports take its
    callback lane) give the same status and body for an ack, a duplicate, a restored
    snapshot's 409 and a refusal."""
    requests = [
        post(sequenced_body("s1", 1, 2)),
        post(sequenced_body("s1", 1, 2)),  # the same batch again: a duplicate
        post(sequenced_body("s0", 1, 1)),  # at or below the mark: 409, new epoch
        post(sequenced_body("s2", 3, 3), token="not-a-token-0123456789abcdef0123456789"),
    ]
    answers = {}
    for front in ("aiohttp", "lean"):
        folder = tmp_path / front
        folder.mkdir()
        with collector(folder, front=front) as address:
            c = Client(address)
            got = []
            for request in requests:
                c.send(request)
                status, headers, body = c.response()
                got.append((status, headers["content-type"], json.loads(body)))
            answers[front] = got
            c.close()
    assert [status for status, _, _ in answers["lean"]] == [200, 200, 409, 401]
    assert answers["lean"][1][2]["duplicate"] is True
    assert answers["aiohttp"] == answers["lean"]


def test_the_access_log_has_a_line_per_lean_request_when_asked_for(tmp_path: Path) -> None:
    with collector(tmp_path, extra="logging: {access_log: true}\n") as address:
        c = Client(address)
        c.send(post(report_body("log1")))
        assert c.response()[0] == 200
        c.send(post(report_body("log2"), token="not-a-token-0123456789abcdef0123456789"))
        assert c.response()[0] == 401
        c.close()
    text = (tmp_path / "collector.log").read_text()
    assert '"POST /api/v1/reports HTTP/1.1" 200' in text
    assert '"POST /api/v1/reports HTTP/1.1" 401' in text
