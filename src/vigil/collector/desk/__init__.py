"""The collector's business layer: every decision over the stored data.

``engine`` (the pure incident state machine and predicates), ``catalog`` (services,
groups, priority), ``apply`` (reports, exactly once), ``actions`` (carrying out the
engine's verdicts), ``problems``, ``liveness`` (the tick), ``commands`` (acknowledge,
resolve, notified marks), ``alertables`` (what may notify, and its text), ``reads`` (the
API's queries), and ``service.Desk``, the facade the app calls. No SQL here: the desk
talks to ``collector.storage`` Protocols only.
"""
