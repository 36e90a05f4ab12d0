-- Foreign keys by name, with their tables and columns, for the constraints named in 23503
-- errors (whether the child columns are indexed comes from fk_without_index.sql).
SELECT k.conname::text AS constraint_name,
       k.conrelid::regclass::text AS child_table,
       k.confrelid::regclass::text AS parent_table,
       (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = k.conrelid) AS child_schema,
       (SELECT c.relname::text FROM pg_class c WHERE c.oid = k.conrelid) AS child_name,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS x(attnum, n)
               JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.attnum
              ORDER BY x.n) AS columns,
       CASE k.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL'
            WHEN 'd' THEN 'SET DEFAULT' WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS on_delete
  FROM pg_constraint k
 WHERE k.contype = 'f'
   AND k.conname = ANY(%(names)s);
