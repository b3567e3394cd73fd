-- The search_path rule (docs/DESIGN.md, "search_path rule"), enforced here: every function
-- and procedure in schema jointembed (applied last, so functions defined by any earlier
-- file, including new ones, are covered) runs with
--
--     search_path = pg_catalog, jointembed, pg_temp
--
-- pg_catalog first, so no object of another schema can stand in for a built-in (a role
-- able to CREATE in public could otherwise plant public.array_remove(text[], text), or a
-- better-matching overload, and run its code with the owner's rights when a SECURITY
-- DEFINER function calls a helper); then jointembed, where only the owner creates; pg_temp
-- last (and named, so it is not searched first for tables and types; functions and
-- operators are never looked up there). Never public, never the vector extension's schema:
-- pgvector's objects are written qualified (@vector@.vector, OPERATOR(@vector@.<->), ...,
-- replaced by jointembed_pg.migrations.render; in dynamic SQL, %I of
-- jointembed._vector_schema()).
--
-- A function that pins a different path (a missing jointembed, public, the extension's
-- schema, pg_temp not last, ...) is overridden too: the rule has no exceptions. A function
-- that must resolve names in the caller's search_path takes it as an argument defaulting
-- to pg_catalog.current_setting('search_path') (an argument is evaluated before the
-- function's own setting applies) and sets it around that part only: see jointembed.knn.
--
-- Schema jointembed itself: no role but its owner and the role applying this file (the
-- functions' owner; an admin may have made the schema and granted it CREATE) may CREATE
-- in it (superusers aside). A CREATE right of PUBLIC or of another role is revoked here; if
-- the applying role cannot revoke it (it is not the schema's owner nor the grantor), the
-- apply fails, naming the role, rather than run with a schema on the path that someone
-- else may write.
DO $do$
DECLARE
    f    regprocedure;
    g    record;
    mine oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER);
BEGIN
    FOR g IN
        SELECT acl.grantee, n.nspowner
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) acl
        WHERE n.oid = 'jointembed'::pg_catalog.regnamespace AND acl.privilege_type = 'CREATE'
          AND acl.grantee OPERATOR(pg_catalog.<>) ALL (ARRAY[n.nspowner, mine])
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = acl.grantee AND r.rolsuper)
    LOOP
        IF g.grantee = 0 THEN
            REVOKE CREATE ON SCHEMA jointembed FROM PUBLIC;
        ELSE
            EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA jointembed FROM %s', g.grantee::pg_catalog.regrole);
        END IF;
    END LOOP;
    FOR g IN
        SELECT acl.grantee FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) acl
        WHERE n.oid = 'jointembed'::pg_catalog.regnamespace AND acl.privilege_type = 'CREATE'
          AND acl.grantee OPERATOR(pg_catalog.<>) ALL (ARRAY[n.nspowner, mine])
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = acl.grantee AND r.rolsuper)
        LIMIT 1
    LOOP
        RAISE EXCEPTION 'jointembed: role % may CREATE in schema jointembed; only its owner may (REVOKE CREATE ON SCHEMA jointembed FROM %)',
            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::pg_catalog.text END,
            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::pg_catalog.text END
            USING ERRCODE = 'insufficient_privilege';
    END LOOP;
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'jointembed'::pg_catalog.regnamespace AND p.prokind IN ('f', 'p')
          AND NOT (ARRAY['search_path=pg_catalog, jointembed, pg_temp']::pg_catalog.text[]
                   OPERATOR(pg_catalog.<@) coalesce(p.proconfig, '{}'::pg_catalog.text[]))
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d   -- not an extension's member
                          WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET search_path = pg_catalog, jointembed, pg_temp', f);
    END LOOP;
END
$do$;
