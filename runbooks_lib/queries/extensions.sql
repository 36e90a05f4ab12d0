-- Extensions installed in the current database (pg_stat_statements, hypopg, ...).
SELECT extname::text AS extname, extversion::text AS extversion FROM pg_extension;
