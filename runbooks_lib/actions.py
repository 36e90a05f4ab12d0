"""Actions that change something on the server, behind three guards.

1. ``allow_actions`` is off by default: the action is only previewed.
2. In JupyterLab the button enables only once the engineer has typed what it acts on (the
   application name, or the pids); headless runs (``runbooks run``) take
   ``allow_actions=True`` as the confirmation.
3. Every action taken, previewed, declined, refused or failed is appended to an audit log
   (JSONL).

The changing statement re-checks its conditions on the server at the moment it runs, so a
session that became active between the preview and the click is left alone; the result shown is
what the server says afterwards (sessions gone), not the signals sent.
"""

from __future__ import annotations

import datetime as dt
import getpass
import html
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import present, queries
from .errors import ActionRefused, RunbookError
from .findings import Finding, jsonable, records
from .session import ServerFacts, Session
from .sqltext import ident

if TYPE_CHECKING:
    from .runbook import Runbook


@dataclass
class Plan:
    """An action ready to run: what it does, to whom, and the statement that does it (which
    returns a boolean column 'signalled' per session)."""

    action: str
    description: str
    preview: pd.DataFrame  # the rows it would touch, as the operator sees them
    sql: str
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the plan leaves out, and why
    confirm: str = ""  # what the engineer types to enable the button: an application, pids


def default_audit_log() -> Path:
    """Where actions are recorded unless a parameter says otherwise."""
    env = os.environ.get("RUNBOOKS_AUDIT_LOG")
    if env:
        return Path(env)
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "pg-runbooks" / "audit.jsonl"


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


def refusal(facts: ServerFacts, plan: Plan) -> str | None:
    """Why the role of FACTS may not signal the sessions of PLAN, with the grant to ask for;
    None when it may."""
    if facts.has_role("pg_signal_backend"):
        return None
    others = sorted({str(u) for u in plan.preview.get("user", [])} - {facts.current_user})
    if not others:
        return None
    return (f"role {facts.current_user} may not signal sessions of {', '.join(others)}: ask for "
            f"GRANT pg_signal_backend TO {ident(facts.current_user)} (or superuser), or give "
            "admin_target; nothing was done")


def outcome(s: Session, plan: Plan, pids: list[int], wait_s: float = 3.0) -> pd.DataFrame:
    """What really happened to PIDS after the signal, re-checked until it shows (a terminated
    backend takes a moment to exit): gone, or still there and still blocking someone."""
    sql = queries.get("signal_outcome")
    deadline = time.monotonic() + wait_s
    while True:
        now = s.frame(sql, {"pids": pids})
        done = now[~now["still_there"] | ~now["still_blocking"]] if plan.action == "cancel" \
            else now[~now["still_there"]]
        if len(done) == len(pids) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def execute(rb: Runbook, plan: Plan) -> pd.DataFrame:
    """Run the plan through its own, writable session (the diagnostic one stays read-only),
    then report what really happened: the sessions re-checked, not the signals sent."""
    target = rb.admin or rb.target
    assert target is not None
    try:
        with Session(target, application_name=f"runbooks/{rb.name}/action",
                     timeouts=rb.timeouts, read_only=False) as s:
            refused = refusal(s.facts, plan)
            if refused:
                raise ActionRefused(refused)
            done = s.frame(plan.sql, plan.params)
            pids = [int(p) for p in done["pid"]]
            after = outcome(s, plan, pids) if pids else done.iloc[0:0].assign(still_there=False)
    except ActionRefused as exc:
        audit(rb, plan, "refused", rb.mask(str(exc)))
        raise
    except Exception as exc:
        audit(rb, plan, "failed", rb.mask(str(exc)))
        raise
    gone = set(after.loc[~after["still_there"], "pid"]) if len(after) else set()
    if plan.action == "cancel":
        fixed = gone | set(after.loc[after["still_there"] & ~after["still_blocking"], "pid"])
        verb = "no longer block (statement cancelled)"
    else:
        fixed, verb = gone, "ended"
    result = {"signalled": [int(p) for p, ok in zip(done["pid"], done["signalled"], strict=True)
                            if ok], "effective": sorted(int(p) for p in fixed),
              "unchanged": sorted(int(p) for p in done["pid"] if int(p) not in fixed)}
    audit(rb, plan, "executed", result)
    present.show_table(after, "after the signal, re-checked on the server")
    rb.add(Finding(f"action_{plan.action}", "info" if len(fixed) == len(plan.preview) else
                   "warning",
                   f"Action {plan.action}: {len(fixed)} of {len(plan.preview)} sessions {verb}",
                   plan.description + ("; still there: " + ", ".join(
                       str(p) for p in result["unchanged"]) if result["unchanged"] else ""),
                   evidence=records(done)))
    return done


def _refused(rb: Runbook, plan: Plan, reason: str) -> None:
    """A refusal is a finding, in JupyterLab as headless: sessions were left alone."""
    rb.add(Finding(f"action_{plan.action}", "warning",
                   f"Action {plan.action} refused: {len(plan.preview)} sessions left alone",
                   reason, evidence=records(plan.preview)))


def run(rb: Runbook, plan: Plan, allow_actions: bool) -> pd.DataFrame | None:
    """Preview PLAN, then execute it only if allowed (and, with a person there, confirmed)."""
    present.show_table(plan.preview.drop(columns=["signalled"], errors="ignore"),
                       f"{plan.action} would affect ({plan.description})")
    if plan.preview.empty:
        audit(rb, plan, "nothing_to_do")
        return None
    if not allow_actions:
        audit(rb, plan, "previewed")
        rb.add(Finding(f"action_{plan.action}", "info",
                       f"Preview: {plan.action} would affect {len(plan.preview)} sessions "
                       "(allow_actions is off, nothing done)",
                       plan.description, evidence=records(plan.preview),
                       remediation="to act, tick allow_actions in the panel's parameters and "
                       "press Run (headless: -p allow_actions=true)"))
        return None
    if not present.interactive():
        try:
            return execute(rb, plan)
        except ActionRefused as exc:
            _refused(rb, plan, str(exc))
            return None
    refused = refusal(rb.session.facts, plan) if rb.admin is None else None
    if refused:  # said before anyone types: the button could not work
        audit(rb, plan, "refused", refused)
        _refused(rb, plan, refused)
        return None
    confirm = Confirm(rb, plan)
    rb.confirmations.append(confirm)
    confirm.show()
    return None


class Confirm:
    """The typed confirmation: the button enables once the text is exactly PLAN.confirm; a
    click re-checks the text (a programmatic click on a disabled button does nothing) and runs
    the plan, whose statement re-checks the conditions on the server."""

    def __init__(self, rb: Runbook, plan: Plan) -> None:
        import ipywidgets as w

        self.rb, self.plan, self.done = rb, plan, False
        self.expected = plan.confirm or plan.action
        self.text = w.Text(placeholder=self.expected, description=f"type {self.expected}:",
                           style={"description_width": "initial"})
        self.button = w.Button(description=f"{plan.action} {len(plan.preview)} sessions",
                               button_style="danger", disabled=True, icon="exclamation-triangle")
        self.cancel = w.Button(description="cancel")
        self.result = w.Output()
        self.text.observe(lambda _: self._typed(), names="value")
        self.button.on_click(lambda _: self.confirm())
        self.cancel.on_click(lambda _: self.decline())
        self.box = w.VBox([w.HTML(f"<b>{html.escape(plan.description)}</b>: type "
                                  f"<code>{html.escape(self.expected)}</code> to enable the "
                                  "button; the server re-checks every condition when it runs"),
                           w.HBox([self.text, self.button, self.cancel]), self.result]
                          ).add_class("rb-action")

    def show(self) -> None:
        present.show_widget(self.box)

    def _typed(self) -> None:
        self.button.disabled = self.done or self.text.value.strip() != self.expected

    def confirm(self) -> None:
        if self.done or self.text.value.strip() != self.expected:
            return
        self.done = True
        self.button.disabled = self.cancel.disabled = self.text.disabled = True
        with present.into(self.result):
            try:
                execute(self.rb, self.plan)
            except ActionRefused as exc:
                _refused(self.rb, self.plan, str(exc))
            except RunbookError as exc:  # a failure is a message, never a traceback
                present.show_refusal(f"{self.plan.action} not done: {self.rb.mask(str(exc))}")

    def decline(self) -> None:
        if self.done:
            return
        self.done = True
        self.button.disabled = self.cancel.disabled = self.text.disabled = True
        audit(self.rb, self.plan, "declined")
        with present.into(self.result):
            present.show_text(f"cancelled: nothing done to the {len(self.plan.preview)} sessions")


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
        confirm=application,
    )
