-- Transaction counters of the current database, for a window diff, with the session counters
-- added in 14 (sessions killed by an operator, abandoned by the client, ended by FATAL).
SELECT xact_commit, xact_rollback, deadlocks, conflicts, temp_files, temp_bytes,
       sessions_killed, sessions_abandoned, sessions_fatal
  FROM pg_stat_database
 WHERE datname = current_database();
