-- Every user index with its usage, validity and definition keys (for duplicate detection).
-- Sizes from relpages, lock-free (see table_stats.sql).
SELECT i.indexrelid,
       i.indrelid,
       s.schemaname::text AS schema,
       s.relname::text AS "table",
       s.indexrelname::text AS index,
       c.relpages::bigint * current_setting('block_size')::bigint AS size_bytes,
       s.idx_scan,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       i.indisvalid AS is_valid,
       i.indkey::text AS indkey,
       i.indclass::text AS indclass,
       coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS expressions,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate,
       (SELECT count(*) FROM pg_constraint k WHERE k.conindid = i.indexrelid) > 0 AS backs_constraint,
       pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i
  JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
  JOIN pg_class c ON c.oid = i.indexrelid;
