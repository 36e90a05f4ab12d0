-- Sessions waiting for a lock held by a prepared transaction. pg_blocking_pids() returns 0 for
-- such a holder (it has no process): its locks are listed with a NULL pid, and among them the
-- lock on its own transaction ID, which names the prepared transaction.
SELECT DISTINCT w.pid AS waiter,
       px.gid,
       px.owner::text AS owner,
       px.database::text AS database,
       extract(epoch FROM now() - px.prepared)::float8 AS age_s
  FROM pg_locks w
  JOIN pg_locks h
    ON h.granted AND h.pid IS NULL AND NOT w.granted
   AND h.locktype = w.locktype
   AND h.database IS NOT DISTINCT FROM w.database
   AND h.relation IS NOT DISTINCT FROM w.relation
   AND h.page IS NOT DISTINCT FROM w.page
   AND h.tuple IS NOT DISTINCT FROM w.tuple
   AND h.transactionid IS NOT DISTINCT FROM w.transactionid
   AND h.classid IS NOT DISTINCT FROM w.classid
   AND h.objid IS NOT DISTINCT FROM w.objid
   AND h.objsubid IS NOT DISTINCT FROM w.objsubid
  JOIN pg_locks x
    ON x.virtualtransaction = h.virtualtransaction AND x.pid IS NULL AND x.granted
   AND x.locktype = 'transactionid'
  JOIN pg_prepared_xacts px ON px.transaction = x.transactionid
 WHERE w.pid = ANY(%(pids)s);
