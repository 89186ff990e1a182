"""Central policy on the collector: signed bundles as uploaded, staged rollouts in rings,
the blast-radius guard, the kill switch and run-now (see ``docs/policy.md``)."""
