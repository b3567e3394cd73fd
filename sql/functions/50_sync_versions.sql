-- Attached user tables: model versions (reembed: begin, activate, abort, drop retired).

-- The live version (active or building) whose model is (p_model_id, p_dim), or none.
DROP FUNCTION IF EXISTS jointembed.sync_version_for(integer, text, integer);  -- renamed _sync_version_for (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_version_for(p_id integer, p_model_id text, p_dim integer)
RETURNS SETOF jointembed.attachment_versions
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachment_versions v
    WHERE v.attachment_id = p_id AND v.state IN ('active', 'building')
      AND v.model_id = p_model_id AND v.dim = p_dim
$fn$;

-- Start building a new version for another model (reembed): a new side table beside the
-- active one, every row enqueued for it. Resumes a building version of the same model;
-- refuses while another model is being built. Returns the building version.
DROP FUNCTION IF EXISTS jointembed.sync_begin_version(integer, text, integer);  -- renamed _sync_begin_version (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_begin_version(p_id integer, p_model_id text, p_dim integer)
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
    VALUES (p_id, n, p_model_id, p_dim, jointembed._sync_side_name(p_id, n), 'building')
    RETURNING x.* INTO v;
    PERFORM jointembed._sync_create_side(a, n, p_model_id, p_dim);
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', jointembed._sync_rel(a));
    PERFORM jointembed._sync_backfill(a, n);
    RETURN v;
END
$fn$;

-- Abandon a building version (its side table and queue rows). Returns false if none.
DROP FUNCTION IF EXISTS jointembed.sync_abort_version(integer);  -- renamed _sync_abort_version (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_abort_version(p_id integer)
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
    EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', jointembed._sync_queue_name(a.id))
        USING v.version;
    EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', jointembed._sync_side_name(a.id, v.version));
    RETURN true;
END
$fn$;

-- What switching to a building version would lose: {old_done, new_done, lost}: the
-- embeddings of the active and the building version, and the rows (x modalities) the
-- active version has embedded whose last attempt in the building version failed (rows
-- that fail in both versions are not counted: the switch loses nothing there).
CREATE OR REPLACE FUNCTION jointembed._sync_version_loss(p_id integer, p_version integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a    jointembed.attachments := jointembed._sync_get(p_id);
    old  integer := a.active_version;
    od   bigint;
    nd   bigint;
    lost bigint;
BEGIN
    EXECUTE format('SELECT (SELECT count(*) FROM jointembed.%1$I), (SELECT count(*) FROM jointembed.%2$I), '
                   '(SELECT count(*) FROM (SELECT DISTINCT q.key, q.modality FROM jointembed.%3$I q '
                   'WHERE q.version = $1 AND q.last_error IS NOT NULL AND EXISTS (SELECT 1 FROM jointembed.%1$I o '
                   'WHERE o.key %4$s q.key AND o.modality = q.modality)) f)',
                   jointembed._sync_side_name(a.id, old), jointembed._sync_side_name(a.id, p_version),
                   jointembed._sync_queue_name(a.id), jointembed._sync_key_eq(a))
        INTO od, nd, lost USING p_version;
    RETURN jsonb_build_object('old_done', od, 'new_done', nd, 'lost', lost);
END
$fn$;

-- Switch searches to the building version, atomically: it becomes active, the old one
-- retired (its queue rows dropped; its side table is returned for the caller to drop
-- in a later transaction, so searches already running on it finish). Refuses while rows
-- of the building version were never attempted (object_not_in_prerequisite_state), and
-- when the new model failed (_sync_version_loss; SQLSTATE JE001): rows the old version
-- had embedded failed in the new one and either it embedded nothing or they are more
-- than p_max_failed rows (p_max_failed_pct set: that percentage of the old version's
-- embeddings, rounded down). Rows failing within the limit carry over and keep retrying.
DROP FUNCTION IF EXISTS jointembed.sync_activate_version(integer, integer);  -- renamed _sync_activate_version (worker-only)
DROP FUNCTION IF EXISTS jointembed._sync_activate_version(integer, integer);  -- now with the failure limit
CREATE OR REPLACE FUNCTION jointembed._sync_activate_version(p_id integer, p_version integer,
                                                             p_max_failed bigint DEFAULT 0,
                                                             p_max_failed_pct double precision DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a       jointembed.attachments;
    v       jointembed.attachment_versions;
    old     jointembed.attachment_versions;
    waiting bigint;
    loss    jsonb;
    allowed bigint;
BEGIN
    IF p_max_failed IS NULL AND p_max_failed_pct IS NULL OR p_max_failed < 0
       OR NOT (p_max_failed_pct BETWEEN 0 AND 100) THEN
        RAISE EXCEPTION 'jointembed: max_failed must be a count >= 0 or a percentage in [0, 100]'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO STRICT a FROM jointembed.attachments x WHERE x.id = p_id FOR UPDATE;
    SELECT * INTO v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.version = p_version AND x.state = 'building';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: version % of %.% is not being built', p_version,
            quote_ident(a.schema_name), quote_ident(a.table_name) USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('SELECT count(*) FROM jointembed.%I WHERE version = $1 AND last_error IS NULL',
                   jointembed._sync_queue_name(a.id)) INTO waiting USING p_version;
    IF waiting > 0 THEN
        RAISE EXCEPTION 'jointembed: version % of %.% still has % rows to embed', p_version,
            quote_ident(a.schema_name), quote_ident(a.table_name), waiting
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    loss := jointembed._sync_version_loss(p_id, p_version);
    allowed := CASE WHEN p_max_failed_pct IS NOT NULL
                    THEN floor(p_max_failed_pct * (loss->>'old_done')::bigint / 100)::bigint ELSE p_max_failed END;
    IF (loss->>'lost')::bigint > 0 AND ((loss->>'new_done')::bigint = 0 OR (loss->>'lost')::bigint > allowed) THEN
        RAISE EXCEPTION 'jointembed: version % of %.% failed % of the % rows the active version has embedded '
                        '(allowed: %); not switched', p_version, quote_ident(a.schema_name),
            quote_ident(a.table_name), loss->>'lost', loss->>'old_done', allowed
            USING ERRCODE = 'JE001', DETAIL = loss::text;
    END IF;
    UPDATE jointembed.attachment_versions x SET state = 'retired'
    WHERE x.attachment_id = p_id AND x.state = 'active' RETURNING x.* INTO old;
    UPDATE jointembed.attachment_versions x SET state = 'active', activated_at = now()
    WHERE x.attachment_id = p_id AND x.version = p_version;
    UPDATE jointembed.attachments x SET model_id = v.model_id, dim = v.dim, active_version = v.version
    WHERE x.id = p_id;
    EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', jointembed._sync_queue_name(a.id))
        USING old.version;
    RETURN jointembed._sync_side_name(a.id, old.version);
END
$fn$;

-- Drop the side table of a retired version (after _sync_activate_version committed; a
-- later reembed calls it again, so a crash between the two leaves nothing behind for long).
DROP FUNCTION IF EXISTS jointembed.sync_drop_retired(integer);  -- renamed _sync_drop_retired (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_drop_retired(p_id integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v record;
    n integer := 0;
    q text := jointembed._sync_queue_name(p_id);
BEGIN
    FOR v IN DELETE FROM jointembed.attachment_versions x
             WHERE x.attachment_id = p_id AND x.state = 'retired' RETURNING x.version LOOP
        EXECUTE format('DROP TABLE IF EXISTS jointembed.%I', jointembed._sync_side_name(p_id, v.version));
        EXECUTE format('DELETE FROM jointembed.%I WHERE version = $1', q) USING v.version;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$;

-- All versions of an attachment, active first.
CREATE OR REPLACE FUNCTION jointembed.sync_versions(p_id integer)
RETURNS SETOF jointembed.attachment_versions
LANGUAGE sql STABLE AS $fn$
    SELECT * FROM jointembed.attachment_versions v WHERE v.attachment_id = p_id
    ORDER BY v.state <> 'active', v.version DESC
$fn$;
