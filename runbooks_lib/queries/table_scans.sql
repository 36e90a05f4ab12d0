-- The scan counters of the large user tables: the window's first snapshot (the second one is
-- table_stats.sql). Only large tables matter to the sequential-scan check and most tables of a
-- big catalog are small, so the filter comes first and the per-table work (index scans summed
-- through pg_index's indrelid index) runs only for the tables it keeps. Never-analyzed tables
-- (reltuples -1 on 14+, 0 on 13) are judged by their live-tuple counter.
SELECT c.oid AS relid,
       pg_stat_get_numscans(c.oid) AS seq_scan,
       pg_stat_get_tuples_returned(c.oid) AS seq_tup_read,
       coalesce((SELECT sum(pg_stat_get_numscans(i.indexrelid)) FROM pg_index i
                  WHERE i.indrelid = c.oid), 0)::bigint AS idx_scan
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast'
   AND (c.reltuples >= %(min_rows)s
        OR (c.reltuples <= 0 AND pg_stat_get_live_tuples(c.oid) >= %(min_rows)s));
