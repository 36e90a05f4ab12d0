"""Does the latency runbook complete on a catalog of N tables (default 500,000, postgres-checkup's
tested scale) with no diagnostic query reaching the statement timeout?

The catalog is kept in --dir between runs (building it is the slow part). Reports the wall time
of each step, the slowest diagnostic queries (server-side, from pg_stat_statements) and every
skipped step or error.

Usage: PYTHONPATH=. python benchmarks/latency_scale.py [--tables 500000] [--dir /var/tmp/pg-runbooks-scale]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.latency_catalog import SUM_OURS, big_catalog_sandbox, run_ours
from runbooks_lib.queries import MARKER

BUILD = """
DO $$ BEGIN
  FOR i IN {start}..{end} LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS scale.t_%s (id int PRIMARY KEY, n int)', i);
  END LOOP;
END $$"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=500_000)
    ap.add_argument("--dir", default="/var/tmp/pg-runbooks-scale")
    args = ap.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    sb = big_catalog_sandbox(base)
    with psycopg.connect(sb.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS scale")
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'scale'").fetchone()
        have = int(row[0]) if row else 0
        t0 = time.perf_counter()
        for start in range(have + 1, args.tables + 1, 1000):
            conn.execute(BUILD.format(start=start, end=min(args.tables, start + 999)).encode())
            if start % 50_000 == 1:
                print(f"  {start - 1} tables after {time.perf_counter() - t0:.0f} s", flush=True)
        built = time.perf_counter() - t0
        conn.execute("SELECT pg_stat_statements_reset()")
        wall = run_ours(sb.url("postgres"))
        total = conn.execute(SUM_OURS, (f"%{MARKER}%",)).fetchone()
        slow = conn.execute(
            "SELECT round(max_exec_time::numeric, 1)::float8, left(regexp_replace(query, "
            "'\\\\s+', ' ', 'g'), 60) FROM pg_stat_statements WHERE query LIKE %s "
            "ORDER BY max_exec_time DESC LIMIT 6", (f"%{MARKER}%",)).fetchall()
    result: dict[str, Any] = {"tables": args.tables, "build_s": round(built, 1),
                              "runbook_wall_s": round(wall, 2),
                              "server_s": round(float(total[0]) / 1000, 3) if total else None,
                              "slowest_ms": [[ms, q] for ms, q in slow]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
