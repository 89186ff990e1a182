"""The real libnotify ``notify-send`` driven by the agent's Linux notifier, on a private
D-Bus session bus (``dbus-run-session``; never the desktop's) served by a stand-in
notification server (``tests/support/notify_server.py``): the title and body arrive
exactly as given, hostile text included. Without any server on the bus, ``notify-send``
fails and the notifier says so (the agent then reports the survey ``unavailable``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import require_binary

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="libnotify is the Linux notifier")

REPO = Path(__file__).resolve().parents[2]
TITLE = 'IT support: "how" -- did we do?'
BODY = "-x $(reboot) `id`"

_CHILD = """
import asyncio, subprocess, sys
from vigil.agent.notify_user import Notification, platform_notifier
server = None
if sys.argv[2] == "serve":
    server = subprocess.Popen([sys.executable, "-m", "tests.support.notify_server", sys.argv[1]],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
note = Notification(sys.argv[3], sys.argv[4], "http://127.0.0.1/survey/t")
print(asyncio.run(platform_notifier().show(note)))
if server is not None:
    server.terminate()
    server.wait(5)
"""


def run_on_private_bus(tmp_path: Path, mode: str) -> tuple[str, Path]:
    require_binary("notify-send")
    session = require_binary("dbus-run-session")
    seen = tmp_path / "notified.jsonl"
    done = subprocess.run(
        [session, "--", sys.executable, "-c", _CHILD, str(seen), mode, TITLE, BODY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), seen


def test_notify_send_delivers_the_text_verbatim(tmp_path: Path) -> None:
    outcome, seen = run_on_private_bus(tmp_path, "serve")
    assert outcome == "None"  # shown
    (call,) = [json.loads(line) for line in seen.read_text().splitlines()]
    assert call["app"] == "Vigil" and call["summary"] == TITLE
    assert call["body"] == f"{BODY}\nhttp://127.0.0.1/survey/t"


def test_without_a_notification_server_the_notifier_reports_the_failure(tmp_path: Path) -> None:
    outcome, seen = run_on_private_bus(tmp_path, "none")
    assert outcome == "notify-send exited 1" and not seen.exists()
