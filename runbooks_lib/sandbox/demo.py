"""The demo application's schema and data, generated server side (fast at any size)."""

from __future__ import annotations

from importlib import resources

import psycopg

TABLES = ("users", "posts", "comments", "post_likes", "comment_likes", "subscriptions",
          "payments", "refresh_tokens", "verification_codes")


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def load(url: str, scale: float = 1.0) -> dict[str, int]:
    """Create the schema and fill it: SCALE 1 is about 10 MB; 50 is several hundred MB.

    Idempotent: a database that already holds users is left as it is. Returns row counts.
    """
    n_users = max(10, int(1000 * scale))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(schema_sql())
        if conn.execute("SELECT exists (SELECT 1 FROM users)").fetchone() == (False,):
            with conn.transaction():
                _fill(conn, n_users)
            conn.execute("ANALYZE")
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]  # noqa: S608 - fixed names
                for t in TABLES}


def _fill(conn: psycopg.Connection[tuple[object, ...]], n: int) -> None:
    conn.execute(
        "INSERT INTO users (email, username, real_name, created_at)"
        " SELECT 'user' || i || '@example.com', 'user' || i, 'User ' || i,"
        "        now() - (i %% 1000) * interval '1 hour'"
        " FROM generate_series(1, %(n)s) i", {"n": n})
    conn.execute(
        "INSERT INTO posts (user_id, title, body, created_at)"
        " SELECT 1 + (i %% %(n)s), 'post ' || i, repeat('lorem ipsum ', 20),"
        "        now() - (i %% 5000) * interval '1 minute'"
        " FROM generate_series(1, %(n)s * 5) i", {"n": n})
    conn.execute(
        "INSERT INTO comments (post_id, user_id, body)"
        " SELECT 1 + (i %% (%(n)s * 5)), 1 + ((i * 7) %% %(n)s), 'comment ' || i"
        " FROM generate_series(1, %(n)s * 20) i", {"n": n})
    conn.execute(
        "INSERT INTO post_likes (post_id, user_id)"
        " SELECT DISTINCT 1 + (i %% (%(n)s * 5)), 1 + ((i * 13) %% %(n)s)"
        " FROM generate_series(1, %(n)s * 10) i ON CONFLICT DO NOTHING", {"n": n})
    conn.execute(
        "INSERT INTO comment_likes (comment_id, user_id)"
        " SELECT DISTINCT 1 + (i %% (%(n)s * 20)), 1 + ((i * 17) %% %(n)s)"
        " FROM generate_series(1, %(n)s * 10) i ON CONFLICT DO NOTHING", {"n": n})
    conn.execute(
        "INSERT INTO subscriptions (user_id, plan, status)"
        " SELECT i, (ARRAY['free','pro','team'])[1 + i %% 3], 'active'"
        " FROM generate_series(1, %(n)s, 2) i", {"n": n})
    conn.execute(
        "INSERT INTO payments (user_id, subscription_id, amount_cents, status)"
        " SELECT s.user_id, s.id, 999, 'paid' FROM subscriptions s, generate_series(1, 3)")
    conn.execute(
        "INSERT INTO refresh_tokens (user_id, token, expires_at)"
        " SELECT i, md5(i::text), now() + interval '30 days' FROM generate_series(1, %(n)s) i",
        {"n": n})
    conn.execute(
        "INSERT INTO verification_codes (email, scene, code)"
        " SELECT 'user' || i || '@example.com', 'login', lpad((i %% 1000000)::text, 6, '0')"
        " FROM generate_series(1, %(n)s) i", {"n": n})
