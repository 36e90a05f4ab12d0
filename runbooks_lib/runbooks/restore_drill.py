"""The restore-drill runbook: a backup proved by restoring it, with RTO and RPO measured."""

from ..params import CONNECTION, RECORDING
from ..registry import RunbookSpec, Step, register_runbook

SPEC = register_runbook(RunbookSpec(
    "restore_drill",
    "backups proven by restoring them, with RTO and RPO measured",
    "a scheduled proof that backups restore, before a migration or a risky change, after a "
    "backup or archiving alert, or when asked how much data a restore would lose",
    steps=(
        Step("inventory", "Inventory of the backups and WAL archiving",
             ("shared.reachability", "restore_drill.inventory", "restore_drill.archiving",
              "restore_drill.pgbackrest")),
        Step("backup", "Backup", ("restore_drill.plan", "restore_drill.backup")),
        Step("integrity", "Integrity before restore", ("restore_drill.integrity",)),
        Step("restore", "Restore into a scratch database", ("restore_drill.restore",)),
        Step("verify", "Verify the data exactly", ("restore_drill.verify",)),
        Step("one_table", "One table", ("restore_drill.one_table",)),
        Step("pitr", "Point-in-time recovery", ("restore_drill.pitr",)),
        Step("cleanup", "Clean-up and summary", ("restore_drill.cleanup",)),
    ),
    params=CONNECTION,
    modules=("shared", "drill"),
    tail=RECORDING,
    time_limit="drill_timeout_minutes",
    loads_source_until="backup",
    on_stop="runbooks_lib.drill.restore:after_stop",
))
