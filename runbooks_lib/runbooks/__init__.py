"""Runbooks: each an ordered list of steps, each step a list of check ids (runbooks_lib.registry).
A runbook module imports nothing of another runbook."""
