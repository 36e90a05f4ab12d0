-- Client sessions with their ages, computed server side (no clock skew with the runbook's host).
-- Our own sessions are left out: this diagnostic session and the other runbooks' (application
-- runbooks/..., running beside this one in a nightly run). Without pg_read_all_stats, other roles' query text
-- reads '<insufficient privilege>' and client_addr is NULL: the runbook says so.
SELECT a.pid,
       a.datname::text AS database,
       a.usename::text AS "user",
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       coalesce(host(a.client_addr), CASE WHEN a.client_port = -1 THEN 'local' END, '(hidden)')
         AS client_addr,
       coalesce(a.state, '(unknown)') AS state,
       a.wait_event_type,
       a.wait_event,
       a.backend_start,
       a.xact_start,
       a.state_change,
       extract(epoch FROM now() - a.backend_start)::float8 AS conn_age_s,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       cardinality(pg_blocking_pids(a.pid)) > 0 AS waiting_on_lock,
       left(a.query, 300) AS query
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid()
   AND a.application_name NOT LIKE 'runbooks/%'
 ORDER BY a.backend_start;
