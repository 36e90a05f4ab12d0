"""Probes: read-only SQL (or a log read) returning typed snapshots. A probe never judges:
checks (runbooks_lib.checks) turn its snapshot into findings."""
