-- Collections: create, drop, find the items table (tables: migrations/001_schema.sql).

-- The type of pgvector's extension named p_type ('vector' or 'halfvec'), wherever the
-- extension lives (its schema need not be on the search_path); NULL if this pgvector
-- has no such type (halfvec arrived in pgvector 0.7).
CREATE OR REPLACE FUNCTION jointembed._vector_type(p_type text)
RETURNS regtype
LANGUAGE sql STABLE AS $fn$
    SELECT t.oid::regtype
    FROM pg_extension e
    JOIN pg_depend d ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
                    AND d.classid = 'pg_type'::regclass AND d.deptype = 'e'
    JOIN pg_type t ON t.oid = d.objid
    WHERE e.extname = 'vector' AND t.typname = p_type
$fn$;

-- Create (or find) a collection and its items table. Returns the collection row.
-- p_storage: type of the embedding column, 'vector' (float32) or 'halfvec' (float16,
-- pgvector >= 0.7). Refuses more dimensions than an HNSW index of that type takes
-- (2000 vector, 4000 halfvec: pgvector src/hnsw.h), here rather than at index time.
-- Concurrent calls with the same name are safe: the loser of the race waits on the
-- unique index and then finds the winner's row. Does not check model_id/dim/storage of
-- an existing collection: the caller compares them (jointembed_pg.search.store does, before writes).
DROP FUNCTION IF EXISTS jointembed.create_collection(text, text, integer);
CREATE OR REPLACE FUNCTION jointembed.create_collection(p_name text, p_model_id text, p_dim integer,
                                                        p_storage text DEFAULT 'vector')
RETURNS jointembed.collections
LANGUAGE plpgsql AS $fn$
DECLARE
    c     jointembed.collections;
    typ   regtype;
    limit_dim integer := CASE p_storage WHEN 'vector' THEN 2000 WHEN 'halfvec' THEN 4000 END;
BEGIN
    IF limit_dim IS NULL THEN
        RAISE EXCEPTION 'jointembed: storage must be vector or halfvec, got %', quote_nullable(p_storage)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.* INTO c FROM jointembed.collections t WHERE t.name = p_name;
    IF FOUND THEN
        RETURN c;
    END IF;
    IF p_dim IS NULL OR p_dim < 1 OR p_dim > limit_dim THEN
        RAISE EXCEPTION 'jointembed: an HNSW index on % takes at most % dimensions, got % (collection %)',
            p_storage, limit_dim, p_dim, quote_literal(p_name)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = CASE WHEN p_storage = 'vector' AND p_dim BETWEEN 1 AND 4000
                              THEN 'use storage halfvec (up to 4000 dimensions)'
                              WHEN p_dim > 4000 THEN 'pgvector indexes no embedding of more than 4000 dimensions'
                              ELSE 'the dimension must be at least 1' END;  -- a NULL option would hide the message
    END IF;
    typ := jointembed._vector_type(p_storage);
    IF typ IS NULL THEN
        RAISE EXCEPTION 'jointembed: storage % needs pgvector >= 0.7.0; this server has pgvector %',
            p_storage, coalesce((SELECT extversion FROM pg_extension WHERE extname = 'vector'), 'none')
            USING ERRCODE = 'feature_not_supported';
    END IF;
    INSERT INTO jointembed.collections AS t (name, model_id, dim, storage)
    VALUES (p_name, p_model_id, p_dim, p_storage)
    ON CONFLICT (name) DO NOTHING
    RETURNING t.* INTO c;
    IF c.id IS NULL THEN
        SELECT t.* INTO STRICT c FROM jointembed.collections t WHERE t.name = p_name;
        RETURN c;
    END IF;
    UPDATE jointembed.collections t SET items_table = 'items_' || c.id
    WHERE t.id = c.id RETURNING t.* INTO c;
    -- the column type: the extension type's schema and name as identifiers (%I, from the
    -- catalog row of its oid) and the checked dim as a literal type modifier (%L).
    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            id           bigserial   PRIMARY KEY,
            modality     text        NOT NULL CHECK (modality IN ('image', 'text')),
            key          text        NOT NULL,
            source       text,
            text         text,
            content_hash text,
            model_id     text        NOT NULL,
            embedding    %2$I.%3$I(%4$L) NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            UNIQUE (modality, key)
        )$ddl$, c.items_table,
        (SELECT n.nspname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
         WHERE t.oid = typ),
        (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = typ), c.dim);
    EXECUTE format('COMMENT ON TABLE jointembed.%I IS %L',
                   c.items_table, 'jointembed items of collection ' || c.name);
    RETURN c;
END
$fn$;

-- Drop a collection and its items table. Returns false when there was none.
CREATE OR REPLACE FUNCTION jointembed.drop_collection(p_name text)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    tbl text;
BEGIN
    DELETE FROM jointembed.collections t WHERE t.name = p_name RETURNING t.items_table INTO tbl;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', tbl);
    RETURN true;
END
$fn$;

-- The items table of a collection as a regclass (for joins in ad-hoc SQL).
CREATE OR REPLACE FUNCTION jointembed.items_table(p_name text)
RETURNS regclass
LANGUAGE sql STABLE AS $fn$
    SELECT ('jointembed.' || quote_ident(t.items_table))::regclass
    FROM jointembed.collections t WHERE t.name = p_name
$fn$;
