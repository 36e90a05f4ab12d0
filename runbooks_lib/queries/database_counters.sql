-- Transaction counters of the current database, for a window diff: commits, rollbacks,
-- deadlocks, recovery conflicts, temp files (13+); session counters are added on 14+.
SELECT xact_commit, xact_rollback, deadlocks, conflicts, temp_files, temp_bytes
  FROM pg_stat_database
 WHERE datname = current_database();
