-- Every session of this database that waits for a lock, and the sessions it waits for, with
-- pg_blocking_pids (9.6+). Another database's lock chain is that database's finding.
-- waiting_s: how long the current statement has waited (since it started or the state changed).
WITH waiting AS (
    SELECT a.pid, pg_blocking_pids(a.pid) AS blocked_by
      FROM pg_stat_activity a
     WHERE a.wait_event_type = 'Lock'
       AND a.datname = current_database()
)
SELECT a.pid,
       coalesce(w.blocked_by, '{}') AS blocked_by,
       a.usename::text AS "user",
       a.datname::text AS database,
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       host(a.client_addr) AS client_addr,
       a.state,
       a.wait_event_type,
       a.wait_event,
       extract(epoch FROM now() - coalesce(a.query_start, a.state_change))::float8 AS waiting_s,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
       left(a.query, 500) AS query
  FROM pg_stat_activity a
  LEFT JOIN waiting w ON w.pid = a.pid
 WHERE a.pid IN (SELECT pid FROM waiting)
    OR a.pid IN (SELECT unnest(blocked_by) FROM waiting);
