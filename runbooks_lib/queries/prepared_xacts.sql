-- Prepared (two-phase) transactions: they hold locks and the xmin horizon until someone
-- commits or rolls them back, even across restarts.
SELECT gid, owner::text AS owner, database::text AS database,
       extract(epoch FROM now() - prepared)::float8 AS age_s, transaction::text AS xid
  FROM pg_prepared_xacts
 ORDER BY prepared;
