"""Satisfaction survey metric families, built at scrape time from counted figures.

Fed by :meth:`~collector.desk.surveys.SurveyDesk.figures` (counted after every tick, so a
scrape does no I/O). Labels: ``department`` (the host label named by
``satisfaction.department_label``, ``none`` when the host has none) and ``service`` (the
incident's catalog service, ``none`` without one). At most :data:`MAX_PAIRS`
department/service pairs get their own series; the rest fold into
``department="other", service="other"``, so a fleet with odd labels cannot explode
Prometheus's series count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

MAX_PAIRS = 200
NONE_LABEL = "none"
OTHER_LABEL = "other"
SURVEY_STATES = ("pending", "offered", "shown", "unavailable", "answered")
PROMOTER_MIN, DETRACTOR_MAX = 9, 6


def _group(score: int) -> str:
    if score >= PROMOTER_MIN:
        return "promoter"
    return "detractor" if score <= DETRACTOR_MAX else "passive"


def survey_families(
    scores: Iterable[tuple[str, str, int, int]], states: Mapping[str, int]
) -> Iterator[Metric]:
    """``vigil_surveys``, ``vigil_survey_responses_total``, ``vigil_survey_answers_total``
    (by NPS group), ``vigil_nps`` and ``vigil_csat_ratio`` from ``(department, service,
    score, answers)`` rows and the surveys per state."""
    by_pair: dict[tuple[str, str], dict[str, int]] = {}
    for department, service, score, n in scores:
        pair = (department or NONE_LABEL, service or NONE_LABEL)
        if pair not in by_pair and len(by_pair) >= MAX_PAIRS:
            pair = (OTHER_LABEL, OTHER_LABEL)
        groups = by_pair.setdefault(pair, {"promoter": 0, "passive": 0, "detractor": 0})
        groups[_group(score)] += n

    surveys = GaugeMetricFamily("vigil_surveys", "Satisfaction surveys by state.", labels=["state"])
    for state in sorted({*SURVEY_STATES, *states}):
        surveys.add_metric([state], states.get(state, 0))
    yield surveys

    pair_labels = ["department", "service"]
    responses = CounterMetricFamily(
        "vigil_survey_responses", "Satisfaction survey answers.", labels=pair_labels
    )
    answers = CounterMetricFamily(
        "vigil_survey_answers",
        "Satisfaction survey answers by NPS group (promoter 9-10, passive 7-8, detractor 0-6).",
        labels=[*pair_labels, "group"],
    )
    nps = GaugeMetricFamily(
        "vigil_nps",
        "Net promoter score of all answers: % promoters - % detractors (-100 to 100).",
        labels=pair_labels,
    )
    csat = GaugeMetricFamily(
        "vigil_csat_ratio", "Share of answers that are 9 or 10 (0 to 1).", labels=pair_labels
    )
    for (department, service), groups in sorted(by_pair.items()):
        total = sum(groups.values())
        labels = [department, service]
        responses.add_metric(labels, total)
        for group, n in groups.items():
            answers.add_metric([*labels, group], n)
        if total:
            nps.add_metric(labels, 100.0 * (groups["promoter"] - groups["detractor"]) / total)
            csat.add_metric(labels, groups["promoter"] / total)
    yield from (responses, answers, nps, csat)
