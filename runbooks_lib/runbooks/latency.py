"""The latency runbook: the app is slow; is it the database, and which query, lock or table?"""

from ..params import CONNECTION, RECORDING
from ..registry import RunbookSpec, Step, register_runbook

SPEC = register_runbook(RunbookSpec(
    "latency",
    "the app is slow: which statement, lock or table",
    "slow pages or API calls, timeouts, a p95 alert, a CPU or IO alert on the database",
    steps=(
        Step("window", "The sampling window", ("shared.reachability", "latency.window")),
        Step("top_queries", "Top statements now", ("latency.top_queries",)),
        Step("slow_share", "Slow statements and p95 from the server log",
             ("latency.slow_share",)),
        Step("load", "Database load by wait event", ("latency.load",)),
        Step("blocking", "Lock waits", ("shared.blocking",)),
        Step("signal_blocker", "Safe action: signal root blockers", ("latency.signal_blocker",)),
        Step("long_running", "Long statements and transactions", ("shared.long_running",)),
        Step("tables_and_indexes", "Tables and indexes",
             ("latency.seq_scans", "latency.cache_hit", "latency.fk_without_index",
              "latency.unused_indexes", "latency.duplicate_indexes", "latency.invalid_indexes",
              "latency.dead_tuples", "shared.xid_age")),
        Step("plans", "Plans of the top statements", ("latency.plans",)),
        Step("n_plus_one", "N+1 suspects", ("latency.n_plus_one",)),
    ),
    params=CONNECTION,
    modules=("shared", "statements", "locks", "catalog", "plans"),
    tail=RECORDING,
    live=True,
))
