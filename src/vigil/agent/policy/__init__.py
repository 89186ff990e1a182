"""Central policy on the agent: trusted keys, the verified-bundle cache, the kill switch,
run-now requests, and applying a bundle without a restart (``docs/policy.md``)."""
