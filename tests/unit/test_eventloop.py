"""Choosing the collector's event loop and its ingest front (``listen.event_loop``,
``listen.ingest_front``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from vigil.collector import eventloop
from vigil.collector.config import load_collector_config
from vigil.configio import ConfigError

TOKEN = "eventloop-agent-token-0123456789abcdef0123"


def write_config(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: 0{listen}}}\n"
        "storage: {sqlite_path: collector.db}\n"
        f"auth: {{agent_tokens: [{TOKEN}]}}\n"
    )
    return path


def test_asyncio_means_the_standard_loop() -> None:
    assert eventloop.loop_factory("asyncio") == (None, "asyncio")


def test_auto_takes_uvloop_when_it_imports() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (Windows?)")
    assert eventloop.loop_factory("auto") == (uvloop.new_event_loop, "uvloop")


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes ``import uvloop`` fail
    assert eventloop.loop_factory("auto") == (None, "asyncio")


def test_uvloop_asked_for_and_missing_is_an_error_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(eventloop.EventLoopUnavailable, match=r"listen\.event_loop"):
        eventloop.loop_factory("uvloop")


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_type(), "asyncio").startswith("asyncio")


def test_the_defaults_are_uvloop_where_installed_and_the_lean_front(tmp_path: Path) -> None:
    """Together they measured 28-33 % less CPU per report (docs/benchmarks.md)."""
    config = load_collector_config(write_config(tmp_path, ""))
    assert (config.event_loop, config.ingest_front) == ("auto", "lean")


@pytest.mark.parametrize(
    ("listen", "key"),
    [(", event_loop: trio", "listen.event_loop"), (", ingest_front: nginx", "listen.ingest_front")],
    ids=["unknown loop", "unknown front"],
)
def test_an_unknown_choice_names_the_key_and_the_value(
    tmp_path: Path, listen: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_collector_config(write_config(tmp_path, listen))
    text = str(info.value)
    assert key in text and listen.rsplit(": ", 1)[1] in text and "collector.yaml" in text
