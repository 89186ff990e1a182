"""The agent's survey inbox (ack in, notification out, outcome reported back) and the
notifiers' argument vectors (data never becomes code)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from vigil.agent.config import load_agent_config
from vigil.agent.exec.logons import ConsoleUser
from vigil.agent.notify_user import Notification, _darwin, _linux, _windows, command_notifier
from vigil.agent.surveys import (
    CONSOLE_REFRESH_S,
    OFFSET_HEADER,
    SURVEYS_HEADER,
    SurveyInbox,
    SurveySettings,
    console_user_id,
)
from vigil.configio import ConfigError
from vigil.quiet_hours import parse_quiet_hours

NOW = 1_704_067_200.0  # midnight UTC


class RecordingNotifier:
    """Shows nothing; remembers what it was asked to show and answers ``why``."""

    def __init__(self, why: str | None = None) -> None:
        self.why = why
        self.shown: list[Notification] = []

    def unavailable(self) -> str | None:
        return self.why

    async def show(self, note: Notification) -> str | None:
        self.shown.append(note)
        return self.why


def ack(*surveys: object) -> str:
    return json.dumps({"batch_id": "b", "accepted": True, "surveys": list(surveys)})


def offer(survey_id: int = 7, url: str = "https://it.example/survey/tok") -> dict[str, object]:
    return {"id": survey_id, "url": url, "incident": 42, "title": "Disk full"}


def inbox(
    notifier: RecordingNotifier, offset: int = 0, state: Path | None = None, **settings: object
) -> SurveyInbox:
    return SurveyInbox(
        SurveySettings(**settings),  # type: ignore[arg-type]
        notifier,
        clock=lambda: NOW,
        utc_offset=lambda now: offset,
        state_file=state,
    )


def test_a_survey_in_the_ack_is_shown_once_and_reported_shown_until_delivered() -> None:
    notifier = RecordingNotifier()
    box = inbox(notifier, offset=3600)
    assert box.headers() == {OFFSET_HEADER: "3600"}
    box.take_ack(ack(offer()), {})
    assert asyncio.run(box.show_due()) == 1
    (note,) = notifier.shown
    assert note.url == "https://it.example/survey/tok" and "Disk full" in note.body
    sent = box.headers()
    assert sent[SURVEYS_HEADER] == "7=shown"
    box.take_ack(ack(offer()), sent)  # offered again before the collector heard: not re-shown
    assert asyncio.run(box.show_due()) == 0 and len(notifier.shown) == 1
    assert SURVEYS_HEADER not in box.headers()


def test_a_restart_neither_shows_a_survey_twice_nor_loses_its_report(tmp_path: Path) -> None:
    state = tmp_path / "surveys.json"
    notifier = RecordingNotifier()
    before = inbox(notifier, state=state)
    before.take_ack(ack(offer()), {})
    asyncio.run(before.show_due())
    after = inbox(notifier, state=state)  # the agent restarted before its next report
    sent = after.headers()
    assert sent[SURVEYS_HEADER] == "7=shown"
    after.take_ack(ack(offer()), sent)
    assert asyncio.run(after.show_due()) == 0 and len(notifier.shown) == 1
    assert SURVEYS_HEADER not in inbox(notifier, state=state).headers()


def test_an_unreadable_state_file_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "surveys.json"
    state.write_text('{"done": "nope"')
    box = inbox(RecordingNotifier(), state=state)
    box.take_ack(ack(offer()), {})
    assert asyncio.run(box.show_due()) == 1
    assert json.loads(state.read_text())["done"] == [7]


def test_without_a_way_to_notify_the_survey_is_reported_unavailable_and_not_retried() -> None:
    notifier = RecordingNotifier("no graphical session (no DISPLAY)")
    box = inbox(notifier)
    box.take_ack(ack(offer()), {})
    assert asyncio.run(box.show_due()) == 0
    assert box.headers()[SURVEYS_HEADER] == "7=unavailable:no-graphical-session-no-DISPLAY"
    box.take_ack(ack(offer()), {})
    asyncio.run(box.show_due())
    assert len(notifier.shown) == 1


def test_quiet_hours_here_hold_the_survey_until_they_end() -> None:
    notifier = RecordingNotifier()
    quiet = parse_quiet_hours("22:00-07:00")
    night = inbox(notifier, offset=0, quiet_hours=quiet)
    night.take_ack(ack(offer()), {})
    assert asyncio.run(night.show_due()) == 0 and night.pending == 1
    day = inbox(notifier, offset=12 * 3600, quiet_hours=quiet)
    day.take_ack(ack(offer()), {})
    assert asyncio.run(day.show_due()) == 1


@pytest.mark.parametrize(
    "entry",
    [
        offer(url="file:///etc/passwd"),
        offer(url="javascript:alert(1)"),
        {"id": "7", "url": "https://x/s", "incident": 1, "title": "t"},
        {"id": True, "url": "https://x/s", "incident": 1, "title": "t"},
        "not an object",
    ],
)
def test_a_malformed_or_non_web_survey_is_ignored(entry: object) -> None:
    notifier = RecordingNotifier()
    box = inbox(notifier)
    box.take_ack(ack(entry), {})
    assert box.pending == 0


def test_surveys_switched_off_are_never_taken() -> None:
    box = inbox(RecordingNotifier(), enabled=False)
    box.take_ack(ack(offer()), {})
    assert box.pending == 0


HOSTILE = Notification('"; do shell script "rm -rf ~" --', "-x $(reboot) `id`", "https://x/s")


def test_notify_send_gets_the_text_as_plain_arguments_after_a_double_dash() -> None:
    argv = _linux.argv(HOSTILE)
    assert argv[0] == "notify-send" and argv[argv.index("--") + 1] == HOSTILE.title


def test_osascript_gets_the_text_as_run_handler_arguments_not_script() -> None:
    argv = _darwin.argv(HOSTILE)
    script = " ".join(a for a, prev in zip(argv, ["", *argv], strict=False) if prev == "-e")
    assert HOSTILE.title not in script and argv[-2] == HOSTILE.title
    assert _darwin.applescript_quote('say "hi" \\') == '"say \\"hi\\" \\\\"'


def test_the_toast_script_is_fixed_and_the_text_travels_in_the_environment() -> None:
    assert _windows.argv(HOSTILE) == _windows.argv(Notification("a", "b", "c"))
    assert _windows.env(HOSTILE)["VIGIL_NOTE_TITLE"] == HOSTILE.title


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script as the notifier")
def test_a_configured_notifier_program_receives_title_body_and_url(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    script = tmp_path / "notify"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    notifier = command_notifier([str(script), "--flag"])
    assert asyncio.run(notifier.show(HOSTILE)) is None
    assert json.loads(record.read_text()) == ["--flag", HOSTILE.title, HOSTILE.body, HOSTILE.url]


def test_a_missing_or_failing_notifier_program_says_why(tmp_path: Path) -> None:
    assert "not found" in (asyncio.run(command_notifier(["/no/such/tool"]).show(HOSTILE)) or "")
    fails = tmp_path / "fails"
    fails.write_text("#!/bin/sh\nexit 3\n")
    fails.chmod(0o755)
    assert asyncio.run(command_notifier([str(fails)]).show(HOSTILE)) == "fails exited 3"


def test_a_notifier_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    hangs = tmp_path / "hangs"
    hangs.write_text("#!/bin/sh\nexec sleep 30\n")
    hangs.chmod(0o755)
    why = asyncio.run(command_notifier([str(hangs)], timeout_s=0.3).show(HOSTILE))
    assert why == "hangs timed out"


@pytest.mark.skipif(sys.platform != "linux", reason="libnotify's notify-send is Linux's")
def test_the_real_notify_send_without_a_session_is_reported_unavailable(monkeypatch) -> None:
    """Without a graphical session there is nobody to show it to: say so, run nothing."""
    for name in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    why = _linux.unavailable()
    assert why is not None and ("graphical session" in why or "notify-send not found" in why)
    assert os.environ.get("DISPLAY") is None


def agent_config(tmp_path: Path, surveys: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text("collector: {url: 'http://127.0.0.1:9', token: " + "t" * 40 + "}\n" + surveys)
    return path


def test_the_agent_surveys_section_is_read(tmp_path: Path) -> None:
    config = load_agent_config(
        agent_config(tmp_path, "surveys: {quiet_hours: '21:30-07:15', notifier: [/bin/true]}\n")
    )
    assert str(config.surveys.quiet_hours) == "21:30-07:15"
    assert config.surveys.notifier == ("/bin/true",) and config.surveys.enabled


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("surveys: {quiet_hours: late}\n", "surveys.quiet_hours"),
        ("surveys: {notifier: ['']}\n", "surveys.notifier"),
        ("surveys: {enabled: sometimes}\n", "surveys.enabled"),
        ("surveys: {popup: true}\n", "surveys.popup"),
    ],
)
def test_a_bad_agent_surveys_value_names_file_and_key(
    tmp_path: Path, section: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_agent_config(agent_config(tmp_path, section))
    assert caught.value.key == key


# ------------------------------------------------------------------ who is at the console


def test_a_console_user_id_is_a_stable_case_blind_hash_never_the_name() -> None:
    alice = console_user_id("alice")
    assert alice == console_user_id("Alice") == console_user_id("ALICE")
    assert alice != console_user_id("bob")
    assert len(alice) == 64 and set(alice) <= set("0123456789abcdef") and "alice" not in alice


def console_inbox(found: ConsoleUser | None, clock: list[float], **settings: object) -> SurveyInbox:
    return SurveyInbox(
        SurveySettings(**settings),  # type: ignore[arg-type]
        RecordingNotifier(),
        clock=lambda: NOW,
        console=lambda: found,
        monotonic=lambda: clock[0],
    )


def test_the_inbox_says_who_is_at_the_console_once_it_looked() -> None:
    box = console_inbox(ConsoleUser("alice", uid=1000, source="loginctl"), [0.0])
    assert box.console_user_id() is None  # not looked yet: unknown
    asyncio.run(box.refresh_console_user())
    assert box.console_user_id() == console_user_id("alice")


def test_nobody_at_the_console_is_said_as_unknown() -> None:
    box = console_inbox(None, [0.0])
    asyncio.run(box.refresh_console_user())
    assert box.console_user_id() is None


def test_with_surveys_off_the_console_user_is_neither_looked_up_nor_sent() -> None:
    looks: list[int] = []

    def console() -> ConsoleUser:
        looks.append(1)
        return ConsoleUser("alice")

    box = SurveyInbox(SurveySettings(enabled=False), RecordingNotifier(), console=console)
    asyncio.run(box.refresh_console_user())
    assert looks == [] and box.console_user_id() is None


def test_the_console_is_looked_at_again_only_after_the_refresh_interval() -> None:
    users = iter([ConsoleUser("alice"), ConsoleUser("bob")])
    clock = [100.0]
    box = SurveyInbox(
        SurveySettings(),
        RecordingNotifier(),
        console=lambda: next(users),
        monotonic=lambda: clock[0],
    )
    asyncio.run(box.refresh_console_user())
    clock[0] += CONSOLE_REFRESH_S - 1
    asyncio.run(box.refresh_console_user())
    assert box.console_user_id() == console_user_id("alice")
    clock[0] += 1
    asyncio.run(box.refresh_console_user())
    assert box.console_user_id() == console_user_id("bob")
