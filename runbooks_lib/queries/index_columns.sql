-- Column names of some indexes (those a finding reports), to show their definition without
-- pg_get_indexdef(), which locks the index.
SELECT i.indexrelid,
       ARRAY(SELECT coalesce(a.attname::text, '(expression)')
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                       AND k.attnum > 0
              ORDER BY k.ord) AS columns
  FROM pg_index i
 WHERE i.indexrelid = ANY(%(oids)s);
