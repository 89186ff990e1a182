"""Running programs the agent does not trust: bounded process trees and script vetting.

``process`` runs one bounded process tree (the platform split lives in ``_posix`` and
``_windows``, picked once at import); ``capture`` keeps the head and tail of its output;
``vetting`` decides which scripts and plugins may run at all; ``script`` runs one
remediation script on top of the three.
"""
