-- Every user index with its usage, validity and definition keys (for duplicate detection).
-- Lock-free: sizes from relpages, and the definition is assembled from the catalogs because
-- pg_get_indexdef() locks the index and would wait behind an ACCESS EXCLUSIVE lock.
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
       format('CREATE %sINDEX %I ON %I.%I USING %s (%s)%s',
              CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
              s.indexrelname, s.schemaname, s.relname, am.amname,
              (SELECT string_agg(coalesce(quote_ident(a.attname), '(expression)'), ', ' ORDER BY k.n)
                 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                 LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                        AND k.attnum > 0),
              CASE WHEN i.indpred IS NULL THEN ''
                   ELSE ' WHERE ' || pg_get_expr(i.indpred, i.indrelid) END) AS definition
  FROM pg_index i
  JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam;
