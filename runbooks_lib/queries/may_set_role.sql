-- May this session SET ROLE to the given role? Asked before planning a statement as its owner,
-- so that a refused SET ROLE never lands in the server's log as an error (16+ grants SET
-- separately from membership: the ladder's newer rung asks for it).
SELECT EXISTS (SELECT 1 FROM pg_roles r
                WHERE r.rolname = %(role)s AND pg_has_role(current_user, r.oid, 'MEMBER'))
       AS allowed;
