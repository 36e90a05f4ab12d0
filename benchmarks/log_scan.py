"""Throughput of the streaming csvlog scan (errors by SQLSTATE) on a log of --mb megabytes, made
of real records: a sandbox server's csvlog after a workload with errors and deadlocks, repeated.
Compared in the same run with the same count done through Python's csv module, and checked to
agree. Peak memory of each is measured in a fresh subprocess (ru_maxrss).

Usage: python benchmarks/log_scan.py [--mb 400]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbooks_lib.sandbox import demo, incidents, server

CHILD = """
import json, resource, sys, time
from pathlib import Path
from runbooks_lib import logs
path, how = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if how == "arrow":
    counts = logs.scan_errors(path).errors_by_sqlstate
else:
    counts = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        import csv
        for row in csv.reader(fh):
            if len(row) > 12 and row[11] in logs.ERROR_LEVELS:
                counts[row[12]] = counts.get(row[12], 0) + 1
print(json.dumps({"seconds": time.perf_counter() - t0, "counts": counts,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_log(work: Path, mb: int) -> Path:
    base = work / "sandbox"
    base.mkdir()
    base.chmod(0o755)
    sb = server.start(base, max_connections=30)
    try:
        demo.load(sb.url("app"))
        incidents.failing_statements(sb.url("app"), times=20)
        for _ in range(5):
            incidents.deadlock(sb.url("app"))
        with incidents.workload(sb.url("app"), incidents.healthy_batch):
            time.sleep(2)
        time.sleep(1)
        seed = b"".join(p.read_bytes() for p in sorted(sb.log_dir.glob("*.csv")))
    finally:
        server.stop(base, remove=True)
    out = work / "big.csv"
    with out.open("wb") as fh:
        while fh.tell() < mb * 2**20:
            fh.write(seed)
    return out


def run(path: Path, how: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True,
                          text=True, check=True)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=400)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pg-runbooks-logscan-"))
    work.chmod(0o755)
    try:
        path = make_log(work, args.mb)
        size_mb = path.stat().st_size / 2**20
        arrow, plain = run(path, "arrow"), run(path, "csv")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = arrow["counts"] == plain["counts"]
    out = {"log_mb": round(size_mb, 1),
           "arrow_s": round(float(arrow["seconds"]), 2),  # type: ignore[arg-type]
           "arrow_mb_per_s": round(size_mb / float(arrow["seconds"]), 1),  # type: ignore[arg-type]
           "arrow_peak_rss_mb": round(float(arrow["peak_rss_mb"]), 1),  # type: ignore[arg-type]
           "csv_module_s": round(float(plain["seconds"]), 2),  # type: ignore[arg-type]
           "csv_module_mb_per_s": round(size_mb / float(plain["seconds"]), 1),  # type: ignore[arg-type]
           "csv_module_peak_rss_mb": round(float(plain["peak_rss_mb"]), 1),  # type: ignore[arg-type]
           "same_counts": same, "counts": arrow["counts"]}
    print(json.dumps(out, indent=2))
    _ = resource  # the children measure themselves
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
