-- Per-table scan, cache and vacuum counters. Sizes come from pg_class.relpages (as of the last
-- VACUUM/ANALYZE) rather than pg_relation_size(), which takes a lock and would wait behind an
-- ACCESS EXCLUSIVE lock (PgHero #444): this query never touches a relation lock.
SELECT t.relid,
       t.schemaname::text AS schema,
       t.relname::text AS "table",
       c.relpages::bigint * current_setting('block_size')::bigint AS size_bytes,
       c.reltuples::float8 AS est_rows,
       t.seq_scan, t.seq_tup_read, coalesce(t.idx_scan, 0) AS idx_scan,
       t.n_live_tup, t.n_dead_tup, t.n_mod_since_analyze,
       t.last_vacuum, t.last_autovacuum, t.last_analyze, t.last_autoanalyze,
       coalesce(io.heap_blks_hit, 0) AS heap_blks_hit, coalesce(io.heap_blks_read, 0) AS heap_blks_read,
       coalesce(io.idx_blks_hit, 0) AS idx_blks_hit, coalesce(io.idx_blks_read, 0) AS idx_blks_read,
       coalesce((SELECT o.option_value FROM pg_options_to_table(c.reloptions) o
                  WHERE o.option_name = 'autovacuum_enabled'), 'true') AS autovacuum_enabled,
       coalesce((SELECT o.option_value::float8 FROM pg_options_to_table(c.reloptions) o
                  WHERE o.option_name = 'autovacuum_vacuum_scale_factor'),
                current_setting('autovacuum_vacuum_scale_factor')::float8) AS vacuum_scale_factor,
       coalesce((SELECT o.option_value::float8 FROM pg_options_to_table(c.reloptions) o
                  WHERE o.option_name = 'autovacuum_vacuum_threshold'),
                current_setting('autovacuum_vacuum_threshold')::float8) AS vacuum_threshold
  FROM pg_stat_user_tables t
  JOIN pg_class c ON c.oid = t.relid
  LEFT JOIN pg_statio_user_tables io ON io.relid = t.relid;
