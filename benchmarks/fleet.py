"""Benchmark of the fleet sweep (issue 13), measured in one run on this machine.

100 databases on a sandbox server (made from the demo database as a template), the three
diagnostic runbooks on each: `runbooks fleet run` (a LocalCluster, in-process runbooks) against
a shell loop of `runbooks run connectivity latency transaction_failures --target env:VAR` over
the same targets (one process per target, a kernel per runbook, the run's overview notebook).
Both with the same parameters (`-p sample_seconds=S`). Reports the wall times, their ratio
(goal >= 5x), the peak number of the runbooks' sessions on any one database (sampled from
pg_stat_activity every 20 ms; goal 1 for the sweep), the peak memory of the process tree (RSS of
the command and every descendant, sampled every 0.2 s; goal < 1 GB), and the sweep's cost per
target at 10, 50 and 100 targets. The loop over 100 targets takes long here: by default it runs
on the first --loop-targets and is extrapolated linearly to 100, labelled as such.

Usage: python benchmarks/fleet.py [--targets 100] [--loop-targets 20] [--sample-seconds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg

from runbooks_lib.sandbox import server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIAGNOSTIC = ["connectivity", "latency", "transaction_failures"]


class Watch:
    """While a command runs: the runbooks' sessions per database (pg_stat_activity) and the RSS
    of its process tree, at their peaks."""

    def __init__(self, url: str, pid: int) -> None:
        self.per_db: dict[str, int] = {}
        self.total = 0
        self.rss = 0
        self.conn = psycopg.connect(url, autocommit=True)
        self.root = psutil.Process(pid)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._sessions, daemon=True),
                        threading.Thread(target=self._memory, daemon=True)]
        for t in self.threads:
            t.start()

    def _sessions(self) -> None:
        while not self.stop.is_set():
            rows = self.conn.execute(
                "SELECT datname, count(*) FROM pg_stat_activity WHERE application_name LIKE "
                "'runbooks/%' AND datname IS NOT NULL GROUP BY datname").fetchall()
            for db, n in rows:
                self.per_db[db] = max(self.per_db.get(db, 0), int(n))
            self.total = max(self.total, sum(int(n) for _, n in rows))
            time.sleep(0.02)

    def _memory(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.rss = max(self.rss, rss)
            time.sleep(0.2)

    def close(self) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.conn.close()
        return {"peak_sessions_per_database": max(self.per_db.values(), default=0),
                "peak_sessions_total": self.total, "databases_seen": len(self.per_db),
                "peak_rss_mb": round(self.rss / 2**20)}


def median_of(summaries: list[dict[str, Any]], book: str) -> float:
    """The median duration of runbook BOOK over the targets' summaries."""
    import statistics

    return round(float(statistics.median(r["duration_s"] for s in summaries
                                         for r in s["runbooks"] if r["name"] == book)), 2)


def timed(cmd: list[str], env: dict[str, str], admin_url: str) -> tuple[float, dict[str, Any], int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    watch = Watch(admin_url, proc.pid)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    seen = watch.close()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:3]} exited {proc.returncode}: {err.decode()[-2000:]}")
    return wall, seen, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--loop-targets", type=int, default=20,
                    help="targets the shell loop runs on (extrapolated to --targets)")
    ap.add_argument("--sample-seconds", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=4 * (os.cpu_count() or 2))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pg-runbooks-bench-fleet-"))
    work.chmod(0o755)
    results: dict[str, Any] = {"cores": os.cpu_count(), "sample_seconds": args.sample_seconds,
                               "jobs": args.jobs, "sweeps": []}
    try:
        sb = server.start(work / "sandbox", max_connections=100)
        from runbooks_lib.sandbox import demo

        demo.load(sb.url("app"))
        admin = sb.url("postgres", "postgres")
        env = dict(os.environ)
        t0 = time.perf_counter()
        with psycopg.connect(admin, autocommit=True) as c:
            for i in range(args.targets):
                c.execute(f'CREATE DATABASE "bench_{i:03d}" TEMPLATE cosnap STRATEGY file_copy')
                env[f"BENCH_{i:03d}"] = sb.url("postgres", f"bench_{i:03d}")
        results["create_databases_s"] = round(time.perf_counter() - t0, 1)
        p = ["-p", f"sample_seconds={args.sample_seconds}"]
        sizes = sorted({n for n in (10, 50, args.targets) if n <= args.targets})
        for n in sizes:
            fleet_file = work / f"fleet{n}.yaml"
            fleet_file.write_text("runbooks: [" + ", ".join(DIAGNOSTIC) + "]\ntargets:\n" + "".join(
                f"  - {{name: t{i:03d}, target: 'env:BENCH_{i:03d}'}}\n" for i in range(n)))
            wall, seen, code = timed([str(BIN / "runbooks"), "fleet", "run", str(fleet_file),
                                      "--out", str(work / f"sweep{n}"), "--jobs",
                                      str(args.jobs), "--quiet", *p], env, admin)
            summary = json.loads((work / f"sweep{n}" / "summary.json").read_text())
            runs = sorted((json.loads((work / f"sweep{n}" / t["dir"] / "summary.json").read_text())
                           for t in summary["targets"]), key=lambda s: s["started_at"])
            first, last = runs[:10], runs[-10:]
            results["sweeps"].append({
                "runbook_s_first_10": {b: median_of(first, b) for b in DIAGNOSTIC},
                "runbook_s_last_10": {b: median_of(last, b) for b in DIAGNOSTIC},
                "targets": n, "wall_s": round(wall, 1), "per_target_s": round(wall / n, 2),
                "exit": code, "statuses": {k: v for k, v in summary["counts"].items() if v},
                "rendered": sum(t["rendered"] for t in summary["targets"]),
                "server_log_mb": round(sum(f.stat().st_size for f in sb.log_dir.rglob("*")
                                           if f.is_file()) / 2**20, 1), **seen})
        loop_n = min(args.loop_targets, args.targets)
        t0 = time.perf_counter()
        loop_seen: list[dict[str, Any]] = []
        for i in range(loop_n):
            _, seen, _ = timed([str(BIN / "runbooks"), "run", *DIAGNOSTIC, "--target",
                                f"env:BENCH_{i:03d}", "--out", str(work / "loop" / f"t{i:03d}"),
                                "--quiet", *p], env, admin)
            loop_seen.append(seen)
        loop_wall = time.perf_counter() - t0
        full = next(s for s in results["sweeps"] if s["targets"] == args.targets)
        loop_full = loop_wall * args.targets / loop_n
        results["shell_loop"] = {
            "targets_run": loop_n, "wall_s": round(loop_wall, 1),
            "per_target_s": round(loop_wall / loop_n, 2),
            "wall_s_for_all_targets": round(loop_full, 1),
            "extrapolated": loop_n < args.targets,
            "peak_sessions_per_database": max(s["peak_sessions_per_database"] for s in loop_seen),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in loop_seen)}
        results["ratio"] = round(loop_full / full["wall_s"], 1)
        results["goal_ratio_met"] = results["ratio"] >= 5
        results["goal_one_session_per_target_met"] = all(
            s["peak_sessions_per_database"] <= 1 for s in results["sweeps"])
        results["goal_memory_met"] = all(s["peak_rss_mb"] < 1024 for s in results["sweeps"])
    finally:
        server.stop(work / "sandbox", remove=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
