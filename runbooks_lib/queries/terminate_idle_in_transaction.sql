-- Sessions of one application idle in transaction for longer than a bound, and with
-- dry_run = false their termination. The conditions are checked again at execution time and
-- restricted to the pids that were previewed, so nothing beyond the preview is touched.
SELECT a.pid,
       a.usename::text AS "user",
       a.application_name AS application,
       host(a.client_addr) AS client_addr,
       round(extract(epoch FROM now() - a.state_change)::numeric, 1)::float8 AS idle_s,
       left(a.query, 200) AS last_query,
       CASE WHEN %(dry_run)s THEN NULL ELSE pg_terminate_backend(a.pid) END AS signalled
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid()
   AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')
   AND a.application_name = %(application)s
   AND a.state_change < now() - make_interval(secs => %(older_than_s)s)
   AND (%(dry_run)s OR a.pid = ANY(%(pids)s))
 ORDER BY a.state_change;
