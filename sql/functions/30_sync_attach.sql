-- Attached user tables: attach, detach, the row trigger, catalog look-ups.
-- Tables and the queue life cycle: migrations/003_attachments.sql.

-- Every name below is derived from the attachment id (a<id>_queue, a<id>_v<n>) or read
-- from the live catalog (the user's table by its oid as regclass, the key's type by
-- format_type, its equality operator from the type's default btree opclass); no value
-- stored in a jointembed table is ever pasted into a statement as text, and stored
-- identifiers (column names) are quoted with %I. So a role able to UPDATE the catalog
-- tables could not make the owner run other SQL (and grant_usage gives no role that right).

-- Names of the triggers created on an attached table (dropped by detach). The last three
-- are the per-row triggers of attachments made before migration 004 (still served).
CREATE OR REPLACE FUNCTION jointembed._sync_trigger_names()
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT ARRAY['jointembed_sync_insert', 'jointembed_sync_update', 'jointembed_sync_delete',
                 'jointembed_sync_truncate', 'jointembed_sync_key', 'jointembed_sync_text',
                 'jointembed_sync_image']
$fn$;

-- The queue table of an attachment (in schema jointembed), from its id alone.
CREATE OR REPLACE FUNCTION jointembed._sync_queue_name(p_id integer)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT 'a' || p_id || '_queue'
$fn$;

-- The side table of one version (in schema jointembed), from the ids alone.
CREATE OR REPLACE FUNCTION jointembed._sync_side_name(p_id integer, p_version integer)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT 'a' || p_id || '_v' || p_version
$fn$;

-- Modalities an attachment embeds: {image}, {text} or {image,text}.
CREATE OR REPLACE FUNCTION jointembed._sync_modalities(a jointembed.attachments)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT array_remove(ARRAY[CASE WHEN a.image_column IS NOT NULL THEN 'image' END,
                              CASE WHEN a.text_column IS NOT NULL THEN 'text' END], NULL)
$fn$;

-- The attachment p_id, or an error naming it (every function taking an id checks it here).
CREATE OR REPLACE FUNCTION jointembed._sync_get(p_id integer)
RETURNS jointembed.attachments
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    a jointembed.attachments;
BEGIN
    SELECT * INTO a FROM jointembed.attachments x WHERE x.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: no attachment %', p_id USING ERRCODE = 'undefined_object';
    END IF;
    RETURN a;
END
$fn$;

-- The user's table of an attachment as a regclass (rendered quoted and, when not on the
-- current search_path, schema-qualified by regclass's output function from the live oid,
-- never from the stored table_name text).
CREATE OR REPLACE FUNCTION jointembed._sync_rel(a jointembed.attachments)
RETURNS regclass
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = a.table_oid AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'jointembed: the table of attachment % (%.%) no longer exists', a.id,
            quote_ident(a.schema_name), quote_ident(a.table_name) USING ERRCODE = 'undefined_table';
    END IF;
    RETURN a.table_oid::regclass;
END
$fn$;

-- The key column's type as format_type() prints it (with its modifier: varchar(20),
-- char(5)), read from the live catalog and checked to parse as exactly a type name by the
-- regtype input function before any caller pastes it into DDL.
CREATE OR REPLACE FUNCTION jointembed._sync_key_type(a jointembed.attachments)
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    t text;
BEGIN
    SELECT pg_catalog.format_type(att.atttypid, att.atttypmod) INTO t FROM pg_catalog.pg_attribute att
    WHERE att.attrelid = a.table_oid AND att.attname = a.key_column AND att.attnum > 0 AND NOT att.attisdropped;
    IF t IS NULL THEN
        RAISE EXCEPTION 'jointembed: table % has no key column %', a.table_oid::regclass,
            quote_ident(a.key_column) USING ERRCODE = 'undefined_column';
    END IF;
    IF t::pg_catalog.regtype IS DISTINCT FROM (SELECT att.atttypid FROM pg_catalog.pg_attribute att
            WHERE att.attrelid = a.table_oid AND att.attname = a.key_column AND att.attnum > 0)::pg_catalog.regtype THEN
        RAISE EXCEPTION 'jointembed: the key type of table % does not parse back as itself', a.table_oid::regclass
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN t;
END
$fn$;

-- The key type's equality operator as OPERATOR(schema.=), from its default btree opclass
-- (so it resolves under a pinned search_path too); pg_catalog's = when there is none.
CREATE OR REPLACE FUNCTION jointembed._sync_key_eq(a jointembed.attachments)
RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce((
        SELECT format('OPERATOR(%s)', o.oid::pg_catalog.regoper)  -- regoper: schema-qualified, from the oid
        FROM pg_catalog.pg_attribute att
        JOIN pg_catalog.pg_type ty ON ty.oid = att.atttypid
        JOIN pg_catalog.pg_opclass c ON c.opcintype = coalesce(nullif(ty.typbasetype, 0), ty.oid) AND c.opcdefault
        JOIN pg_catalog.pg_am am ON am.oid = c.opcmethod AND am.amname = 'btree'
        JOIN pg_catalog.pg_amop ao ON ao.amopfamily = c.opcfamily AND ao.amopstrategy = 3
             AND ao.amoplefttype = c.opcintype AND ao.amoprighttype = c.opcintype
        JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr
        WHERE att.attrelid = a.table_oid AND att.attname = a.key_column AND att.attnum > 0
        LIMIT 1), 'OPERATOR(pg_catalog.=)')
$fn$;

-- Create the side table of one version: PK (key, modality), one model, HNSW per modality.
-- event_id: the newest queue event the embedding reflects (older writes never replace it).
DROP FUNCTION IF EXISTS jointembed._sync_create_side(jointembed.attachments, text, text, integer);
CREATE OR REPLACE FUNCTION jointembed._sync_create_side(a jointembed.attachments, p_version integer,
                                                        p_model_id text, p_dim integer)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    side text := jointembed._sync_side_name(a.id, p_version);
    own  name := (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
                  WHERE n.nspname OPERATOR(pg_catalog.=) 'jointembed');
BEGIN
    -- the queue functions run as the owner: a table of another role's would break them
    IF own IS NULL OR NOT own OPERATOR(pg_catalog.=) current_user THEN
        RAISE EXCEPTION 'jointembed: run this as the owner of schema jointembed (%), not as %',
            pg_catalog.quote_ident(own), pg_catalog.quote_ident(current_user) USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- pgvector's HNSW index on vector(D) takes D <= 2000 (collections store halfvec beyond)
    IF p_dim IS NULL OR p_dim < 1 OR p_dim > 2000 THEN
        RAISE EXCEPTION 'jointembed: attached tables store embeddings of 1 to 2000 dimensions (pgvector''s HNSW '
                        'index on vector), but model % has %', p_model_id, p_dim
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            key          %2$s        NOT NULL,
            modality     text        NOT NULL CHECK (modality IN ('image', 'text')),
            content_hash text        NOT NULL,
            model_id     text        NOT NULL CHECK (model_id = %3$L),
            embedding    %5$I.vector(%4$L) NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT now(),
            event_id     bigint      NOT NULL DEFAULT 0,
            PRIMARY KEY (key, modality)
        )$ddl$, side, jointembed._sync_key_type(a), p_model_id, p_dim, jointembed._vector_schema());
    EXECUTE format('CREATE INDEX %I ON jointembed.%I USING hnsw (embedding %I.vector_l2_ops) '
                   'WHERE modality = %L', side || '_image_hnsw', side, jointembed._vector_schema(), 'image');
    EXECUTE format('CREATE INDEX %I ON jointembed.%I USING hnsw (embedding %I.vector_l2_ops) '
                   'WHERE modality = %L', side || '_text_hnsw', side, jointembed._vector_schema(), 'text');
    EXECUTE format('COMMENT ON TABLE jointembed.%I IS %L', side,
                   'jointembed embeddings of ' || jointembed._sync_rel(a)::text || ' (model ' || p_model_id || ')');
    RETURN side;
END
$fn$;

-- Create the queue of an attachment (layout and indexes: migrations/004_sync_events.sql).
CREATE OR REPLACE FUNCTION jointembed._sync_create_queue(a jointembed.attachments)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    q text := jointembed._sync_queue_name(a.id);
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE jointembed.%1$I (
            id              bigint      GENERATED ALWAYS AS IDENTITY,
            version         integer     NOT NULL,
            key             %2$s,                   -- NULL: a TRUNCATE event
            modality        text        CHECK (modality IN ('image', 'text')),
            enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts        integer     NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error      text,
            failed_at       timestamptz,
            claim           uuid,
            lease_until     timestamptz,
            claim_pid       integer,
            claim_lock      integer
        )$ddl$, q, jointembed._sync_key_type(a));
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (version, next_attempt_at, id) WHERE key IS NOT NULL',
                   q || '_ready', q);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (key)', q || '_key', q);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (claim) WHERE claim IS NOT NULL', q || '_claim', q);
    EXECUTE format('CREATE INDEX %I ON jointembed.%I (version, id) WHERE key IS NULL', q || '_truncate', q);
    EXECUTE format('COMMENT ON TABLE jointembed.%I IS %L', q,
                   'jointembed work queue of ' || jointembed._sync_rel(a)::text);
    RETURN q;
END
$fn$;

-- Enqueue every row of the user's table for one version (attach backfill, reembed,
-- rescan), except (row, modality) pairs that already wait unclaimed and unfailed.
CREATE OR REPLACE FUNCTION jointembed._sync_backfill(a jointembed.attachments, p_version integer)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
BEGIN
    EXECUTE format($q$
        INSERT INTO jointembed.%1$I (version, key, modality)
        SELECT $1, t.%2$I, m FROM %3$s t CROSS JOIN unnest($2::text[]) m
        WHERE NOT EXISTS (SELECT 1 FROM jointembed.%1$I q
                          WHERE q.key %4$s t.%2$I AND q.version = $1 AND q.modality = m
                            AND q.claim IS NULL AND q.last_error IS NULL)$q$,
        jointembed._sync_queue_name(a.id), a.key_column, jointembed._sync_rel(a), jointembed._sync_key_eq(a))
        USING p_version, jointembed._sync_modalities(a);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('jointembed_sync', a.id::text);
    RETURN n;
END
$fn$;

-- The one trigger function of every attached table. TG_ARGV[0]: the attachment id.
-- It only INSERTs change events into the queue (one per live version, key and modality):
-- no look-up, no UPDATE or DELETE of rows a worker touches, so the user's transactions
-- never conflict with workers at any isolation level. Workers collapse repeated events of
-- a key and apply deletions (the key no longer in the table) themselves.
-- Statement-level with transition tables (attach): INSERT / DELETE enqueue every row;
-- UPDATE enqueues a modality only where its column changed (old and new rows matched by
-- key; a changed key enqueues the old key, whose embeddings the worker then removes, and
-- the new one); TRUNCATE enqueues one event (key NULL) that makes workers drop every
-- older event and every embedding whose row is gone.
-- Row-level (triggers of attachments made before migration 004): TG_ARGV[1] is the
-- modality an UPDATE enqueues, or '*' (key change: the old and the new key).
-- SECURITY DEFINER so that roles writing the user's table need no rights on schema
-- jointembed; it refuses to run on any table but the attachment's own (or its partitions).
CREATE OR REPLACE FUNCTION jointembed.sync_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a    jointembed.attachments;
    vers integer[];
    mods text[];
    q    text;
    n    bigint := 0;
    col  text;
BEGIN
    SELECT * INTO a FROM jointembed.attachments t WHERE t.id = TG_ARGV[0]::integer;
    IF NOT FOUND OR (a.table_oid <> TG_RELID AND NOT EXISTS (   -- a partition of the table
            SELECT 1 FROM pg_partition_ancestors(TG_RELID) p WHERE p.relid = a.table_oid)) THEN
        RAISE EXCEPTION 'jointembed: trigger % on % does not belong to attachment %',
            TG_NAME, TG_RELID::regclass, TG_ARGV[0] USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    vers := ARRAY(SELECT v.version FROM jointembed.attachment_versions v
                  WHERE v.attachment_id = a.id AND v.state IN ('active', 'building'));
    mods := jointembed._sync_modalities(a);
    q := jointembed._sync_queue_name(a.id);
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('INSERT INTO jointembed.%I (version) SELECT unnest($1)', q) USING vers;
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSIF TG_LEVEL = 'STATEMENT' AND TG_OP IN ('INSERT', 'DELETE') THEN
        EXECUTE format('INSERT INTO jointembed.%I (version, key, modality) '
                       'SELECT v, r.%I, m FROM %I r CROSS JOIN unnest($1) v CROSS JOIN unnest($2) m',
                       q, a.key_column, CASE TG_OP WHEN 'INSERT' THEN 'new_rows' ELSE 'old_rows' END)
            USING vers, mods;
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSIF TG_LEVEL = 'STATEMENT' THEN   -- UPDATE
        EXECUTE format($u$
            WITH o AS (SELECT r.%2$I AS k, %3$s AS t, %4$s AS i FROM old_rows r),
                 n AS (SELECT r.%2$I AS k, %3$s AS t, %4$s AS i FROM new_rows r),
                 ch AS (SELECT n.k, m FROM n LEFT JOIN o ON o.k %5$s n.k CROSS JOIN unnest($2) m
                        WHERE o.k IS NULL OR (m = 'text' AND o.t IS DISTINCT FROM n.t)
                                          OR (m = 'image' AND o.i IS DISTINCT FROM n.i)
                        UNION ALL
                        SELECT o.k, m FROM o CROSS JOIN unnest($2) m
                        WHERE NOT EXISTS (SELECT 1 FROM n WHERE n.k %5$s o.k))
            INSERT INTO jointembed.%1$I (version, key, modality)
            SELECT v, ch.k, ch.m FROM ch CROSS JOIN unnest($1) v$u$,
            q, a.key_column,
            CASE WHEN a.text_column IS NULL THEN 'NULL::text' ELSE format('r.%I', a.text_column) END,
            CASE WHEN a.image_column IS NULL THEN 'NULL::text' ELSE format('r.%I', a.image_column) END,
            jointembed._sync_key_eq(a))
            USING vers, mods;
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSE   -- row level (attachments made before migration 004)
        col := format('INSERT INTO jointembed.%I (version, key, modality) '
                      'SELECT v, ($1).%I, m FROM unnest($2) v CROSS JOIN unnest($3) m', q, a.key_column);
        IF TG_OP = 'UPDATE' AND TG_ARGV[1] <> '*' THEN
            mods := ARRAY[TG_ARGV[1]];
        END IF;
        IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND TG_ARGV[1] = '*') THEN
            EXECUTE col USING OLD, vers, mods;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            EXECUTE col USING NEW, vers, mods;
        END IF;
        n := 1;
    END IF;
    IF n > 0 THEN
        PERFORM pg_notify('jointembed_sync', a.id::text);
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION jointembed.sync_trigger() FROM PUBLIC;

-- Create the triggers of an attachment on its table and, for a partitioned table, on each
-- partition (a statement naming a partition fires that partition's triggers only).
CREATE OR REPLACE FUNCTION jointembed._sync_create_triggers(a jointembed.attachments)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT c.oid FROM pg_class c
               WHERE c.relkind IN ('r', 'p')   -- pg_partition_tree is empty for a plain table
                 AND (c.oid = a.table_oid OR c.oid IN (SELECT t.relid FROM pg_partition_tree(a.table_oid) t))
               ORDER BY c.oid LOOP
        EXECUTE format('CREATE TRIGGER jointembed_sync_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION jointembed.sync_trigger(%L)', rel, a.id);
        EXECUTE format('CREATE TRIGGER jointembed_sync_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION jointembed.sync_trigger(%L)', rel, a.id);
        EXECUTE format('CREATE TRIGGER jointembed_sync_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION jointembed.sync_trigger(%L)', rel, a.id);
        EXECUTE format('CREATE TRIGGER jointembed_sync_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION jointembed.sync_trigger(%L)', rel, a.id);
    END LOOP;
END
$fn$;

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
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel::regclass);
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
    UPDATE jointembed.attachments x SET queue_table = jointembed._sync_queue_name(a.id)
    WHERE x.id = a.id RETURNING x.* INTO a;

    PERFORM jointembed._sync_create_queue(a);
    INSERT INTO jointembed.attachment_versions (attachment_id, version, model_id, dim, side_table, state, activated_at)
    VALUES (a.id, 1, p_model_id, p_dim, jointembed._sync_side_name(a.id, 1), 'active', now());
    PERFORM jointembed._sync_create_side(a, 1, p_model_id, p_dim);
    PERFORM jointembed._sync_create_triggers(a);
    PERFORM jointembed._sync_backfill(a, 1);
    RETURN a;
END
$fn$;

-- Remove everything attach created: the triggers (on the table and its partitions), the
-- queue, every side table, the catalog rows. Nothing else is touched: only triggers with
-- our names that call jointembed.sync_trigger with this attachment's id are dropped.
-- Returns false when there was no attachment.
CREATE OR REPLACE FUNCTION jointembed.detach(p_id integer)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    a   jointembed.attachments;
    v   record;
    trg text;
    rel regclass;
BEGIN
    SELECT * INTO a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR trg, rel IN
        SELECT t.tgname, t.tgrelid::regclass FROM pg_trigger t
        WHERE (t.tgrelid = a.table_oid OR t.tgrelid IN (SELECT p.relid FROM pg_partition_tree(a.table_oid) p))
          AND t.tgname = ANY (jointembed._sync_trigger_names()) AND t.tgparentid = 0
          AND t.tgfoid = 'jointembed.sync_trigger()'::regprocedure
          AND t.tgnargs >= 1 AND split_part(encode(t.tgargs, 'escape'), '\000', 1) = a.id::text LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trg, rel);
    END LOOP;
    FOR v IN SELECT version FROM jointembed.attachment_versions WHERE attachment_id = a.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', jointembed._sync_side_name(a.id, v.version));
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', jointembed._sync_queue_name(a.id));
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

-- sync_find_schema / _sync_find_schema are gone: with its search_path pinned
-- (95_search_path.sql) it could not see the caller's path; the CLI looks the schema up
-- with a plain query (jointembed_pg/sync/catalog.py, _FIND_SCHEMA_SQL).
DROP FUNCTION IF EXISTS jointembed.sync_find_schema(text);
DROP FUNCTION IF EXISTS jointembed._sync_find_schema(text);

-- Every attachment, by schema and table name.
CREATE OR REPLACE FUNCTION jointembed.list_attachments()
RETURNS SETOF jointembed.attachments
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachments ORDER BY schema_name, table_name
$fn$;
