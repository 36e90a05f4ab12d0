-- Output settings for the restore drill's fingerprint, local to the transaction (take() rolls
-- back the savepoint it sets them in): every value's text must be the same on the source and on
-- the restored copy whatever the two servers' defaults, and no name may resolve outside
-- pg_catalog (the drill's role reads other roles' tables). With row_security off, a table that
-- row-level security would filter for this role is an error, as it is for pg_dump, instead of a
-- partial hash.
SELECT set_config('DateStyle', 'ISO, YMD', true), set_config('IntervalStyle', 'postgres', true),
       set_config('extra_float_digits', '3', true), set_config('TimeZone', 'UTC', true),
       set_config('bytea_output', 'hex', true), set_config('lc_monetary', 'C', true),
       set_config('search_path', 'pg_catalog, pg_temp', true),
       set_config('row_security', 'off', true);
