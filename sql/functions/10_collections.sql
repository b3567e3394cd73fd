-- Collections: create, drop, find the items table (tables: migrations/001_schema.sql).

-- Create (or find) a collection and its items table. Returns the collection row.
-- Concurrent calls with the same name are safe: the loser of the race waits on the
-- unique index and then finds the winner's row. Does not check model_id/dim of an
-- existing collection: the caller compares them (jointembed_pg.store does, before writes).
CREATE OR REPLACE FUNCTION jointembed.create_collection(p_name text, p_model_id text, p_dim integer)
RETURNS jointembed.collections
LANGUAGE plpgsql AS $fn$
DECLARE
    c jointembed.collections;
BEGIN
    INSERT INTO jointembed.collections AS t (name, model_id, dim)
    VALUES (p_name, p_model_id, p_dim)
    ON CONFLICT (name) DO NOTHING
    RETURNING t.* INTO c;
    IF c.id IS NULL THEN
        SELECT t.* INTO STRICT c FROM jointembed.collections t WHERE t.name = p_name;
        RETURN c;
    END IF;
    UPDATE jointembed.collections t SET items_table = 'items_' || c.id
    WHERE t.id = c.id RETURNING t.* INTO c;
    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            id           bigserial   PRIMARY KEY,
            modality     text        NOT NULL CHECK (modality IN ('image', 'text')),
            key          text        NOT NULL,
            source       text,
            text         text,
            content_hash text,
            model_id     text        NOT NULL,
            embedding    vector(%2$s) NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            UNIQUE (modality, key)
        )$ddl$, c.items_table, c.dim);
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
