-- After a cancel or terminate: is each signalled session still there, and does it still block
-- someone? An action reports this, never the signals it sent.
SELECT p.pid,
       a.pid IS NOT NULL AS still_there,
       coalesce(a.state, '') AS state,
       EXISTS (SELECT 1 FROM pg_stat_activity w WHERE p.pid = ANY(pg_blocking_pids(w.pid)))
         AS still_blocking
  FROM unnest(%(pids)s::int[]) AS p(pid)
  LEFT JOIN pg_stat_activity a ON a.pid = p.pid;
