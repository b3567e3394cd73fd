-- Pin search_path on every function and procedure in schema jointembed (applied last, so
-- functions defined by any earlier file, including new ones, are covered) that does not
-- pin its own (e.g. a SECURITY DEFINER trigger function with `SET search_path =
-- pg_catalog, pg_temp` keeps it). A function that must resolve names in the caller's
-- search_path takes it as an argument defaulting to current_setting('search_path') (an
-- argument is evaluated before the function's own setting applies): see jointembed.knn.
--
-- The path is: jointembed, the schema the vector extension lives in (looked up now:
-- 'public' on a plain install, 'extensions' on Supabase, ...), pg_catalog, and pg_temp
-- last, so a caller's search_path (say just `public` while vector is in `extensions`)
-- can neither break nor redirect the names the functions use (vector, <->,
-- vector_dims, ...), and no temporary object can shadow them. If the extension is moved
-- later (ALTER EXTENSION vector SET SCHEMA), re-apply the definitions (or run this file).
DO $do$
DECLARE
    vs name;
    f  regprocedure;
BEGIN
    SELECT n.nspname INTO vs FROM pg_catalog.pg_extension e
    JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector';
    IF vs IS NULL THEN
        RAISE EXCEPTION 'jointembed: the vector extension is not installed' USING ERRCODE = 'undefined_object';
    END IF;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'jointembed'::regnamespace AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s WHERE s LIKE 'search\_path=%')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d   -- not an extension's member
                          WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s SET search_path = %I, %I, pg_catalog, pg_temp', f, 'jointembed', vs);
    END LOOP;
END
$do$;
