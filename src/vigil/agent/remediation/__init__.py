"""Remediations: what a fix is (``manifest``), how a run is judged (``outcome``), how
often it may run (``gate``), and the detect → fix → verify → retry flow (``flow``)."""
