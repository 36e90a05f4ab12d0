"""Backup sets and legacy files written by real pg_dump/gzip/openssl and read back, tampered."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from runbooks_lib.drill import archive, keys, legacy, tools
from runbooks_lib.drill.archive import BackupSet, Opened
from runbooks_lib.drill.seal import sha256_file
from runbooks_lib.errors import DrillError
from runbooks_lib.sandbox.server import Sandbox
from tests.conftest import ROOT

TABLES = ("users", "posts", "comments", "payments")


@pytest.fixture(scope="module")
def key() -> keys.Key:
    return keys.parse(keys.generate(), "a test key")


@pytest.fixture(scope="module")
def backup(sandbox: Sandbox, key: keys.Key, tmp_path_factory: pytest.TempPathFactory) -> BackupSet:
    """One encrypted set of cosnap for the module; tests that tamper work on a copy."""
    return archive.take_backup(sandbox.url("postgres"), tmp_path_factory.mktemp("backups"),
                               key=key, kind="full", bindir=sandbox.bindir, say=lambda _: None)


@pytest.fixture
def copy(backup: BackupSet, tmp_path: Path) -> Path:
    return Path(shutil.copytree(backup.path, tmp_path / "sets" / backup.name))


def listed_tables(sandbox: Sandbox, path: Path) -> str:
    return tools.run([tools.find("pg_restore", sandbox.bindir), "-l", path]).stdout


def open_quietly(path: Path, key: keys.Key | None, staging: Path, **kw: str) -> Opened:
    return archive.open_set(path, key, staging, say=lambda _: None, **kw)  # type: ignore[arg-type]


def data_file(set_dir: Path) -> tuple[str, Path]:
    """The largest table data file of a set: its name and its stored path."""
    entries = json.loads((set_dir / "manifest.json").read_text())["files"]
    entry = max((e for e in entries if e["name"] != "toc.dat"), key=lambda e: e["size"])
    return entry["name"], set_dir / entry["stored_name"]


def problems(opened: Opened) -> dict[str, str]:
    return {f.name: f.problem for f in opened.files if f.problem}


def test_backup_opens_and_restores(sandbox: Sandbox, backup: BackupSet, key: keys.Key,
                                   tmp_path: Path) -> None:
    m = backup.manifest
    assert backup.path.name == backup.name and backup.name.endswith("Z-full")
    assert m["encryption"] == {"scheme": "tink AES256_GCM_HKDF_1MB", "key_id": key.key_id,
                               "associated_data": "file name"}
    assert m["database"] == "cosnap" and m["server_version"].startswith(str(sandbox.major))
    assert m["tools"]["pg_dump"].startswith("pg_dump (PostgreSQL)")
    assert m["source"].startswith("postgresql://postgres:***@")
    assert {f["name"] for f in m["files"]} >= {"toc.dat"}
    assert backup.dump_seconds > 0 and backup.seal_seconds > 0 and backup.seal_mb_s > 0
    assert stat.S_IMODE(backup.path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in backup.path.iterdir()} == {0o600}
    assert not [p for p in backup.path.parent.iterdir() if p.name.startswith(".")]  # no staging left
    with pytest.raises(DrillError):  # what is stored is no dump: encrypted
        listed_tables(sandbox, backup.path)

    opened = open_quietly(backup.path, key, tmp_path / "staging")
    assert opened.ok and opened.authenticated and not opened.problems, opened.problems
    assert opened.restore_path is not None and opened.format == "directory"
    assert opened.plain_bytes == sum(f["size"] for f in m["files"])
    toc = listed_tables(sandbox, opened.restore_path)
    assert all(f"TABLE public {t} " in toc for t in TABLES), toc
    opened.cleanup()
    assert not list((tmp_path / "staging").iterdir())


@pytest.mark.parametrize("damage, expected", [
    ("flip", "checksum mismatch"), ("truncate", "truncated"), ("remove", "missing file")])
def test_damaged_file_is_named(copy: Path, key: keys.Key, tmp_path: Path, damage: str,
                               expected: str) -> None:
    name, stored = data_file(copy)
    if damage == "flip":
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(data)
    elif damage == "truncate":
        os.truncate(stored, stored.stat().st_size // 2)
    else:
        stored.unlink()
    opened = open_quietly(copy, key, tmp_path / "staging")
    assert list(problems(opened)) == [name] and problems(opened)[name].startswith(expected)
    assert not opened.ok and opened.restore_path is None
    assert not list((tmp_path / "staging").iterdir())  # nothing restorable left behind


def test_rewritten_manifest_does_not_hide_tampering(copy: Path, key: keys.Key,
                                                    tmp_path: Path) -> None:
    """Someone without the key rewrites a file and the manifest's checksums to match: the
    authentication tags and the sealed manifest still tell."""
    name, stored = data_file(copy)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(data)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["name"] == name)
    entry["stored_sha256"] = sha256_file(stored)[0]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    opened = open_quietly(copy, key, tmp_path / "staging")
    found = problems(opened)
    assert found[name].startswith("authentication failed"), found
    assert found["manifest.json"].startswith("altered"), found
    assert opened.restore_path is None and not opened.authenticated


def test_swapped_files_fail_authentication(copy: Path, key: keys.Key, tmp_path: Path) -> None:
    """The associated data is the file's name: the same key's ciphertexts cannot be swapped."""
    manifest = json.loads((copy / "manifest.json").read_text())
    a, b = manifest["files"][:2]
    pa, pb = copy / a["stored_name"], copy / b["stored_name"]
    ca, cb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(cb)
    pb.write_bytes(ca)
    sums = [(e["stored_size"], e["stored_sha256"]) for e in (b, a)]
    for entry, (size, digest) in zip((a, b), sums, strict=True):  # the manifest agrees
        entry["stored_size"], entry["stored_sha256"] = size, digest
    (copy / "manifest.json").write_text(json.dumps(manifest))
    found = problems(open_quietly(copy, key, tmp_path / "staging"))
    assert found[a["name"]].startswith("authentication failed"), found
    assert found[b["name"]].startswith("authentication failed"), found


def test_wrong_key_and_no_key(backup: BackupSet, tmp_path: Path) -> None:
    other = keys.parse(keys.generate(), "another key")
    opened = open_quietly(backup.path, other, tmp_path / "staging")
    assert opened.restore_path is None
    assert {p.split(":")[0] for p in problems(opened).values()} == {"wrong key"}
    assert f"sealed with key id {backup.manifest['encryption']['key_id']}" in opened.problems[0]
    said: list[str] = []
    opened = archive.open_set(backup.path, None, tmp_path / "staging", say=said.append)
    assert opened.restore_path is None and len(problems(opened)) == len(opened.files)
    assert all(p.startswith("no key given: the set is encrypted") for p in problems(opened).values())
    assert len(said) == 2 and "NOT restorable" in said[-1]  # the same problem said once


def test_manifest_missing_or_unreadable(copy: Path, key: keys.Key, tmp_path: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][0]["name"] = "../../escaped"  # a name is never a path out of staging
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DrillError, match="not one take_backup writes"):
        open_quietly(copy, key, tmp_path / "staging")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(DrillError, match="unreadable"):
        open_quietly(copy, key, tmp_path / "staging")
    (copy / "manifest.json").unlink()
    with pytest.raises(DrillError, match="no manifest.json"):
        open_quietly(copy, key, tmp_path / "staging")
    assert [s.problem.startswith("no manifest.json") for s in archive.sets(copy.parent)] == [True]


def test_unencrypted_set_with_snapshot(sandbox: Sandbox, tmp_path: Path) -> None:
    """--snapshot with -j: the caller's transaction sees exactly the dumped data."""
    with psycopg.connect(sandbox.url("postgres")) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        made = archive.take_backup(sandbox.url("postgres"), tmp_path / "b", snapshot=row[0],
                                   compress_level=0, bindir=sandbox.bindir, say=lambda _: None)
    assert made.manifest["snapshot"] == row[0]
    assert made.manifest["encryption"] == {"scheme": "none"}
    assert all(f["sha256"] == f["stored_sha256"] for f in made.manifest["files"])
    opened = open_quietly(made.path, None, tmp_path / "staging")
    assert opened.ok and not opened.authenticated and "not encrypted" in opened.reason
    assert opened.restore_path is not None
    assert "TABLE public users " in listed_tables(sandbox, opened.restore_path)


def test_no_password_in_errors_or_manifest(sandbox: Sandbox, backup: BackupSet,
                                           tmp_path: Path) -> None:
    password = sandbox.passwords["postgres"]
    assert password not in (backup.path / "manifest.json").read_text()
    assert password not in repr(backup)
    with pytest.raises(DrillError) as exc:
        archive.take_backup(sandbox.url("postgres", "no_such_db"), tmp_path / "b",
                            bindir=sandbox.bindir, say=lambda _: None)
    assert "no_such_db" in str(exc.value) and password not in str(exc.value)
    assert not list((tmp_path / "b").iterdir())  # staging and partial set removed
    with pytest.raises(DrillError) as exc:
        legacy.write_legacy(sandbox.url("postgres", "no_such_db"), tmp_path / "x.dump.gz.enc",
                            passphrase="legacy-secret", bindir=sandbox.bindir)
    assert "pg_dump failed" in str(exc.value), exc.value
    assert password not in str(exc.value) and "legacy-secret" not in str(exc.value)
    assert not (tmp_path / "x.dump.gz.enc").exists()


# Legacy files, as the older backup script writes them.

PASSPHRASE = "correct horse battery staple"


def test_legacy_openssl_file_opens_unauthenticated(sandbox: Sandbox, tmp_path: Path) -> None:
    path = legacy.write_legacy(sandbox.url("postgres"),
                               tmp_path / "cosnap-2026-11-27T02-00-00.dump.gz.enc",
                               passphrase=PASSPHRASE, bindir=sandbox.bindir)
    digest, name = (tmp_path / f"{path.name}.sha256").read_text().split()
    assert (digest, name) == (sha256_file(path)[0], path.name)  # sha256sum format
    opened = open_quietly(path, None, tmp_path / "staging", legacy_passphrase=PASSPHRASE)
    assert opened.ok and opened.legacy and opened.encrypted and opened.format == "custom"
    assert not opened.authenticated and opened.reason == (
        "openssl enc has no authenticated mode; a SHA-256 beside the file proves nothing "
        "against someone who can rewrite both")
    assert opened.restore_path is not None and opened.restore_path.name == (
        "cosnap-2026-11-27T02-00-00.dump")
    assert "-pbkdf2" in opened.files[0].detail
    assert "TABLE public users " in listed_tables(sandbox, opened.restore_path)
    opened.cleanup()

    wrong = open_quietly(path, None, tmp_path / "staging", legacy_passphrase="not it")
    assert wrong.restore_path is None and wrong.files[0].problem.startswith("bad decrypt")
    none = open_quietly(path, None, tmp_path / "staging")
    assert none.files[0].problem.startswith("no passphrase given")
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(data)
    bad = open_quietly(path, None, tmp_path / "staging", legacy_passphrase=PASSPHRASE)
    assert bad.files[0].problem.startswith("checksum mismatch (against ")
    assert not list((tmp_path / "staging").iterdir())


def test_legacy_key_derivation_and_variants(sandbox: Sandbox, tmp_path: Path) -> None:
    url = sandbox.url("postgres")
    old = legacy.write_legacy(url, tmp_path / "old-daily.dump.gz.enc", passphrase=PASSPHRASE,
                              pbkdf2=False, bindir=sandbox.bindir)
    opened = open_quietly(old, None, tmp_path / "staging", legacy_passphrase=PASSPHRASE)
    assert opened.ok and "-md md5" in opened.files[0].detail
    for name, fmt in (("a.dump", "custom"), ("b.dump.gz", "custom"), ("c.sql.gz", "plain")):
        path = legacy.write_legacy(url, tmp_path / name, bindir=sandbox.bindir)
        opened = open_quietly(path, None, tmp_path / "staging")
        assert opened.ok and opened.format == fmt and not opened.encrypted, opened.problems
        assert opened.restore_path is not None and opened.reason.startswith("the file is neither")
        if fmt == "plain":
            assert "CREATE TABLE public.users" in opened.restore_path.read_text()
        else:
            assert "TABLE public users " in listed_tables(sandbox, opened.restore_path)
    os.truncate(tmp_path / "b.dump.gz", 2000)
    (tmp_path / "b.dump.gz.sha256").unlink()
    cut = open_quietly(tmp_path / "b.dump.gz", None, tmp_path / "staging")
    assert cut.files[0].problem.startswith("truncated") and "no b.dump.gz.sha256" in cut.files[0].detail


def test_sets_lists_ours_and_legacy(backup: BackupSet, tmp_path: Path) -> None:
    shutil.copytree(backup.path, tmp_path / backup.name)
    for name in ("cosnap-weekly-2026-11-22T02-00-00.dump.gz.enc", "cosnap-20261127T020000Z.sql.gz",
                 "cosnap-archive.dump"):
        (tmp_path / name).write_bytes(b"x" * 10)
    (tmp_path / "cosnap-weekly-2026-11-22T02-00-00.dump.gz.enc.sha256").write_text("x")
    (tmp_path / "notes.txt").write_text("not a backup")
    (tmp_path / ".20261128T000000Z-daily.partial-x").mkdir()
    found = {s.name: s for s in archive.sets(tmp_path)}
    assert set(found) == {backup.name, "cosnap-weekly-2026-11-22T02-00-00.dump.gz.enc",
                          "cosnap-20261127T020000Z.sql.gz", "cosnap-archive.dump"}
    ours = found[backup.name]
    assert (ours.kind, ours.legacy, ours.encrypted, ours.problem) == ("full", False, True, "")
    assert ours.time.isoformat().replace("+00:00", "Z") == backup.manifest["ended_at"]
    weekly = found["cosnap-weekly-2026-11-22T02-00-00.dump.gz.enc"]
    assert (weekly.kind, weekly.time.isoformat(), weekly.encrypted) == (
        "full", "2026-11-22T02:00:00+00:00", True)
    assert found["cosnap-20261127T020000Z.sql.gz"].time.isoformat() == "2026-11-27T02:00:00+00:00"
    assert found["cosnap-archive.dump"].kind == "monthly" and found["cosnap-archive.dump"].size == 10
    with pytest.raises(DrillError, match="does not exist"):
        archive.sets(tmp_path / "nowhere")


# Keys.

def test_key_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = keys.generate()
    monkeypatch.delenv("RB_TEST_KEY", raising=False)
    assert keys.load("RB_TEST_KEY", None) is None
    monkeypatch.setenv("RB_TEST_KEY", text)
    from_env = keys.load("RB_TEST_KEY")
    assert from_env is not None and from_env.key_id == str(json.loads(text)["primaryKeyId"])
    assert from_env.source == "environment variable RB_TEST_KEY" and text not in repr(from_env)
    path = tmp_path / "backup.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(DrillError, match="both"):
        keys.load("RB_TEST_KEY", str(path))
    monkeypatch.delenv("RB_TEST_KEY")
    from_file = keys.load("RB_TEST_KEY", str(path))
    assert from_file is not None and from_file.key_id == from_env.key_id
    path.chmod(0o644)
    with pytest.raises(DrillError, match=r"open to group or others \(mode 0644\).*chmod 600"):
        keys.load("RB_TEST_KEY", str(path))


@pytest.mark.parametrize("text", [
    "s3cret-not-json", '{"primaryKeyId": 1, "key": "s3cret-value"}',
    json.dumps({"primaryKeyId": 7, "key": [{"keyData": {"typeUrl": "s3cret-type",
                "value": "s3cretAAAA", "keyMaterialType": "SYMMETRIC"}, "status": "ENABLED",
                "keyId": 7, "outputPrefixType": "RAW"}]})])
def test_bad_key_text_is_never_echoed(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_KEY", text)
    with pytest.raises(DrillError) as exc:
        keys.load("RB_TEST_KEY")
    assert "environment variable RB_TEST_KEY" in str(exc.value) and "s3cret" not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_sealing_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Peak RSS while sealing and opening a 200 MB file, in a fresh process (figures in -rP)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drill_seal.py"), "--mb", "200",
                           "--dir", str(tmp_path)], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=120)
    result = json.loads(proc.stdout)
    print(result)
    rss = result["rss_mb"]
    assert result["verified"]
    assert max(rss["peak_seal"], rss["peak_open"]) - rss["before"] < 32, rss


def test_secrets_never_on_a_command_line(sandbox: Sandbox, key: keys.Key, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Any local user reads command lines in ps: the password and the passphrase go through
    the environment."""
    argvs: list[list[str]] = []
    real = subprocess.Popen

    def recording(args: list[str], *a: object, **kw: object) -> subprocess.Popen[bytes]:
        argvs.append([str(x) for x in args])
        return real(args, *a, **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", recording)
    url = sandbox.url("postgres")
    archive.take_backup(url, tmp_path / "b", key=key, bindir=sandbox.bindir, say=lambda _: None)
    path = legacy.write_legacy(url, tmp_path / "l.dump.gz.enc", passphrase=PASSPHRASE,
                               bindir=sandbox.bindir)
    assert open_quietly(path, None, tmp_path / "s", legacy_passphrase=PASSPHRASE).ok
    names = {Path(argv[0]).name for argv in argvs}
    assert {"pg_dump", "pg_restore", "gzip", "openssl"} <= names, names
    for argv in argvs:
        assert not any(sandbox.passwords["postgres"] in a or PASSPHRASE in a for a in argv), argv
