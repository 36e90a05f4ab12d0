"""Encryption keys for backup sets: from an environment variable or a private key file only.

A key never comes from a parameter value (papermill stores every parameter in the executed
notebook) and is never logged: messages name the variable or the file, never their content.
Keys are tink keysets in cleartext JSON holding a streaming AEAD key (AES256_GCM_HKDF_1MB):
each 1 MB segment is authenticated before its plaintext is handed back, which the plain
AES-GCM streaming of other libraries does not do (DESIGN.md section 9).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import tink
from tink import secret_key_access, streaming_aead

from ..errors import DrillError

DEFAULT_KEY_ENV = "RUNBOOKS_BACKUP_KEY"
DEFAULT_LEGACY_PASSPHRASE_ENV = "RUNBOOKS_BACKUP_PASSPHRASE"
SCHEME = "tink AES256_GCM_HKDF_1MB"

streaming_aead.register()


@dataclass(frozen=True)
class Key:
    """A loaded keyset: where it came from (safe to show) and its non-secret key ids."""

    source: str  # "environment variable RUNBOOKS_BACKUP_KEY" or "key file /path"
    key_id: str  # the primary key's id: recorded in manifests, tells a wrong key apart
    key_ids: frozenset[str]  # every key of the keyset: a rotated keyset still opens older sets
    aead: streaming_aead.StreamingAead = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Key({self.source}, key_id={self.key_id})"


def generate() -> str:
    """A new keyset (one AES256_GCM_HKDF_1MB streaming key) as cleartext JSON: store it in a
    secret manager or a mode 600 file, never in a notebook parameter."""
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    return str(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def save_new(path: Path) -> None:
    """A new keyset in a new file only its owner may read (OSError if PATH exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate() + "\n")


def parse(text: str, source: str) -> Key:
    """TEXT as a keyset; errors name SOURCE and never echo TEXT (nor tink's message about it)."""
    hint = ("does not hold a tink streaming AEAD keyset in cleartext JSON: make one with "
            "runbooks backup-key")
    try:
        json.loads(text)
    except ValueError:
        raise DrillError(f"{source} is not JSON: it {hint}") from None
    try:
        handle = tink.json_proto_keyset_format.parse(text, secret_key_access.TOKEN)
        aead = handle.primitive(streaming_aead.StreamingAead)
        info = handle.keyset_info()
    except Exception:  # noqa: BLE001 - tink's and protobuf's messages may quote the key text
        raise DrillError(f"{source} {hint}") from None
    ids = frozenset(str(k.key_id) for k in info.key_info)
    return Key(source, str(info.primary_key_id), ids, aead)


def load(key_env: str = DEFAULT_KEY_ENV, key_file: str | Path | None = None) -> Key | None:
    """The key named by KEY_ENV (a variable's name, not a value) or KEY_FILE; None when neither
    is set. A key file readable by anyone but its owner is refused."""
    text = os.environ.get(key_env, "") if key_env else ""
    if text.strip() and key_file:
        raise DrillError(f"both the environment variable {key_env} and the key file {key_file} are "
                         "set: give one, so that it is clear which key sealed a backup")
    if text.strip():
        return parse(text, f"environment variable {key_env}")
    if not key_file:
        return None
    path = Path(key_file).expanduser()
    source = f"key file {path}"
    try:
        st = path.stat()
    except OSError as exc:
        raise DrillError(f"cannot read the {source}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DrillError(f"the {source} is not a regular file")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise DrillError(f"the {source} is open to group or others (mode {mode:04o}): a backup key "
                         f"must be private to its owner; run chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise DrillError(f"cannot read the {source}") from None
    return parse(text, source)


def legacy_passphrase(env: str = DEFAULT_LEGACY_PASSPHRASE_ENV) -> str | None:
    """The passphrase of openssl-encrypted legacy backups, from the variable named ENV."""
    value = os.environ.get(env, "") if env else ""
    return value or None
