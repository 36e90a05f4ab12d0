-- The tables whose rows the restore drill hashes: ordinary tables and partitions (a partitioned
-- parent holds no rows of its own), with their primary key columns in key order, every column
-- in order, and which columns hash by value (hash_record_extended) rather than by their text:
-- types whose hash is stable across a restore and across servers and sees every difference of
-- their text, in a deterministic collation; also floats and jsonb, which hash by value (-0 like
-- 0, 1.0 like 1.00 inside JSON, as PostgreSQL's = has them) and whose text costs a quarter of
-- the hashing time. Enums and reg* types hash their OIDs, which a restore changes; numeric
-- hashes 1.5 like 1.50, a difference people see in amounts: those go as text.
-- max_key: a one-column key of a type with a max() aggregate in the key's order, so that a chunk
-- of rows in key order gives its last key in the same pass. System schemas and tables owned by
-- an extension are left out.
SELECT n.nspname::text AS schema, c.relname::text AS name, pg_table_size(c.oid) AS bytes,
       has_table_privilege(c.oid, 'SELECT') AS readable,
       ARRAY(SELECT a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary
              ORDER BY k.ord) AS key,
       (SELECT i.indnatts = 1 AND a.atttypid = ANY (ARRAY['int2', 'int4', 'int8', 'numeric',
                                                          'text', 'varchar', 'date', 'timestamp',
                                                          'timestamptz']::regtype[])
          FROM pg_index i JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = c.oid AND i.indisprimary) IS TRUE AS max_key,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS columns,
       ARRAY(SELECT a.atttypid = ANY (ARRAY['bool', 'bytea', 'int2', 'int4', 'int8', 'float4',
                                            'float8', 'text', 'varchar', 'bpchar', 'date',
                                            'time', 'timestamp', 'timestamptz', 'uuid', 'jsonb',
                                            'int2[]', 'int4[]', 'int8[]', 'text[]', 'varchar[]',
                                            'uuid[]']::regtype[])
                    AND coalesce(co.collisdeterministic, true)
               FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS native
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
   AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                            AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2;
