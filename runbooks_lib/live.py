"""Live views for the minutes of an incident, in JupyterLab: connections by application and
state, the blocking tree, and the database load by wait event, read again on Refresh or every
few seconds while auto-refresh is on.

Each refresh is one short round of read-only queries (the same ones the runbooks' probes use)
through one session of its own (`runbooks/<runbook>/live`), opened on the first refresh and kept:
the views never hold more than one connection, and the runbooks' own sessions are left out of
what they show. Auto-refresh stops itself after AUTO_LIMIT_S, so a forgotten tab does not
poll a server for the rest of the night.
"""

from __future__ import annotations

import datetime as dt
import html
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from . import present
from .errors import ConnectError, RunbookError, SkipStep
from .probes.activity import SEES_ALL, activity
from .probes.locks import blocking
from .session import Session, Timeouts
from .target import Target, mask_text

if TYPE_CHECKING:
    import pandas as pd

AUTO_LIMIT_S = 600.0  # auto-refresh stops itself after ten minutes
INTERVALS = (2, 60)  # the allowed auto-refresh interval, seconds
HISTORY = 120  # load samples kept for the chart (10 minutes at 5 s)


class _Reader:
    """What the probes read through: `.session`, here the live views' own."""

    def __init__(self, session: Session) -> None:
        self.session = session


def by_application_and_state(sessions: pd.DataFrame) -> pd.DataFrame:
    """Connections counted per application (rows) and state (columns), the busiest first."""
    if sessions.empty:
        return sessions.iloc[0:0][["application"]]
    table = sessions.pivot_table(index="application", columns="state", values="pid",
                                 aggfunc="count", fill_value=0)
    table["total"] = table.sum(axis=1)
    table.columns.name = None
    return table.sort_values("total", ascending=False).reset_index()


def load_by_wait_event(sessions: pd.DataFrame) -> dict[str, int]:
    """Active sessions now by wait event type: one sample of the average-active-sessions view
    (an active session waiting on nothing is on CPU)."""
    active = sessions[sessions["state"] == "active"]
    kinds = active["wait_event_type"].fillna("CPU").astype(str)
    return {str(k): int(n) for k, n in kinds.value_counts().items()}


def tree_table(tree: pd.DataFrame) -> pd.DataFrame:
    """The blocking tree as a table a person reads: waiters indented under their blocker."""
    if tree.empty:
        return tree
    shown = tree.assign(session=[("    " * int(d) + ("└ " if d else "")) + str(p)
                                 for p, d in zip(tree["pid"], tree["depth"], strict=True)])
    cols = ["session", "application", "user", "state", "wait_event", "waiting_s",
            "xact_age_s", "query"]
    return shown[[c for c in cols if c in shown.columns]].round(1)


class LiveView:
    """The three live views with their controls; `refresh()` is one query round."""

    def __init__(self, target: Target, timeouts: Timeouts, runbook: str) -> None:
        import ipywidgets as w

        self.target, self.timeouts, self.runbook = target, timeouts, runbook
        self.session: Session | None = None
        self.lock = threading.Lock()  # one query round at a time on the one session
        self.samples: deque[tuple[dt.datetime, dict[str, int]]] = deque(maxlen=HISTORY)
        self.rounds = 0
        self.said, self.failed = "", False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.auto = w.ToggleButton(description="auto-refresh", value=False,
                                   tooltip=f"stops by itself after {AUTO_LIMIT_S / 60:g} min")
        self.interval = w.BoundedIntText(value=5, min=INTERVALS[0], max=INTERVALS[1],
                                         description="every (s)", style={"description_width":
                                                                         "initial"},
                                         layout=w.Layout(width="130px"))
        self.stamp = w.HTML("not read yet").add_class("rb-live-stamp")
        self.connections = w.HTML()
        self.tree = w.HTML()
        self.load = w.Output()
        self.refresh_button.on_click(lambda _: self.refresh())
        self.auto.observe(self._toggled, names="value")
        self.box = w.VBox([
            w.HTML(f"<b>Live: {html.escape(target.masked())}</b>"),
            w.HBox([self.refresh_button, self.auto, self.interval]), self.stamp,
            w.HTML("<h4>Connections by application and state</h4>"), self.connections,
            w.HTML("<h4>Blocking tree</h4>"), self.tree,
            w.HTML("<h4>Database load by wait event (active sessions)</h4>"), self.load,
        ]).add_class("rb-live")

    # -- one round -----------------------------------------------------------------------------

    def _open(self) -> Session:
        if self.session is None:
            self.session = Session(self.target, application_name=f"runbooks/{self.runbook}/live",
                                   timeouts=self.timeouts)
        return self.session

    def close(self) -> None:
        self.stop_auto()
        with self.lock:
            if self.session is not None:
                self.session.close()
                self.session = None

    def refresh(self) -> None:
        """One query round, drawn; a failure is said in the stamp line, never raised."""
        started = time.monotonic()
        with self.lock:
            try:
                session = self._open()
                reader = cast(Any, _Reader(session))
                unmet = SEES_ALL.unmet(session.facts)
                if unmet:
                    raise SkipStep(f"live views: {unmet}")
                sessions = activity(reader, {}).sessions
                tree = blocking(reader, {})
            except (ConnectError, RunbookError) as exc:
                if self.session is not None and not isinstance(exc, SkipStep):
                    self.session.close()  # lost: the next round connects again
                    self.session = None
                stale = (f" (the views below are from {self.samples[-1][0]:%H:%M:%S})"
                         if self.samples else "")
                self._said(f"not refreshed at {dt.datetime.now():%H:%M:%S}: "
                           f"{mask_text(str(exc), self.target.password)}{stale}", failed=True)
                return
            self.rounds += 1
            now = dt.datetime.now()
            self.samples.append((now, load_by_wait_event(sessions)))
            self.connections.value = present.table_html(by_application_and_state(sessions))
            table = tree_table(tree)
            self.tree.value = ("<p><i>no session waits for a lock</i></p>" if table.empty
                               else present.table_html(table))
            self._draw_load()
            ms = (time.monotonic() - started) * 1000
            self._said(f"refreshed {now:%H:%M:%S} ({ms:.0f} ms, {len(sessions)} sessions)")

    def _said(self, text: str, failed: bool = False) -> None:
        """The stamp line: when the views were read (or why not), and whether auto-refresh
        is on."""
        self.said, self.failed = text, failed
        auto = (f"; auto-refresh every {self.interval.value} s" if self._thread is not None
                and self.auto.value else "")
        color = "#c62828" if failed else "inherit"
        self.stamp.value = f'<span style="color:{color}">{html.escape(text + auto)}</span>'

    def _draw_load(self) -> None:
        kinds = sorted({k for _, s in self.samples for k in s})
        totals = [sum(s.values()) for _, s in self.samples]
        times = [t.strftime("%H:%M:%S") for t, _ in self.samples]
        spec = {"data": [{"type": "bar", "name": k, "x": times,
                          "y": [s.get(k, 0) for _, s in self.samples]} for k in kinds],
                "layout": {"barmode": "stack", "height": 300,
                           "title": {"text": "active sessions by wait event type"},
                           "xaxis": {"type": "category", "title": {"text": "refreshed at"}},
                           "yaxis": {"title": {"text": "sessions"}, "rangemode": "tozero",
                                     "dtick": 1 if max(totals, default=0) < 10 else None},
                           "margin": {"t": 40, "b": 40}}}
        self.load.outputs = ({"output_type": "display_data",
                              "data": present.figure_bundle(spec), "metadata": {}},)

    # -- auto-refresh --------------------------------------------------------------------------

    def _toggled(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.start_auto()
        else:
            self.stop_auto()
            self._said(self.said, self.failed)

    def start_auto(self, limit_s: float = AUTO_LIMIT_S) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(limit_s,), daemon=True,
                                        name="runbooks-live")
        self._thread.start()

    def stop_auto(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _loop(self, limit_s: float) -> None:
        ends = time.monotonic() + limit_s
        while not self._stop.is_set():
            self.refresh()
            if time.monotonic() + self.interval.value > ends:
                self._stop.set()
                self._thread = None
                self.auto.value = False
                took = f"{limit_s / 60:.0f} min" if limit_s >= 60 else f"{limit_s:.0f} s"
                self._said(self.said + f"; auto-refresh stopped by itself after {took} (switch "
                           "it on again to go on)", self.failed)
                return
            self._stop.wait(self.interval.value)
