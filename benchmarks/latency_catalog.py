"""Benchmark of issue 3: the latency runbook's diagnostic queries on a large catalog.

A catalog of N tables (each with a primary-key index) plus 5,000 distinct statements in
pg_stat_statements. Measured in one run, at each N:
- ours: the server-side time of every diagnostic query of the latency runbook (window with no
  sampling sleep, top queries, load, blocking, long-running, tables and indexes, plans, N+1),
  read exactly from pg_stat_statements (our statements carry the /* pg-runbooks */ tag), and
  the runbook's wall time without the sleep;
- check_postgres `bloat` and `last_vacuum` (Debian package check-postgres): wall time of the
  command and the server-side time of its statements.
Goal: ours <= 1/5 of check_postgres bloat, growing linearly with N.

Each table holds 10 analyzed rows and two indexes (check_postgres's bloat query reads pg_stats,
so empty tables would flatter it).

Usage: python benchmarks/latency_catalog.py [--sizes 2000,20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from runbooks_lib.queries import MARKER
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import demo, server

CHECK_POSTGRES = shutil.which("check_postgres") or shutil.which("check_postgres.pl")


SUM_OURS = "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements WHERE query LIKE %s"
SUM_OTHERS = ("SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
              "WHERE query NOT LIKE %s")


def server_ms(conn: psycopg.Connection[Any], ours: bool) -> float:
    """Total execution time so far of our tagged statements (or of all others)."""
    row = conn.execute(SUM_OURS if ours else SUM_OTHERS, (f"%{MARKER}%",)).fetchone()
    assert row is not None
    return float(row[0])


GROW = """
DO $$ BEGIN
  FOR i IN {start}..{end} LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS bench.t_%s (id int PRIMARY KEY, v text, n int)', i);
    EXECUTE format('CREATE INDEX IF NOT EXISTS t_%s_n_idx ON bench.t_%s (n)', i, i);
    EXECUTE format('INSERT INTO bench.t_%s SELECT g, md5(g::text), g %% 3 FROM generate_series(1, 10) g', i);
    EXECUTE format('ANALYZE bench.t_%s', i);
  END LOOP;
END $$"""


def grow(conn: psycopg.Connection[Any], have: int, want: int) -> None:
    """Tables of 10 analyzed rows, each with a primary key and a second index, like an app's."""
    for start in range(have + 1, want + 1, 500):
        conn.execute(GROW.format(start=start, end=min(want, start + 499)).encode())


def distinct_statements(conn: psycopg.Connection[Any], n: int) -> None:
    for i in range(1, n + 1):
        conn.execute(f"SELECT v FROM bench.t_{i} WHERE id = %s", (i,))  # noqa: S608 - our table


def run_ours(url: str) -> float:
    os.environ["RB_BENCH_URL"] = url
    rb = Runbook.start("latency", {"target": "env:RB_BENCH_URL", "sample_seconds": 0})
    t0 = time.perf_counter()
    rb.run_all()
    wall = time.perf_counter() - t0
    if rb.report.errors or rb.report.skipped:
        print(f"  errors: {rb.report.errors}\n  skipped: {rb.report.skipped}", flush=True)
    rb.close()
    return wall


def run_check_postgres(sb: server.Sandbox, action: str) -> float:
    assert CHECK_POSTGRES, "apt-get install check-postgres"
    env = {**os.environ, "PGPASSWORD": sb.passwords["postgres"]}
    t0 = time.perf_counter()
    subprocess.run([CHECK_POSTGRES, f"--action={action}", "--host=127.0.0.1", f"--port={sb.port}",
                    "--dbname=cosnap", "--dbuser=postgres"], env=env, capture_output=True,
                   check=False)
    return time.perf_counter() - t0


def big_catalog_sandbox(base: Path) -> server.Sandbox:
    """A sandbox ready for a big catalog: more locks per transaction for the DDL batches and
    room in pg_stat_statements for every distinct statement."""
    sb = server.start(base, max_connections=50)
    demo.load(sb.url("app"))
    with psycopg.connect(sb.url("postgres"), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET max_locks_per_transaction = 2048")
        c.execute("ALTER SYSTEM SET pg_stat_statements.max = 20000")
    server.stop(base)
    return server.start(base, max_connections=50)


def measure(sb: server.Sandbox, conn: psycopg.Connection[Any], repeat: int) -> dict[str, float]:
    url = sb.url("postgres")
    ours_server, ours_wall = [], []
    for _ in range(repeat):
        before = server_ms(conn, True)
        ours_wall.append(run_ours(url))
        ours_server.append(server_ms(conn, True) - before)
    out = {"ours_server_s": statistics.median(ours_server) / 1000,
           "ours_wall_s": statistics.median(ours_wall)}
    for action in ("bloat", "last_vacuum"):
        walls, servers = [], []
        for _ in range(repeat):
            before = server_ms(conn, False)
            walls.append(run_check_postgres(sb, action))
            servers.append(server_ms(conn, False) - before)
        out[f"check_postgres_{action}_wall_s"] = statistics.median(walls)
        out[f"check_postgres_{action}_server_s"] = statistics.median(servers) / 1000
    rows = conn.execute(
        "SELECT round(total_exec_time::numeric / calls, 1)::float8, left(regexp_replace(query, "
        "'\\s+', ' ', 'g'), 60) FROM pg_stat_statements WHERE query LIKE %s "
        "ORDER BY total_exec_time DESC LIMIT 6", (f"%{MARKER}%",)).fetchall()
    print("  our slowest queries (mean ms, cumulative over the run):", flush=True)
    for mean_ms, text in rows:
        print(f"    {mean_ms:8.1f} ms  {text}", flush=True)
    out["ratio_server_vs_bloat_server"] = out["ours_server_s"] / max(
        out["check_postgres_bloat_server_s"], 1e-9)
    out["ratio_server_vs_bloat_wall"] = out["ours_server_s"] / out["check_postgres_bloat_wall_s"]
    return {k: round(v, 4) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--statements", type=int, default=5000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="pg-runbooks-bench-lat-"))
    work.chmod(0o755)
    results: dict[str, Any] = {"sizes": {}}
    try:
        sb = big_catalog_sandbox(work)
        have = 0
        with psycopg.connect(sb.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
            for n in sizes:
                t0 = time.perf_counter()
                grow(conn, have, n)
                have = n
                distinct_statements(conn, min(args.statements, n))
                built = time.perf_counter() - t0
                row = conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
                res = measure(sb, conn, args.repeat)
                res["catalog_build_s"] = round(built, 1)
                res["statements_tracked"] = int(row[0]) if row else 0
                results["sizes"][n] = res
                print(f"{n} tables: {json.dumps(res)}", flush=True)
        if len(sizes) >= 2:
            a, b = sizes[0], sizes[-1]
            ra, rb_ = results["sizes"][a], results["sizes"][b]
            results["growth"] = {
                "tables_x": b / a,
                "ours_server_x": round(rb_["ours_server_s"] / max(ra["ours_server_s"], 1e-9), 2),
                "ours_wall_x": round(rb_["ours_wall_s"] / max(ra["ours_wall_s"], 1e-9), 2),
                "check_postgres_bloat_wall_x": round(rb_["check_postgres_bloat_wall_s"]
                                                     / ra["check_postgres_bloat_wall_s"], 2),
            }
    finally:
        server.stop(work, remove=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    last = results["sizes"][sizes[-1]]
    ok = last["ratio_server_vs_bloat_server"] <= 0.2
    print(f"goal ours <= 1/5 of check_postgres bloat (server time): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
