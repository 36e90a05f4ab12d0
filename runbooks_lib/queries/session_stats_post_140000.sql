-- Session counters per database, added to pg_stat_database in PostgreSQL 14: sessions that
-- ended because the client vanished (abandoned), on a FATAL error, or by an operator (killed).
SELECT datname::text AS database,
       sessions, sessions_abandoned, sessions_fatal, sessions_killed,
       round((session_time / 1000)::numeric, 1)::float8 AS session_time_s,
       round((idle_in_transaction_time / 1000)::numeric, 1)::float8 AS idle_in_transaction_time_s,
       stats_reset
  FROM pg_stat_database
 WHERE datname IS NOT NULL
 ORDER BY sessions DESC;
