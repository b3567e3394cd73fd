-- Roles: the one place that says what a role other than the owner may do (docs/SYNC.md,
-- "Roles"). The owner is the role that ran the migrations: it owns schema jointembed,
-- every table and function in it, and alone can attach / detach / reembed, create or
-- drop collections and build indexes.
--
-- jointembed.grant_usage(role, writer => false): a reader / worker:
--   * USAGE on schema jointembed, SELECT on its tables (now and, through default
--     privileges, the side tables and queues the owner creates later): search
--     collections and attached tables, read status;
--   * EXECUTE on the look-up functions and the queue functions a sync worker calls
--     (_sync_claim, _sync_fetch, _sync_complete, _sync_fail, _sync_release, sync_status):
--     `jointembed sync`, `jointembed worker`, `jointembed status`. Those functions are
--     SECURITY DEFINER; the role itself has no INSERT / UPDATE / DELETE on any table.
-- writer => true, in addition:
--   * INSERT / UPDATE / DELETE on the items tables of existing collections (`jointembed
--     index` into them; run grant_usage again after creating a collection);
--   * EXECUTE on sync_rescan and sync_retry_failed (`sync --rescan`, `--retry-failed`).
-- Neither may write the catalog (collections, attachments, attachment_versions,
-- schema_version, definitions), create objects in schema jointembed, or run attach,
-- detach, reembed, grant_usage. Calling grant_usage again replaces the role's rights
-- (writer => false takes the writer rights back).

CREATE OR REPLACE FUNCTION jointembed.grant_usage(role name, writer boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    r    name;
    f    regprocedure;
    t    regclass;
    s    text;
    reader_fns text[] := ARRAY['find_attachment', 'list_attachments', 'sync_versions',
                           '_sync_version_for', 'sync_status', '_sync_claim', '_sync_fetch', '_sync_complete',
                           '_sync_fail', '_sync_release'];
    writer_fns text[] := ARRAY['sync_rescan', 'sync_retry_failed'];
BEGIN
    SELECT x.rolname INTO r FROM pg_roles x WHERE x.rolname = grant_usage.role;
    IF r IS NULL THEN
        RAISE EXCEPTION 'jointembed: no role %', quote_ident(grant_usage.role) USING ERRCODE = 'undefined_object';
    END IF;
    IF grant_usage.writer IS NULL THEN
        RAISE EXCEPTION 'jointembed: writer must be true or false' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- start from nothing, so the rights below are the role's whole story
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA jointembed FROM %I', r);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA jointembed FROM %I', r);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA jointembed FROM %I', r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA jointembed REVOKE ALL ON TABLES FROM %I', r);
    EXECUTE format('REVOKE CREATE ON SCHEMA jointembed FROM %I', r);

    EXECUTE format('GRANT USAGE ON SCHEMA jointembed TO %I', r);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA jointembed TO %I', r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA jointembed GRANT SELECT ON TABLES TO %I', r);
    FOR f IN SELECT p.oid FROM pg_proc p
             WHERE p.pronamespace = 'jointembed'::regnamespace
               AND p.proname = ANY (reader_fns || CASE WHEN grant_usage.writer THEN writer_fns ELSE '{}' END) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, r);
    END LOOP;
    IF grant_usage.writer THEN
        FOR t IN SELECT c.oid FROM jointembed.collections x
                 JOIN pg_class c ON c.relname = 'items_' || x.id
                 AND c.relnamespace = 'jointembed'::regnamespace AND c.relkind = 'r' LOOP
            EXECUTE format('GRANT INSERT, UPDATE, DELETE ON %s TO %I', t, r);
            FOR s IN SELECT pg_get_serial_sequence(t::text, a.attname) FROM pg_attribute a
                     WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped LOOP
                IF s IS NOT NULL THEN
                    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', s::regclass, r);
                END IF;
            END LOOP;
        END LOOP;
    END IF;
    INSERT INTO jointembed.role_grants AS g (role, writer) VALUES (r, grant_usage.writer)
    ON CONFLICT ON CONSTRAINT role_grants_pkey DO UPDATE SET writer = EXCLUDED.writer, granted_at = now();
END
$fn$;

COMMENT ON FUNCTION jointembed.grant_usage(name, boolean) IS
    'give a role the rights of a jointembed reader/worker (writer: also write collection items); see docs/SYNC.md';

-- Administrative and queue functions are not for PUBLIC: only the owner and the roles
-- grant_usage names may call them (search functions stay callable by any role that can
-- read the tables).
-- Then the roles configured before get their rights again (a re-created function loses
-- its grants); roles dropped since are forgotten.
DO $grants$
DECLARE
    f regprocedure;
    g record;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc p
             WHERE p.pronamespace = 'jointembed'::regnamespace
               AND (p.proname LIKE '%sync%' OR p.proname IN ('attach', 'detach', 'grant_usage')) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    DELETE FROM jointembed.role_grants x WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = x.role);
    FOR g IN SELECT x.role, x.writer FROM jointembed.role_grants x ORDER BY x.role LOOP
        PERFORM jointembed.grant_usage(g.role, g.writer);
    END LOOP;
END
$grants$;
