"""Test helpers: real processes (procs), peer binaries and ports (peers), a faulty proxy."""
