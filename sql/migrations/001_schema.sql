-- 001: collections catalog and the per-collection items tables.
--
-- Each collection owns one items table, jointembed.items_<collection id>, because a
-- pgvector column needs a fixed dimension: embedding vector(D). Tables are created by
-- jointembed.create_collection(...) (sql/functions/10_collections.sql), never by string-built SQL in Python.
--
-- Room for later migrations: attached user tables (side tables + work queue) can add
-- their own catalog (e.g. jointembed.attachments referencing collections(id)); the
-- `options` column holds per-collection settings that need no schema change.

CREATE TABLE jointembed.collections (
    id          serial      PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    model_id    text        NOT NULL,
    dim         integer     NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    distance    text        NOT NULL DEFAULT 'l2' CHECK (distance = 'l2'),
    items_table text        UNIQUE,   -- unqualified table name in schema jointembed
    options     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE jointembed.collections IS
    'jointembed collections: one items table (items_table, schema jointembed) per collection';
