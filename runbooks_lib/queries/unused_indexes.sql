-- Indexes of min_bytes or more never scanned since the stats reset, that enforce no constraint.
-- Built for big catalogs (500,000 tables): the size filter (relpages, lock-free) runs first in a
-- fenced subquery (OFFSET 0), so pg_stat_get_numscans() runs only for the few large candidates.
SELECT x.indexrelid,
       n.nspname::text AS schema,
       t.relname::text AS "table",
       c.relname::text AS index,
       am.amname::text AS method,
       x.size_bytes,
       pg_stat_get_numscans(x.indexrelid) AS idx_scan,
       x.indisunique AS is_unique,
       coalesce(pg_get_expr(x.indpred, x.indrelid), '') AS predicate
  FROM (SELECT i.indexrelid, i.indrelid, i.indisunique, i.indpred,
               ic.relpages::bigint * current_setting('block_size')::bigint AS size_bytes
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE NOT i.indisunique AND NOT i.indisprimary
           AND ic.relpages::bigint * current_setting('block_size')::bigint >= %(min_bytes)s
        OFFSET 0) x
  JOIN pg_class c ON c.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = c.relam
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast'
   AND pg_stat_get_numscans(x.indexrelid) = 0
   AND x.indexrelid NOT IN (SELECT conindid FROM pg_constraint)
 ORDER BY x.size_bytes DESC
 LIMIT 50;
