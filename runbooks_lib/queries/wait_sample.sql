-- One sample of what active sessions are doing (the "average active sessions" view): an active
-- session with no wait event is on CPU (or in a wait PostgreSQL does not instrument). The
-- runbooks' own sessions (a restore drill's pg_dump beside the latency runbook) are marked: they
-- are left out of the load, and their statements out of the window's top statements.
SELECT clock_timestamp() AS ts,
       coalesce(a.wait_event_type, 'CPU') AS wait_event_type,
       coalesce(a.wait_event, 'CPU') AS wait_event,
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       left(a.query, 300) AS query,
       a.application_name LIKE 'runbooks/%' AS ours,
       CASE WHEN a.application_name LIKE 'runbooks/%' THEN a.query END AS own_query
  FROM pg_stat_activity a
 WHERE a.state = 'active'
   AND a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid();
