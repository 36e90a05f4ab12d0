-- Connection slots open to ordinary roles: max_connections minus the superuser reserve and,
-- on 16+, reserved_connections (read with missing_ok so one file serves 13 to 18). The runbooks'
-- own sessions (application runbooks/...) are not counted: they exist because we measure.
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND application_name NOT LIKE 'runbooks/%')::int AS used;
