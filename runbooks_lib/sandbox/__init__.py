"""The embedded default: a real PostgreSQL server, a demo application schema and incidents."""

from .server import Sandbox, bindir, start, status, stop

__all__ = ["Sandbox", "bindir", "start", "status", "stop"]
