-- Buffer cache hits and disk (or OS cache) reads of the current database, tables, indexes and
-- catalogs together: one row whatever the size of the catalog (check_postgres's hitratio reads
-- the same counters).
SELECT blks_hit, blks_read, stats_reset
  FROM pg_stat_database
 WHERE datname = current_database();
