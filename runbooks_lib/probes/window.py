"""The sampling window: two snapshots `sample_seconds` apart (statements, the scan counters of
large tables, the database's block counters, the write counters of tables behind unindexed
foreign keys) and pg_stat_activity sampled every 100 ms in between. Rates are judged over this
window, never over the server's lifetime (a scan hours ago says nothing about now)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import psycopg

from .. import queries
from ..errors import SkipStep
from ..params import SAMPLE_SECONDS
from ..registry import Param, Params, Probe, register_probe

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook
    from ..session import Session

COUNTERS = ["calls", "total_exec_time", "rows", "shared_blks_hit", "shared_blks_read",
            "temp_blks_read", "temp_blks_written"]
TABLE_COUNTERS = ["seq_scan", "seq_tup_read", "idx_scan"]
WRITE_COUNTERS = ["seq_scan", "idx_scan", "n_tup_upd", "n_tup_del"]
KEY = ["queryid", "userid", "dbid"]
HIDDEN = "<insufficient privilege>"
INTERVAL_S = 0.1

LARGE_TABLE_ROWS = Param("large_table_rows", int, 10000,
                         "sequential scans matter on tables this large (PgHero bound)", "rows", 0)


def statements(s: Session, showtext: bool = True) -> pd.DataFrame:
    if "pg_stat_statements" not in s.facts.extensions:
        loaded = "pg_stat_statements" in s.facts.settings.get("shared_preload_libraries", "")
        raise SkipStep(f"pg_stat_statements is not installed in database {s.facts.database}: "
                       + ("CREATE EXTENSION pg_stat_statements;" if loaded else
                          "add it to shared_preload_libraries, restart, then CREATE EXTENSION "
                          "pg_stat_statements;"))
    try:
        df = s.frame(queries.get("statements", s.facts.version_num), {"showtext": showtext})
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise SkipStep("pg_stat_statements is created but not loaded: add it to "
                       "shared_preload_libraries and restart") from None
    return one_row_per_statement(df)


def one_row_per_statement(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (queryid, user, database) of a snapshot. Other roles' statements that we may
    not see (NULL queryid, text hidden) become one row per role and database: their time still
    counts. On 14+ a statement also run nested (track = all: inside a function, under EXPLAIN)
    has a second entry with toplevel = false, added to its top-level one. Without this, the
    window diff would double nested statements and pair hidden ones many-to-many."""
    hidden = df["queryid"].isna()
    if hidden.any():
        df = df.assign(
            queryid=df["queryid"].where(~hidden, "hidden:" + df["userid"].astype(str) + ":"
                                        + df["dbid"].astype(str)),
            query=df["query"].where(~hidden, f"{HIDDEN}: statements of role "
                                    + df["user"].astype(str)
                                    + " (grant pg_read_all_stats to see them)"))
    if not df.duplicated(KEY).any():
        return df
    rest = [c for c in df.columns if c not in KEY + COUNTERS]
    return (df.groupby(KEY, as_index=False, sort=False)
              .agg({**{c: "sum" for c in COUNTERS}, **{c: "first" for c in rest}}))


def statement_delta(before: pd.DataFrame, after: pd.DataFrame,
                    own: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Per statement, what happened between two snapshots of one_row_per_statement (a
    statement evicted or reset in between counts from zero). Our own statements are left out:
    those carrying the marker, and OWN, the texts the other runbooks' sessions were seen
    running (a restore drill's COPY ... TO stdout)."""
    merged = after.merge(before[KEY + COUNTERS], on=KEY, how="left", suffixes=("", "_before"))
    for c in COUNTERS:
        prev = merged[f"{c}_before"].fillna(0)
        delta = merged[c] - prev
        merged[c] = delta.where(delta >= 0, merged[c])
    merged = merged.drop(columns=[f"{c}_before" for c in COUNTERS])
    ours = merged["query"].str.contains(queries.MARKER, regex=False)
    if own:
        ours |= merged["query"].isin(own)
    merged = merged[(merged["calls"] > 0) & ~ours].copy()
    for c in COUNTERS:
        if c != "total_exec_time":
            merged[c] = merged[c].astype("int64")
    merged["mean_ms"] = merged["total_exec_time"] / merged["calls"]
    merged["rows_per_call"] = merged["rows"] / merged["calls"]
    total = merged["total_exec_time"].sum()
    merged["time_share"] = merged["total_exec_time"] / total if total > 0 else 0.0
    return merged.sort_values("total_exec_time", ascending=False)


def counter_delta(before: pd.DataFrame, after: pd.DataFrame, key: str,
                  counters: list[str]) -> pd.DataFrame:
    """Per KEY, the growth of COUNTERS between two snapshots (a reset counts from zero)."""
    m = after.merge(before, on=key, how="left", suffixes=("", "_before"))
    out = m[[key]].copy()
    for c in counters:
        grown = m[c] - m[f"{c}_before"].fillna(0)
        out[f"{c}_window"] = grown.where(grown >= 0, m[c]).fillna(0)
    return out


@dataclass(frozen=True)
class Window:
    """Everything measured over the window; `statements` is None when pg_stat_statements
    could not be read (`statements_skipped` says why)."""

    seconds: float
    start: dt.datetime
    end: dt.datetime
    samples: pd.DataFrame  # one row per active session per sample
    n_samples: int
    database: str
    stmts_before: pd.DataFrame | None
    stmts_after: pd.DataFrame | None
    statements_skipped: str
    scans: pd.DataFrame  # relid, *_window for large tables
    blocks: dict[str, Any]  # blks_hit / blks_read of the window, stats_reset
    writes: pd.DataFrame  # relid, *_window for tables behind unindexed foreign keys
    sees_all: bool = True  # False: other roles' sessions are invisible to the samples
    role: str = ""
    own_statements: frozenset[str] = frozenset()  # run by the runbooks' own sessions

    @cached_property
    def delta(self) -> pd.DataFrame:
        """Per statement, the window's calls, time and rows (our own statements left out)."""
        if self.stmts_before is None or self.stmts_after is None:
            raise SkipStep(self.statements_skipped or "no statements snapshot")
        return statement_delta(self.stmts_before, self.stmts_after, self.own_statements)


def fetch(rb: Runbook, p: Params) -> Window:
    import pandas as pd

    s = rb.session
    large = p.get("large_table_rows", LARGE_TABLE_ROWS.default)
    skipped = ""
    before: pd.DataFrame | None = None
    try:
        before = statements(s, showtext=False)
    except SkipStep as exc:
        skipped = str(exc)
    scans_sql, blocks_sql = queries.get("table_scans"), queries.get("cache_hit")
    writes_sql = queries.get("table_writes")
    fk = rb.snapshot("fk_unindexed")
    relids = sorted({int(r) for r in [*fk["child_relid"], *fk["parent_relid"]]})
    scans0 = s.frame(scans_sql, {"min_rows": large})
    blocks0 = s.row(blocks_sql)
    writes0 = s.frame(writes_sql, {"relids": relids})
    sample_sql = queries.get("wait_sample")
    started = time.monotonic()
    start = dt.datetime.now(dt.UTC)
    frames, n = [], 0
    seconds = float(p.get("sample_seconds", SAMPLE_SECONDS.default))
    progress = rb.progress("sampling the window (s)")
    progress.start(seconds)
    while True:
        frames.append(s.frame(sample_sql))
        n += 1
        left = seconds - (time.monotonic() - started)
        progress.update(seconds - left)
        if left <= 0:
            break
        time.sleep(min(INTERVAL_S, left))
    progress.finish()
    window_s = time.monotonic() - started
    end = dt.datetime.now(dt.UTC)
    after = statements(s) if before is not None else None
    blocks1 = s.row(blocks_sql)
    sampled = pd.concat(frames, ignore_index=True)
    ours = sampled["ours"].fillna(False).astype(bool)
    own = frozenset(str(q) for q in sampled.loc[ours, "own_query"].dropna())
    return Window(
        seconds=window_s, start=start, end=end,
        samples=sampled.loc[~ours].drop(columns=["ours", "own_query"]).reset_index(drop=True),
        n_samples=n, database=s.facts.database, own_statements=own,
        stmts_before=before, stmts_after=after, statements_skipped=skipped,
        scans=counter_delta(scans0, s.frame(scans_sql, {"min_rows": large}), "relid",
                            TABLE_COUNTERS),
        blocks={"blks_hit": int(blocks1["blks_hit"] or 0) - int(blocks0["blks_hit"] or 0),
                "blks_read": int(blocks1["blks_read"] or 0) - int(blocks0["blks_read"] or 0),
                "stats_reset": blocks1["stats_reset"]},
        writes=counter_delta(writes0, s.frame(writes_sql, {"relids": relids}), "relid",
                             WRITE_COUNTERS),
        sees_all=s.facts.sees_all_sessions, role=s.facts.current_user)


WINDOW = register_probe(Probe(
    "window", fetch, __doc__ or "", params=(SAMPLE_SECONDS, LARGE_TABLE_ROWS),
    needs=("connection", "fk_unindexed")))
