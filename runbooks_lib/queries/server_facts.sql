-- Facts probed once per session: version, who we are, which predefined roles (pg_monitor,
-- pg_read_all_stats, pg_signal_backend, pg_read_server_files) we hold. Works on 13+.
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       current_user AS current_user,
       current_database() AS database,
       r.rolsuper AS is_superuser,
       pg_is_in_recovery() AS in_recovery,
       ARRAY(SELECT b.rolname::text
               FROM pg_roles b
              WHERE b.rolname LIKE 'pg\_%'
                AND pg_has_role(current_user, b.oid, 'USAGE')) AS roles
  FROM pg_roles r
 WHERE r.rolname = current_user;
