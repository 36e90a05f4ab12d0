-- Transaction ID age per database: wraparound forces an emergency anti-wraparound VACUUM at
-- autovacuum_freeze_max_age and stops writes at about 2^31 - 3 million.
SELECT datname::text AS database,
       age(datfrozenxid)::bigint AS xid_age,
       mxid_age(datminmxid)::bigint AS mxid_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age
  FROM pg_database
 WHERE datallowconn
 ORDER BY 2 DESC;
