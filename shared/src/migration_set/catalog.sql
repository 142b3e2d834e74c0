-- The catalog of one schema ($1) as comparable rows: its tables, columns,
-- constraints, indexes, sequences, triggers, views and functions, with every
-- mention of the schema's own name taken out, so two schemas made the same
-- way give the same rows. Used by `import-migrations` (through the platform's
-- Django) and by the tests that compare a tenant this project made with one
-- Django made.
WITH ns AS (
    SELECT oid, quote_ident(nspname) || '.' AS prefix FROM pg_namespace WHERE nspname = $1
),
rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence
    FROM pg_class c, ns WHERE c.relnamespace = ns.oid
)
SELECT kind, a, b, c, d FROM (
    SELECT 'table' AS kind, relname AS a, relkind::text AS b, relpersistence::text AS c, '' AS d
    FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'column', r.relname, att.attname,
           format_type(att.atttypid, att.atttypmod) || CASE WHEN att.attnotnull THEN ' NOT NULL' ELSE '' END
               || CASE att.attidentity WHEN 'a' THEN ' ALWAYS AS IDENTITY' WHEN 'd' THEN ' BY DEFAULT AS IDENTITY' ELSE '' END
               || CASE WHEN att.attgenerated <> '' THEN ' GENERATED' ELSE '' END
               || coalesce(' COLLATE ' || nullif(coll.collname, 'default'), ''),
           (row_number() OVER (PARTITION BY r.relname ORDER BY att.attnum))::text || ' '
               || coalesce(replace(pg_get_expr(def.adbin, def.adrelid), ns.prefix, ''), '')
    FROM rel r
    JOIN ns ON true
    JOIN pg_attribute att ON att.attrelid = r.oid AND att.attnum > 0 AND NOT att.attisdropped
    LEFT JOIN pg_attrdef def ON def.adrelid = r.oid AND def.adnum = att.attnum
    LEFT JOIN pg_collation coll ON coll.oid = att.attcollation AND att.attcollation <> 0
    WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'constraint', r.relname, con.conname, con.contype::text,
           replace(pg_get_constraintdef(con.oid), ns.prefix, '')
    FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid JOIN ns ON true
    UNION ALL
    SELECT 'index', t.relname, i.relname, '', replace(pg_get_indexdef(i.oid), ns.prefix, '')
    FROM pg_index x JOIN rel i ON i.oid = x.indexrelid JOIN rel t ON t.oid = x.indrelid JOIN ns ON true
    UNION ALL
    SELECT 'sequence', r.relname, format_type(s.seqtypid, NULL),
           s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmin || ' ' || s.seqmax || ' ' || s.seqcache
               || CASE WHEN s.seqcycle THEN ' CYCLE' ELSE '' END,
           coalesce((SELECT t.relname || '.' || att.attname FROM pg_depend dep
                     JOIN pg_class t ON t.oid = dep.refobjid
                     JOIN pg_attribute att ON att.attrelid = dep.refobjid AND att.attnum = dep.refobjsubid
                     WHERE dep.objid = r.oid AND dep.classid = 'pg_class'::regclass
                       AND dep.refclassid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i')
                     LIMIT 1), '')
    FROM pg_sequence s JOIN rel r ON r.oid = s.seqrelid
    UNION ALL
    SELECT 'trigger', r.relname, tg.tgname, '', replace(pg_get_triggerdef(tg.oid), ns.prefix, '')
    FROM pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid JOIN ns ON true WHERE NOT tg.tgisinternal
    UNION ALL
    SELECT 'view', r.relname, '', '', replace(pg_get_viewdef(r.oid), ns.prefix, '')
    FROM rel r JOIN ns ON true WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'function', p.proname, pg_get_function_identity_arguments(p.oid), '',
           md5(replace(pg_get_functiondef(p.oid), ns.prefix, ''))
    FROM pg_proc p JOIN ns ON p.pronamespace = ns.oid WHERE p.prokind IN ('f', 'p')
) catalog
ORDER BY kind, a, b, c, d
