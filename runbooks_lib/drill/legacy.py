"""The backup files an older script writes, read back (and written, for tests and the demo).

``NAME.dump.gz.enc`` is ``pg_dump -Fc | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -pass
env:VAR`` with ``NAME.dump.gz.enc.sha256`` (sha256sum format) beside it; ``.dump``,
``.dump.gz`` and ``.sql.gz`` are the same without a step. ``openssl enc`` has no authenticated
mode: a wrong passphrase is caught (usually) but a rewritten file is not, and the sidecar can be
rewritten with it. So these files are marked unauthenticated, whatever their checksum says.
The passphrase reaches openssl in its environment (``-pass env:``), never on its command line.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import re
import shutil
import signal
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import IO, NamedTuple

from ..errors import DrillError
from ..target import mask_text, resolve
from . import tools
from .seal import CHUNK, sha256_file

SUFFIXES = (".dump", ".sql", ".dump.gz", ".sql.gz", ".dump.enc", ".sql.enc", ".dump.gz.enc",
            ".sql.gz.enc")
NOT_AUTHENTICATED = ("openssl enc has no authenticated mode; a SHA-256 beside the file proves "
                     "nothing against someone who can rewrite both")
NOT_ENCRYPTED = ("the file is neither encrypted nor authenticated; a SHA-256 beside the file proves "
                 "nothing against someone who can rewrite both")
# -pbkdf2 first (openssl >= 1.1.1), then the key derivation older scripts got by default:
# EVP_BytesToKey with SHA-256 (openssl 1.1.0 and later) or MD5 (before).
KDFS = (("-pbkdf2",), ("-md", "sha256"), ("-md", "md5"))
_PASS_ENV = "RUNBOOKS_OPENSSL_PASS"
_TIME = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})T(\d{2})[-:]?(\d{2})[-:]?(\d{2})")


class Unsealed(NamedTuple):
    problem: str  # "" when the file was checked and unpacked
    detail: str
    size: int  # bytes unpacked into staging
    path: Path | None  # what pg_restore (custom) or psql (plain) reads, None on a problem


def format_of(name: str) -> str:
    """'custom' (pg_dump -Fc), 'plain' (SQL) or '' when NAME is no legacy backup file."""
    if not name.endswith(SUFFIXES):
        return ""
    return "plain" if name.removesuffix(".enc").removesuffix(".gz").endswith(".sql") else "custom"


def reason(name: str) -> str:
    return NOT_AUTHENTICATED if name.endswith(".enc") else NOT_ENCRYPTED


def time_in_name(name: str) -> dt.datetime | None:
    """A UTC timestamp in NAME (2026-11-27T02-00-00, 20261127T020000Z), None when none."""
    m = _TIME.search(name)
    if not m:
        return None
    year, month, day, hour, minute, second = map(int, m.groups())
    try:
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        return None


def _program(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise DrillError(f"{name} not found on PATH: install it (apt-get install {name})")
    return found


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != _PASS_ENV}
    return {**env, **extra}


def _copy(src: IO[bytes], dest: Path, gunzip: bool) -> tuple[str, int]:
    """SRC into DEST (gunzipped when asked); a problem ("" when none) and the bytes written.
    'not gzip' means the first bytes are no gzip header (a wrong key yields that)."""
    size = 0
    reader: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=src, mode="rb") if gunzip else src
    with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        try:
            while chunk := reader.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        except gzip.BadGzipFile as exc:
            return ("not gzip" if size == 0 and "Not a gzipped" in str(exc)
                    else f"corrupt (gzip: {exc})"), size
        except EOFError:
            return "truncated (the gzip stream ends early)", size
        except zlib.error as exc:
            return f"corrupt (gzip: {exc})", size
    return "", size


def _decrypt(path: Path, dest: Path, passphrase: str, kdf: tuple[str, ...],
             gunzip: bool) -> tuple[str, int]:
    """One attempt of ``openssl enc -d`` (piped into gunzip): 'bad decrypt' when the passphrase
    (or this key derivation) is not the one that encrypted PATH."""
    cmd = [_program("openssl"), "enc", "-d", "-aes-256-cbc", *kdf, "-in", str(path),
           "-pass", f"env:{_PASS_ENV}"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                env=_env(**{_PASS_ENV: passphrase}))
        assert proc.stdout is not None
        try:
            problem, size = _copy(proc.stdout, dest, gunzip)
        finally:
            proc.stdout.close()  # openssl stops (SIGPIPE) if we stopped reading
            rc = proc.wait(timeout=60)
        err.seek(0)
        words = err.read().decode(errors="replace")
    if problem == "not gzip" or "bad decrypt" in words:
        return "bad decrypt", size
    if rc not in (0, -signal.SIGPIPE):
        return f"openssl failed (exit {rc}): {mask_text(words.strip()[-500:], passphrase)}", size
    return problem, size


def open_file(path: Path, work: Path, passphrase: str | None) -> Unsealed:
    """Check PATH against its sidecar, then decrypt and gunzip it into WORK."""
    detail = ""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text(encoding="utf-8", errors="replace").split()
        if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
            return Unsealed(f"unreadable checksum file {sidecar.name}", "", 0, None)
        if sha256_file(path)[0] != words[0].lower():
            return Unsealed(f"checksum mismatch (against {sidecar.name})", "", 0, None)
        detail = f"SHA-256 matches {sidecar.name}"
    else:
        detail = f"no {sidecar.name} beside it: nothing was checked before unpacking"
    inner = path.name.removesuffix(".enc")
    gunzip = inner.endswith(".gz")
    dest = work / inner.removesuffix(".gz")
    if not path.name.endswith(".enc"):
        with open(path, "rb") as src:
            problem, size = _copy(src, dest, gunzip)
        return Unsealed(problem.replace("not gzip", "corrupt (not gzip data)"), detail, size,
                        None if problem else dest)
    if not passphrase:
        return Unsealed("no passphrase given: the file is encrypted with openssl enc; set the "
                        "legacy passphrase's environment variable", detail, 0, None)
    for kdf in KDFS:
        problem, size = _decrypt(path, dest, passphrase, kdf, gunzip)
        if problem != "bad decrypt":
            how = f"; key derivation {' '.join(kdf)}"
            return Unsealed(problem, detail + how, size, None if problem else dest)
        dest.unlink(missing_ok=True)
    return Unsealed("bad decrypt: the passphrase does not decrypt this file (tried -pbkdf2 and the "
                    "older key derivations, -md sha256 and -md md5)", detail, 0, None)


def _pipeline(cmds: list[list[str]], envs: list[dict[str, str]], out: Path, timeout: float,
              secrets: list[str]) -> None:
    """CMDS piped into each other, the last one's output into OUT; a failure names the program
    that failed first (not those that died of the broken pipe after it)."""
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            prev: IO[bytes] | None = None
            for i, (cmd, env) in enumerate(zip(cmds, envs, strict=True)):
                err = tempfile.TemporaryFile()
                last = i == len(cmds) - 1
                proc = subprocess.Popen(cmd, stdin=prev, stdout=sink if last else subprocess.PIPE,
                                        stderr=err, env=env)
                if prev is not None:
                    prev.close()
                prev = proc.stdout
                procs.append((proc, err))
            try:
                for proc, _ in procs:
                    proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for proc, _ in procs:
                    proc.kill()
                    proc.wait()
                raise DrillError(f"{Path(cmds[0][0]).name} did not finish within {timeout:.0f} s"
                                 ) from None
        failed = [(c, p, e) for c, (p, e) in zip(cmds, procs, strict=True) if p.returncode]
        real = [f for f in failed if f[1].returncode != -signal.SIGPIPE] or failed
        if real:
            cmd, proc, stderr = real[0]
            stderr.seek(0)
            words = stderr.read().decode(errors="replace").strip()[-1500:]
            raise DrillError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): "
                             f"{mask_text(words, *secrets)}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        for _, errfile in procs:
            errfile.close()


def write_legacy(source_conninfo: str, path: str | Path, *, passphrase: str | None = None,
                 pbkdf2: bool = True, sidecar: bool = True, bindir: str | Path | None = None,
                 timeout: float = 600) -> Path:
    """Write PATH as the older script did, with real processes: ``pg_dump -Fc`` (``.dump``) or
    ``-Fp`` (``.sql``), ``| gzip`` (``.gz``), ``| openssl enc -aes-256-cbc -salt -pbkdf2`` (``.enc``,
    or the older key derivation when not PBKDF2), and PATH.sha256 in sha256sum format."""
    out = Path(path)
    fmt = format_of(out.name)
    if not fmt:
        raise DrillError(f"{out.name}: name a legacy file {', '.join(SUFFIXES)}")
    if out.name.endswith(".enc") and not passphrase:
        raise DrillError("an .enc file needs a passphrase")
    target = resolve(source_conninfo)
    clean, secret_env = tools.split_secret(target.conninfo)
    cmds = [[str(tools.find("pg_dump", bindir)), "-d", clean, "-Fc" if fmt == "custom" else "-Fp"]]
    envs = [_env(**secret_env)]
    if out.name.removesuffix(".enc").endswith(".gz"):
        cmds.append([_program("gzip"), "-c"])
        envs.append(_env())
    if out.name.endswith(".enc"):
        kdf = ["-pbkdf2"] if pbkdf2 else ["-md", "md5"]
        cmds.append([_program("openssl"), "enc", "-aes-256-cbc", "-salt", *kdf,
                     "-pass", f"env:{_PASS_ENV}"])
        envs.append(_env(**{_PASS_ENV: passphrase or ""}))
    _pipeline(cmds, envs, out, timeout, [*secret_env.values(), passphrase or ""])
    if sidecar:
        side = out.with_name(out.name + ".sha256")
        side.write_text(f"{sha256_file(out)[0]}  {out.name}\n", encoding="utf-8")
    return out
