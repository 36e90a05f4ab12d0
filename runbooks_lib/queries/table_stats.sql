-- Scan, cache and vacuum counters of the tables a check can report: at least min_rows live
-- (estimated, or counted when never analyzed) or dead tuples. The filter comes first so the
-- per-table work (index counters through pg_index's indrelid index) runs only for the kept
-- tables: most tables of a big catalog are small. Straight from pg_class and the
-- pg_stat_get_* functions (the pg_stat_user_tables views compute far more per row). Sizes come
-- from relpages (as of the last VACUUM/ANALYZE), not pg_relation_size(), which locks and would
-- wait behind an ACCESS EXCLUSIVE lock (PgHero #444). reloptions are parsed by the caller.
SELECT c.oid AS relid,
       n.nspname::text AS schema,
       c.relname::text AS "table",
       c.relpages::bigint * current_setting('block_size')::bigint AS size_bytes,
       c.reltuples::float8 AS est_rows,
       pg_stat_get_numscans(c.oid) AS seq_scan,
       pg_stat_get_tuples_returned(c.oid) AS seq_tup_read,
       coalesce((SELECT sum(pg_stat_get_numscans(i.indexrelid)) FROM pg_index i
                  WHERE i.indrelid = c.oid), 0)::bigint AS idx_scan,
       pg_stat_get_live_tuples(c.oid) AS n_live_tup,
       pg_stat_get_dead_tuples(c.oid) AS n_dead_tup,
       pg_stat_get_last_vacuum_time(c.oid) AS last_vacuum,
       pg_stat_get_last_autovacuum_time(c.oid) AS last_autovacuum,
       pg_stat_get_blocks_hit(c.oid) AS heap_blks_hit,
       pg_stat_get_blocks_fetched(c.oid) - pg_stat_get_blocks_hit(c.oid) AS heap_blks_read,
       coalesce(c.reloptions, '{}')::text[] AS reloptions
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast'
   AND (c.reltuples >= %(min_rows)s
        OR (c.reltuples <= 0 AND pg_stat_get_live_tuples(c.oid) >= %(min_rows)s)
        OR pg_stat_get_dead_tuples(c.oid) >= %(min_rows)s);
