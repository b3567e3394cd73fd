-- 003: attached user tables: keep embeddings of a user's own table in sync (issue 6).
--
-- Attaching schema.table creates, all in schema jointembed and named from the
-- attachment id (never from user input):
--   * jointembed.a<id>_queue  the work queue: one row per (version, key, modality) to embed;
--   * jointembed.a<id>_v<n>   one side table per model version with the embeddings
--                             (key typed like the user's key column, vector(dim));
--   * row triggers jointembed_sync_* on the user's table (the only objects created
--     outside schema jointembed); the user's table is never altered.
-- All DDL and every dynamic statement is built here with format('%I' / '%L').
--
-- Queue row life cycle (claim/lease, so a crashed worker's claims come back):
--   enqueued (last_error NULL, claim NULL) -> claimed by sync_claim (claim = token,
--   lease_until) -> sync_complete deletes it and writes the embedding in one
--   transaction, or sync_fail records last_error/attempts/next_attempt_at (backoff),
--   next_attempt_at = 'infinity' once given up. Any change of the row's content
--   re-enqueues it (attempts reset, claim cleared), so a worker still holding an older
--   claim writes nothing for it (its token no longer matches).

CREATE TABLE jointembed.attachments (
    id             serial      PRIMARY KEY,
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    table_oid      oid         NOT NULL UNIQUE,
    key_column     text        NOT NULL,
    key_type       text        NOT NULL,            -- format_type() of the key column
    image_column   text,
    text_column    text,
    image_source   text        CHECK (image_source IN ('path', 'url', 'bytea')),
    image_root     text,                            -- base directory of relative paths
    model_id       text        NOT NULL,            -- of the active version
    dim            integer     NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    active_version integer     NOT NULL DEFAULT 1,
    queue_table    text        UNIQUE,              -- unqualified, schema jointembed
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schema_name, table_name),
    CHECK (image_column IS NOT NULL OR text_column IS NOT NULL),
    CHECK ((image_column IS NULL) = (image_source IS NULL))
);

COMMENT ON TABLE jointembed.attachments IS
    'user tables whose rows jointembed keeps embedded (jointembed attach / detach)';

CREATE TABLE jointembed.attachment_versions (
    attachment_id integer     NOT NULL REFERENCES jointembed.attachments (id) ON DELETE CASCADE,
    version       integer     NOT NULL,
    model_id      text        NOT NULL,
    dim           integer     NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    side_table    text        NOT NULL UNIQUE,      -- unqualified, schema jointembed
    state         text        NOT NULL CHECK (state IN ('building', 'active', 'retired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    PRIMARY KEY (attachment_id, version)
);

CREATE UNIQUE INDEX attachment_versions_one_active
    ON jointembed.attachment_versions (attachment_id) WHERE state = 'active';

CREATE UNIQUE INDEX attachment_versions_one_building
    ON jointembed.attachment_versions (attachment_id) WHERE state = 'building';

COMMENT ON TABLE jointembed.attachment_versions IS
    'embedding side tables of an attachment, one per model; searches use the active one';
