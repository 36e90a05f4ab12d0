"""Benchmark of the nightly report (issue 11), measured in one run on this machine.

`runbooks run --all` on the sandbox with the demo data (healthy: no incident), each run timed as
a whole process, against the slowest single runbook in the same run (its duration_s in
summary.json). Goal: wall time at most 1.3 x the slowest runbook. Also, in turns with it, each
runbook run alone (`runbooks run NAME`, a whole process), so the ratio to the slowest runbook
run alone is measured too; and the size of each report page without plotly.js (goal < 1 MB)
and of the one plotly.min.js per run directory.

Usage: python benchmarks/nightly.py [--repeat 3] [--jobs N]
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

from runbooks_lib.drill import keys
from runbooks_lib.sandbox import demo, server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--alone", action="store_true", help="also time each runbook run alone")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pg-runbooks-bench-nightly-"))
    work.chmod(0o755)
    results: dict[str, Any] = {"jobs": args.jobs, "runs": []}
    try:
        sb = server.start(work / "sandbox", max_connections=100)
        demo.load(sb.url("app"))
        key = work / "key.json"
        key.write_text(keys.generate())
        key.chmod(0o600)
        env = {**os.environ, "DATABASE_URL": sb.url("postgres"),
               "RUNBOOKS_DRILL_DIR": str(work / "drills")}
        for n in range(args.repeat + 1):  # the first warms the file cache and is not counted
            out = work / "reports" / f"run{n}"
            cmd = [str(BIN / "runbooks"), "run", "--all", "--out", str(out), "--jobs",
                   str(args.jobs), "--quiet", "-p", f"restore_target={sb.url('postgres', 'postgres')}",
                   "-p", f"backup_dir={work / 'backups'}", "-p", f"encryption_key_file={key}",
                   "-p", f"bindir={sb.bindir}"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                                  check=False)
            wall = time.perf_counter() - t0
            alone: dict[str, float] = {}
            if n and args.alone:
                for name in ("connectivity", "latency", "transaction_failures", "restore_drill"):
                    one = [c if c != "--all" else name for c in cmd]
                    one[one.index("--out") + 1] = str(work / "alone" / f"{name}{n}")
                    if name != "restore_drill":  # the drill's parameters are the drill's only
                        one = one[:one.index("-p")]
                    t1 = time.perf_counter()
                    done = subprocess.run(one, env=env, cwd=ROOT, capture_output=True,
                                          check=False)
                    assert done.returncode in (0, 1), (name, done.returncode, done.stderr[-500:])
                    alone[name] = round(time.perf_counter() - t1, 2)
            summary = json.loads((out / "summary.json").read_text())
            slowest = max(summary["runbooks"], key=lambda r: r["duration_s"])
            if n == 0:
                continue
            results["runs"].append({
                "wall_s": round(wall, 2), "exit": proc.returncode,
                "slowest": slowest["name"], "slowest_s": slowest["duration_s"],
                "durations_s": {r["name"]: r["duration_s"] for r in summary["runbooks"]},
                "ratio": round(wall / slowest["duration_s"], 2),
                **({"alone_wall_s": alone, "ratio_to_slowest_alone":
                    round(wall / max(alone.values()), 2)} if alone else {})})
        last = work / "reports" / f"run{args.repeat}"
        results["page_bytes"] = {p.name: p.stat().st_size for p in sorted(last.glob("*.html"))}
        plotly = last / "plotly.min.js"
        results["plotly_js_bytes"] = plotly.stat().st_size if plotly.exists() else None
        results["run_dir_bytes"] = sum(p.stat().st_size for p in last.iterdir() if p.is_file())
        ratios = [r["ratio"] for r in results["runs"]]
        results["median_ratio"] = statistics.median(ratios)
        results["median_wall_s"] = statistics.median(r["wall_s"] for r in results["runs"])
        results["goal_ratio_met"] = results["median_ratio"] <= 1.3
        if args.alone:
            results["median_ratio_to_slowest_alone"] = statistics.median(
                r["ratio_to_slowest_alone"] for r in results["runs"])
        results["goal_page_size_met"] = max(results["page_bytes"].values()) < 1_000_000
    finally:
        server.stop(work / "sandbox", remove=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
