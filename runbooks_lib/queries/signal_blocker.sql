-- Root blockers among the previewed pids, and with dry_run = false their cancellation
-- (pg_cancel_backend) or termination (pg_terminate_backend). A pid is only signalled if it still
-- blocks somebody at execution time.
SELECT a.pid,
       a.usename::text AS "user",
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       host(a.client_addr) AS client_addr,
       a.state,
       round(extract(epoch FROM now() - a.xact_start)::numeric, 1)::float8 AS xact_age_s,
       left(a.query, 200) AS last_query,
       CASE WHEN %(dry_run)s THEN NULL
            WHEN %(mode)s = 'terminate' THEN pg_terminate_backend(a.pid)
            ELSE pg_cancel_backend(a.pid) END AS signalled
  FROM pg_stat_activity a
 WHERE a.pid = ANY(%(pids)s)
   AND EXISTS (SELECT 1 FROM pg_stat_activity w WHERE a.pid = ANY(pg_blocking_pids(w.pid)));
