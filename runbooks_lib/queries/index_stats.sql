-- Every user index with its usage, validity and definition keys (for duplicate detection).
-- Lock-free: sizes from relpages, no pg_get_indexdef() (it locks the index and would wait behind
-- an ACCESS EXCLUSIVE lock); index_columns.sql gives the column names of the few reported.
-- Nothing here is per-index over an unindexed catalog: 20,000 indexes would make that
-- quadratic.
SELECT i.indexrelid,
       i.indrelid,
       n.nspname::text AS schema,
       t.relname::text AS "table",
       c.relname::text AS index,
       am.amname::text AS method,
       c.relpages::bigint * current_setting('block_size')::bigint AS size_bytes,
       pg_stat_get_numscans(i.indexrelid) AS idx_scan,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       i.indisvalid AS is_valid,
       i.indkey::text AS indkey,
       i.indclass::text AS indclass,
       coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS expressions,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate,
       i.indexrelid IN (SELECT conindid FROM pg_constraint) AS backs_constraint
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = c.relam
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast';
