"""Checks: pure functions of probe snapshots and parameters returning findings, one family per
module, each check declared once in the registry (runbooks_lib.registry) with its parameters,
its meaning and what to do."""
