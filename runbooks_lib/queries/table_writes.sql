-- Scan and write counters of a few tables (those behind foreign keys without an index): the
-- window's two snapshots tell whether the missing index costs anything now (parent rows
-- deleted or updated, child tables scanned).
SELECT c.oid AS relid,
       pg_stat_get_numscans(c.oid) AS seq_scan,
       coalesce((SELECT sum(pg_stat_get_numscans(i.indexrelid)) FROM pg_index i
                  WHERE i.indrelid = c.oid), 0)::bigint AS idx_scan,
       pg_stat_get_tuples_updated(c.oid) AS n_tup_upd,
       pg_stat_get_tuples_deleted(c.oid) AS n_tup_del
  FROM pg_class c
 WHERE c.oid = ANY(%(relids)s::oid[]);
