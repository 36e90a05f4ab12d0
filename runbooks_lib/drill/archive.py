"""Backup sets written and read back, every checksum and authentication tag checked first.

A set is a directory ``<UTC timestamp>-<kind>`` (``20261128T221500Z-daily``) holding the files of
a ``pg_dump -Fd`` (so ``pg_restore -j`` can restore it in parallel: it needs a directory, not a
pipe), each sealed with tink streaming AEAD when a key is given (associated data: its name, so
files cannot be swapped), and ``manifest.json``: what was dumped, with which tools, and the
SHA-256 of every file before and after sealing. An encrypted set also holds the manifest sealed
(``manifest.sealed``), so that no one without the key can rewrite what it says.

Every file is streamed in 1 MiB chunks (``seal``): memory does not grow with the size of a
backup. Older scripts' files (``openssl enc`` over ``pg_dump -Fc | gzip``) are read by
``legacy``; ``sets`` lists both kinds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import tink

from ..errors import DrillError
from ..findings import iso, now_utc, write_json
from ..target import resolve
from . import legacy, tools
from .inventory import KINDS, SetInfo, kind_from_name
from .keys import SCHEME, Key
from .legacy import write_legacy
from .seal import create, seal_file, sha256_file, unseal_file

__all__ = ["BackupSet", "FileCheck", "Opened", "open_set", "read_manifest", "sets", "take_backup",
           "write_legacy"]

FORMAT, FORMAT_VERSION = "pg-runbooks backup set", 1
MANIFEST, SEALED_MANIFEST, SEALED_SUFFIX = "manifest.json", "manifest.sealed", ".tink"
SEALED = "in manifest.sealed"  # a plain manifest's entry that only the sealed copy holds
_SET_NAME = re.compile(r"^\d{8}T\d{6}Z-[a-z]+$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # a file of the set, not a path
NOT_SEALED = ("the set is not encrypted: the SHA-256 sums in its manifest prove nothing against "
              "someone who can rewrite both")


@dataclass
class BackupSet:
    """A set just written, with the timings of its two phases."""

    path: Path
    name: str
    kind: str
    manifest: dict[str, Any]
    dump_seconds: float
    seal_seconds: float
    plain_bytes: int
    stored_bytes: int

    @property
    def dump_mb_s(self) -> float:
        return self.plain_bytes / 1e6 / max(self.dump_seconds, 1e-6)

    @property
    def seal_mb_s(self) -> float:
        return self.plain_bytes / 1e6 / max(self.seal_seconds, 1e-6)


@dataclass
class FileCheck:
    """One file read back: PROBLEM says what is wrong with it ("" when nothing is)."""

    name: str
    problem: str = ""  # checksum mismatch, authentication failed, truncated, missing file, ...
    detail: str = ""
    size: int = 0  # plaintext bytes restored into staging

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass
class Opened:
    """A set (or legacy file) checked and unsealed into staging, or why it could not be.

    RESTORE_PATH is only given when every file passed: a directory for ``pg_restore -Fd``, a
    custom-format file, or a plain SQL file (FORMAT), inside the staging directory (remove it
    with ``cleanup``)."""

    path: Path
    name: str
    kind: str
    format: str  # "directory", "custom" or "plain"
    legacy: bool
    encrypted: bool
    authenticated: bool  # every byte proven to come from the holder of the key
    reason: str  # why it is not authenticated ("" when it is)
    files: list[FileCheck] = field(default_factory=list)
    restore_path: Path | None = None
    seconds: float = 0.0
    plain_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.restore_path is not None and all(f.ok for f in self.files)

    @property
    def problems(self) -> list[str]:
        return [f"{f.name}: {f.problem}" for f in self.files if f.problem]

    @property
    def mb_s(self) -> float:
        return self.plain_bytes / 1e6 / max(self.seconds, 1e-6)

    def cleanup(self) -> None:
        """Remove what was unsealed into staging (never the backup itself)."""
        if self.restore_path is not None:
            shutil.rmtree(self.restore_path.parent if self.legacy else self.restore_path,
                          ignore_errors=True)
            self.restore_path = None


def _toc_header(dump: Path, bindir: str | Path | None) -> dict[str, str]:
    """What ``pg_restore -l`` says of a dump (server version, database): no SQL needed."""
    out = tools.run([tools.find("pg_restore", bindir), "-l", dump]).stdout
    return {m[1].strip().lower(): m[2].strip() for m in re.finditer(r"^;\s+([^:\n]+):\s*(.*)$", out, re.M)}


def take_backup(source_conninfo: str, backup_dir: str | Path, *, jobs: int = 2,
                compress_level: int = 6, key: Key | None = None, snapshot: str | None = None,
                kind: str = "daily", bindir: str | Path | None = None,
                say: Callable[[str], None] = print, timeout: float = 3600, lock_wait_ms: int = 0,
                extra: Callable[[], dict[str, Any]] | None = None) -> BackupSet:
    """``pg_dump -Fd`` into private staging, then every file sealed into a new set directory.

    SNAPSHOT (from ``pg_export_snapshot()``) lets the caller's transaction see exactly the data
    dumped, to fingerprint it; EXTRA, called once the files are sealed, adds entries to the
    manifest (that fingerprint), sealed with it. The set appears under its final name only once
    complete."""
    if kind not in KINDS:
        raise DrillError(f"unknown backup kind {kind!r}: use one of {', '.join(KINDS)}")
    if not 0 <= compress_level <= 9 or jobs < 1:
        raise DrillError("compress_level goes from 0 to 9 and jobs from 1")
    target = resolve(source_conninfo)
    root = Path(backup_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    started = now_utc()
    name = f"{started:%Y%m%dT%H%M%SZ}-{kind}"
    if (root / name).exists():
        raise DrillError(f"a set named {name} already exists in {root}: wait a second and retry")
    pg_dump = tools.find("pg_dump", bindir)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.dump-"))
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.partial-"))
    try:
        dump = staging / "dump"
        args: list[str | Path] = [pg_dump, "-d", "{conninfo}", "-Fd", "-j", str(jobs),
                                  "-Z", str(compress_level), "-f", dump]
        if snapshot:
            args.append(f"--snapshot={snapshot}")
        if lock_wait_ms:  # behind a migration's lock: fail at once rather than queue behind it
            args.append(f"--lock-wait-timeout={lock_wait_ms}ms")
        t0 = time.monotonic()
        tools.run(args, conninfo=target.conninfo, timeout=timeout)
        dump_s = time.monotonic() - t0
        header = _toc_header(dump, bindir)
        t1 = time.monotonic()
        files = [seal_file(p, partial / (p.name + (SEALED_SUFFIX if key else "")), key, p.name)
                 for p in sorted(dump.iterdir())]
        seal_s = time.monotonic() - t1
        plain = sum(f["size"] for f in files)
        stored = sum(f["stored_size"] for f in files)
        say(f"pg_dump -Fd -j {jobs} of {header.get('dbname', '?')}: {plain / 1e6:.1f} MB in "
            f"{dump_s:.1f} s; {len(files)} files {'sealed' if key else 'hashed'} in {seal_s:.1f} s "
            f"({plain / 1e6 / max(seal_s, 1e-6):.0f} MB/s)")
        tool_versions = {"pg_dump": tools.run([pg_dump, "--version"]).stdout.strip()}
        if key:
            tool_versions["tink"] = version("tink")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "kind": kind,
            "source": target.masked(), "server_version": header.get("dumped from database version"),
            "database": header.get("dbname") or target.params.get("dbname"),
            "started_at": iso(started), "ended_at": iso(now_utc()), "snapshot": snapshot,
            "tools": tool_versions, "dump": {"format": "directory", "jobs": jobs},
            "compression": {"method": "gzip" if compress_level else "none", "level": compress_level},
            "encryption": ({"scheme": SCHEME, "key_id": key.key_id, "associated_data": "file name"}
                           if key else {"scheme": "none"}),
            "timings": {"dump_seconds": round(dump_s, 3), "seal_seconds": round(seal_s, 3)},
            "files": files,
        }
        sealed_only = extra() if extra is not None else {}
        # what EXTRA adds (table names, row counts) is not for the readers of an encrypted
        # set's plain manifest: there it only says where it is
        shown = {k: SEALED if key else v for k, v in sealed_only.items()}
        write_json(partial / MANIFEST, {**manifest, **shown})
        os.chmod(partial / MANIFEST, 0o600)
        if key:
            with key.aead.new_encrypting_stream(create(partial / SEALED_MANIFEST),
                                                MANIFEST.encode()) as sink:
                sink.write(json.dumps({**manifest, **sealed_only}).encode())
        manifest.update(sealed_only)
        os.rename(partial, root / name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupSet(root / name, name, kind, manifest, dump_s, seal_s, plain, stored)


def _valid_entry(f: dict[str, Any]) -> bool:
    return (all(isinstance(f[k], str) and _SAFE_NAME.match(f[k]) for k in ("name", "stored_name"))
            and all(isinstance(f[k], int) for k in ("size", "stored_size"))
            and all(isinstance(f[k], str) for k in ("sha256", "stored_sha256")))


def read_manifest(set_dir: Path) -> dict[str, Any]:
    """The manifest of a set, checked enough to be used safely (file names are not paths)."""
    path = set_dir / MANIFEST
    if not path.is_file():
        raise DrillError(f"no {MANIFEST} in {set_dir}: not a set written by take_backup, or its "
                         "manifest was removed; nothing in it can be checked")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        ok = (data["format"] == FORMAT and data["kind"] in KINDS and isinstance(files, list)
              and len({f["name"] for f in files}) == len(files) and all(map(_valid_entry, files))
              and isinstance(data["encryption"]["scheme"], str)
              and bool(dt.datetime.fromisoformat(data["ended_at"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DrillError(f"the {MANIFEST} of {set_dir} is unreadable ({type(exc).__name__}): "
                         "the set cannot be checked") from None
    if not ok:
        raise DrillError(f"the {MANIFEST} of {set_dir} is not one take_backup writes")
    if data.get("format_version") != FORMAT_VERSION:
        raise DrillError(f"{set_dir} is a format {data.get('format_version')} set; this version "
                         f"reads format {FORMAT_VERSION}")
    return data


def _tink_problem(exc: Exception) -> str:
    text = str(exc)
    if "too short" in text:
        return "truncated"
    return "authentication failed" + (
        ": the file or its name was changed, or the key is not the one that sealed it"
        if "No matching key" in text else "")


def _check_stored(set_dir: Path, entry: dict[str, Any]) -> str:
    """Why the stored file of ENTRY does not match the manifest ("" when it does)."""
    path = set_dir / entry["stored_name"]
    if not path.is_file():
        return "missing file"
    size = path.stat().st_size
    if size < entry["stored_size"]:
        return f"truncated ({size} of {entry['stored_size']} bytes)"
    if sha256_file(path)[0] != entry["stored_sha256"]:
        return "checksum mismatch (stored bytes differ from the manifest)"
    return ""


def sealed_manifest(set_dir: Path, key: Key) -> dict[str, Any]:
    """The manifest as sealed with KEY (it alone holds the entries marked SEALED in the plain
    one); DrillError when it is missing or does not open."""
    path = set_dir / SEALED_MANIFEST
    if not path.is_file():
        raise DrillError(f"missing file ({SEALED_MANIFEST}, the sealed copy of the manifest)")
    try:
        with key.aead.new_decrypting_stream(open(path, "rb"), MANIFEST.encode()) as src:
            data: dict[str, Any] = json.loads(src.read())
    except tink.TinkError as exc:
        raise DrillError(_tink_problem(exc) + f" ({SEALED_MANIFEST})") from None
    return data


def _check_sealed_manifest(set_dir: Path, manifest: dict[str, Any], key: Key) -> str:
    try:
        sealed = sealed_manifest(set_dir, key)
    except DrillError as exc:
        return str(exc)
    shown = {k: SEALED if manifest.get(k) == SEALED else v for k, v in sealed.items()}
    return "" if shown == manifest else "altered: it differs from its sealed copy"


def _open_ours(set_dir: Path, key: Key | None, work: Path, jobs: int) -> Opened:
    manifest = read_manifest(set_dir)
    entries: list[dict[str, Any]] = manifest["files"]
    encryption = manifest["encryption"]
    encrypted = encryption["scheme"] != "none"
    out = Opened(set_dir, set_dir.name, manifest.get("kind", "daily"), "directory", False,
                 encrypted, False, "" if encrypted else NOT_SEALED)
    with ThreadPoolExecutor(max(1, jobs)) as pool:  # hashlib releases the GIL
        stored = list(pool.map(lambda e: _check_stored(set_dir, e), entries))
    key_problem = ""
    if encrypted and key is None:
        key_problem = (f"no key given: the set is encrypted ({encryption['scheme']}, key id "
                       f"{encryption.get('key_id')}); set the key's environment variable or key file")
    elif encrypted and key is not None and str(encryption.get("key_id")) not in key.key_ids:
        key_problem = (f"wrong key: the set was sealed with key id {encryption.get('key_id')}, "
                       f"the {key.source} holds {', '.join(sorted(key.key_ids))}")
    if encrypted:
        problem = key_problem
        if not problem and key is not None:
            problem = _check_sealed_manifest(set_dir, manifest, key)
        out.files.append(FileCheck(MANIFEST, problem))
    for entry, problem in zip(entries, stored, strict=True):
        check = FileCheck(entry["name"], problem or key_problem)
        if not check.problem:
            try:
                digest, check.size = unseal_file(set_dir / entry["stored_name"],
                                                 work / entry["name"], key if encrypted else None,
                                                 entry["name"])
                if (digest, check.size) != (entry["sha256"], entry["size"]):
                    check.problem = "checksum mismatch (the plaintext differs from the manifest)"
            except tink.TinkError as exc:
                check.problem = _tink_problem(exc)
        out.files.append(check)
    known = {e["stored_name"] for e in entries} | {MANIFEST, SEALED_MANIFEST}
    out.files += [FileCheck(p.name, "not in the manifest") for p in sorted(set_dir.iterdir())
                  if p.name not in known]
    out.authenticated = encrypted and all(f.ok for f in out.files)
    if encrypted and not out.authenticated:
        out.reason = "not every file passed its checks"
    out.plain_bytes = sum(f.size for f in out.files)
    return out


def open_set(set_dir: str | Path, key: Key | None, staging_dir: str | Path, *,
             legacy_passphrase: str | None = None, jobs: int = 2,
             say: Callable[[str], None] = print) -> Opened:
    """Check every file of a set (or a legacy file) and unseal it into a new private directory
    under STAGING_DIR; every problem is reported per file, and ``restore_path`` is None unless
    all passed. A missing or unreadable manifest is a DrillError."""
    path = Path(set_dir)
    if not path.exists():
        raise DrillError(f"no backup at {path}")
    if path.is_file() and not legacy.format_of(path.name):
        raise DrillError(f"{path} is neither a set directory nor a backup file this drill reads "
                         f"({', '.join(legacy.SUFFIXES)})")
    if path.is_dir():
        read_manifest(path)  # a clear error before any staging is made
    Path(staging_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=staging_dir, prefix=f"{path.name}-"))
    t0 = time.monotonic()
    try:
        if path.is_dir():
            out = _open_ours(path, key, work, jobs)
            out.restore_path = work
        else:
            got = legacy.open_file(path, work, legacy_passphrase)
            out = Opened(path, path.name, kind_from_name(path.name), legacy.format_of(path.name),
                         True, path.name.endswith(".enc"), False, legacy.reason(path.name),
                         [FileCheck(path.name, got.problem, got.detail, got.size)], got.path,
                         plain_bytes=got.size)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    out.seconds = time.monotonic() - t0
    if not all(f.ok for f in out.files):
        shutil.rmtree(work, ignore_errors=True)
        out.restore_path = None
    groups: dict[str, list[str]] = {}  # a key problem is the same for every file: say it once
    for f in out.files:
        if f.problem:
            groups.setdefault(f.problem, []).append(f.name)
    for problem, names in groups.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        say(f"{out.name}: {', '.join(names[:3])}{more}: {problem}")
    say(f"{out.name}: {len(out.files)} files checked, {out.plain_bytes / 1e6:.1f} MB in "
        f"{out.seconds:.1f} s: " + ("restorable" if out.ok else "NOT restorable"))
    return out


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def sets(backup_dir: str | Path) -> list[SetInfo]:
    """The sets (a manifest) and legacy files of BACKUP_DIR, oldest first. A set whose manifest
    cannot be read is listed with its problem; partial sets (dot names) are not listed."""
    root = Path(backup_dir)
    if not root.is_dir():
        raise DrillError(f"backup directory {root} does not exist or is not a directory")
    found: list[SetInfo] = []
    for p in root.iterdir():
        if p.name.startswith("."):
            continue
        mtime = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC)
        if p.is_dir() and ((p / MANIFEST).exists() or _SET_NAME.match(p.name)):
            try:
                m = read_manifest(p)
            except DrillError as exc:
                found.append(SetInfo(p, p.name, kind_from_name(p.name), mtime, _dir_size(p),
                                     problem=str(exc)))
                continue
            ended = dt.datetime.fromisoformat(m["ended_at"]).astimezone(dt.UTC)
            found.append(SetInfo(p, p.name, m["kind"], ended, _dir_size(p),
                                 encrypted=m["encryption"]["scheme"] != "none"))
        elif p.is_file() and legacy.format_of(p.name):
            found.append(SetInfo(p, p.name, kind_from_name(p.name),
                                 legacy.time_in_name(p.name) or mtime, p.stat().st_size,
                                 legacy=True, encrypted=p.name.endswith(".enc")))
    return sorted(found, key=lambda s: s.time)
