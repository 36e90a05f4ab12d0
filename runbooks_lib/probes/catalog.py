"""The catalog: table statistics, indexes and foreign keys, read without taking locks (every
query runs under the session's lock_timeout and degrades to "skipped: locked")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import queries
from ..registry import Param, Params, Probe, register_probe
from .window import LARGE_TABLE_ROWS, TABLE_COUNTERS, Window

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook
    from ..session import Session

DEAD_TUPLES_MIN = Param("dead_tuples_min", int, 10000,
                        "a table needs at least this many dead tuples to warn", "rows", 0)
UNUSED_MIN_MB = Param("unused_index_min_mb", float, 10.0,
                      "unused indexes this large are reported", "MB", 0)


def reloption(options: list[str] | None, name: str) -> str | None:
    """One storage parameter from pg_class.reloptions ('autovacuum_enabled=false', ...)."""
    for opt in options or []:
        key, _, value = opt.partition("=")
        if key == name:
            return value
    return None


def tables(rb: Runbook, p: Params) -> pd.DataFrame:
    """Tables with at least min(large_table_rows, dead_tuples_min) live or dead tuples, their
    autovacuum settings, and the window's scans merged in. The checks
    filter this one frame for their own thresholds."""
    s = rb.session
    min_rows = min(int(p.get("large_table_rows", LARGE_TABLE_ROWS.default)),
                   int(p.get("dead_tuples_min", DEAD_TUPLES_MIN.default)))
    df = s.frame(queries.get("table_stats"), {"min_rows": min_rows})
    st = s.facts.settings
    opts = df["reloptions"]
    df["autovacuum_enabled"] = [reloption(o, "autovacuum_enabled") or "true" for o in opts]
    df["vacuum_scale_factor"] = [float(reloption(o, "autovacuum_vacuum_scale_factor")
                                       or st.get("autovacuum_vacuum_scale_factor", "0.2"))
                                 for o in opts]
    df["vacuum_threshold"] = [float(reloption(o, "autovacuum_vacuum_threshold")
                                    or st.get("autovacuum_vacuum_threshold", "50")) for o in opts]
    window: Window = rb.snapshot("window")
    df = df.merge(window.scans, on="relid", how="left")
    for c in TABLE_COUNTERS:
        df[f"{c}_window"] = df[f"{c}_window"].fillna(0)
    return df


def with_definitions(s: Session, ix: pd.DataFrame) -> pd.DataFrame:
    """IX (a few reported indexes) with their definitions, assembled from the catalogs."""
    import pandas as pd

    from ..sqltext import columns, ident, qualified

    if ix.empty:
        return ix.assign(definition=pd.Series(dtype=str))
    cols = s.frame(queries.get("index_columns"), {"oids": [int(o) for o in ix["indexrelid"]]})
    names = dict(zip(cols["indexrelid"], cols["columns"], strict=True))
    return ix.assign(definition=[
        f"CREATE {'UNIQUE ' if u else ''}INDEX {ident(i)} ON {qualified(sc, t)} USING {m} "
        f"({columns(names.get(o, []))})" + (f" WHERE {pr}" if pr else "")
        for o, u, i, sc, t, m, pr in zip(ix["indexrelid"], ix["is_unique"], ix["index"],
                                         ix["schema"], ix["table"], ix["method"], ix["predicate"],
                                         strict=True)])


def fk_unindexed(rb: Runbook, p: Params) -> pd.DataFrame:
    return rb.session.frame(queries.get("fk_without_index"))


def unused_indexes(rb: Runbook, p: Params) -> pd.DataFrame:
    s = rb.session
    min_bytes = int(float(p.get("unused_index_min_mb", UNUSED_MIN_MB.default)) * 2**20)
    return with_definitions(s, s.frame(queries.get("unused_indexes"),
                                       {"min_bytes": min_bytes}).head(20))


def duplicate_indexes(rb: Runbook, p: Params) -> pd.DataFrame:
    s = rb.session
    return with_definitions(s, s.frame(queries.get("duplicate_indexes")))


def invalid_indexes(rb: Runbook, p: Params) -> pd.DataFrame:
    s = rb.session
    return with_definitions(s, s.frame(queries.get("invalid_indexes")))


def xid_age(rb: Runbook, p: Params) -> pd.DataFrame:
    return rb.session.frame(queries.get("xid_age"))


CONNECTED = ("connection",)
register_probe(Probe("tables", tables, "Table statistics and autovacuum settings.",
                     params=(LARGE_TABLE_ROWS, DEAD_TUPLES_MIN), needs=("connection", "window")))
register_probe(Probe("fk_unindexed", fk_unindexed,
                     "Foreign keys without an index on their referencing columns.",
                     needs=CONNECTED))
register_probe(Probe("unused_indexes", unused_indexes, "Indexes never scanned.",
                     params=(UNUSED_MIN_MB,), needs=CONNECTED))
register_probe(Probe("duplicate_indexes", duplicate_indexes, "Indexes repeating another.",
                     needs=CONNECTED))
register_probe(Probe("invalid_indexes", invalid_indexes, "Indexes left invalid.",
                     needs=CONNECTED))
register_probe(Probe("xid_age", xid_age, "Transaction ID age per database.", needs=CONNECTED))
