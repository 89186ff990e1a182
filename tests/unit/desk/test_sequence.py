"""The sequence dedup decision (``desk/sequence.py``): plain data in, a verdict out."""

from __future__ import annotations

import dataclasses

import pytest

from vigil import wire
from vigil.collector.desk.sequence import Verdict, verdict

A, B = "a" * 32, "b" * 32


def rep(batch: str, epoch: str | None, first: int, last: int) -> wire.Report:
    events = tuple(
        wire.CheckEvent(f"e{n}", n, 1.0, "c", "ok", None, None, "") for n in (first, last)
    )
    base = wire.Report(1, "h", "h", {}, batch, 1.0, "1", events if first != last else events[:1])
    if epoch is None:
        return base
    return dataclasses.replace(base, epoch=epoch, seq_first=first, seq_last=last)


# (report, stored epoch, mark, last batch id) -> verdict
CASES = [
    ("a new host starts its epoch", rep("b1", A, 1, 5), None, None, None, Verdict.NEW_EPOCH),
    ("the next batch of the epoch", rep("b2", A, 6, 9), A, 5, "b1", Verdict.APPLY),
    ("a gap left by dropped events", rep("b2", A, 40, 41), A, 5, "b1", Verdict.APPLY),
    ("the last batch again", rep("b1", A, 1, 5), A, 5, "b1", Verdict.DUPLICATE),
    ("a reinstall: another epoch", rep("b7", B, 1, 2), A, 500, "b6", Verdict.NEW_EPOCH),
    ("a restored snapshot, below", rep("b9", A, 3, 4), A, 5, "b1", Verdict.RESET),
    ("a restored snapshot, across", rep("b9", A, 4, 8), A, 5, "b1", Verdict.RESET),
    ("a restored snapshot, at", rep("b9", A, 5, 5), A, 5, "b1", Verdict.RESET),
    ("an older agent", rep("b3", None, 1, 2), A, 5, "b1", Verdict.LEGACY),
    ("an older agent's last batch", rep("b1", None, 1, 2), None, None, "b1", Verdict.DUPLICATE),
    ("an upgraded agent's first", rep("b4", A, 9, 9), None, None, "b3", Verdict.NEW_EPOCH),
    ("upgraded while in flight", rep("b3", A, 1, 2), None, None, "b3", Verdict.DUPLICATE),
]


@pytest.mark.parametrize(
    ("report", "epoch", "mark", "last", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_verdict(
    report: wire.Report, epoch: str | None, mark: int | None, last: str | None, expected: Verdict
) -> None:
    assert verdict(report, stored_epoch=epoch, mark=mark, last_batch_id=last) is expected
