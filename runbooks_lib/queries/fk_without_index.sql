-- Foreign keys whose referencing columns are not the leading columns of any valid index: every
-- DELETE or key UPDATE on the parent then scans the child (an account deletion that takes 30 s).
-- Schema and names come apart so that printed advice can quote them.
SELECT k.conname::text AS constraint_name,
       k.conrelid::regclass::text AS child_table,
       k.confrelid::regclass::text AS parent_table,
       k.conrelid::oid::bigint AS child_relid,
       k.confrelid::oid::bigint AS parent_relid,
       ns.nspname::text AS child_schema,
       cl.relname::text AS child_name,
       array_agg(a.attname::text ORDER BY x.n) AS columns,
       cl.relpages::bigint * current_setting('block_size')::bigint AS child_size_bytes,
       cl.reltuples::float8 AS child_est_rows,
       CASE k.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT'
            WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS on_delete
  FROM pg_constraint k
  JOIN pg_class cl ON cl.oid = k.conrelid
  JOIN pg_namespace ns ON ns.oid = cl.relnamespace
  CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS x(attnum, n)
  JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.attnum
 WHERE k.contype = 'f'
   AND ns.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (
       SELECT 1 FROM pg_index i
        WHERE i.indrelid = k.conrelid
          AND i.indisvalid
          AND (i.indkey::int2[])[0:cardinality(k.conkey) - 1] @> k.conkey
          AND (i.indkey::int2[])[0:cardinality(k.conkey) - 1] <@ k.conkey)
 GROUP BY k.oid, k.conname, k.conrelid, k.confrelid, ns.nspname, cl.relname, cl.relpages, cl.reltuples,
          k.confdeltype;
