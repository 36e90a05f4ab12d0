-- A slice of one log file, as bytes, read through the server (superuser or
-- pg_read_server_files). Bytes, not text: offsets are byte offsets and a slice may cut a
-- multi-byte character.
SELECT pg_read_binary_file(current_setting('log_directory') || '/' || %(name)s,
                           %(offset)s, %(length)s) AS chunk;
