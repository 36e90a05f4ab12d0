-- Indexes with the same table, columns, operator classes, expressions and predicate, grouped on
-- the server so that a big catalog returns only the duplicates. pg_get_expr() is strict, so it
-- runs only for expression or partial indexes.
WITH keyed AS (
    SELECT i.indexrelid, i.indrelid,
           i.indkey::text || '|' || i.indclass::text || '|'
             || coalesce(pg_get_expr(i.indexprs, i.indrelid), '') || '|'
             || coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS key
      FROM pg_index i
), dups AS (
    SELECT indrelid, key FROM keyed GROUP BY indrelid, key HAVING count(*) > 1
)
SELECT k.indexrelid,
       k.indrelid::text || '|' || k.key AS key,
       n.nspname::text AS schema,
       t.relname::text AS "table",
       c.relname::text AS index,
       am.amname::text AS method,
       c.relpages::bigint * current_setting('block_size')::bigint AS size_bytes,
       pg_stat_get_numscans(k.indexrelid) AS idx_scan,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       k.indexrelid IN (SELECT conindid FROM pg_constraint) AS backs_constraint,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate
  FROM keyed k
  JOIN dups d ON d.indrelid = k.indrelid AND d.key = k.key
  JOIN pg_index i ON i.indexrelid = k.indexrelid
  JOIN pg_class c ON c.oid = k.indexrelid
  JOIN pg_class t ON t.oid = k.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = c.relam
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema');
