-- A slice of one log file, read through the server (superuser or pg_read_server_files).
SELECT pg_read_file(current_setting('log_directory') || '/' || %(name)s, %(offset)s, %(length)s)
       AS chunk;
