"""User-experience probes against real sockets on 127.0.0.1, each bounded by its timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.peers import free_port
from vigil.agent.config import ProbeSpec
from vigil.agent.sampling.probes import Prober


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        code = 503 if self.path == "/down" else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def probe(kind: str, target: str, timeout_s: float = 2.0):  # type: ignore[no-untyped-def]
    return Prober().run(ProbeSpec("p", kind, target, timeout_s))  # type: ignore[arg-type]


def test_dns_probe_resolves_localhost() -> None:
    result = probe("dns", "localhost")

    assert (result.up, result.error) == (True, None)
    assert 0 <= result.seconds < 2


def test_dns_probe_of_an_unresolvable_name_is_down_with_the_reason() -> None:
    result = probe("dns", "no-such-host.invalid")

    assert result.up is False
    # Without a reachable DNS server the lookup may time out instead of failing fast.
    assert result.error is not None
    assert result.error.startswith(("name lookup failed", "timed out"))


def test_tcp_probe_connects_to_a_listening_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        result = probe("tcp", f"127.0.0.1:{server.getsockname()[1]}")

    assert result.up is True


def test_tcp_probe_to_a_closed_port_is_down() -> None:
    result = probe("tcp", f"127.0.0.1:{free_port()}")

    assert result.up is False
    assert result.error is not None


def test_http_probe_reports_status_and_time(http_port: int) -> None:
    result = probe("http", f"http://127.0.0.1:{http_port}/health?x=1")

    assert (result.up, result.status) == (True, 200)


def test_http_server_error_is_down(http_port: int) -> None:
    result = probe("http", f"http://127.0.0.1:{http_port}/down")

    assert (result.up, result.status, result.error) == (False, 503, "HTTP 503")


def test_slow_http_is_cut_at_the_timeout(http_port: int) -> None:
    started = time.monotonic()

    result = probe("http", f"http://127.0.0.1:{http_port}/slow", timeout_s=0.3)

    assert result.up is False
    assert result.error is not None and "timed out" in result.error
    assert time.monotonic() - started < 1.5
