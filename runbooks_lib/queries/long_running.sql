-- Active statements and open transactions older than the given bounds (seconds), in this
-- database: another database's long transaction neither blocks this one's sessions nor holds
-- back the vacuum of its tables, and is that database's finding (a fleet of databases on one
-- server would otherwise report it on every one).
SELECT a.pid,
       a.usename::text AS "user",
       a.datname::text AS database,
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       host(a.client_addr) AS client_addr,
       a.state,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       a.backend_xmin IS NOT NULL AS holds_snapshot,
       left(a.query, 500) AS query
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid()
   AND a.datname = current_database()
   AND ((a.state = 'active' AND a.query_start < now() - make_interval(secs => %(query_s)s))
        OR a.xact_start < now() - make_interval(secs => %(xact_s)s))
 ORDER BY a.xact_start NULLS LAST;
