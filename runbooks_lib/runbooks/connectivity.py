"""The connectivity runbook: can clients connect, who holds the slots, is something leaking."""

from ..params import CONNECTION, RECORDING
from ..registry import RunbookSpec, Step, register_runbook

SPEC = register_runbook(RunbookSpec(
    "connectivity",
    "clients cannot connect, the pool is exhausted, something leaks",
    "too many clients, pool timeouts (Prisma P2024, P1001), an unreachable server, "
    "connection usage alerts",
    steps=(
        Step("reachability", "Reachability", ("shared.reachability",)),
        Step("usage", "Connection usage", ("connectivity.connection_usage",
                                            "connectivity.visibility")),
        Step("holders", "Who holds the connections", ("connectivity.idle_in_transaction",
                                                      "connectivity.session_stats")),
        Step("leaks", "Leak suspects", ("connectivity.leak_suspect",
                                        "connectivity.pool_overflow")),
        Step("budget", "Connection budget", ("connectivity.connection_budget",)),
        Step("action", "Safe action: end sessions idle in transaction",
             ("connectivity.terminate_idle_in_transaction",)),
    ),
    params=CONNECTION,
    modules=("shared", "connectivity"),
    tail=RECORDING,
    live=True,
))
