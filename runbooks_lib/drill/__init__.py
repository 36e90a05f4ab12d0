"""The restore drill's machinery: backups written and read, restores, verification, PITR.

    tools.py        client programs (pg_dump, pg_restore, ...) run with secrets kept off their
                    command lines; the bin directory that matches a server
    keys.py         encryption keys from an environment variable or a key file (never a value)
    archive.py      a backup set written (pg_dump -Fd, encrypted and checksummed, manifest) and
                    read back (every checksum and authentication tag checked before a restore)
    seal.py         one file sealed or opened (tink streaming AEAD) and hashed, in 1 MiB chunks
    legacy.py       the openssl/gzip/pg_dump -Fc files older scripts write, read (and written)
    inventory.py    what a backup directory holds against the schedule and retention policy
    fingerprint.py  object counts, row counts and content hashes of a database, compared
    restore.py      scratch databases, pg_restore (whole and one table), the drill's own log
    pitr.py         point-in-time recovery into a new data directory, markers proven

The probes and checks of the restore-drill runbook (runbooks_lib.checks.drill) call these; they
hold no judgement themselves.
"""
