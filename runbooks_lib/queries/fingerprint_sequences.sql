-- The sequences the restore drill checks, with the column each one feeds when it is owned by
-- one (serial: dependency 'a'; identity: 'i'), so that a sequence restored behind its column
-- (the next insert fails on a duplicate key) can be found. The column's extremes are read only
-- for integer columns this role may read. System schemas and extension-owned sequences are
-- left out.
SELECT n.nspname::text AS schema, c.relname::text AS name, s.seqincrement AS increment,
       has_sequence_privilege(c.oid, 'SELECT') AS readable,
       tn.nspname::text AS table_schema, t.relname::text AS table_name,
       a.attname::text AS column_name,
       coalesce(a.atttypid = ANY (ARRAY['int2', 'int4', 'int8']::regtype[])
                AND has_column_privilege(t.oid, a.attnum, 'SELECT'), false) AS column_readable
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_sequence s ON s.seqrelid = c.oid
  LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
                       AND d.deptype IN ('a', 'i')
  LEFT JOIN pg_class t ON t.oid = d.refobjid
  LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE c.relkind = 'S'
   AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
   AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                                            AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 1, 2;
