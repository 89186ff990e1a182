"""Pure satisfaction decisions: whom to ask, quiet hours, NPS/CSAT, signed survey links."""

from __future__ import annotations

import pytest

from vigil import wire
from vigil.collector.desk.satisfaction import (
    SatisfactionPolicy,
    may_deliver,
    score_summary,
    should_ask,
    summarize,
    valid_score,
)
from vigil.collector.desk.survey_links import (
    ExpiredLink,
    ForgedLink,
    check_token,
    make_token,
)
from vigil.quiet_hours import QuietHours, parse_quiet_hours

NOW = 1_704_067_200.0  # 2024-01-01 00:00 UTC
DAY = 86400.0
ON = SatisfactionPolicy(enabled=True)
KEY = b"k" * 32


@pytest.mark.parametrize(
    ("policy", "state", "check", "last", "asked"),
    [
        pytest.param(ON, "open", "disk.free", None, True, id="a raised incident, never asked"),
        pytest.param(ON, "prevented", "disk.free", None, False, id="prevented: never asked"),
        pytest.param(SatisfactionPolicy(), "open", "disk.free", None, False, id="disabled"),
        pytest.param(ON, "open", wire.HEARTBEAT_CHECK, None, False, id="a silent agent"),
        pytest.param(ON, "open", "disk.free", NOW - 6 * DAY, False, id="asked 6 days ago"),
        pytest.param(ON, "open", "disk.free", NOW - 7 * DAY, True, id="asked 7 days ago"),
        pytest.param(
            SatisfactionPolicy(enabled=True, rate_limit_s=3600.0),
            "open",
            "disk.free",
            NOW - 3601,
            True,
            id="a shorter configured rate limit",
        ),
    ],
)
def test_who_is_asked(
    policy: SatisfactionPolicy, state: str, check: str, last: float | None, asked: bool
) -> None:
    ask, reason = should_ask(policy, state=state, check=check, last_asked_at=last, now=NOW)
    assert ask is asked, reason


def test_the_reason_for_not_asking_about_a_prevented_incident_says_so() -> None:
    _, reason = should_ask(ON, state="prevented", check="disk.free", last_asked_at=None, now=NOW)
    assert "never saw" in reason


@pytest.mark.parametrize(
    ("window", "local", "inside"),
    [
        ("22:00-07:00", "23:30", True),
        ("22:00-07:00", "00:00", True),
        ("22:00-07:00", "06:59", True),
        ("22:00-07:00", "07:00", False),
        ("22:00-07:00", "12:00", False),
        ("22:00-07:00", "21:59", False),
        ("12:00-13:00", "12:30", True),
        ("12:00-13:00", "13:00", False),
        ("08:00-08:00", "08:00", False),  # an empty window
    ],
)
def test_quiet_hours_windows(window: str, local: str, inside: bool) -> None:
    quiet = parse_quiet_hours(window)
    h, m = (int(x) for x in local.split(":"))
    assert quiet is not None and quiet.contains(h * 3600 + m * 60) is inside


@pytest.mark.parametrize("bad", ["22-07", "25:00-07:00", "22:00", "22:00-07:60", 2200, True])
def test_a_malformed_quiet_hours_value_is_refused_with_the_expected_form(bad: object) -> None:
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        parse_quiet_hours(bad)


@pytest.mark.parametrize("off", [None, "", "off", "OFF"])
def test_quiet_hours_can_be_switched_off(off: object) -> None:
    assert parse_quiet_hours(off) is None


def test_quiet_hours_are_judged_on_the_agents_local_time() -> None:
    """Midnight UTC is quiet in London but noon in a place 12 hours east."""
    quiet = QuietHours(22 * 3600, 7 * 3600)
    assert not may_deliver(quiet, NOW, 0.0)
    assert may_deliver(quiet, NOW, 12 * 3600.0)
    assert not may_deliver(quiet, NOW, None)  # unknown offset: judged on UTC
    assert may_deliver(None, NOW, 0.0)


@pytest.mark.parametrize(
    ("raw", "score"),
    [("0", 0), ("10", 10), (" 7 ", 7), ("11", None), ("-1", None), ("7.5", None), ("", None),
     (None, None), ("٣", None)],
)  # fmt: skip
def test_only_an_integer_from_0_to_10_is_a_score(raw: object, score: int | None) -> None:
    assert valid_score(raw) == score


def test_nps_is_promoters_minus_detractors_and_csat_the_share_of_nines_and_tens() -> None:
    summary = score_summary({10: 3, 9: 2, 8: 2, 7: 1, 6: 1, 0: 1})
    assert summary["responses"] == 10
    assert (summary["promoters"], summary["passives"], summary["detractors"]) == (5, 3, 2)
    assert summary["nps"] == 30.0 and summary["csat"] == 50.0


def test_no_answers_means_no_score_rather_than_zero() -> None:
    assert score_summary({}) | {} == {
        "responses": 0, "promoters": 0, "passives": 0, "detractors": 0, "nps": None, "csat": None,
    }  # fmt: skip


def test_summaries_split_by_department_and_service_and_filter() -> None:
    rows = [("sales", "email", 10, 2), ("sales", "vpn", 0, 1), ("it", "email", 5, 1)]
    every = summarize(rows)
    assert every["responses"] == 4 and every["nps"] == 0.0
    assert every["departments"]["sales"]["nps"] == pytest.approx(33.3)
    assert every["services"]["email"]["nps"] == pytest.approx(33.3)
    sales = summarize(rows, department="sales")
    assert sales["responses"] == 3 and set(sales["services"]) == {"email", "vpn"}
    assert summarize(rows, department="sales", service="vpn")["nps"] == -100.0


def test_a_token_names_its_survey_and_incident() -> None:
    token = make_token(KEY, 12, 345, NOW + 60)
    assert check_token(KEY, token, NOW) == (12, 345)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t.replace("12.", "13.", 1), id="another survey id"),
        pytest.param(lambda t: t.replace(".345.", ".346."), id="another incident"),
        pytest.param(
            lambda t: t.replace(f".{int(NOW + 60)}.", f".{int(NOW + 9999)}."), id="a later expiry"
        ),
        pytest.param(lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), id="a changed mac"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="no mac"),
        pytest.param(lambda t: "../../etc/passwd", id="garbage"),
    ],
)
def test_a_forged_token_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    token = tamper(make_token(KEY, 12, 345, NOW + 60))
    with pytest.raises(ForgedLink):
        check_token(KEY, token, NOW)


def test_a_token_signed_with_another_key_is_forged() -> None:
    with pytest.raises(ForgedLink):
        check_token(KEY, make_token(b"x" * 32, 12, 345, NOW + 60), NOW)


def test_a_token_is_refused_from_its_expiry_on_with_410() -> None:
    token = make_token(KEY, 12, 345, NOW + 60)
    check_token(KEY, token, NOW + 59)
    with pytest.raises(ExpiredLink) as caught:
        check_token(KEY, token, NOW + 60)
    assert caught.value.status == 410
