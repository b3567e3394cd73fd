-- Attached user tables: attach, detach, the row trigger, catalog look-ups.
-- Tables and the queue life cycle: migrations/003_attachments.sql.

-- Names of the triggers created on an attached table (dropped by detach).
CREATE OR REPLACE FUNCTION jointembed._sync_trigger_names()
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT ARRAY['jointembed_sync_insert', 'jointembed_sync_delete', 'jointembed_sync_key',
                 'jointembed_sync_text', 'jointembed_sync_image', 'jointembed_sync_truncate']
$fn$;

-- Modalities an attachment embeds: {image}, {text} or {image,text}.
CREATE OR REPLACE FUNCTION jointembed._sync_modalities(a jointembed.attachments)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT array_remove(ARRAY[CASE WHEN a.image_column IS NOT NULL THEN 'image' END,
                              CASE WHEN a.text_column IS NOT NULL THEN 'text' END], NULL)
$fn$;

-- Create the side table of one version: PK (key, modality), one model, HNSW per modality.
CREATE OR REPLACE FUNCTION jointembed._sync_create_side(a jointembed.attachments, p_table text,
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
CREATE OR REPLACE FUNCTION jointembed._sync_backfill(a jointembed.attachments, p_version integer)
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
CREATE OR REPLACE FUNCTION jointembed.sync_trigger()
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
CREATE OR REPLACE FUNCTION jointembed._sync_column(p_oid oid, p_column text, p_what text, p_types regtype[])
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
CREATE OR REPLACE FUNCTION jointembed.attach(p_schema text, p_table text, p_key text,
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
CREATE OR REPLACE FUNCTION jointembed.detach(p_id integer)
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
CREATE OR REPLACE FUNCTION jointembed.find_attachment(p_table text, p_schema text DEFAULT NULL)
RETURNS SETOF jointembed.attachments
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachments a
    WHERE a.table_name = p_table AND (p_schema IS NULL OR a.schema_name = p_schema)
    ORDER BY a.schema_name
$fn$;

-- Schema of the first table named p_table on the search_path (NULL if none). The name is
-- a plain name, never parsed as SQL.
CREATE OR REPLACE FUNCTION jointembed.sync_find_schema(p_table text)
RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = p_table AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false))
    ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1
$fn$;

-- Every attachment, by schema and table name.
CREATE OR REPLACE FUNCTION jointembed.list_attachments()
RETURNS SETOF jointembed.attachments
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachments ORDER BY schema_name, table_name
$fn$;
