"""Real collector and agent processes for integration tests, and small helpers around them.

Start a collector with :func:`start_collector` (ephemeral port, the URL read from its one
stdout line), an agent with :func:`spawn_agent`, poll with :func:`wait_for`, stop either
with :func:`stop`, and talk to the collector's API and ``/metrics`` through
:class:`Collector`. Each test module keeps its own configs' specifics; only the plumbing
lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = 30.0,
    *,
    retry_on: tuple[type[Exception], ...] = (OSError,),
    interval_s: float = 0.2,
) -> T:
    """Poll ``probe`` every ``interval_s`` until it returns something truthy; return that.

    An exception in ``retry_on`` (by default ``OSError``, which includes urllib's
    ``URLError``: the peer is not up yet) counts as "not yet". Fails the test after
    ``timeout_s``, naming ``what`` and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except retry_on as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def assert_process_gone(pid: int, timeout_s: float = 5.0) -> None:
    """Fail unless process ``pid`` is gone (or a zombie) within ``timeout_s`` seconds.

    A SIGKILL is delivered asynchronously: on a loaded machine a killed process can still
    read as running for a moment while the kernel tears it down, so one sample right
    after the kill is a race. Bounded polling waits for the death the kill promised.
    """

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(f"process {pid} to be gone", gone, timeout_s, interval_s=0.05)


def read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of the process's stdout; ``""`` if none within ``timeout_s`` (then killed)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        proc.kill()
        return ""
    return proc.stdout.readline()


def stop(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if still running after ``timeout_s``; the exit code.

    A process that had to be killed returns ``-9`` (``-SIGKILL``), so a test asserting a
    clean exit (``stop(proc) == 0``) fails for it too.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def collector_config(
    folder: Path,
    *,
    agent_token: str,
    admin_token: str | None = None,
    port: int = 0,
    extra: str = "",
    storage: str = "{sqlite_path: collector.db}",
) -> Path:
    """Write ``folder/collector.yaml``: 127.0.0.1:``port``, SQLite ``collector.db``, tokens.

    ``extra`` is more top-level YAML appended as is (catalog, incidents, metrics...);
    ``storage`` is the ``storage:`` section (flow YAML), e.g. a PostgreSQL URL.
    """
    admin = f", admin_tokens: [{admin_token}]" if admin_token is not None else ""
    config = folder / "collector.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"storage: {storage}\n"
        f"auth: {{agent_tokens: [{agent_token}]{admin}}}\n" + extra
    )
    return config


def spawn_collector(
    config: Path,
    stderr: IO[Any] | int,
    *,
    ephemeral_port: bool = True,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """``python -m collector --config CONFIG [--port 0]``, stdout piped for :func:`read_line`."""
    args = [sys.executable, "-m", "vigil.collector", "--config", str(config)]
    if ephemeral_port:
        args += ["--port", "0"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd)


def start_collector(
    config: Path,
    log: Path | None,
    *,
    cwd: Path | None = None,
    timeout_s: float = 20.0,
) -> tuple[subprocess.Popen[str], str]:
    """Start a collector on an ephemeral port; ``(process, base URL)`` once it listens.

    Its stderr goes to ``log`` (discarded if ``None``). Fails the test, with the log, if
    the ``vigil-collector listening on http(s)://127.0.0.1:PORT`` line does not come within
    ``timeout_s``.
    """
    stderr = log.open("w") if log is not None else subprocess.DEVNULL
    proc = spawn_collector(config, stderr, cwd=cwd)
    line = read_line(proc, timeout_s)
    if not line:
        detail = log.read_text() if log is not None else ""
        pytest.fail(f"collector did not start within {timeout_s} s: {detail}")
    assert re.search(r"listening on https?://127\.0\.0\.1:", line), line
    return proc, line.split("listening on ", 1)[1].strip()


def spawn_agent(
    config: Path,
    log: Path,
    *,
    cwd: Path | None = None,
    unbuffered: bool = False,
    env: dict[str, str] | None = None,
    log_level: str | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m agent --config CONFIG run``, stderr to ``log``, stdout discarded.

    ``log_level`` (e.g. ``"DEBUG"``) is passed as ``--log-level``.

    ``unbuffered`` sets ``PYTHONUNBUFFERED=1`` so the log is complete when read early;
    ``env`` adds to (or overrides) this process's environment.
    """
    env = {**os.environ, **(env or {})}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vigil.agent",
            "--config",
            str(config),
            *(("--log-level", log_level) if log_level else ()),
            "run",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=cwd,
        env=env,
    )


def get_json(url: str, token: str | None = None, timeout_s: float = 10.0) -> Any:
    """GET ``url`` (with ``Authorization: Bearer token`` if given) and decode its JSON."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def read_metrics(url: str, token: str | None = None, timeout_s: float = 10.0) -> Metrics:
    """``url``'s Prometheus text as ``{(name, sorted label pairs): value}`` (read with
    ``Authorization: Bearer token`` if given: ``/metrics`` needs a viewer token)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@dataclass
class Collector:
    """A running collector's base URL, read through its JSON API with an admin token."""

    url: str
    token: str

    def get(self, path: str) -> Any:
        """The decoded JSON of ``GET url + path``."""
        return get_json(self.url + path, self.token)

    def metrics(self) -> Metrics:
        """The collector's ``/metrics``, parsed by :func:`read_metrics`."""
        return read_metrics(self.url + "/metrics", self.token)


@contextlib.contextmanager
def running_collector(folder: Path, *, agent_token: str, admin_token: str) -> Iterator[Collector]:
    """A collector with :func:`collector_config`'s defaults in ``folder`` (its log in
    ``folder/collector.log``), for the length of the block; it must then stop cleanly."""
    config = collector_config(folder, agent_token=agent_token, admin_token=admin_token)
    proc, url = start_collector(config, folder / "collector.log")
    yield Collector(url=url, token=admin_token)
    assert stop(proc) == 0, (folder / "collector.log").read_text()
