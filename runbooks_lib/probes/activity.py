"""Client sessions and connection slots, fetched once per run and shared by the checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import queries
from ..registry import Params, Probe, Requires, register_probe

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

AGE_BUCKETS = [(-math.inf, 60, "< 1 min"), (60, 3600, "1 min - 1 h"), (3600, math.inf, "> 1 h")]
IDLE_IN_TX = ("idle in transaction", "idle in transaction (aborted)")


@dataclass(frozen=True)
class Activity:
    """Client sessions now (our own left out), and whether the role sees other roles' ones."""

    sessions: pd.DataFrame
    sees_all: bool
    role: str


@dataclass(frozen=True)
class Slots:
    max_connections: int
    superuser_reserved: int
    reserved: int
    used: int

    @property
    def available(self) -> int:
        """Slots open to ordinary roles."""
        return self.max_connections - self.superuser_reserved - self.reserved


def activity(rb: Runbook, p: Params) -> Activity:
    import pandas as pd

    s = rb.session
    snap = s.frame(queries.get("activity", s.facts.version_num))
    snap["age_bucket"] = pd.cut(snap["conn_age_s"].astype(float),
                                bins=[b[0] for b in AGE_BUCKETS] + [math.inf],
                                labels=[b[2] for b in AGE_BUCKETS])
    return Activity(snap, s.facts.sees_all_sessions, s.facts.current_user)


def slots(rb: Runbook, p: Params) -> Slots:
    row = rb.session.row(queries.get("connection_slots"))
    return Slots(**{k: int(v) for k, v in row.items()})


def session_stats(rb: Runbook, p: Params) -> pd.DataFrame:
    s = rb.session
    return s.frame(queries.get("session_stats", s.facts.version_num))


# without it other roles' sessions show no backend type or state: counts would be too low
SEES_ALL = Requires(privilege="pg_read_all_stats")
ACTIVITY = register_probe(Probe("activity", activity, "pg_stat_activity's client sessions.",
                                requires=SEES_ALL, needs=("connection",)))
SLOTS = register_probe(Probe("slots", slots, "max_connections, reserves and slots in use.",
                             requires=SEES_ALL, needs=("connection",)))
SESSION_STATS = register_probe(Probe("session_stats", session_stats,
                                     "pg_stat_database's session counters (14+).",
                                     needs=("connection",)))
