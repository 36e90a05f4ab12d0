"""The transaction-failures runbook: which errors, how many, since when, are they retryable,
and who causes them."""

from ..params import CONNECTION, RECORDING
from ..registry import RunbookSpec, Step, register_runbook

SPEC = register_runbook(RunbookSpec(
    "transaction_failures",
    "deadlocks, rollbacks, timeouts, FK and serialization errors",
    "a rollback or error rate alert, deadlocks in the application log, P2034 or 40001 retries, "
    "statement timeouts, foreign key violations",
    steps=(
        Step("counters", "Commits, rollbacks and deadlocks now",
             ("shared.reachability", "transaction_failures.counters")),
        Step("open_risk", "Open risk now",
             ("shared.long_running", "shared.blocking", "shared.prepared_transactions",
              "shared.xid_age")),
        Step("log", "The server log", ("transaction_failures.log",)),
        Step("errors_by_sqlstate", "Errors by SQLSTATE",
             ("transaction_failures.errors_by_sqlstate",)),
        Step("deadlocks", "Deadlock cycles", ("transaction_failures.deadlocks",)),
        Step("fk_violations", "Foreign key violations", ("transaction_failures.fk_violations",)),
    ),
    params=CONNECTION,
    modules=("shared", "locks", "catalog", "failures"),
    tail=RECORDING,
))
