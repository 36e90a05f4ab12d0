-- One sample of what active sessions are doing (the "average active sessions" view): an active
-- session with no wait event is on CPU (or in a wait PostgreSQL does not instrument).
SELECT clock_timestamp() AS ts,
       coalesce(a.wait_event_type, 'CPU') AS wait_event_type,
       coalesce(a.wait_event, 'CPU') AS wait_event,
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       left(a.query, 300) AS query
  FROM pg_stat_activity a
 WHERE a.state = 'active'
   AND a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid();
