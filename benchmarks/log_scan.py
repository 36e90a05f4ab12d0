"""The log scan against pgBadger, side by side on the same logs (issue 4).

1. Generates a realistic log: a sandbox server writing stderr, csvlog and jsonlog at once, with
   log_min_duration_statement = 0, under a pgbench workload, while errors are injected (FK and
   unique violations, division by zero, undefined table, statement timeouts, deadlocks,
   serialization failures, idle-in-transaction timeouts), until the csvlog reaches --mb.
2. Runs pgBadger (`-j 1`, JSON output) and our scan (errors by SQLSTATE, deadlock cycles,
   per-statement durations and the p95) on each of the three files, each in a fresh process
   (wall time, peak RSS), and checks that the counts by SQLSTATE and the deadlock count are the
   same as pgBadger's: it exits 1 and says which differ if they are not.
3. The headline: our scan of a --headline-gb csvlog (the generated one repeated), and the same
   for stderr and jsonlog, with time and peak memory.

pgBadger's own "Errors class" table counts distinct sample messages, not errors (and its csvlog
parser ignores the SQLSTATE column), so its counts by SQLSTATE are taken from its per-message
error counts (exact) with each message's SQLSTATE from its samples; for the csvlog those
messages get the SQLSTATE pgBadger found for them in the stderr and jsonlog runs.

Usage: python benchmarks/log_scan.py [--mb 420] [--headline-gb 10] [--work DIR]
Needs pgbadger (apt-get install pgbadger).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from runbooks_lib.sandbox import demo, incidents, server

PREFIX = "%m [%p] %q%u@%d %a %e "
FORMATS = {"csv": "csv", "stderr": "log", "jsonlog": "json"}

OURS = """
import json, resource, sys, time
t0 = time.perf_counter()
from runbooks_lib import deadlocks, logs, logparse
path, prefix = sys.argv[1], sys.argv[2]
import datetime as dt
f = logs.LogFile(path, 0, dt.datetime.now(dt.UTC), logparse.kind(path))
scan = logs.scan([f], path, None, prefix, slow_ms=1000.0)
cycles = deadlocks.group([r for r in scan.errors if r["sqlstate"] == "40P01"])
counts = dict(scan.errors_by_sqlstate)
for code, n in scan.warnings_by_sqlstate.items():
    counts[code] = counts.get(code, 0) + n
print(json.dumps({"seconds": time.perf_counter() - t0, "counts": counts,
                  "deadlocks": scan.errors_by_sqlstate.get("40P01", 0),
                  "deadlock_patterns": len(cycles), "records": scan.records,
                  "malformed": scan.malformed, "unmatched": scan.counts.unmatched,
                  "durations": scan.durations.count, "p95_ms": scan.durations.quantile(0.95),
                  "statements": len(scan.durations.statements),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def rss_of_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def inject(url: str, stop: threading.Event, raised: dict[str, int]) -> None:
    """Errors of every kind the runbook classifies, over and over while pgbench runs."""
    while not stop.is_set():
        for code, n in incidents.failing_statements(url, times=5).items():
            raised[code] = raised.get(code, 0) + n
        raised["40P01"] = raised.get("40P01", 0) + incidents.deadlock(url)
        raised["40001"] = raised.get("40001", 0) + incidents.serialization_failure(url)
        raised["25P03"] = raised.get("25P03", 0) + incidents.idle_in_transaction_timeout(url)
        time.sleep(0.2)


def generate(work: Path, mb: int) -> dict[str, Path]:
    base = work / "sandbox"
    base.mkdir()
    base.chmod(0o755)
    sb = server.start(base, max_connections=40)
    import psycopg

    raised: dict[str, int] = {}
    try:
        demo.load(sb.url("app"))
        with psycopg.connect(sb.url("postgres"), autocommit=True) as c:
            for setting in ("log_min_duration_statement = 0", "log_rotation_size = 0",
                            "log_rotation_age = 0"):
                c.execute(f"ALTER SYSTEM SET {setting}")
            c.execute("SELECT pg_reload_conf()")
            c.execute("CREATE DATABASE bench OWNER app")
        env = {**os.environ, "LD_LIBRARY_PATH": str(Path(sb.bindir).parent / "lib")}
        pgbench = str(Path(sb.bindir) / "pgbench")
        bench_url = sb.url("app", "bench")
        subprocess.run([pgbench, "-i", "-q", "-s", "5", bench_url], env=env, check=True,
                       capture_output=True)
        stop = threading.Event()
        injector = threading.Thread(target=inject, args=(sb.url("app"), stop, raised))
        injector.start()
        def csv() -> int:
            return sum(p.stat().st_size for p in sb.log_dir.glob("*.csv"))

        t0 = time.time()
        while csv() < mb * 2**20:
            subprocess.run([pgbench, "-n", "-c", "4", "-j", "2", "-T", "10", bench_url],
                           env=env, check=True, capture_output=True)
            print(f"  generating: csvlog {csv() / 2**20:.0f} MB after {time.time() - t0:.0f} s",
                  file=sys.stderr)
        stop.set()
        injector.join()
    finally:
        server.stop(base)
    out = {}
    for fmt, ext in FORMATS.items():
        files = sorted(sb.log_dir.glob(f"*.{ext}"))
        target = work / f"bench.{ext}"
        with target.open("wb") as fh:
            for f in files:
                with f.open("rb") as src:
                    shutil.copyfileobj(src, fh, 16 * 2**20)
        out[fmt] = target
    print(f"  injected: {json.dumps(raised, sort_keys=True)}", file=sys.stderr)
    shutil.rmtree(base, ignore_errors=True)
    return out


def ours(path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", OURS, str(path), PREFIX], check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def pgbadger(path: Path, fmt: str, work: Path) -> dict[str, Any]:
    """pgBadger -j 1 with JSON output, in a wrapper process measuring its peak RSS."""
    out = work / f"pgbadger-{fmt}.json"
    cmd = ["pgbadger", "-j", "1", "-q", "-f", fmt, "-o", str(out), str(path)]
    if fmt == "stderr":
        cmd[6:6] = ["--prefix", PREFIX]
    wrapper = ("import resource, subprocess, sys, time, json; t0 = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True); "
               "print(json.dumps({'seconds': time.perf_counter() - t0, 'peak_rss_mb': "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    data = json.loads(out.read_text())
    by_message: dict[str, tuple[int, set[str]]] = {}
    for per_db in data["error_info"].values():
        for message, info in per_db.items():
            n, codes = by_message.get(message, (0, set()))
            by_message[message] = (n + int(info["count"]),
                                   codes | {c for c in info.get("sqlstate") or [] if c})
    result["by_message"] = {m: (n, sorted(c)) for m, (n, c) in by_message.items()}
    result["deadlocks"] = sum(n for m, (n, _) in by_message.items()
                              if m.startswith("ERROR:  deadlock detected"))
    result["queries"] = int(data["overall_stat"].get("queries_number", 0))
    return result


def pgbadger_counts(by_message: dict[str, Any], codes_of: dict[str, list[str]]) -> dict[str, int]:
    """Errors by SQLSTATE from pgBadger's per-message counts. Left out: class 00 and the events
    pgBadger lists with the errors but that carry no SQLSTATE in any format (LOG lines of the
    postmaster and startup processes: 'database system was shut down', 'parameter changed')."""
    counts: dict[str, int] = {}
    for message, (n, codes) in by_message.items():
        codes = codes or codes_of.get(message, [])
        if not codes:  # an event of a process without SQLSTATE (startup, reload): not an error
            continue
        if len(codes) != 1:
            counts[f"?{message[:60]}"] = n
            continue
        if not codes[0].startswith("00"):
            counts[codes[0]] = counts.get(codes[0], 0) + n
    return counts


def repeat_to(path: Path, gb: float, target: Path) -> Path:
    size = path.stat().st_size
    with target.open("wb") as fh:
        for _ in range(max(1, round(gb * 2**30 / size))):
            with path.open("rb") as src:
                shutil.copyfileobj(src, fh, 64 * 2**20)
    return target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=420)
    ap.add_argument("--headline-gb", type=float, default=10)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    if not shutil.which("pgbadger"):
        sys.exit("pgbadger is not installed: apt-get install pgbadger")
    work = Path(args.work or tempfile.mkdtemp(prefix="log-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {fmt: work / f"bench.{ext}" for fmt, ext in FORMATS.items()}
    if not all(f.exists() for f in files.values()):
        files = generate(work, args.mb)
    rows, ok = [], True
    badger = {fmt: pgbadger(path, fmt, work) for fmt, path in files.items()}
    codes_of = {m: c for fmt in ("stderr", "jsonlog") for m, (_, c) in
                badger[fmt]["by_message"].items() if c}
    for fmt, path in files.items():
        mb = path.stat().st_size / 2**20
        us, them = ours(path), badger[fmt]
        theirs = pgbadger_counts(them["by_message"], codes_of)
        same = us["counts"] == theirs and us["deadlocks"] == them["deadlocks"]
        ok &= same
        rows.append({"format": fmt, "mb": round(mb, 1), "records": us["records"],
                     "ours_s": round(us["seconds"], 2), "ours_mb_s": round(mb / us["seconds"], 1),
                     "ours_rss_mb": round(us["peak_rss_mb"]),
                     "pgbadger_s": round(them["seconds"], 1),
                     "pgbadger_mb_s": round(mb / them["seconds"], 1),
                     "pgbadger_rss_mb": round(them["peak_rss_mb"]),
                     "ratio": round(them["seconds"] / us["seconds"], 1),
                     "errors": sum(us["counts"].values()), "deadlocks": us["deadlocks"],
                     "deadlock_patterns": us["deadlock_patterns"],
                     "durations": us["durations"], "pgbadger_queries": them["queries"],
                     "p95_ms": round(us["p95_ms"], 3), "same_counts": same})
        if not same:
            print(f"DIFFERENT COUNTS ({fmt}): ours {us['counts']} deadlocks {us['deadlocks']}; "
                  f"pgBadger {theirs} deadlocks {them['deadlocks']}", file=sys.stderr)
    print(json.dumps({"side_by_side": rows}, indent=1))
    headline = []
    for fmt, path in files.items():
        big = repeat_to(path, args.headline_gb, work / f"big.{path.suffix[1:]}")
        gb = big.stat().st_size / 2**30
        us = ours(big)
        headline.append({"format": fmt, "gb": round(gb, 2), "seconds": round(us["seconds"], 1),
                         "mb_s": round(gb * 1024 / us["seconds"], 1),
                         "peak_rss_mb": round(us["peak_rss_mb"]), "records": us["records"]})
        big.unlink()
        print(json.dumps(headline[-1]), file=sys.stderr)
    print(json.dumps({"headline": headline}, indent=1))
    if not ok:
        sys.exit("counts differ from pgBadger's (see above)")


if __name__ == "__main__":
    main()
