-- Attached user tables: the work queue (claim, fetch, complete, fail, release, status).

-- Claim up to p_limit ready queue rows of one version for p_lease; returns how many.
-- Rows locked by a concurrent claimer are skipped (FOR UPDATE SKIP LOCKED), and a row
-- whose lease ran out (its worker died) is claimable again. Call in its own transaction.
CREATE OR REPLACE FUNCTION jointembed.sync_claim(p_id integer, p_version integer, p_token uuid,
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
CREATE OR REPLACE FUNCTION jointembed.sync_fetch(p_id integer, p_version integer, p_token uuid)
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
CREATE OR REPLACE FUNCTION jointembed.sync_complete(p_id integer, p_version integer, p_token uuid,
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
CREATE OR REPLACE FUNCTION jointembed.sync_fail(p_id integer, p_version integer, p_token uuid,
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
CREATE OR REPLACE FUNCTION jointembed.sync_release(p_id integer, p_token uuid)
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
CREATE OR REPLACE FUNCTION jointembed.sync_retry_failed(p_id integer, p_version integer)
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
CREATE OR REPLACE FUNCTION jointembed._sync_counts(a jointembed.attachments, v jointembed.attachment_versions)
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
CREATE OR REPLACE FUNCTION jointembed.sync_status(p_id integer, p_errors integer DEFAULT 5)
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

-- Enqueue every row again for every live version (jointembed sync --rescan): for images
-- whose files changed while their paths did not. Unchanged content is only hashed, not
-- re-embedded. Returns the number of queue rows added.
CREATE OR REPLACE FUNCTION jointembed.sync_rescan(p_id integer)
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
