"""Benchmarks of issue 2, measured in one run on this machine.

1. Wall time of `runbooks run connectivity` on the sandbox (execute, HTML and JSON included)
   against the `papermill` command on a trivial three-cell notebook. Goal: at most 2 x.
2. The unreachable case (connection refused, and a server that never answers): wall time of
   `runbooks run connectivity` against connect_timeout_s. Goal: at most connect_timeout + 2 s.

Each figure is the median of --repeat runs. Usage: python benchmarks/run.py [--repeat 5]
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

import nbformat

from runbooks_lib.sandbox import demo, incidents, server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=ROOT, check=False)
    return time.perf_counter() - t0, proc.returncode


def median_of(n: int, cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, list[int]]:
    runs = [timed(cmd, env) for _ in range(n)]
    return statistics.median(r[0] for r in runs), sorted({r[1] for r in runs})


def trivial_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("y = x + 1"), nbformat.v4.new_code_cell("print(y)")]
    nbformat.write(nb, path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--connect-timeout", type=float, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pg-runbooks-bench-"))
    work.chmod(0o755)
    results: dict[str, Any] = {}
    try:
        sb = server.start(work / "sandbox", max_connections=100)
        demo.load(sb.url("app"))
        nb = work / "trivial.ipynb"
        trivial_notebook(nb)
        papermill = [str(BIN / "papermill"), "-k", "python3", "--no-progress-bar", str(nb),
                     str(work / "trivial.out.ipynb")]
        runbooks = [str(BIN / "runbooks"), "run", "connectivity", "--out", str(work / "out")]
        timed(papermill)  # warm the file cache once for both
        timed(runbooks, {"DATABASE_URL": sb.url("monitor")})
        with incidents.leaking_app(sb.url("app"), "cosnap-backend", idle=20, idle_in_transaction=2):
            pm, pm_rc = median_of(args.repeat, papermill)
            rb, rb_rc = median_of(args.repeat, runbooks, {"DATABASE_URL": sb.url("monitor")})
        results["papermill_trivial_s"] = round(pm, 3)
        results["runbooks_connectivity_s"] = round(rb, 3)
        results["ratio"] = round(rb / pm, 2)
        results["exit_codes"] = {"papermill": pm_rc, "runbooks": rb_rc}
        ct = args.connect_timeout
        closed = server.free_port()
        refused, _ = median_of(args.repeat, runbooks + ["-p", f"connect_timeout_s={ct}"],
                               {"DATABASE_URL": f"postgresql://app:x@127.0.0.1:{closed}/cosnap"})
        with incidents.silent_server() as port:
            silent, _ = median_of(max(1, args.repeat // 2), runbooks + ["-p", f"connect_timeout_s={ct}"],
                                  {"DATABASE_URL": f"postgresql://app:x@127.0.0.1:{port}/cosnap"})
        results["connect_timeout_s"] = ct
        results["unreachable_refused_s"] = round(refused, 3)
        results["unreachable_silent_s"] = round(silent, 3)
        results["silent_over_connect_timeout_s"] = round(silent - ct, 3)
    finally:
        server.stop(work / "sandbox", remove=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    ratio_ok = results["ratio"] <= 2.0
    silent_ok = results["silent_over_connect_timeout_s"] <= 2.0
    print(f"goal ratio <= 2.0: {'met' if ratio_ok else 'NOT met'}; "
          f"unreachable <= connect_timeout + 2 s: {'met' if silent_ok else 'NOT met'}")
    return 0 if ratio_ok and silent_ok else 1


if __name__ == "__main__":
    sys.exit(main())
