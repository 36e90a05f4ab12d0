-- Indexes left INVALID by a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY.
SELECT i.indexrelid,
       n.nspname::text AS schema,
       t.relname::text AS "table",
       c.relname::text AS index,
       am.amname::text AS method,
       i.indisunique AS is_unique,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = c.relam
 WHERE NOT i.indisvalid;
