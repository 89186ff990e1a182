"""The survey headers an agent sends with a report: parsed strictly, bounded, and a bad
one is ignored (never a reason to refuse the report it came with)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from vigil.collector.api.survey_ack import (
    MAX_OFFSET_S,
    MAX_REPORTED,
    delivery_reports,
    utc_offset,
)


def request(**headers: str):  # type: ignore[no-untyped-def]
    return make_mocked_request("POST", "/api/v1/reports", headers=headers)


@pytest.mark.parametrize(
    ("value", "offset"),
    [("3600", 3600.0), ("-18000", -18000.0), (" 0 ", 0.0), (str(MAX_OFFSET_S + 1), None),
     ("1.5", None), ("east", None), ("", None)],
)  # fmt: skip
def test_the_utc_offset_header_is_whole_seconds_within_real_offsets(
    value: str, offset: float | None
) -> None:
    assert utc_offset(request(**{"Vigil-UTC-Offset": value})) == offset


def test_no_offset_header_is_none() -> None:
    assert utc_offset(request()) is None


def test_delivery_reports_keep_the_valid_entries_only() -> None:
    raw = "12=shown, 13=unavailable:no-notify-send,14=eaten,x=shown,15=shown:ok,16=shown:bad note"
    assert delivery_reports(request(**{"Vigil-Surveys": raw})) == [
        (12, "shown", ""),
        (13, "unavailable", "no-notify-send"),
        (15, "shown", "ok"),
    ]


def test_at_most_max_reported_entries_are_taken() -> None:
    raw = ",".join(f"{i}=shown" for i in range(MAX_REPORTED + 30))
    assert len(delivery_reports(request(**{"Vigil-Surveys": raw}))) == MAX_REPORTED


def test_an_id_too_long_to_be_one_is_skipped() -> None:
    assert delivery_reports(request(**{"Vigil-Surveys": "9" * 40 + "=shown"})) == []
