"""Incidents staged for real against a server: real sessions, real locks, real idle time.

Each incident is a context manager that holds its connections open while the runbook looks,
and closes them on exit (tests and the demo clean up after themselves).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
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
    (as in 15 PrismaClient instances, each with its own pool)."""
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


# -- latency incidents -------------------------------------------------------------------------

Statement = tuple[str, tuple[object, ...] | None]


class Workload:
    """A client running statements in a loop in a background thread until stopped."""

    def __init__(self, url: str, application: str,
                 batch: Callable[[psycopg.Connection[tuple[object, ...]]], None]) -> None:
        self.conn = psycopg.connect(make_conninfo(url, application_name=application),
                                    autocommit=True)
        self.batch = batch
        self.rounds = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.batch(self.conn)
            except psycopg.Error:
                if self.stop.is_set() or self.conn.closed:
                    return
                raise
            self.rounds += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.conn.close()


@contextmanager
def workload(url: str, batch: Callable[[psycopg.Connection[tuple[object, ...]]], None],
             application: str = "cosnap-backend") -> Iterator[Workload]:
    w = Workload(url, application, batch)
    try:
        yield w
    finally:
        w.close()


Change = str | sql.Composed | tuple[str, tuple[object, ...]]


def _apply(conn: psycopg.Connection[tuple[object, ...]], change: Change) -> None:
    if isinstance(change, tuple):
        statement, params = change
        conn.execute(statement.encode(), list(params))
    elif isinstance(change, str):
        conn.execute(change.encode())
    else:
        conn.execute(change)


@contextmanager
def staged(url: str, do: list[Change], undo: list[Change]) -> Iterator[None]:
    """Apply DO for the incident's lifetime, UNDO after it, each in autocommit (CONCURRENTLY and
    VACUUM need it). A failing CREATE ... CONCURRENTLY is tolerated: it is the incident itself."""
    with psycopg.connect(url, autocommit=True) as conn:
        for change in do:
            try:
                _apply(conn, change)
            except psycopg.Error:
                if not (isinstance(change, str) and "CONCURRENTLY" in change):
                    raise
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for change in undo:
                _apply(conn, change)


def missing_index(url: str, extra_rows: int = 20000) -> AbstractContextManager[None]:
    """The demo app's verification-code lookup without its index, on a table that has grown by
    EXTRA_ROWS: the hot query seq-scans it and keeps the server busy."""
    return staged(
        url,
        ["DROP INDEX IF EXISTS verification_codes_email_scene_code_idx",
         ("INSERT INTO verification_codes (email, scene, code) SELECT 'bulk' || i "
          "|| '@example.com', 'signup', '000000' FROM generate_series(1, %s) i", (extra_rows,)),
         "ANALYZE verification_codes"],
        ["DELETE FROM verification_codes WHERE email LIKE 'bulk%'",
         "VACUUM ANALYZE verification_codes",
         "CREATE INDEX IF NOT EXISTS verification_codes_email_scene_code_idx "
         "ON verification_codes (email, scene, code)"])


def verification_lookups(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    for i in range(1, 21):
        conn.execute("SELECT id FROM verification_codes WHERE email = %s AND scene = %s "
                     "AND code = %s", (f"user{i}@example.com", "login", f"{i:06d}"))


def posts_then_authors(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """The demo app's N+1: findMany posts, then findUnique user per post."""
    posts = conn.execute("SELECT id, user_id FROM posts ORDER BY id LIMIT 50").fetchall()
    for _, user_id in posts:
        conn.execute("SELECT id, username FROM users WHERE id = %s", (user_id,))


def account_deletions(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """An account deletion, rolled back: the cascades and foreign key checks it runs scan every
    referencing table, with or without an index to serve them."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("DELETE FROM users WHERE id = (SELECT max(id) FROM users)")
    except psycopg.Error:
        pass  # a RESTRICT reference: the check has scanned by then
    time.sleep(0.2)


def healthy_batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """A mixed, well-indexed workload: lookups by key, a page of posts with their authors."""
    conn.execute("SELECT id, username FROM users WHERE email = %s", ("user7@example.com",))
    conn.execute("SELECT p.id, p.title, u.username FROM posts p JOIN users u ON u.id = p.user_id "
                 "WHERE p.user_id = %s ORDER BY p.created_at DESC LIMIT 20", (7,))
    conn.execute("SELECT count(*) FROM comments WHERE post_id = %s", (42,))
    time.sleep(0.01)


@dataclass
class LockChain:
    root: int
    waiters: list[int]


@contextmanager
def lock_chain(url: str, application: str = "cosnap-backend") -> Iterator[LockChain]:
    """One session holds a row lock idle in transaction; two more wait behind it (the second
    behind the first waiter's tuple lock): a chain three sessions deep."""
    info = make_conninfo(url, application_name=application)
    root = psycopg.connect(info)
    root.execute("UPDATE users SET updated_at = updated_at WHERE id = 1")
    waiters = [psycopg.connect(info, autocommit=True) for _ in range(2)]
    threads = []
    for w in waiters:
        t = threading.Thread(target=_ignore_errors, args=(
            w, "UPDATE users SET updated_at = updated_at WHERE id = 1"), daemon=True)
        t.start()
        threads.append(t)
        _wait_for_lock_wait(url, w.info.backend_pid)
    try:
        yield LockChain(root.info.backend_pid, [w.info.backend_pid for w in waiters])
    finally:
        try:
            root.rollback()
        except psycopg.Error:
            pass  # the runbook's action may have terminated it: that is the point
        root.close()
        for t in threads:
            t.join(timeout=30)
        for w in waiters:
            w.close()


def _ignore_errors(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> None:
    try:
        conn.execute(sql.encode())
    except psycopg.Error:
        pass


def _wait_for_lock_wait(url: str, pid: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            row = c.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.05)
    raise TimeoutError(f"pid {pid} never waited for a lock")


@contextmanager
def long_query(url: str, seconds: float = 60, application: str = "report-job") -> Iterator[int]:
    """A statement running for SECONDS (pg_sleep); yields its pid."""
    conn = psycopg.connect(make_conninfo(url, application_name=application), autocommit=True)
    t = threading.Thread(target=_ignore_errors, args=(conn, f"SELECT pg_sleep({float(seconds)})"),
                         daemon=True)
    t.start()
    pid = conn.info.backend_pid
    try:
        yield pid
    finally:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join(timeout=30)
        conn.close()


def duplicate_index(url: str) -> AbstractContextManager[None]:
    """posts(user_id) indexed twice; the copy is never used."""
    return staged(url, ["CREATE INDEX IF NOT EXISTS posts_user_id_dup_idx ON posts (user_id)"],
               ["DROP INDEX IF EXISTS posts_user_id_dup_idx"])


def invalid_index(url: str) -> AbstractContextManager[None]:
    """A unique index built CONCURRENTLY on duplicate values fails and stays INVALID."""
    return staged(url, ["CREATE UNIQUE INDEX CONCURRENTLY posts_user_id_unique_idx ON posts (user_id)"],
               ["DROP INDEX IF EXISTS posts_user_id_unique_idx"])


def fk_without_index(url: str) -> AbstractContextManager[None]:
    """comments.user_id loses its index: deleting a user scans comments (as in 30 s)."""
    return staged(url, ["DROP INDEX IF EXISTS comments_user_id_idx"],
               ["CREATE INDEX IF NOT EXISTS comments_user_id_idx ON comments (user_id)"])


def dead_tuples(url: str, table: str = "comments") -> AbstractContextManager[None]:
    """Autovacuum disabled on TABLE, then every row updated: as many dead tuples as live ones."""
    ident = sql.Identifier(table)
    return staged(url,
                  [sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(ident),
                   sql.SQL("UPDATE {} SET id = id").format(ident)],
                  [sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(ident),
                   sql.SQL("VACUUM {}").format(ident)])


def cold_reads(url: str, mb: int = 48, scans: int = 3) -> AbstractContextManager[None]:
    """Reads from disk: a table larger than a quarter of shared_buffers is scanned through a
    small ring buffer, so every scan reads its blocks again (the cache hit ratio drops)."""
    rows = mb * 2**20 // 540
    return staged(url,
                  [("CREATE TABLE IF NOT EXISTS cold_archive AS SELECT g AS id, repeat('x', 500) "
                    "AS payload FROM generate_series(1, %s) g", (rows,)),
                   *["SELECT count(*) FROM cold_archive"] * scans],
                  ["DROP TABLE IF EXISTS cold_archive"])


# -- transaction-failure incidents -------------------------------------------------------------

FAILING = {
    "23503": "INSERT INTO comments (post_id, user_id, body) VALUES (999999999, 1, 'orphan')",
    "23505": "INSERT INTO users (email, username) VALUES ('user1@example.com', 'dup')",
    "22012": "SELECT 1 / 0",
    "42P01": "SELECT * FROM no_such_table",
}


def failing_statements(url: str, times: int = 1, application: str = "cosnap-backend") -> dict[str, int]:
    """Run statements that fail with FK and unique violations, a division by zero, an undefined
    table and a statement timeout (57014); returns how many of each SQLSTATE were raised."""
    raised: dict[str, int] = {}
    with psycopg.connect(make_conninfo(url, application_name=application), autocommit=True) as c:
        for _ in range(times):
            for code, statement in FAILING.items():
                try:
                    c.execute(statement.encode())
                except psycopg.Error as exc:
                    assert exc.sqlstate == code, (exc.sqlstate, code)
                    raised[code] = raised.get(code, 0) + 1
            c.execute("SET statement_timeout = '50ms'")
            try:
                c.execute("SELECT pg_sleep(1)")
            except psycopg.errors.QueryCanceled:
                raised["57014"] = raised.get("57014", 0) + 1
            c.execute("RESET statement_timeout")
    return raised


def deadlock(url: str, application: str = "cosnap-backend") -> int:
    """Two transactions lock users 1 and 2 in opposite order: the server detects the cycle after
    deadlock_timeout and aborts one with 40P01. Returns the number of deadlocks raised (1)."""
    info = make_conninfo(url, application_name=application)
    a, b = psycopg.connect(info), psycopg.connect(info)
    errors: list[str] = []

    def second_lock(conn: psycopg.Connection[tuple[object, ...]], row: int) -> None:
        try:
            conn.execute("UPDATE users SET updated_at = updated_at WHERE id = %s", (row,))
        except psycopg.errors.DeadlockDetected:
            errors.append("40P01")

    try:
        for conn in (a, b):  # never wait forever behind another incident's lock
            conn.execute("SET lock_timeout = '10s'")
        a.execute("UPDATE users SET updated_at = updated_at WHERE id = 1")
        b.execute("UPDATE users SET updated_at = updated_at WHERE id = 2")
        t = threading.Thread(target=second_lock, args=(a, 2))
        t.start()
        _wait_for_lock_wait(url, a.info.backend_pid)
        second_lock(b, 1)
        t.join(timeout=30)
    finally:
        for conn in (a, b):
            conn.rollback()
            conn.close()
    return len(errors)


def serialization_failure(url: str, application: str = "cosnap-backend") -> int:
    """A REPEATABLE READ transaction updates a row another session changed after its snapshot:
    40001 could not serialize access. Returns the number raised (1)."""
    info = make_conninfo(url, application_name=application)
    with psycopg.connect(info) as a, psycopg.connect(info, autocommit=True) as b:
        a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        a.execute("SELECT updated_at FROM users WHERE id = 3")
        b.execute("UPDATE users SET updated_at = updated_at WHERE id = 3")
        try:
            a.execute("UPDATE users SET updated_at = updated_at WHERE id = 3")
        except psycopg.errors.SerializationFailure:
            a.rollback()
            return 1
        a.rollback()
    return 0


def idle_in_transaction_timeout(url: str, application: str = "cosnap-backend") -> int:
    """A session that stays idle in a transaction past idle_in_transaction_session_timeout is
    ended by the server (FATAL 25P03). Returns the number of sessions ended (1)."""
    conn = psycopg.connect(make_conninfo(url, application_name=application))
    try:
        conn.execute("SET idle_in_transaction_session_timeout = '100ms'")
        conn.execute("SELECT 1")
        time.sleep(0.5)
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:  # IdleInTransactionSessionTimeout, or the closed connection
            return 1
        return 0
    finally:
        conn.close()


def rollbacks(url: str, n: int = 50, application: str = "cosnap-backend") -> None:
    """A burst of transactions the application rolls back (a failed business check)."""
    with psycopg.connect(make_conninfo(url, application_name=application)) as conn:
        for _ in range(n):
            conn.execute("SELECT 1")
            conn.rollback()
