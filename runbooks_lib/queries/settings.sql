-- Settings the runbooks read. Names missing on older servers simply do not appear
-- (reserved_connections is 16+).
SELECT name, setting
  FROM pg_settings
 WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections',
                'idle_in_transaction_session_timeout', 'idle_session_timeout',
                'statement_timeout', 'lock_timeout', 'deadlock_timeout',
                'log_destination', 'logging_collector', 'log_directory', 'log_filename',
                'log_line_prefix', 'log_min_duration_statement', 'log_lock_waits',
                'log_connections', 'log_disconnections', 'shared_preload_libraries',
                'track_io_timing', 'data_directory', 'tcp_keepalives_idle',
                'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold',
                'log_min_error_statement', 'log_timezone');
