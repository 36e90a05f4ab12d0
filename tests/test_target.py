import pytest

from runbooks_lib.errors import TargetError
from runbooks_lib.target import mask_text, resolve


def test_uri_is_masked_and_prisma_params_are_stripped() -> None:
    t = resolve("postgresql://app:s3cr%40t@db.internal:5432/cosnap?connection_limit=5"
                "&pool_timeout=60&sslmode=require&pgbouncer=true")
    assert t.masked() == "postgresql://app:***@db.internal:5432/cosnap?sslmode=require"
    assert t.password == "s3cr@t"
    assert t.connection_limit == 5 and t.pgbouncer
    assert "connection_limit" not in t.conninfo and "sslmode=require" in t.conninfo
    assert "s3cr" not in repr(t) and "s3cr" not in str(t)


def test_key_value_dsn_and_env_and_service() -> None:
    t = resolve("host=db port=6432 dbname=x user=u password=pw")
    assert t.masked() == "postgresql://u:***@db:6432/x"
    t = resolve("env:MY_URL", {"MY_URL": "postgresql://u:pw@h/d"})
    assert t.masked() == "postgresql://u:***@h/d" and t.spec == "env:MY_URL"
    assert resolve("service:prod").masked() == "service:prod"


def test_missing_variable_says_what_to_do() -> None:
    with pytest.raises(TargetError, match="DATABASE_URL is not set"):
        resolve(None, {})


def test_malformed_dsn_is_a_target_error_without_the_password() -> None:
    with pytest.raises(TargetError) as info:
        resolve("host=db password=hunter22 nonsense_key=1")
    assert "hunter22" not in str(info.value)


def test_mask_text_hides_uri_and_keyword_passwords() -> None:
    text = "failed: postgresql://u:pa55@h/d and password=pa55 and 'pa55'"
    masked = mask_text(text, "pa55")
    assert "pa55" not in masked
    assert "postgresql://u:***@h/d" in masked
