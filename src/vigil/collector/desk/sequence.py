"""Sequence dedup: what to do with a report, from the host's (epoch, seq) high-water mark.

The agent's outbox numbers its events (``seq``, strictly increasing, never reused) within
an *epoch* (a random id chosen when the outbox is created, and again when the collector
asks for it, below) and ships them oldest first with one batch in flight. So the
collector needs, per agent, only the highest ``seq`` it applied in the current epoch (the
*mark*) and the id of the last batch it applied, instead of every id ever received:

* a report in another epoch than the stored one starts that epoch (a reinstalled agent,
  or one that was told to start a new epoch): everything in it is applied;
* the last applied batch again (a lost ack, a concurrent replay) is a duplicate;
* a batch that starts above the mark is new: applied, and its ``seq_last`` is the mark;
* anything else starts at or below the mark without being the last batch. A live agent
  never sends that (it only moves on after the ack of its last batch), so the agent was
  rolled back (a restored VM snapshot or backup) and numbers new events with seqs the
  collector already used: nothing is applied and the agent is told to start a new epoch,
  under which it sends its pending events again (``"epoch_reset"``, HTTP 409).

Pure functions over plain data: the storage layer reads and writes the mark under the
host's lock (see ``HostRepository.before``), the desk decides here.
"""

from __future__ import annotations

import enum

from vigil import wire


class Verdict(enum.Enum):
    """What :func:`verdict` decided for one report."""

    LEGACY = "legacy"  # no epoch/seq: an older agent, deduplicated by ids (``seen``)
    NEW_EPOCH = "new_epoch"  # apply every event; the report's epoch and seq_last are stored
    APPLY = "apply"  # apply every event; seq_last is the new mark
    DUPLICATE = "duplicate"  # the last applied batch again: apply nothing, ack
    RESET = "reset"  # seq at or below the mark: apply nothing, ask for a new epoch


def verdict(
    report: wire.Report,
    *,
    stored_epoch: str | None,
    mark: int | None,
    last_batch_id: str | None,
) -> Verdict:
    """Decide a report's fate from the host's stored epoch, mark and last applied batch.

    ``stored_epoch``/``mark`` are None for a host that never sent a sequenced report (a
    new host, or one known only through the ``seen`` ids of an older agent version).
    A report's last applied batch is a duplicate whatever its fields, so an agent
    upgraded between a send and its ack is recognised by the batch id it keeps.
    """
    if last_batch_id is not None and report.batch_id == last_batch_id:
        return Verdict.DUPLICATE
    if report.epoch is None or report.seq_first is None:
        return Verdict.LEGACY
    if report.epoch != stored_epoch or mark is None:
        return Verdict.NEW_EPOCH
    if report.seq_first > mark:
        return Verdict.APPLY
    return Verdict.RESET
