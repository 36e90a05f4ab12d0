"""Tables and indexes: sequential scans on large tables, the cache hit ratio, foreign keys
without an index, unused, duplicate and invalid indexes, dead tuples.

Bounds (parameters): sequential scans matter on tables of 10,000+ rows, the cache hit ratio
warns below 99 % and unused indexes of 10 MB+ are reported (PgHero's bounds); dead tuples warn
above 20 % of a table (autovacuum's default scale factor). Rates are read over the window; a
static fact (a foreign key without an index) is a warning only when the window shows its cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import present
from ..findings import Finding, Metric, records
from ..probes import catalog as _catalog  # noqa: F401 - registers the catalog probes
from ..probes.window import LARGE_TABLE_ROWS, TABLE_COUNTERS, Window
from ..registry import Check, Param, Params, register
from ..sqltext import columns, ident, qualified

if TYPE_CHECKING:
    import pandas as pd

CACHE_HIT_WARNING = Param("cache_hit_warning", float, 0.99,
                          "buffer cache hit ratio of the window below this warns", "share", 0, 1)
CACHE_MIN_BLOCKS = 10000  # fewer block accesses in the window: too few to judge
# Below 1,000 blocks (8 MB) a second read from outside shared buffers, a low ratio costs little:
# a busy healthy server warming a page here and there is no incident.
CACHE_MIN_READ_RATE = 1000
DEAD_RATIO = Param("dead_tuple_ratio_warning", float, 0.20,
                   "dead share of a table that warns (autovacuum default scale factor)", "share",
                   0.01, 1)


def mb(b: float) -> str:
    return f"{b / 2**20:.1f} MB"


def large(t: pd.DataFrame, rows: int) -> pd.DataFrame:
    return t[(t["est_rows"].clip(lower=0) >= rows) | (t["n_live_tup"] >= rows)]


# -- sequential scans --------------------------------------------------------------------------

def seq_scans(tables: pd.DataFrame, p: Params) -> list[Finding]:
    rows = p["large_table_rows"]
    big = large(tables, rows)
    hot = big[(big["seq_tup_read_window"] >= rows) & (big["seq_scan_window"] > 0)]
    found = []
    for _, r in hot.sort_values("seq_tup_read_window", ascending=False).head(10).iterrows():
        found.append(Finding(
            "seq_scan", "warning",
            f"Sequential scans on {r['schema']}.{r['table']} ({int(r['n_live_tup'])} rows): "
            f"{int(r['seq_scan_window'])} scans read {int(r['seq_tup_read_window'])} rows in "
            "the window",
            f"size {mb(r['size_bytes'])} (pg_class estimate); index scans "
            f"{int(r['idx_scan_window'])}",
            metric=Metric("seq_tup_read", int(r["seq_tup_read_window"]), rows),
            evidence=records(tables.loc[[r.name], ["schema", "table", "est_rows", "seq_scan",
                                                   "seq_tup_read", "idx_scan"]]),
            remediation="find the statement (top statements and plans) and index its filter "
                        "columns"))
    return found or [Finding("seq_scan", "ok",
                             f"No sequential scan on a table of {rows}+ rows in the window")]


def show_seq_scans(tables: pd.DataFrame, found: list[Finding], p: Params) -> None:
    col = "seq_tup_read_window"
    big = large(tables, p["large_table_rows"]).sort_values(col, ascending=False)
    present.show_table(big[["schema", "table", "est_rows", "size_bytes", "seq_scan", "idx_scan",
                            "seq_tup_read", *(c + "_window" for c in TABLE_COUNTERS)]].head(15),
                       "sequential scans on large tables (window and lifetime)")
    chart = big.head(15).iloc[::-1]
    if not chart.empty:
        present.show_figure({"data": [
            {"type": "bar", "orientation": "h", "name": "rows read by sequential scans",
             "x": chart[col].tolist(), "y": chart["table"].tolist()},
            {"type": "bar", "orientation": "h", "name": "index scans",
             "x": chart["idx_scan_window"].tolist(), "y": chart["table"].tolist()}],
            "layout": {"title": {"text": "Large tables: rows read by sequential scans vs index "
                                          "scans (window)"},
                       "barmode": "group", "xaxis": {"type": "log"}}})


register(Check(
    "latency.seq_scans", "Sequential scans on large tables",
    """A large table read by sequential scans during the window: some statement filters on
    columns no index serves. Find it among the top statements and plans, and index its filter
    columns.""",
    seq_scans, probes=("tables",), params=(LARGE_TABLE_ROWS,), emits=("seq_scan",),
    show=show_seq_scans))


# -- cache hit ---------------------------------------------------------------------------------

def cache_hit(window: Window, tables: pd.DataFrame, p: Params) -> list[Finding]:
    h, r = float(window.blocks["blks_hit"]), float(window.blocks["blks_read"])
    warn = p["cache_hit_warning"]
    if h + r < CACHE_MIN_BLOCKS:
        return [Finding("cache_hit", "info",
                        f"Cache hit ratio not judged: {int(h + r)} block accesses in the "
                        f"{window.seconds:.0f} s window (< {CACHE_MIN_BLOCKS})")]
    share = h / (h + r)
    rate = r / max(window.seconds, 1e-9)
    readers = (tables.assign(hit_ratio=(tables["heap_blks_hit"] / (
        tables["heap_blks_hit"] + tables["heap_blks_read"]).clip(lower=1)).round(4))
        .sort_values("heap_blks_read", ascending=False).head(5))
    low = share < warn
    bad = low and rate >= CACHE_MIN_READ_RATE
    return [Finding(
        "cache_hit", "warning" if bad else "info" if low else "ok",
        f"Cache hit ratio {share:.2%} in {window.database} over the last {window.seconds:.0f} s",
        f"{int(r)} blocks read from disk or the OS cache ({rate:.0f} a second), {int(h)} found "
        "in shared buffers during the window (tables, indexes and catalogs)"
        + ("" if bad or not low else f"; below {CACHE_MIN_READ_RATE} blocks read a second the "
           "low ratio costs little"),
        metric=Metric("cache_hit_ratio", round(share, 5), warn),
        evidence=records(readers[["schema", "table", "heap_blks_read", "heap_blks_hit",
                                  "hit_ratio"]]),
        remediation="the working set does not fit shared_buffers: raise it (about 25 % of RAM), "
                    "or stop the scans that read the most blocks (listed)" if bad else "")]


register(Check(
    "latency.cache_hit", "Buffer cache hit ratio",
    """The share of block accesses found in shared buffers during the window (not since the
    last stats reset: a scan hours ago says nothing about now). Below the bound, while more
    than 1,000 blocks a second are read from outside shared buffers, the working set does not
    fit: raise shared_buffers or stop the scans that read the most.""",
    cache_hit, probes=("window", "tables"), params=(CACHE_HIT_WARNING,), emits=("cache_hit",)))


# -- foreign keys without an index -------------------------------------------------------------

def fk_without_index(fk: pd.DataFrame, window: Window, p: Params) -> list[Finding]:
    writes = window.writes.set_index("relid")

    def grown(relid: int, col: str) -> int:
        return int(writes[col].get(relid, 0)) if col in writes else 0

    found = []
    for i, r in fk.iterrows():
        deletes = grown(int(r["parent_relid"]), "n_tup_del_window")
        scans = grown(int(r["child_relid"]), "seq_scan_window")
        # each parent row deleted made the server scan the child for its references; the
        # child's own sequential scans are shown, but may filter on other columns
        costly = deletes > 0
        create = (f"CREATE INDEX CONCURRENTLY ON {qualified(r['child_schema'], r['child_name'])} "
                  f"({columns(list(r['columns']))});")
        cost = (f"in the last {window.seconds:.0f} s: {deletes} rows deleted in "
                f"{r['parent_table']}, {scans} sequential scans of {r['child_table']}")
        found.append(Finding(
            "fk_without_index", "warning" if costly else "info",
            f"Foreign key {r['constraint_name']}: {r['child_table']}"
            f"({', '.join(r['columns'])}) has no index",
            f"every DELETE or key UPDATE on {r['parent_table']} scans {r['child_table']} "
            f"(~{max(0, int(r['child_est_rows']))} rows; ON DELETE {r['on_delete']}); {cost}"
            + ("" if costly else ": no cost seen now, so this is advice, not an incident"),
            metric=Metric("fk_parent_deletes", deletes, 0),
            evidence=records(fk.loc[[i], ["constraint_name", "child_table", "parent_table",
                                          "columns", "child_est_rows", "on_delete"]]),
            remediation=create))
    return found or [Finding("fk_without_index", "ok", "Every foreign key is indexed")]


def show_fk(fk: pd.DataFrame, window: Window, found: list[Finding], p: Params) -> None:
    present.show_table(fk[["constraint_name", "child_table", "parent_table", "columns",
                           "child_est_rows", "on_delete"]],
                       "foreign keys without an index on the referencing columns")


register(Check(
    "latency.fk_without_index", "Foreign keys without an index",
    """Without an index on the referencing columns, every DELETE or key UPDATE of a parent row
    scans the child table (and holds its locks meanwhile). A warning when the window shows the
    cost (parent rows deleted, each of which scanned the child); otherwise the CREATE INDEX advice
    as information.""",
    fk_without_index, probes=("fk_unindexed", "window"), emits=("fk_without_index",),
    show=show_fk))


# -- indexes -----------------------------------------------------------------------------------

def unused_indexes(unused: pd.DataFrame, p: Params) -> list[Finding]:
    min_mb = p["unused_index_min_mb"]
    found = [Finding(
        "unused_index", "warning",
        f"Unused index {r['schema']}.{r['index']} on {r['table']} ({mb(r['size_bytes'])}, 0 scans)",
        f"{r['definition']}. It slows every write and costs memory; 0 scans since the stats "
        "reset (check replicas before dropping: their scans are not counted here)",
        metric=Metric("index_size_bytes", int(r["size_bytes"]), int(min_mb * 2**20)),
        evidence=records(unused.loc[[i], ["schema", "table", "index", "size_bytes", "idx_scan",
                                          "definition"]]),
        remediation=f"DROP INDEX CONCURRENTLY {qualified(r['schema'], r['index'])};")
        for i, r in unused.iterrows()]
    return found or [Finding("unused_index", "ok", f"No unused index of {min_mb:g} MB or more")]


def duplicate_indexes(dups: pd.DataFrame, p: Params) -> list[Finding]:
    found = []
    for _, group in dups.groupby("key"):
        keep = group.sort_values(["is_primary", "is_unique", "backs_constraint", "idx_scan"],
                                 ascending=False).iloc[0]
        for _, r in group[group["indexrelid"] != keep["indexrelid"]].iterrows():
            found.append(Finding(
                "duplicate_index", "warning",
                f"Duplicate index {r['schema']}.{r['index']} repeats {keep['index']} on "
                f"{r['table']}",
                f"same columns, operator classes, expressions and predicate: {r['definition']}",
                evidence=records(group[["index", "size_bytes", "idx_scan", "is_unique",
                                        "definition"]]),
                remediation=drop_duplicate(r)))
    return found or [Finding("duplicate_index", "ok", "No duplicate index")]


def drop_duplicate(r: pd.Series) -> str:
    """An index that backs a constraint cannot be dropped by itself: drop the constraint (an
    index made for a constraint carries the constraint's name)."""
    if r["backs_constraint"]:
        return (f"ALTER TABLE {qualified(r['schema'], r['table'])} DROP CONSTRAINT "
                f"{ident(r['index'])};")
    return f"DROP INDEX CONCURRENTLY {qualified(r['schema'], r['index'])};"


def invalid_indexes(bad: pd.DataFrame, p: Params) -> list[Finding]:
    found = [Finding(
        "invalid_index", "warning",
        f"Invalid index {r['schema']}.{r['index']} on {r['table']}",
        "left by a failed CREATE INDEX CONCURRENTLY or REINDEX: the planner ignores it, writes "
        f"still maintain it. {r['definition']}",
        evidence=records(bad.loc[[i], ["schema", "table", "index", "definition"]]),
        remediation=f"DROP INDEX CONCURRENTLY {qualified(r['schema'], r['index'])}; then "
                    f"{r['definition'].replace('INDEX', 'INDEX CONCURRENTLY', 1)};")
        for i, r in bad.iterrows()]
    return found or [Finding("invalid_index", "ok", "No invalid index")]


register(Check(
    "latency.unused_indexes", "Unused indexes",
    """An index never scanned since the stats reset slows every write and costs memory. Check
    the replicas (their scans are not counted here) before dropping it.""",
    unused_indexes, probes=("unused_indexes",), emits=("unused_index",)))
register(Check(
    "latency.duplicate_indexes", "Duplicate indexes",
    """Two indexes with the same columns, operator classes, expressions and predicate: drop the
    copy (the one that backs no constraint and is scanned least).""",
    duplicate_indexes, probes=("duplicate_indexes",), emits=("duplicate_index",)))
register(Check(
    "latency.invalid_indexes", "Invalid indexes",
    """Left by a failed CREATE INDEX CONCURRENTLY or REINDEX: the planner ignores it, writes
    still maintain it. Drop it and build it again.""",
    invalid_indexes, probes=("invalid_indexes",), emits=("invalid_index",)))


# -- dead tuples -------------------------------------------------------------------------------

def dead_tuples(tables: pd.DataFrame, p: Params) -> list[Finding]:
    warn, min_dead = p["dead_tuple_ratio_warning"], p["dead_tuples_min"]
    t = with_dead_share(tables)
    bad = t[(t["dead_share"] > warn) & (t["n_dead_tup"] >= min_dead)]
    found = []
    for _, r in bad.sort_values("n_dead_tup", ascending=False).head(10).iterrows():
        off = str(r["autovacuum_enabled"]).lower() in ("false", "off", "0", "no")
        last = r["last_autovacuum"] if r["last_autovacuum"] == r["last_autovacuum"] else None
        table = qualified(r["schema"], r["table"])
        found.append(Finding(
            "dead_tuples", "warning",
            f"{r['schema']}.{r['table']}: {r['dead_share']:.0%} dead tuples "
            f"({int(r['n_dead_tup'])} dead, {int(r['n_live_tup'])} live)"
            + (": autovacuum is disabled on it" if off else ""),
            ("autovacuum_enabled = false on this table. " if off else "")
            + ("autovacuum is behind: it is due past "
               f"{int(r['autovacuum_threshold'])} dead tuples. " if r["autovacuum_due"] and not off
               else "")
            + f"last autovacuum: {last or 'never'}; dead rows bloat the table and every "
            "scan reads them",
            metric=Metric("dead_tuple_ratio", float(r["dead_share"]), warn),
            evidence=records(t.loc[[r.name], ["schema", "table", "n_live_tup", "n_dead_tup",
                                              "autovacuum_enabled", "last_autovacuum"]]),
            remediation=(f"ALTER TABLE {table} RESET (autovacuum_enabled); " if off else "")
            + f"VACUUM (VERBOSE) {table}; look for long transactions holding back the xmin "
            "horizon"))
    return found or [Finding("dead_tuples", "ok", f"No table with more than {warn:.0%} dead "
                             "tuples")]


def with_dead_share(t: pd.DataFrame) -> pd.DataFrame:
    dead_share = t["n_dead_tup"] / (t["n_live_tup"] + t["n_dead_tup"]).clip(lower=1)
    threshold = t["vacuum_threshold"] + t["vacuum_scale_factor"] * t["est_rows"].clip(lower=0)
    return t.assign(dead_share=dead_share, autovacuum_due=t["n_dead_tup"] > threshold,
                    autovacuum_threshold=threshold.round(0))


def show_dead(tables: pd.DataFrame, found: list[Finding], p: Params) -> None:
    t = with_dead_share(tables)
    present.show_table(t.assign(dead_share=t["dead_share"].round(3)).sort_values(
        "n_dead_tup", ascending=False)[
        ["schema", "table", "n_live_tup", "n_dead_tup", "dead_share", "autovacuum_enabled",
         "last_autovacuum", "last_vacuum"]].head(15), "dead tuples and vacuum")


register(Check(
    "latency.dead_tuples", "Dead tuples",
    """Dead rows bloat a table and every scan reads them. Above the share, with autovacuum
    disabled on the table or behind its own threshold, VACUUM it and look for long
    transactions holding back the xmin horizon.""",
    dead_tuples, probes=("tables",), params=(DEAD_RATIO,), emits=("dead_tuples",),
    show=show_dead))
