-- The server's log files (pg_ls_logdir is granted to pg_monitor; reading a file with
-- pg_read_binary_file needs superuser or pg_read_server_files).
SELECT name::text AS name, size::bigint AS size, modification
  FROM pg_ls_logdir()
 ORDER BY modification;
