"""Actions that change something on the server, behind three guards.

1. ``allow_actions`` is off by default: the action is only previewed.
2. In an interactive Jupyter session a button asks for confirmation; headless runs (``runbooks
   run``) take ``allow_actions=True`` as the confirmation.
3. Every action taken, previewed, declined or failed is appended to an audit log (JSONL).

The changing statement re-checks its conditions, so a session that became active between the
preview and the click is left alone.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import present, queries
from .findings import Finding, jsonable, records
from .runbook import Runbook, default_audit_log
from .session import Session


@dataclass
class Plan:
    """An action ready to run: what it does, to whom, and the statement that does it (which
    returns a boolean column 'signalled' per session)."""

    action: str
    description: str
    preview: pd.DataFrame  # the rows it would touch, as the operator sees them
    sql: str
    params: dict[str, Any]


def audit(rb: Runbook, plan: Plan, decision: str, result: Any = None) -> dict[str, Any]:
    record = {
        "ts": dt.datetime.now(dt.UTC).isoformat(),
        "runbook": rb.name,
        "action": plan.action,
        "description": plan.description,
        "target": rb.report.target,
        "decision": decision,
        "pids": [int(p) for p in plan.preview.get("pid", pd.Series(dtype=int)).tolist()],
        "result": jsonable(result),
        "os_user": getpass.getuser(),
        "host": socket.gethostname(),
    }
    path = Path(rb.audit_log) if rb.audit_log else default_audit_log()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _headless() -> bool:
    """True under `runbooks run` / papermill, where no one can click a button."""
    if os.environ.get("RUNBOOKS_HEADLESS"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return True
    return get_ipython() is None


def execute(rb: Runbook, plan: Plan) -> pd.DataFrame:
    """Run the plan through its own, writable session (the diagnostic one stays read-only)."""
    target = rb.admin or rb.target
    assert target is not None
    try:
        with Session(target, application_name=f"runbooks/{rb.name}/action",
                     timeouts=rb.timeouts, read_only=False) as s:
            done = s.frame(plan.sql, plan.params)
    except Exception as exc:
        audit(rb, plan, "failed", rb.mask(str(exc)))
        raise
    audit(rb, plan, "executed", done.to_dict(orient="records"))
    ok = int(done["signalled"].fillna(False).astype(bool).sum())  # every action's SQL returns it
    outcome = "ended" if plan.action == "terminate" else "cancelled"
    rb.add(Finding(f"action_{plan.action}", "info",
                   f"Action {plan.action}: {ok} of {len(plan.preview)} sessions {outcome}",
                   plan.description, evidence=records(done)))
    return done


def run(rb: Runbook, plan: Plan, allow_actions: bool) -> pd.DataFrame | None:
    """Preview PLAN, then execute it only if allowed (and confirmed when someone is there)."""
    present.show_table(plan.preview, f"{plan.action} would affect ({plan.description})")
    if plan.preview.empty:
        audit(rb, plan, "nothing_to_do")
        return None
    if not allow_actions:
        audit(rb, plan, "previewed")
        rb.add(Finding(f"action_{plan.action}", "info",
                       f"Preview: {plan.action} would affect {len(plan.preview)} sessions "
                       "(allow_actions is off, nothing done)",
                       plan.description, evidence=records(plan.preview)))
        return None
    if _headless():
        return execute(rb, plan)
    import ipywidgets as widgets
    from IPython.display import display

    button = widgets.Button(description=f"{plan.action}: {len(plan.preview)} sessions",
                            button_style="danger")
    cancel = widgets.Button(description="cancel")
    out = widgets.Output()

    def on_confirm(_: Any) -> None:
        button.disabled = cancel.disabled = True
        with out:
            execute(rb, plan)

    def on_cancel(_: Any) -> None:
        button.disabled = cancel.disabled = True
        audit(rb, plan, "declined")

    button.on_click(on_confirm)
    cancel.on_click(on_cancel)
    display(widgets.HBox([button, cancel]), out)
    return None


def terminate_idle_in_transaction_plan(session: Session, application: str,
                                       older_than_s: float) -> Plan:
    sql = queries.get("terminate_idle_in_transaction")
    params = {"application": application, "older_than_s": older_than_s, "dry_run": True,
              "pids": []}
    preview = session.frame(sql, params)
    return Plan(
        action="terminate",
        description=f"sessions of {application!r} idle in transaction for more than "
                    f"{older_than_s:g} s",
        preview=preview,
        sql=sql,
        params={**params, "dry_run": False, "pids": preview["pid"].tolist()},
    )
