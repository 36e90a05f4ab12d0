"""Incidents staged for real against a server: real sessions, real locks, real idle time.

Each incident is a context manager that holds its connections open while the runbook looks,
and closes them on exit (tests and the demo clean up after themselves).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import make_conninfo


@dataclass
class Held:
    """Connections held open by an incident; `pids` are their server process ids."""

    conns: list[psycopg.Connection[tuple[object, ...]]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [c.info.backend_pid for c in self.conns if not c.closed]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.close()
            except psycopg.Error:
                pass
        self.conns.clear()


def _open(url: str, application: str, n: int, in_transaction: bool,
          held: Held, stop_on_full: bool = False) -> None:
    info = make_conninfo(url, application_name=application)
    for _ in range(n):
        try:
            conn = psycopg.connect(info, connect_timeout=5)
        except psycopg.OperationalError:
            if stop_on_full:
                return
            raise
        if in_transaction:
            conn.execute("SELECT 1")  # opens a transaction and leaves it idle
        else:
            conn.commit()
        held.conns.append(conn)


@contextmanager
def leaking_app(url: str, application: str = "cosnap-backend", idle: int = 10,
                idle_in_transaction: int = 0) -> Iterator[Held]:
    """An application that leaks connections: IDLE idle sessions plus some idle in transaction
    (the seed's 15 PrismaClient instances, each with its own pool)."""
    held = Held()
    try:
        _open(url, application, idle, False, held)
        _open(url, application, idle_in_transaction, True, held)
        yield held
    finally:
        held.close()


@contextmanager
def exhausted(url: str, application: str = "cosnap-backend", limit: int = 1000) -> Iterator[Held]:
    """Open connections until the server refuses with 53300 'too many clients'."""
    held = Held()
    try:
        _open(url, application, limit, False, held, stop_on_full=True)
        yield held
    finally:
        held.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts TCP connections and never answers: a hung server, or a
    proxy whose backend is gone. Yields the port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        srv.close()
