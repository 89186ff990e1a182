"""Signed self-update of the agent: releases, the launch step and rollback.

An agent release is a signed bundle (``vigil/policy_bundle.py``, the same format, keys and
verification as policy) named :data:`~vigil.agent.update.release.RELEASE_POLICY` whose
only file is the agent's wheel. The agent verifies it, unpacks the wheel into
``<state_dir>/releases/<serial>-<version>/`` (a new folder: nothing in use is replaced),
smoke-tests the import in a child interpreter, then switches the state file's ``current``
release in one atomic rename and re-executes itself. ``vigil-agent run`` starts every time
through :func:`~vigil.agent.update.launch.launch`, which picks the current release, counts
the starts of a release not yet confirmed, and rolls back to the previous one when the new
release does not confirm itself (two heartbeats delivered) within a few starts or a time
limit. Dependencies stay those of the base install (the package or venv): a release that
needs newer ones is refused with a reason, to be installed by the package instead.
See ``docs/install.md`` ("Self-update").
"""
