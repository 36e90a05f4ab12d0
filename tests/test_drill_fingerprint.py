"""The restore drill's fingerprint on real databases: copies made by TEMPLATE and by
pg_dump | pg_restore compare equal, and each kind of damage is named where it is."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from runbooks_lib.drill import fingerprint, tools
from runbooks_lib.drill.fingerprint import Fingerprint, behind_sequences, compare, take
from runbooks_lib.errors import DrillError
from runbooks_lib.sandbox.demo import TABLES
from runbooks_lib.sandbox.server import Sandbox
from runbooks_lib.sqltext import qualified

from .conftest import retry

CHUNK = 250  # small chunks: the demo tables span many, the extra tables end on a full chunk
POST = '"public"."Post"'
LINKS = '"public"."_PostToTag"'
EVENTS = '"public"."events"'

EXTRA_SCHEMA = """
CREATE TYPE "Status" AS ENUM ('draft', 'published');
CREATE TABLE "Post" (id serial PRIMARY KEY, "authorId" bigint, t text, status "Status" NOT NULL,
                     score numeric(10, 2), ratio float8, meta jsonb, tags text[],
                     "createdAt" timestamptz NOT NULL DEFAULT now());
INSERT INTO "Post" ("authorId", t, status, score, ratio, meta, tags)
SELECT i % 37, 'post ' || i, (ARRAY['draft', 'published'])[1 + i % 2]::"Status", i / 7.0,
       i / 3.0, jsonb_build_object('n', i), ARRAY['a' || i, 'b']
  FROM generate_series(1, 1000) i;
CREATE TABLE "_PostToTag" ("A" int NOT NULL, "B" uuid NOT NULL, PRIMARY KEY ("A", "B"));
INSERT INTO "_PostToTag" SELECT i % 50, md5(i::text)::uuid FROM generate_series(1, 500) i;
CREATE TABLE events (kind text, at date);
INSERT INTO events SELECT 'view', date '2026-01-01' + i % 7 FROM generate_series(1, 500) i;
"""


def admin(sb: Sandbox) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(sb.url("postgres", "postgres"), autocommit=True)


def create_db(sb: Sandbox, name: str, template: str = "template1") -> None:
    """CREATE DATABASE ... TEMPLATE, retried while a session still lingers in the template."""
    def attempt() -> bool:
        with admin(sb) as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)))
            except errors.ObjectInUse:
                return False
        return True
    retry(attempt, timeout=20)


def drop_db(sb: Sandbox, name: str) -> None:
    with admin(sb) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def take_of(url: str, **kw: object) -> Fingerprint:
    with psycopg.connect(url) as conn:
        return take(conn, chunk_rows=CHUNK, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source(sandbox: Sandbox) -> Iterator[str]:
    """The demo database plus a mixed-case table with an enum, a two-column key and a table
    without a primary key, in a database of its own (cosnap is shared with other tests)."""
    drop_db(sandbox, "fp_source")
    create_db(sandbox, "fp_source", "cosnap")
    with psycopg.connect(sandbox.url("postgres", "fp_source"), autocommit=True) as conn:
        conn.execute(EXTRA_SCHEMA)
    yield "fp_source"
    drop_db(sandbox, "fp_source")


@pytest.fixture(scope="module")
def source_fp(sandbox: Sandbox, source: str) -> Fingerprint:
    return take_of(sandbox.url("postgres", source))


@pytest.fixture(scope="module")
def restored(sandbox: Sandbox, source: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SOURCE through pg_dump -Fc and pg_restore, as the drill restores it."""
    dump = tmp_path_factory.mktemp("dump") / "source.dump"
    tools.run([tools.find("pg_dump", sandbox.bindir), "-Fc", "-f", dump, "-d", "{conninfo}"],
              sandbox.url("postgres", source), timeout=120)
    drop_db(sandbox, "fp_restored")
    create_db(sandbox, "fp_restored", "template0")
    tools.run([tools.find("pg_restore", sandbox.bindir), "--exit-on-error", "-d", "{conninfo}", dump],
              sandbox.url("postgres", "fp_restored"), timeout=120)
    yield "fp_restored"
    drop_db(sandbox, "fp_restored")


_copies = itertools.count()


@pytest.fixture
def copy(sandbox: Sandbox, source: str) -> Iterator[Callable[..., str]]:
    """A fresh copy of SOURCE (TEMPLATE); the function runs SQL in it and returns its URL."""
    name = f"fp_copy_{next(_copies)}"
    create_db(sandbox, name, source)
    url = sandbox.url("postgres", name)

    def run(statements: str = "") -> str:
        if statements:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(statements.encode())
        return url
    yield run
    drop_db(sandbox, name)


def kinds(diffs: list[fingerprint.Difference]) -> list[tuple[str, str]]:
    return [(d.kind, d.object) for d in diffs]


def test_a_database_equals_itself_in_two_transactions_and_roles(sandbox: Sandbox) -> None:
    with psycopg.connect(sandbox.url("postgres")) as conn:
        first = take(conn, chunk_rows=CHUNK)  # idle: take() opens its own transaction
        assert conn.info.transaction_status == TransactionStatus.IDLE
    with psycopg.connect(sandbox.url("app")) as conn:  # the role the dump would run as
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        before = conn.execute("SELECT current_setting('DateStyle'), current_setting('search_path'),"
                              " current_setting('row_security')").fetchone()
        second = take(conn, chunk_rows=CHUNK)
        assert conn.info.transaction_status == TransactionStatus.INTRANS  # still the caller's
        assert conn.execute("SELECT current_setting('DateStyle'), current_setting('search_path'),"
                            " current_setting('row_security')").fetchone() == before
        counts = {qualified("public", t): conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(t))).fetchone() for t in TABLES}
    assert compare(first, second) == []
    assert set(first.tables) == set(counts)  # pg_stat_statements' objects are the extension's
    assert {k: (t.rows,) for k, t in first.tables.items()} == counts
    assert all(len(t.content) == 64 and not t.skipped and len(t.chunks) >= 1
               for t in first.tables.values())
    assert len(first.tables['"public"."comments"'].chunks) == 20000 // CHUNK
    assert first.objects["tables"] == len(TABLES) and first.objects["constraints: foreign key"] == 11
    assert "views" not in first.objects
    assert behind_sequences(first) == [] and len(first.sequences) == len(TABLES)
    with psycopg.connect(sandbox.url("app")) as conn, conn.transaction():
        with pytest.raises(DrillError, match="REPEATABLE READ"):
            take(conn)  # read committed: each chunk would see other rows


def test_a_template_copy_of_cosnap_compares_equal(quiet: Sandbox) -> None:
    sandbox = quiet  # nobody else in cosnap while it is copied
    drop_db(sandbox, "fp_template_copy")
    create_db(sandbox, "fp_template_copy", "cosnap")
    try:
        copy_fp = take_of(sandbox.url("postgres", "fp_template_copy"))
        source_fp = take_of(sandbox.url("postgres"))
    finally:
        drop_db(sandbox, "fp_template_copy")
    assert len(copy_fp.tables) == len(TABLES)
    assert compare(source_fp, copy_fp) == []


def test_a_restored_copy_compares_equal(sandbox: Sandbox, source_fp: Fingerprint,
                                        restored: str) -> None:
    restored_fp = take_of(sandbox.url("postgres", restored))
    assert compare(source_fp, restored_fp) == []
    post, links, events = (restored_fp.tables[k] for k in (POST, LINKS, EVENTS))
    assert (post.rows, links.rows, events.rows) == (1000, 500, 500)
    assert post.ordered_by == 'primary key ("id")' and len(post.chunks) == 4
    assert links.ordered_by == 'primary key ("A", "B")' and len(links.chunks) == 2
    assert events.ordered_by.startswith("no primary key")


@pytest.mark.pg(">= 14")
def test_both_sides_must_hash_the_same_way(sandbox: Sandbox, source_fp: Fingerprint,
                                           restored: str) -> None:
    """A restore into another major version may need the text method (13 has no other)."""
    text_src = take_of(sandbox.url("postgres", "fp_source"), method="text")
    text_restored = take_of(sandbox.url("postgres", restored), method="text")
    assert source_fp.method == "native" and text_restored.method == "text"
    assert compare(text_src, text_restored) == []
    assert text_src.tables[POST].content != source_fp.tables[POST].content
    assert kinds(compare(source_fp, text_restored)) == [("not compared", "content")]


@pytest.mark.pg("< 14")
def test_native_hashing_needs_14(sandbox: Sandbox) -> None:
    with pytest.raises(DrillError, match="method='text'"):
        take_of(sandbox.url("postgres"), method="native")
    assert take_of(sandbox.url("postgres")).method == "text"


def test_a_changed_row_is_named_with_its_key_range(sandbox: Sandbox, source_fp: Fingerprint,
                                                   copy: Callable[..., str]) -> None:
    url = copy("""UPDATE "Post" SET t = t || '!' WHERE id = 777;
                  UPDATE "_PostToTag" SET "B" = md5('moved')::uuid
                   WHERE ("A", "B") = (SELECT "A", "B" FROM "_PostToTag" ORDER BY 1, 2 LIMIT 1)""")
    diffs = compare(source_fp, take_of(url))
    assert kinds(diffs) == [("content differs", POST), ("content differs", LINKS)]
    assert "after key 750 up to key 1000" in diffs[0].detail
    assert diffs[1].detail.startswith("first difference up to key (")


def test_a_deleted_row_changes_the_row_count(sandbox: Sandbox, source_fp: Fingerprint,
                                             copy: Callable[..., str]) -> None:
    url = copy("""DELETE FROM verification_codes WHERE id = 500;
                  UPDATE events SET at = date '2027-01-01'
                   WHERE ctid IN (SELECT ctid FROM events WHERE at = date '2026-01-02' LIMIT 2)""")
    diffs = compare(source_fp, take_of(url))
    # two equal rows replaced by two other equal rows: a xor of row hashes would not see it
    assert kinds(diffs) == [("content differs", EVENTS),
                            ("row count differs", '"public"."verification_codes"')]
    assert (diffs[1].source, diffs[1].restored) == (1000, 999)
    assert "after key 250 up to key 500" in diffs[1].detail


def test_rows_written_after_the_snapshot_are_not_seen(sandbox: Sandbox,
                                                      copy: Callable[..., str]) -> None:
    url = copy()
    with psycopg.connect(url) as exporter:
        exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot is not None
        with psycopg.connect(url, autocommit=True) as writer:
            writer.execute("UPDATE users SET real_name = real_name || ' (renamed)' WHERE id <= 10;"
                           "INSERT INTO \"Post\" (t, status) VALUES ('late', 'draft')")
        exported = take(exporter, chunk_rows=CHUNK)
        with psycopg.connect(url) as importer:
            importer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            importer.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot[0])))
            imported = take(importer, chunk_rows=CHUNK)
        assert exporter.info.transaction_status == TransactionStatus.INTRANS
    assert compare(exported, imported) == []
    assert kinds(compare(exported, take_of(url))) == [("row count differs", POST),
                                                      ("content differs", '"public"."users"')]


def test_a_sequence_behind_its_column_is_reported_with_a_fix_that_runs(
        sandbox: Sandbox, source_fp: Fingerprint, copy: Callable[..., str]) -> None:
    assert behind_sequences(source_fp) == []
    url = copy("""SELECT setval('"Post_id_seq"', 3)""")
    damaged = take_of(url)
    key = '"public"."Post_id_seq"'
    assert behind_sequences(damaged) == [key]
    seq = damaged.sequences[key]
    assert (seq.last_value, seq.column_max, seq.column) == (3, 1000, '"public"."Post"."id"')
    diffs = compare(source_fp, damaged)
    assert kinds(diffs) == [("sequence behind", key)]
    assert seq.fix == """SELECT setval('"public"."Post_id_seq"', (SELECT max("id") FROM "public"."Post"));"""
    assert seq.fix in diffs[0].detail
    copy(seq.fix)
    assert behind_sequences(take_of(url)) == []


def test_unreadable_tables_and_the_deadline_are_not_compared(
        sandbox: Sandbox, source_fp: Fingerprint, copy: Callable[..., str]) -> None:
    url = copy()
    with psycopg.connect(sandbox.url("app", url.rsplit("/", 1)[1])) as conn:
        as_app = take(conn, chunk_rows=CHUNK)  # app owns the demo tables, not the extra ones
    assert as_app.tables[POST].skipped == "no SELECT privilege on the table"
    assert kinds(compare(source_fp, as_app)) == [("not compared", k) for k in (POST, LINKS, EVENTS)]
    late = take_of(url, deadline=time.monotonic() - 1)
    assert {t.skipped for t in late.tables.values()} == {"the deadline passed"}
    assert len(compare(source_fp, late)) == len(source_fp.tables)
    with psycopg.connect(url) as conn:  # one row a chunk: the deadline falls inside "Post"
        started = time.monotonic()
        cut = take(conn, chunk_rows=1, deadline=started + 0.3)
    assert time.monotonic() - started < 2
    assert cut.tables[POST].skipped == "the deadline passed" and cut.tables[POST].rows == 0
    assert all(s.last_value is not None for s in cut.sequences.values())
    some = take_of(url, tables=[POST, "events"])
    assert set(some.tables) == {POST, EVENTS}
    assert some.tables[POST].content == source_fp.tables[POST].content


def amcheck_available(sb: Sandbox) -> bool:
    with admin(sb) as conn:
        return conn.execute("SELECT exists (SELECT FROM pg_available_extensions "
                            "WHERE name = 'amcheck')").fetchone() == (True,)


@pytest.fixture
def amcheck_bindir(sandbox: Sandbox) -> Path:
    """The sandbox's bin directory, when its server ships amcheck and pg_amcheck beside it."""
    if not amcheck_available(sandbox):
        pytest.skip("this server has no amcheck (built without contrib)")
    if not (Path(sandbox.bindir) / "pg_amcheck").exists():
        pytest.skip("no pg_amcheck beside this server (it came in PostgreSQL 14)")
    return Path(sandbox.bindir)


def test_amcheck_on_a_healthy_restore_is_clean(sandbox: Sandbox, restored: str,
                                               amcheck_bindir: Path) -> None:
    url = sandbox.url("postgres", restored)
    result = fingerprint.amcheck(url, jobs=2, bindir=amcheck_bindir)
    assert (result.status, result.corrupt, result.why) == ("clean", {}, "")
    with psycopg.connect(url) as conn:  # --install-missing's extension is gone again
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'"
                            ).fetchone() == (0,)


def test_amcheck_names_a_corrupt_index(sandbox: Sandbox, copy: Callable[..., str],
                                       amcheck_bindir: Path) -> None:
    url = copy("""CREATE FUNCTION f(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
                  CREATE INDEX "Post_f" ON "Post" (f(id));
                  CREATE OR REPLACE FUNCTION f(int) RETURNS int IMMUTABLE LANGUAGE sql
                      AS 'SELECT $1 + 1'""")  # the index no longer matches its rows
    result = fingerprint.amcheck(url, bindir=amcheck_bindir)
    name = f"{url.rsplit('/', 1)[1]}.public.Post_f"
    assert result.status == "corrupt" and list(result.corrupt) == [name]
    assert "lacks matching index tuple" in result.corrupt[name][0]


def test_amcheck_without_privilege_is_skipped_with_why(sandbox: Sandbox, restored: str,
                                                       amcheck_bindir: Path) -> None:
    as_app = sandbox.url("app", restored)
    result = fingerprint.amcheck(as_app, bindir=amcheck_bindir)
    assert result.skipped and "no privilege to run amcheck: a superuser installs it" in result.why
    with psycopg.connect(sandbox.url("postgres", restored), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION amcheck")  # installed, but app may not run it
        try:
            result = fingerprint.amcheck(as_app, bindir=amcheck_bindir)
        finally:
            conn.execute("DROP EXTENSION amcheck")
    assert result.skipped and result.why.startswith("pg_amcheck could not check: no privilege")
    assert "GRANT EXECUTE" in result.why


def test_amcheck_without_the_program_or_the_extension_is_skipped_with_why(
        sandbox: Sandbox, restored: str) -> None:
    url = sandbox.url("postgres", restored)
    missing = fingerprint.amcheck(url, bindir=Path("/nonexistent"))
    assert missing.skipped and "pg_amcheck not found in /nonexistent" in missing.why
    if amcheck_available(sandbox):
        pytest.skip("this server ships amcheck: its absence cannot be shown here")
    result = fingerprint.amcheck(url)  # the embedded server's pg_amcheck, as the drill finds it
    assert result.skipped and "contrib" in result.why, result
