-- The objects of a database by kind, counted and their names digested, for the restore drill to
-- compare a restored copy with its source. Constraints count by type; NOT NULL counts as columns
-- (PostgreSQL 18 also records NOT NULL as constraints, which 13 to 17 do not: a restore into a
-- newer server must not differ by that). System schemas and objects owned by an extension are
-- left out (the extensions themselves count).
WITH rel AS (
    SELECT c.oid, c.relkind, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qname
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
       AND n.nspname !~ '^pg_(toast|temp_)'
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                AND d.objid = c.oid AND d.deptype = 'e')
), obj(kind, name) AS (
    SELECT CASE relkind WHEN 'r' THEN 'tables' WHEN 'p' THEN 'tables' WHEN 'i' THEN 'indexes'
                        WHEN 'I' THEN 'indexes' WHEN 'S' THEN 'sequences' WHEN 'v' THEN 'views'
                        WHEN 'm' THEN 'materialized views' WHEN 'f' THEN 'foreign tables'
                        WHEN 'c' THEN 'types' ELSE 'other relations' END, qname
      FROM rel
    UNION ALL
    SELECT 'constraints: ' || CASE con.contype WHEN 'p' THEN 'primary key'
                                               WHEN 'f' THEN 'foreign key' WHEN 'u' THEN 'unique'
                                               WHEN 'c' THEN 'check' WHEN 'x' THEN 'exclusion'
                                               ELSE 'trigger' END,
           r.qname || '.' || quote_ident(con.conname)
      FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid
     WHERE con.contype <> 'n'
    UNION ALL
    SELECT 'not-null columns', r.qname || '.' || quote_ident(a.attname)
      FROM pg_attribute a JOIN rel r ON r.oid = a.attrelid AND r.relkind IN ('r', 'p')
     WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
    UNION ALL
    SELECT 'triggers', r.qname || '.' || quote_ident(tg.tgname)
      FROM pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid
     WHERE NOT tg.tgisinternal
    UNION ALL
    SELECT 'rules', r.qname || '.' || quote_ident(ru.rulename)
      FROM pg_rewrite ru JOIN rel r ON r.oid = ru.ev_class
     WHERE ru.rulename <> '_RETURN'
    UNION ALL
    SELECT 'policies', r.qname || '.' || quote_ident(po.polname)
      FROM pg_policy po JOIN rel r ON r.oid = po.polrelid
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'procedures' WHEN 'a' THEN 'aggregates'
                          ELSE 'functions' END,
           quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '('
           || oidvectortypes(p.proargtypes) || ')'
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
       AND n.nspname !~ '^pg_(toast|temp_)'
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                                AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'types', quote_ident(n.nspname) || '.' || quote_ident(t.typname)
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'd', 'r')
       AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
       AND n.nspname !~ '^pg_(toast|temp_)'
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                                                AND d.objid = t.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'schemas', quote_ident(nspname) FROM pg_namespace
     WHERE nspname <> 'information_schema' AND nspname !~ '^pg_'
    UNION ALL
    SELECT 'extensions', quote_ident(extname) FROM pg_extension
    UNION ALL
    SELECT 'event triggers', quote_ident(evtname) FROM pg_event_trigger
)
SELECT kind, count(*)::int AS n, md5(string_agg(name, ',' ORDER BY name COLLATE "C")) AS names
  FROM obj
 GROUP BY kind
 ORDER BY kind;
