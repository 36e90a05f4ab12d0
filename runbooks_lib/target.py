"""Which server a runbook looks at, with its secrets kept out of sight.

A target is named as a libpq URI or key=value DSN, as ``env:VAR`` or as ``service:NAME``.
Prisma-style URI parameters (``connection_limit``, ``pool_timeout``, ``pgbouncer``, ...) are
understood and removed before libpq sees them: they feed the connection-budget check.
Every rendering of a target (``str``, ``repr``, ``masked``) hides the password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg.conninfo

from .errors import TargetError

DEFAULT_TARGET = "env:DATABASE_URL"

# Parameters Prisma reads from DATABASE_URL that libpq does not know (libpq would refuse them).
PRISMA_PARAMS = frozenset(
    {
        "connection_limit",
        "pool_timeout",
        "pgbouncer",
        "schema",
        "socket_timeout",
        "statement_cache_size",
        "schema_cache_size",
        "sslaccept",
        "sslidentity",
    }
)

_SECRET_KEYS = frozenset({"password", "sslpassword"})
_URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
_KV_PASSWORD = re.compile(r"\b(?P<key>(?:ssl)?password)\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)", re.I)


def mask_text(text: str, *secrets: str) -> str:
    """Hide passwords in any text: URIs, key=value DSNs and the given literal secrets."""
    out = _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    out = _KV_PASSWORD.sub(lambda m: f"{m['key']}=***", out)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, "***")
    return out


@dataclass(frozen=True)
class Target:
    """A resolved target: the libpq conninfo (secret) and what is safe to show."""

    spec: str  # how it was named, safe to show only after masking (a literal DSN holds a password)
    conninfo: str = field(repr=False)
    prisma: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Target({self.masked()!r})"

    def __str__(self) -> str:
        return self.masked()

    @property
    def params(self) -> dict[str, str]:
        """The conninfo as a dict (libpq's view, password included: handle with care)."""
        try:
            return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(self.conninfo).items()}
        except psycopg.ProgrammingError as exc:
            raise TargetError(f"malformed target {mask_text(self.spec)}: {mask_text(str(exc))}") from None

    @property
    def password(self) -> str:
        return self.params.get("password", "")

    def masked(self) -> str:
        """A URI with the password replaced by ``***``; services are shown by name."""
        try:
            p = self.params
        except TargetError:
            return mask_text(self.spec)
        if "service" in p and "host" not in p:
            return f"service:{p['service']}"
        user = quote(p.get("user", ""), safe="")
        auth = ""
        if user or "password" in p:
            auth = user + (":***" if "password" in p else "") + "@"
        host = p.get("host", "")
        if "," in host or host.startswith("/"):
            host_part = quote(host, safe=",")
        else:
            host_part = f"[{host}]" if ":" in host else host
        port = p.get("port", "")
        hostport = host_part + (f":{port}" if port and "," not in port else "")
        db = quote(p.get("dbname", ""), safe="")
        extra = {k: v for k, v in p.items() if k not in {"user", "host", "port", "dbname", "password"}}
        query = "&".join(
            f"{k}={'***' if k in _SECRET_KEYS else quote(v, safe='')}" for k, v in sorted(extra.items())
        )
        return f"postgresql://{auth}{hostport}/{db}" + (f"?{query}" if query else "")

    def label(self) -> str:
        """A short name for metrics and history: host:port/database (no user, no secret).

        >>> resolve("postgresql://app:pw@db.internal:5433/cosnap").label()
        'db.internal:5433/cosnap'
        >>> resolve("service:reporting").label()
        'service:reporting'
        """
        try:
            p = self.params
        except TargetError:
            return "unknown"
        if "service" in p and "host" not in p:
            return f"service:{p['service']}"
        host = p.get("host", "") or "localhost"
        return f"{host}:{p.get('port') or '5432'}/{p.get('dbname') or p.get('user', '')}"

    @property
    def connection_limit(self) -> int | None:
        """Prisma's pool size from the URL (``connection_limit``), if given."""
        value = self.prisma.get("connection_limit")
        return int(value) if value and value.isdigit() else None

    @property
    def pgbouncer(self) -> bool:
        return self.prisma.get("pgbouncer", "").lower() in {"true", "1", "on"}


def _split_prisma(uri: str) -> tuple[str, dict[str, str]]:
    """Remove Prisma-only query parameters from a URI; return the clean URI and them."""
    parts = urlsplit(uri)
    if not parts.query:
        return uri, {}
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    prisma = {k: v for k, v in pairs if k in PRISMA_PARAMS}
    if not prisma:
        return uri, {}
    kept = [(k, v) for k, v in pairs if k not in PRISMA_PARAMS]
    clean = urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote)))
    return clean, prisma


def resolve(spec: str | None, environ: dict[str, str] | None = None) -> Target:
    """Turn a target as named by the user into a `Target`.

    >>> resolve("postgresql://app:s3cret@db:5432/cosnap?connection_limit=5").masked()
    'postgresql://app:***@db:5432/cosnap'
    """
    env = os.environ if environ is None else environ
    spec = (spec or DEFAULT_TARGET).strip()
    raw = spec
    if spec.startswith("env:"):
        var = spec[4:]
        raw = env.get(var, "")
        if not raw:
            raise TargetError(
                f"environment variable {var} is not set: export it with the server's URI "
                f"(postgresql://user@host:5432/db) or pass another target"
            )
        if raw.startswith("env:"):
            raise TargetError(f"environment variable {var} names another variable; give a DSN")
    elif spec.startswith("service:"):
        raw = f"service={spec[8:]}"
    prisma: dict[str, str] = {}
    if re.match(r"^postgres(ql)?://", raw, re.I):
        raw, prisma = _split_prisma(raw)
    target = Target(spec=spec, conninfo=raw, prisma=prisma)
    target.params  # noqa: B018 - validate now, with a masked message
    return target


def shown_url(url: str) -> str:
    """A URL as it may be shown: scheme://host[:port]; the path, query and userinfo of a
    Slack webhook are its credentials, a Pushgateway's userinfo too.

    >>> shown_url("https://user:pw@hooks.slack.com:443/services/T0/B0/XYZ?x=1")
    'https://hooks.slack.com:443'
    >>> shown_url("http://[::1]:8080/a"), shown_url("not a url")
    ('http://[::1]:8080', '(url)')
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(url)"
    if not parts.scheme or not host:
        return "(url)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
