-- pg_stat_statements counters, for the window diff and the lifetime view. Columns common to the
-- extension on PostgreSQL 13 to 18 (13 renamed total_time to total_exec_time; 17 renamed the
-- blk_*_time columns, which are not used here). showtext = false skips reading the query-text
-- file: the first snapshot of the window needs no text (20,000 statements made it costly).
-- Statements of every database are read; EXPLAIN later keeps those of the current one.
SELECT s.queryid::text AS queryid,  -- an identifier: NULL for other roles' statements
       s.userid, s.dbid,
       (s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) AS current_db,
       r.rolname::text AS "user",
       d.datname::text AS database,
       s.calls, s.total_exec_time, s.rows,
       s.shared_blks_hit, s.shared_blks_read, s.temp_blks_read, s.temp_blks_written,
       left(s.query, 2000) AS query
  FROM pg_stat_statements(%(showtext)s) s
  LEFT JOIN pg_roles r ON r.oid = s.userid
  LEFT JOIN pg_database d ON d.oid = s.dbid;
