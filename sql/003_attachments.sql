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

-- Names of the triggers created on an attached table (dropped by detach).
CREATE FUNCTION jointembed._sync_trigger_names()
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT ARRAY['jointembed_sync_insert', 'jointembed_sync_delete', 'jointembed_sync_key',
                 'jointembed_sync_text', 'jointembed_sync_image', 'jointembed_sync_truncate']
$fn$;

-- Modalities an attachment embeds: {image}, {text} or {image,text}.
CREATE FUNCTION jointembed._sync_modalities(a jointembed.attachments)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT array_remove(ARRAY[CASE WHEN a.image_column IS NOT NULL THEN 'image' END,
                              CASE WHEN a.text_column IS NOT NULL THEN 'text' END], NULL)
$fn$;

-- Create the side table of one version: PK (key, modality), one model, HNSW per modality.
CREATE FUNCTION jointembed._sync_create_side(a jointembed.attachments, p_table text,
                                             p_model_id text, p_dim integer)
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            key          %2$s        NOT NULL,
            modality     text        NOT NULL CHECK (modality IN ('image', 'text')),
            content_hash text        NOT NULL,
            model_id     text        NOT NULL CHECK (model_id = %3$L),
            embedding    vector(%4$s) NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (key, modality)
        )$ddl$, p_table, a.key_type, p_model_id, p_dim);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I USING hnsw (embedding vector_l2_ops) '
                   'WHERE modality = %L', p_table || '_image_hnsw', p_table, 'image');
    EXECUTE format('CREATE INDEX %I ON jointembed.%I USING hnsw (embedding vector_l2_ops) '
                   'WHERE modality = %L', p_table || '_text_hnsw', p_table, 'text');
    EXECUTE format('COMMENT ON TABLE jointembed.%I IS %L', p_table,
                   format('jointembed embeddings of %I.%I (model %s)',
                          a.schema_name, a.table_name, p_model_id));
END
$fn$;

-- Enqueue every row of the user's table for one version (attach backfill, reembed).
CREATE FUNCTION jointembed._sync_backfill(a jointembed.attachments, p_version integer)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('INSERT INTO jointembed.%I (version, key, modality) '
                   'SELECT $1, t.%I, m FROM %I.%I t CROSS JOIN unnest($2::text[]) m '
                   'ON CONFLICT (version, key, modality) DO NOTHING',
                   a.queue_table, a.key_column, a.schema_name, a.table_name)
        USING p_version, jointembed._sync_modalities(a);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('jointembed_sync', a.id::text);
    RETURN n;
END
$fn$;

-- The one trigger function of every attached table. TG_ARGV[0]: the attachment id;
-- TG_ARGV[1]: the modality an UPDATE trigger enqueues ('image' / 'text'), or '*' (all).
-- INSERT enqueues all modalities; UPDATE of the key removes the old key's embeddings and
-- enqueues the new key; DELETE / TRUNCATE remove embeddings and queue rows.
-- SECURITY DEFINER so that roles writing the user's table need no rights on schema
-- jointembed; it refuses to run on any table but the attachment's own.
CREATE FUNCTION jointembed.sync_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    a    jointembed.attachments;
    v    record;
    mods text[];
BEGIN
    SELECT * INTO a FROM jointembed.attachments t WHERE t.id = TG_ARGV[0]::integer;
    IF NOT FOUND OR (a.table_oid <> TG_RELID AND NOT EXISTS (   -- a partition of the table
            SELECT 1 FROM pg_partition_ancestors(TG_RELID) p WHERE p.relid = a.table_oid)) THEN
        RAISE EXCEPTION 'jointembed: trigger % on % does not belong to attachment %',
            TG_NAME, TG_RELID::regclass, TG_ARGV[0] USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('DELETE FROM jointembed.%I', a.queue_table);
        FOR v IN SELECT side_table FROM jointembed.attachment_versions
                 WHERE attachment_id = a.id AND state IN ('active', 'building') LOOP
            EXECUTE format('DELETE FROM jointembed.%I', v.side_table);
        END LOOP;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND TG_ARGV[1] = '*') THEN
        -- queue first: waits for a worker writing this key, so the side delete sees its row
        EXECUTE format('DELETE FROM jointembed.%I q WHERE q.key = ($1).%I', a.queue_table, a.key_column)
            USING OLD;
        FOR v IN SELECT side_table FROM jointembed.attachment_versions
                 WHERE attachment_id = a.id AND state IN ('active', 'building') LOOP
            EXECUTE format('DELETE FROM jointembed.%I s WHERE s.key = ($1).%I', v.side_table, a.key_column)
                USING OLD;
        END LOOP;
        IF TG_OP = 'DELETE' THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND TG_ARGV[1] <> '*' THEN
        mods := ARRAY[TG_ARGV[1]];
    ELSE
        mods := jointembed._sync_modalities(a);
    END IF;
    EXECUTE format($q$
        INSERT INTO jointembed.%1$I AS q (version, key, modality)
        SELECT v.version, ($1).%2$I, m
        FROM jointembed.attachment_versions v CROSS JOIN unnest($2::text[]) m
        WHERE v.attachment_id = $3 AND v.state IN ('active', 'building')
        ON CONFLICT (version, key, modality) DO UPDATE
        SET enqueued_at = clock_timestamp(), attempts = 0, next_attempt_at = now(),
            last_error = NULL, failed_at = NULL, claim = NULL, lease_until = NULL$q$,
        a.queue_table, a.key_column) USING NEW, mods, a.id;
    PERFORM pg_notify('jointembed_sync', a.id::text);
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION jointembed.sync_trigger() FROM PUBLIC;

-- Check one column of the user's table; returns its type (format_type) or raises.
CREATE FUNCTION jointembed._sync_column(p_oid oid, p_column text, p_what text, p_types regtype[])
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    t oid;
BEGIN
    SELECT coalesce(nullif(ty.typbasetype, 0), ty.oid) INTO t   -- a domain's base type
    FROM pg_attribute att JOIN pg_type ty ON ty.oid = att.atttypid
    WHERE att.attrelid = p_oid AND att.attname = p_column AND att.attnum > 0 AND NOT att.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: table % has no column % (the % column)',
            p_oid::regclass, quote_ident(p_column), p_what USING ERRCODE = 'undefined_column';
    END IF;
    IF p_types IS NOT NULL AND NOT (t = ANY (p_types::oid[])) THEN
        RAISE EXCEPTION 'jointembed: % column %.% has type %, expected one of %',
            p_what, p_oid::regclass, quote_ident(p_column), format_type(t, NULL), p_types
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
            WHERE attrelid = p_oid AND attname = p_column);
END
$fn$;

-- Attach a user table (see the header). Takes a SHARE ROW EXCLUSIVE lock on it (as
-- CREATE TRIGGER does) so the backfill and the triggers see every row exactly once.
CREATE FUNCTION jointembed.attach(p_schema text, p_table text, p_key text,
                                  p_image_column text, p_text_column text,
                                  p_image_source text, p_image_root text,
                                  p_model_id text, p_dim integer)
RETURNS jointembed.attachments
LANGUAGE plpgsql AS $fn$
DECLARE
    rel   oid;
    ktype text;
    a     jointembed.attachments;
    t     text;
BEGIN
    SELECT c.oid INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema AND c.relname = p_table AND c.relkind IN ('r', 'p');
    IF rel IS NULL THEN
        RAISE EXCEPTION 'jointembed: no table %.%', quote_ident(p_schema), quote_ident(p_table)
            USING ERRCODE = 'undefined_table';
    END IF;
    IF p_schema = 'jointembed' THEN
        RAISE EXCEPTION 'jointembed: tables in schema jointembed cannot be attached'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM jointembed.attachments x WHERE x.table_oid = rel) THEN
        RAISE EXCEPTION 'jointembed: table %.% is already attached (detach it first)',
            quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'duplicate_object';
    END IF;
    IF p_image_column IS NULL AND p_text_column IS NULL THEN
        RAISE EXCEPTION 'jointembed: attach needs an image column, a text column or both'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('LOCK TABLE %I.%I IN SHARE ROW EXCLUSIVE MODE', p_schema, p_table);
    ktype := jointembed._sync_column(rel, p_key, 'key', NULL);
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute att
                       ON att.attrelid = i.indrelid AND att.attnum = i.indkey[0]
                   WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1
                     AND i.indpred IS NULL AND i.indexprs IS NULL AND att.attname = p_key) THEN
        RAISE EXCEPTION 'jointembed: key column %.% is not unique (needs a primary key or unique index on it alone)',
            rel::regclass, quote_ident(p_key) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_text_column IS NOT NULL THEN
        PERFORM jointembed._sync_column(rel, p_text_column, 'text',
                                        ARRAY['text', 'varchar', 'bpchar']::regtype[]);
    END IF;
    IF p_image_column IS NOT NULL THEN
        PERFORM jointembed._sync_column(rel, p_image_column, 'image',
            CASE WHEN p_image_source = 'bytea' THEN ARRAY['bytea']::regtype[]
                 ELSE ARRAY['text', 'varchar', 'bpchar']::regtype[] END);
    END IF;

    INSERT INTO jointembed.attachments AS x
        (schema_name, table_name, table_oid, key_column, key_type, image_column, text_column,
         image_source, image_root, model_id, dim)
    VALUES (p_schema, p_table, rel, p_key, ktype, p_image_column, p_text_column,
            CASE WHEN p_image_column IS NOT NULL THEN coalesce(p_image_source, 'path') END,
            p_image_root, p_model_id, p_dim)
    RETURNING x.* INTO a;
    UPDATE jointembed.attachments x SET queue_table = 'a' || a.id || '_queue'
    WHERE x.id = a.id RETURNING x.* INTO a;

    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            id              bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
            version         integer     NOT NULL,
            key             %2$s        NOT NULL,
            modality        text        NOT NULL CHECK (modality IN ('image', 'text')),
            enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts        integer     NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error      text,
            failed_at       timestamptz,
            claim           uuid,
            lease_until     timestamptz,
            PRIMARY KEY (version, key, modality)
        )$ddl$, a.queue_table, a.key_type);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (version, next_attempt_at, id)',
                   a.queue_table || '_ready', a.queue_table);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (claim) WHERE claim IS NOT NULL',
                   a.queue_table || '_claim', a.queue_table);
    EXECUTE format('COMMENT ON TABLE jointembed.%I IS %L', a.queue_table,
                   format('jointembed work queue of %I.%I', p_schema, p_table));
    INSERT INTO jointembed.attachment_versions (attachment_id, version, model_id, dim, side_table, state, activated_at)
    VALUES (a.id, 1, p_model_id, p_dim, 'a' || a.id || '_v1', 'active', now());
    PERFORM jointembed._sync_create_side(a, 'a' || a.id || '_v1', p_model_id, p_dim);

    t := format('ON %I.%I FOR EACH ROW EXECUTE FUNCTION jointembed.sync_trigger(%L', p_schema, p_table, a.id);
    EXECUTE format('CREATE TRIGGER jointembed_sync_insert AFTER INSERT %s)', t);
    EXECUTE format('CREATE TRIGGER jointembed_sync_delete AFTER DELETE %s)', t);
    EXECUTE format('CREATE TRIGGER jointembed_sync_key AFTER UPDATE OF %1$I ON %2$I.%3$I FOR EACH ROW '
                   'WHEN (OLD.%1$I IS DISTINCT FROM NEW.%1$I) '
                   'EXECUTE FUNCTION jointembed.sync_trigger(%4$L, %5$L)',
                   p_key, p_schema, p_table, a.id, '*');
    IF p_text_column IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER jointembed_sync_text AFTER UPDATE OF %1$I ON %2$I.%3$I FOR EACH ROW '
                       'WHEN (OLD.%1$I IS DISTINCT FROM NEW.%1$I) '
                       'EXECUTE FUNCTION jointembed.sync_trigger(%4$L, %5$L)',
                       p_text_column, p_schema, p_table, a.id, 'text');
    END IF;
    IF p_image_column IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER jointembed_sync_image AFTER UPDATE OF %1$I ON %2$I.%3$I FOR EACH ROW '
                       'WHEN (OLD.%1$I IS DISTINCT FROM NEW.%1$I) '
                       'EXECUTE FUNCTION jointembed.sync_trigger(%4$L, %5$L)',
                       p_image_column, p_schema, p_table, a.id, 'image');
    END IF;
    EXECUTE format('CREATE TRIGGER jointembed_sync_truncate AFTER TRUNCATE ON %I.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION jointembed.sync_trigger(%L)',
                   p_schema, p_table, a.id);
    PERFORM jointembed._sync_backfill(a, 1);
    RETURN a;
END
$fn$;

-- Remove everything attach created: the triggers, the queue, every side table, the
-- catalog rows. Nothing else is touched. Returns false when there was no attachment.
CREATE FUNCTION jointembed.detach(p_id integer)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    a   jointembed.attachments;
    v   record;
    trg text;
    nsp text;
    rel text;
BEGIN
    SELECT * INTO a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR trg, nsp, rel IN
        SELECT t.tgname, n.nspname, c.relname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.tgrelid = a.table_oid AND t.tgname = ANY (jointembed._sync_trigger_names()) LOOP
        EXECUTE format('DROP TRIGGER %I ON %I.%I', trg, nsp, rel);
    END LOOP;
    FOR v IN SELECT side_table FROM jointembed.attachment_versions WHERE attachment_id = a.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', v.side_table);
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', a.queue_table);
    DELETE FROM jointembed.attachments x WHERE x.id = a.id;
    RETURN true;
END
$fn$;

-- The attachment of a table given by name (schema NULL: any schema, must be unique).
CREATE FUNCTION jointembed.find_attachment(p_table text, p_schema text DEFAULT NULL)
RETURNS SETOF jointembed.attachments
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachments a
    WHERE a.table_name = p_table AND (p_schema IS NULL OR a.schema_name = p_schema)
    ORDER BY a.schema_name
$fn$;

-- The live version (active or building) whose model is (p_model_id, p_dim), or none.
CREATE FUNCTION jointembed.sync_version_for(p_id integer, p_model_id text, p_dim integer)
RETURNS SETOF jointembed.attachment_versions
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachment_versions v
    WHERE v.attachment_id = p_id AND v.state IN ('active', 'building')
      AND v.model_id = p_model_id AND v.dim = p_dim
$fn$;

-- Claim up to p_limit ready queue rows of one version for p_lease; returns how many.
-- Rows locked by a concurrent claimer are skipped (FOR UPDATE SKIP LOCKED), and a row
-- whose lease ran out (its worker died) is claimable again. Call in its own transaction.
CREATE FUNCTION jointembed.sync_claim(p_id integer, p_version integer, p_token uuid,
                                      p_limit integer, p_lease interval)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    q text := (SELECT queue_table FROM jointembed.attachments WHERE id = p_id);
    n integer;
BEGIN
    EXECUTE format($q$
        UPDATE jointembed.%1$I q SET claim = $1, lease_until = clock_timestamp() + $2
        WHERE q.id IN (SELECT r.id FROM jointembed.%1$I r
                       WHERE r.version = $3 AND r.next_attempt_at <= now()
                         AND (r.lease_until IS NULL OR r.lease_until < now())
                       ORDER BY r.next_attempt_at, r.id LIMIT $4
                       FOR UPDATE SKIP LOCKED)$q$, q)
        USING p_token, p_lease, p_version, p_limit;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- The claimed rows with the user's current content. text_value: the text column;
-- image_ref: a path / URL (image_source path|url); image_data: bytea content.
-- present = false: the user's row is gone. stored_hash: content hash already stored.
CREATE FUNCTION jointembed.sync_fetch(p_id integer, p_version integer, p_token uuid)
RETURNS TABLE (id bigint, key text, modality text, present boolean, text_value text,
               image_ref text, image_data bytea, stored_hash text, attempts integer)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    a    jointembed.attachments;
    side text;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id;
    SELECT v.side_table INTO STRICT side FROM jointembed.attachment_versions v
    WHERE v.attachment_id = p_id AND v.version = p_version;
    RETURN QUERY EXECUTE format($q$
        SELECT q.id, q.key::text, q.modality, u.ctid IS NOT NULL,
               %5$s, %6$s, %7$s, s.content_hash, q.attempts
        FROM jointembed.%1$I q
        LEFT JOIN %2$I.%3$I u ON u.%4$I = q.key
        LEFT JOIN jointembed.%8$I s ON s.key = q.key AND s.modality = q.modality
        WHERE q.claim = $1 ORDER BY q.id$q$,
        a.queue_table, a.schema_name, a.table_name, a.key_column,
        CASE WHEN a.text_column IS NULL THEN 'NULL::text' ELSE format('u.%I::text', a.text_column) END,
        CASE WHEN a.image_column IS NULL OR a.image_source = 'bytea' THEN 'NULL::text'
             ELSE format('u.%I::text', a.image_column) END,
        CASE WHEN a.image_source = 'bytea' THEN format('u.%I', a.image_column) ELSE 'NULL::bytea' END,
        side) USING p_token;
END
$fn$;

-- Write the embeddings of claimed rows and delete those queue rows, atomically. Only
-- rows still claimed by p_token are written (a row changed, deleted or re-claimed since
-- is skipped). Queue rows locked by a user's transaction (its trigger is re-enqueueing
-- or deleting them) are skipped too, so a worker never waits on, or deadlocks with, the
-- user's writes; if that transaction rolls back, the row's lease runs out and it is redone. p_embeddings NULL: the stored embedding is current (same content hash):
-- only dequeue. Returns the number of queue rows removed.
CREATE FUNCTION jointembed.sync_complete(p_id integer, p_version integer, p_token uuid,
                                         p_ids bigint[], p_hashes text[], p_embeddings vector[])
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    q    text := (SELECT queue_table FROM jointembed.attachments WHERE id = p_id);
    v    jointembed.attachment_versions;
    n    integer;
BEGIN
    SELECT * INTO STRICT v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.version = p_version;
    IF p_embeddings IS NULL THEN
        EXECUTE format('DELETE FROM jointembed.%1$I q WHERE q.id IN (SELECT r.id FROM jointembed.%1$I r '
                       'WHERE r.claim = $1 AND r.id = ANY ($2) FOR UPDATE SKIP LOCKED)', q)
            USING p_token, p_ids;
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    EXECUTE format($q$
        WITH d AS (DELETE FROM jointembed.%1$I q
                   WHERE q.id IN (SELECT r.id FROM jointembed.%1$I r WHERE r.claim = $1 AND r.id = ANY ($2)
                                  ORDER BY r.id FOR UPDATE SKIP LOCKED)
                   RETURNING q.id, q.key, q.modality)
        INSERT INTO jointembed.%2$I AS s (key, modality, content_hash, model_id, embedding)
        SELECT d.key, d.modality, x.h, $5, x.e
        FROM d JOIN unnest($2, $3, $4) AS x (id, h, e) ON x.id = d.id
        ORDER BY d.key, d.modality
        ON CONFLICT (key, modality) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding,
            updated_at = now()$q$, q, v.side_table)
        USING p_token, p_ids, p_hashes, p_embeddings, v.model_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Record failures of claimed rows: attempts + 1, last_error, next attempt after
-- p_backoff_s * 2^(attempts - 1) seconds (at most p_max_backoff_s); given up
-- (next_attempt_at = 'infinity') after p_max_attempts or when p_final. A failed row's
-- stale embedding is removed (it no longer describes the row's content).
CREATE FUNCTION jointembed.sync_fail(p_id integer, p_version integer, p_token uuid,
                                     p_ids bigint[], p_errors text[], p_final boolean[],
                                     p_backoff_s float8, p_max_backoff_s float8,
                                     p_max_attempts integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    q    text := (SELECT queue_table FROM jointembed.attachments WHERE id = p_id);
    side text := (SELECT side_table FROM jointembed.attachment_versions
                  WHERE attachment_id = p_id AND version = p_version);
    n    integer;
BEGIN
    EXECUTE format($q$
        WITH f AS (
            UPDATE jointembed.%1$I q
            SET attempts = q.attempts + 1, last_error = left(x.err, 2000), failed_at = now(),
                claim = NULL, lease_until = NULL,
                next_attempt_at = CASE
                    WHEN x.final OR q.attempts + 1 >= $6 THEN 'infinity'::timestamptz
                    ELSE now() + make_interval(secs => least($5, $4 * 2 ^ q.attempts)) END
            FROM unnest($2, $3, $7) AS x (id, err, final)
            WHERE q.id = x.id AND q.id IN (SELECT r.id FROM jointembed.%1$I r WHERE r.claim = $1
                                           AND r.id = ANY ($2) ORDER BY r.id FOR UPDATE SKIP LOCKED)
            RETURNING q.key, q.modality),
        d AS (DELETE FROM jointembed.%2$I s USING f WHERE s.key = f.key AND s.modality = f.modality)
        SELECT count(*) FROM f$q$, q, side)
        INTO n USING p_token, p_ids, p_errors, p_backoff_s, p_max_backoff_s, p_max_attempts, p_final;
    RETURN n;
END
$fn$;

-- Give back a claim without doing the work (a worker stopping or failing unexpectedly).
CREATE FUNCTION jointembed.sync_release(p_id integer, p_token uuid)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    EXECUTE format('UPDATE jointembed.%I q SET claim = NULL, lease_until = NULL WHERE q.claim = $1',
                   (SELECT queue_table FROM jointembed.attachments WHERE id = p_id))
        USING p_token;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Make given-up rows of a version ready again (jointembed sync --retry-failed).
CREATE FUNCTION jointembed.sync_retry_failed(p_id integer, p_version integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    EXECUTE format('UPDATE jointembed.%I q SET attempts = 0, next_attempt_at = now(), '
                   'claim = NULL, lease_until = NULL WHERE q.version = $1 AND q.last_error IS NOT NULL',
                   (SELECT queue_table FROM jointembed.attachments WHERE id = p_id))
        USING p_version;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Counts of one version: pending (never tried or changed since), failed (last attempt
-- failed; retrying or given up), gave_up, ready (claimable now), done (embeddings stored).
CREATE FUNCTION jointembed._sync_counts(a jointembed.attachments, v jointembed.attachment_versions)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    c jsonb;
    d bigint;
BEGIN
    EXECUTE format($q$
        SELECT jsonb_build_object(
            'pending', count(*) FILTER (WHERE last_error IS NULL),
            'failed', count(*) FILTER (WHERE last_error IS NOT NULL),
            'gave_up', count(*) FILTER (WHERE next_attempt_at = 'infinity'),
            'ready', count(*) FILTER (WHERE next_attempt_at <= now()
                                      AND (lease_until IS NULL OR lease_until < now())),
            'claimed', count(*) FILTER (WHERE lease_until >= now()))
        FROM jointembed.%I WHERE version = $1$q$, a.queue_table) INTO c USING v.version;
    EXECUTE format('SELECT count(*) FROM jointembed.%I', v.side_table) INTO d;
    RETURN c || jsonb_build_object('done', d, 'version', v.version, 'model_id', v.model_id,
                                   'dim', v.dim, 'state', v.state);
END
$fn$;

-- Status of one attachment as JSON: the active version's counts at top level
-- (pending / done / failed ...), 'building' (a reembed in progress, or null) and the
-- p_errors latest errors of the active version.
CREATE FUNCTION jointembed.sync_status(p_id integer, p_errors integer DEFAULT 5)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    a   jointembed.attachments;
    act jointembed.attachment_versions;
    bld jointembed.attachment_versions;
    res jsonb;
    err jsonb;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id;
    SELECT * INTO STRICT act FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'active';
    SELECT * INTO bld FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'building';
    EXECUTE format($q$
        SELECT coalesce(jsonb_agg(e ORDER BY e.failed_at DESC), '[]'::jsonb) FROM (
            SELECT q.key::text AS key, q.modality, q.attempts, q.last_error AS error,
                   q.failed_at, CASE WHEN q.next_attempt_at = 'infinity' THEN NULL
                                     ELSE q.next_attempt_at END AS next_attempt_at
            FROM jointembed.%I q WHERE q.version = $1 AND q.last_error IS NOT NULL
            ORDER BY q.failed_at DESC LIMIT $2) e$q$, a.queue_table)
        INTO err USING act.version, p_errors;
    res := jsonb_build_object('id', a.id, 'schema', a.schema_name, 'table', a.table_name,
                              'key_column', a.key_column, 'image_column', a.image_column,
                              'text_column', a.text_column, 'image_source', a.image_source)
           || jointembed._sync_counts(a, act)
           || jsonb_build_object('errors', err,
                                 'building', CASE WHEN bld.version IS NULL THEN NULL
                                                  ELSE jointembed._sync_counts(a, bld) END);
    RETURN res;
END
$fn$;

-- Start building a new version for another model (reembed): a new side table beside the
-- active one, every row enqueued for it. Resumes a building version of the same model;
-- refuses while another model is being built. Returns the building version.
CREATE FUNCTION jointembed.sync_begin_version(p_id integer, p_model_id text, p_dim integer)
RETURNS jointembed.attachment_versions
LANGUAGE plpgsql AS $fn$
DECLARE
    a jointembed.attachments;
    v jointembed.attachment_versions;
    n integer;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    SELECT * INTO v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'building';
    IF FOUND THEN
        IF v.model_id = p_model_id AND v.dim = p_dim THEN
            RETURN v;
        END IF;
        RAISE EXCEPTION 'jointembed: %.% is already being re-embedded with model % (dim %); finish or abort that first',
            quote_ident(a.schema_name), quote_ident(a.table_name), v.model_id, v.dim
            USING ERRCODE = 'object_in_use';
    END IF;
    n := (SELECT max(version) + 1 FROM jointembed.attachment_versions WHERE attachment_id = p_id);
    INSERT INTO jointembed.attachment_versions AS x (attachment_id, version, model_id, dim, side_table, state)
    VALUES (p_id, n, p_model_id, p_dim, 'a' || p_id || '_v' || n, 'building')
    RETURNING x.* INTO v;
    PERFORM jointembed._sync_create_side(a, v.side_table, p_model_id, p_dim);
    EXECUTE format('LOCK TABLE %I.%I IN SHARE ROW EXCLUSIVE MODE', a.schema_name, a.table_name);
    PERFORM jointembed._sync_backfill(a, n);
    RETURN v;
END
$fn$;

-- Abandon a building version (its side table and queue rows). Returns false if none.
CREATE FUNCTION jointembed.sync_abort_version(p_id integer)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    a jointembed.attachments;
    v jointembed.attachment_versions;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    DELETE FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'building' RETURNING x.* INTO v;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', a.queue_table) USING v.version;
    EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', v.side_table);
    RETURN true;
END
$fn$;

-- Switch searches to the building version, atomically: it becomes active, the old one
-- retired (its queue rows dropped; its side table is returned for the caller to drop
-- in a later transaction, so searches already running on it finish). Refuses while rows
-- of the building version were never attempted (failed rows carry over and keep retrying).
CREATE FUNCTION jointembed.sync_activate_version(p_id integer, p_version integer)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    a       jointembed.attachments;
    v       jointembed.attachment_versions;
    old     jointembed.attachment_versions;
    waiting bigint;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    SELECT * INTO v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.version = p_version AND x.state = 'building';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: version % of %.% is not being built', p_version,
            quote_ident(a.schema_name), quote_ident(a.table_name) USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('SELECT count(*) FROM jointembed.%I WHERE version = $1 AND last_error IS NULL',
                   a.queue_table) INTO waiting USING p_version;
    IF waiting > 0 THEN
        RAISE EXCEPTION 'jointembed: version % of %.% still has % rows to embed', p_version,
            quote_ident(a.schema_name), quote_ident(a.table_name), waiting
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE jointembed.attachment_versions x SET state = 'retired'
    WHERE x.attachment_id = p_id AND x.state = 'active' RETURNING x.* INTO old;
    UPDATE jointembed.attachment_versions x SET state = 'active', activated_at = now()
    WHERE x.attachment_id = p_id AND x.version = p_version;
    UPDATE jointembed.attachments x SET model_id = v.model_id, dim = v.dim, active_version = v.version
    WHERE x.id = p_id;
    EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', a.queue_table) USING old.version;
    RETURN old.side_table;
END
$fn$;

-- Drop the side table of a retired version (after sync_activate_version committed).
CREATE FUNCTION jointembed.sync_drop_retired(p_id integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v record;
    n integer := 0;
    q text := (SELECT queue_table FROM jointembed.attachments WHERE id = p_id);
BEGIN
    FOR v IN DELETE FROM jointembed.attachment_versions x
             WHERE x.attachment_id = p_id AND x.state = 'retired' RETURNING x.side_table, x.version LOOP
        EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', v.side_table);
        EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', q) USING v.version;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$;

-- k nearest rows of an attached table to a query vector (L2, float8, smaller is closer),
-- searching the active version only (one model). key is the user's key as text: join
-- back with `JOIN t ON t.<key> = r.key::<key type>`. p_modality image|text|NULL (both).
CREATE FUNCTION jointembed.search_attached(p_table regclass, p_query vector, p_k integer DEFAULT 10,
                                           p_modality text DEFAULT NULL)
RETURNS TABLE (key text, modality text, distance float8)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a      jointembed.attachments;
    v      jointembed.attachment_versions;
    old_ef text := current_setting('hnsw.ef_search', true);
    -- non-positional %I/%L: the UNION below formats it twice with different arguments
    one    text := '(SELECT s.key::text, s.modality, s.embedding <-> $1 AS distance FROM jointembed.%I s '
                   'WHERE s.modality = %L ORDER BY s.embedding <-> $1 LIMIT $2)';
BEGIN
    IF p_k IS NULL OR p_k < 1 THEN
        RAISE EXCEPTION 'jointembed.search_attached: k must be >= 1, got %', p_k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_modality IS NOT NULL AND p_modality NOT IN ('image', 'text') THEN
        RAISE EXCEPTION 'jointembed.search_attached: modality must be ''image'', ''text'' or NULL, got %',
            quote_literal(p_modality) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO a FROM jointembed.attachments x WHERE x.table_oid = p_table::oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: table % is not attached', p_table USING ERRCODE = 'undefined_table';
    END IF;
    SELECT * INTO STRICT v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = a.id AND x.state = 'active';
    IF vector_dims(p_query) <> v.dim THEN
        RAISE EXCEPTION 'jointembed: query vector has % dimensions but % is embedded with model % (dim %)',
            vector_dims(p_query), p_table, v.model_id, v.dim USING ERRCODE = 'data_exception';
    END IF;
    IF p_k > coalesce(old_ef, '40')::integer THEN
        PERFORM set_config('hnsw.ef_search', least(p_k, 1000)::text, true);
    END IF;
    IF p_modality IS NULL THEN
        RETURN QUERY EXECUTE format('SELECT * FROM (' || one || ' UNION ALL ' || one
                                    || ') u ORDER BY u.distance LIMIT $2',
                                    v.side_table, 'image', v.side_table, 'text') USING p_query, p_k;
    ELSE
        RETURN QUERY EXECUTE format(one, v.side_table, p_modality) USING p_query, p_k;
    END IF;
    IF old_ef IS NOT NULL THEN
        PERFORM set_config('hnsw.ef_search', old_ef, true);
    END IF;
END
$fn$;

COMMENT ON FUNCTION jointembed.search_attached(regclass, vector, integer, text) IS
    'k nearest rows of an attached table (active model only): key as text, modality, L2 distance';

-- Schema of the first table named p_table on the search_path (NULL if none). The name is
-- a plain name, never parsed as SQL.
CREATE FUNCTION jointembed.sync_find_schema(p_table text)
RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = p_table AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false))
    ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1
$fn$;

-- All versions of an attachment, active first.
CREATE FUNCTION jointembed.sync_versions(p_id integer)
RETURNS SETOF jointembed.attachment_versions
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachment_versions v WHERE v.attachment_id = p_id
    ORDER BY v.state <> 'active', v.version DESC
$fn$;

-- Every attachment, by schema and table name.
CREATE FUNCTION jointembed.list_attachments()
RETURNS SETOF jointembed.attachments
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachments ORDER BY schema_name, table_name
$fn$;

-- Enqueue every row again for every live version (jointembed sync --rescan): for images
-- whose files changed while their paths did not. Unchanged content is only hashed, not
-- re-embedded. Returns the number of queue rows added.
CREATE FUNCTION jointembed.sync_rescan(p_id integer)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    a jointembed.attachments;
    v record;
    n bigint := 0;
BEGIN
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id;
    FOR v IN SELECT version FROM jointembed.attachment_versions
             WHERE attachment_id = p_id AND state IN ('active', 'building') LOOP
        n := n + jointembed._sync_backfill(a, v.version);
    END LOOP;
    RETURN n;
END
$fn$;
