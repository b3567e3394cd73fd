-- Attached user tables: the work queue (claim, fetch, complete, fail, release, status).
--
-- The queue is an append-only log of change events written by the user's triggers
-- (migrations/004_sync_events.sql). Workers:
--   claim  (version, key, modality) groups of ready events, all events of a group at once,
--          tagged with a token, a lease and the claiming session (claim_pid / claim_lock:
--          a session-level advisory lock the backend holds while it lives);
--   fetch  one row per group: the newest event id and the user's current content;
--   complete / fail  under a per-(version, key, modality) transaction advisory lock:
--          write the embedding (stamped with the event id; an older event never replaces
--          a newer embedding, and an event with a newer one still queued writes nothing),
--          or remove the embedding when the user's row is gone; delete the group's events.
-- A claim is free again when its lease ran out or the claiming session is gone (no
-- waiting for the lease after a crash or a kill).
--
-- The functions workers call are SECURITY DEFINER with a pinned search_path: the worker
-- role (jointembed.grant_usage, 70_grants.sql) has EXECUTE on them and no write right on
-- any table. They check their arguments, act only on the attachment's own queue and side
-- tables (names derived from its id), and only on claims of the calling session.

-- advisory lock class of claims ('jemb'); objid = the session's claim_lock.
CREATE OR REPLACE FUNCTION jointembed._sync_lock_class()
RETURNS integer
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT 1785031010
$fn$;

-- (pid << 32 | claim_lock) of every session holding its claim lock in this database.
CREATE OR REPLACE FUNCTION jointembed._sync_live_claims()
RETURNS bigint[]
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(array_agg((l.pid::bigint << 32) | l.objid::bigint), '{}')
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.classid = jointembed._sync_lock_class()::oid
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
$fn$;

-- This session's claim lock (taken, session-level, on first use): identifies its claims.
CREATE OR REPLACE FUNCTION jointembed._sync_session_lock()
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    k integer := nullif(current_setting('jointembed.claim_lock', true), '')::integer;
BEGIN
    IF k IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.pid = pg_backend_pid()
              AND l.classid = jointembed._sync_lock_class()::oid AND l.objid = k::oid) THEN
        RETURN k;
    END IF;
    LOOP
        k := 1 + floor(random() * 2147483646)::integer;
        EXIT WHEN pg_try_advisory_lock(jointembed._sync_lock_class(), k);
    END LOOP;
    PERFORM set_config('jointembed.claim_lock', k::text, false);
    RETURN k;
END
$fn$;

-- The live version p_version of attachment a, or an error.
CREATE OR REPLACE FUNCTION jointembed._sync_version(a jointembed.attachments, p_version integer)
RETURNS jointembed.attachment_versions
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v jointembed.attachment_versions;
BEGIN
    SELECT * INTO v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = a.id AND x.version = p_version AND x.state IN ('active', 'building');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: attachment % has no live version %', a.id, p_version
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v;
END
$fn$;

-- Apply the ready TRUNCATE events of a version: drop every older event, then every
-- embedding whose row is no longer in the user's table. The side table is locked
-- against concurrent worker writes (SHARE ROW EXCLUSIVE) so none slips past the check.
CREATE OR REPLACE FUNCTION jointembed._sync_apply_truncates(a jointembed.attachments, p_version integer)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    q    text := jointembed._sync_queue_name(a.id);
    side text := jointembed._sync_side_name(a.id, p_version);
    e    bigint;
BEGIN
    EXECUTE format('SELECT max(r.id) FROM jointembed.%I r WHERE r.version = $1 AND r.key IS NULL', q)
        INTO e USING p_version;
    IF e IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('LOCK TABLE jointembed.%I IN SHARE ROW EXCLUSIVE MODE', side);
    EXECUTE format('DELETE FROM jointembed.%I r WHERE r.version = $1 AND r.id <= $2', q) USING p_version, e;
    EXECUTE format('DELETE FROM jointembed.%1$I s WHERE NOT EXISTS (SELECT 1 FROM %2$s u WHERE u.%3$I %4$s s.key)',
                   side, jointembed._sync_rel(a), a.key_column, jointembed._sync_key_eq(a));
END
$fn$;

-- Claim ready events of one version for p_lease: up to p_limit events in ready order,
-- plus every other claimable event of the same (key, modality), so one worker embeds
-- each row once for all its changes. Events locked by a concurrent claimer are skipped
-- (FOR UPDATE SKIP LOCKED); a claim whose lease ran out or whose session is gone is
-- claimable again. Applies pending TRUNCATE events first. Returns the events claimed.
-- Call in its own transaction.
DROP FUNCTION IF EXISTS jointembed.sync_claim(integer, integer, uuid, integer, interval);  -- renamed _sync_claim (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_claim(p_id integer, p_version integer, p_token uuid,
                                                 p_limit integer, p_lease interval)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a    jointembed.attachments := jointembed._sync_get(p_id);
    v    jointembed.attachment_versions := jointembed._sync_version(a, p_version);
    lk   integer;
    live bigint[];
    n    integer;
BEGIN
    IF p_token IS NULL OR p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000
       OR p_lease IS NULL OR p_lease NOT BETWEEN interval '1 second' AND interval '1 day' THEN
        RAISE EXCEPTION 'jointembed._sync_claim: need a token, 1 <= limit <= 10000 and a lease of 1 s to 1 day'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lk := jointembed._sync_session_lock();
    live := jointembed._sync_live_claims();
    PERFORM jointembed._sync_apply_truncates(a, v.version);
    EXECUTE format($q$
        WITH pick AS (
            SELECT r.ctid AS tid, r.key, r.modality FROM jointembed.%1$I r
            WHERE r.version = $3 AND r.key IS NOT NULL AND r.next_attempt_at <= now()
              AND (r.claim IS NULL OR r.lease_until < now()
                   OR NOT coalesce(((r.claim_pid::bigint << 32) | r.claim_lock) = ANY ($5), true))
            ORDER BY r.next_attempt_at, r.id LIMIT $4
            FOR UPDATE SKIP LOCKED),
        grp AS (
            SELECT r.ctid AS tid FROM jointembed.%1$I r
            JOIN (SELECT DISTINCT p.key, p.modality FROM pick p) g ON r.key %2$s g.key AND r.modality = g.modality
            WHERE r.version = $3
              AND (r.claim IS NULL OR r.lease_until < now()
                   OR NOT coalesce(((r.claim_pid::bigint << 32) | r.claim_lock) = ANY ($5), true))
            FOR UPDATE OF r SKIP LOCKED)
        UPDATE jointembed.%1$I q
        SET claim = $1, lease_until = clock_timestamp() + $2, claim_pid = pg_backend_pid(), claim_lock = $6
        WHERE q.ctid = ANY (ARRAY(SELECT tid FROM pick UNION SELECT tid FROM grp))$q$,
        jointembed._sync_queue_name(a.id), jointembed._sync_key_eq(a))
        USING p_token, p_lease, v.version, p_limit, live, lk;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- The claimed rows with the user's current content, one per (key, modality): id is the
-- newest claimed event of the row (pass it to _sync_complete / _sync_fail). Only the
-- row's own modality's value is returned: text_value (text rows: the text column as
-- text), image_ref (image rows, image_source path|url: the column as text) or image_data
-- (image rows, image_source bytea). present = false: the user's row is gone.
-- stored_hash: content hash already stored.
-- Caps (the worker's per-item limits, docs/SYNC.md "Size caps"): every value is measured
-- here and returned only when within its cap, so an oversized value never crosses the
-- wire: key_bytes = octet_length(key::text), value_size = char_length of the text /
-- path / URL, octet_length of the bytea (NULL: the value is NULL or the row is gone).
-- A key over p_max_key_bytes comes back as its first 64 characters (for messages) with
-- no value; a value over its cap comes back NULL. The worker fails those rows.
DROP FUNCTION IF EXISTS jointembed.sync_fetch(integer, integer, uuid);  -- renamed _sync_fetch (worker-only)
DROP FUNCTION IF EXISTS jointembed._sync_fetch(integer, integer, uuid);  -- now takes the size caps
CREATE OR REPLACE FUNCTION jointembed._sync_fetch(p_id integer, p_version integer, p_token uuid,
                                                 p_max_key_bytes integer, p_max_text_chars integer,
                                                 p_max_ref_chars integer, p_max_image_bytes bigint)
RETURNS TABLE (id bigint, key text, modality text, present boolean, text_value text,
               image_ref text, image_data bytea, stored_hash text, attempts integer,
               key_bytes integer, value_size bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a jointembed.attachments := jointembed._sync_get(p_id);
    v jointembed.attachment_versions := jointembed._sync_version(a, p_version);
BEGIN
    IF p_token IS NULL OR p_max_key_bytes IS NULL OR p_max_key_bytes < 1 OR p_max_text_chars IS NULL
       OR p_max_text_chars < 1 OR p_max_ref_chars IS NULL OR p_max_ref_chars < 1
       OR p_max_image_bytes IS NULL OR p_max_image_bytes < 1 THEN
        RAISE EXCEPTION 'jointembed._sync_fetch: need a token and caps >= 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- OFFSET 0 keeps each subquery from being flattened, so a cast (k, t) is computed
    -- once per row and the caps test the very value returned
    RETURN QUERY EXECUTE format($q$
        SELECT q.id, CASE WHEN q.kb <= $3 THEN q.k ELSE left(q.k, 64) END, q.modality, coalesce(u.present, false),
               CASE WHEN q.kb <= $3 AND q.modality = 'text' AND u.n <= $4 THEN u.t END,
               CASE WHEN q.kb <= $3 AND q.modality = 'image' AND u.n <= $5 THEN u.t END,
               CASE WHEN q.kb <= $3 AND q.modality = 'image' AND u.n <= $6 THEN u.b END,
               s.content_hash, q.attempts, q.kb, u.n
        FROM (SELECT r.*, octet_length(r.k)::integer AS kb
              FROM (SELECT DISTINCT ON (r.key, r.modality) r.id, r.key, r.key::text AS k, r.modality, r.attempts
                    FROM jointembed.%1$I r
                    WHERE r.claim = $1 AND r.version = $2 AND r.claim_pid = pg_backend_pid()
                    ORDER BY r.key, r.modality, r.id DESC) r OFFSET 0) q
        LEFT JOIN LATERAL (
            SELECT true AS present, x.t, x.b, coalesce(octet_length(x.b)::bigint, char_length(x.t)::bigint) AS n
            FROM (SELECT CASE WHEN q.modality = 'text' THEN %4$s ELSE %5$s END AS t,
                         CASE WHEN q.modality = 'image' THEN %6$s END AS b
                  FROM %2$s u WHERE u.%3$I %8$s q.key OFFSET 0) x) u ON true
        LEFT JOIN jointembed.%7$I s ON s.key %8$s q.key AND s.modality = q.modality
        ORDER BY q.id$q$,
        jointembed._sync_queue_name(a.id), jointembed._sync_rel(a), a.key_column,
        CASE WHEN a.text_column IS NULL THEN 'NULL::text' ELSE format('u.%I::text', a.text_column) END,
        CASE WHEN a.image_column IS NULL OR a.image_source = 'bytea' THEN 'NULL::text'
             ELSE format('u.%I::text', a.image_column) END,
        CASE WHEN a.image_source = 'bytea' THEN format('u.%I', a.image_column) ELSE 'NULL::bytea' END,
        jointembed._sync_side_name(a.id, v.version), jointembed._sync_key_eq(a))
        USING p_token, v.version, p_max_key_bytes, p_max_text_chars, p_max_ref_chars, p_max_image_bytes;
END
$fn$;

-- Take the per-(version, key, modality) transaction locks of the claimed events p_ids, in
-- key order (so two workers holding events of one row write one after the other).
CREATE OR REPLACE FUNCTION jointembed._sync_lock_rows(a jointembed.attachments, p_version integer,
                                                      p_token uuid, p_ids bigint[])
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($q$
        SELECT count(pg_advisory_xact_lock(hashtextextended(k, 1785031010)))
        FROM (SELECT DISTINCT concat_ws(':', 'jointembed', $1, $2, r.modality, r.key::text) AS k
              FROM jointembed.%I r WHERE r.claim = $3 AND r.id = ANY ($4) ORDER BY 1) x$q$,
        jointembed._sync_queue_name(a.id))
        USING a.id, p_version, p_token, p_ids;
END
$fn$;

-- Finish claimed rows (p_ids: the ids _sync_fetch returned), atomically, and delete all
-- their claimed events. Per row: p_embeddings[i] set: store it with p_hashes[i], unless
-- the user's row is gone, a newer event of it is queued (that one will be embedded) or
-- a newer embedding is stored; embedding NULL and hash set: the stored embedding is
-- current (same content hash); both NULL: the user's row was gone: remove its embedding
-- if the row is still gone. Only claims of the calling session count. Returns the
-- number of embeddings written.
DROP FUNCTION IF EXISTS jointembed.sync_complete(integer, integer, uuid, bigint[], text[], @vector@.vector[]);  -- renamed _sync_complete (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_complete(p_id integer, p_version integer, p_token uuid,
                                                    p_ids bigint[], p_hashes text[], p_embeddings @vector@.vector[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a  jointembed.attachments := jointembed._sync_get(p_id);
    v  jointembed.attachment_versions := jointembed._sync_version(a, p_version);
    eq text := jointembed._sync_key_eq(a);
    n  integer;
BEGIN
    IF p_token IS NULL OR p_ids IS NULL OR cardinality(p_ids) > 10000
       OR cardinality(p_ids) <> coalesce(cardinality(p_hashes), cardinality(p_ids))
       OR cardinality(p_ids) <> coalesce(cardinality(p_embeddings), cardinality(p_ids))
       OR EXISTS (SELECT 1 FROM unnest(p_hashes) h WHERE length(h) > 200) THEN
        RAISE EXCEPTION 'jointembed._sync_complete: need a token and matching arrays of at most 10000 ids'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM jointembed._sync_lock_rows(a, v.version, p_token, p_ids);
    EXECUTE format($q$
        WITH x AS (SELECT * FROM unnest($4::bigint[], $5::text[]) WITH ORDINALITY AS x (id, h, i)),
        mine AS (
            SELECT DISTINCT ON (q.key, q.modality) q.id, q.key, q.modality, x.h, ($6)[x.i] AS e,
                   EXISTS (SELECT 1 FROM %3$s u WHERE u.%4$I %5$s q.key) AS present,
                   (EXISTS (SELECT 1 FROM jointembed.%1$I o WHERE o.key %5$s q.key AND o.version = $2
                                AND o.modality = q.modality AND o.id > q.id AND o.claim IS DISTINCT FROM $1)
                    OR EXISTS (SELECT 1 FROM jointembed.%1$I o WHERE o.key IS NULL AND o.version = $2
                                AND o.id > q.id)) AS superseded
            FROM jointembed.%1$I q JOIN x ON x.id = q.id
            WHERE q.claim = $1 AND q.version = $2 AND q.claim_pid = pg_backend_pid()
            ORDER BY q.key, q.modality, q.id DESC),
        up AS (
            INSERT INTO jointembed.%2$I AS s (key, modality, content_hash, model_id, embedding, event_id)
            SELECT m.key, m.modality, m.h, $3, m.e, m.id FROM mine m
            WHERE m.e IS NOT NULL AND m.h IS NOT NULL AND m.present AND NOT m.superseded
            ORDER BY m.key, m.modality
            ON CONFLICT (key, modality) DO UPDATE
            SET content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding,
                event_id = EXCLUDED.event_id, updated_at = now()
            WHERE s.event_id < EXCLUDED.event_id
            RETURNING 1),
        same AS (
            UPDATE jointembed.%2$I s SET event_id = m.id FROM mine m
            WHERE m.e IS NULL AND m.h IS NOT NULL AND s.key %5$s m.key AND s.modality = m.modality
              AND s.content_hash = m.h AND s.event_id < m.id
            RETURNING 1),
        gone AS (
            DELETE FROM jointembed.%2$I s USING mine m
            WHERE m.e IS NULL AND m.h IS NULL AND NOT m.present
              AND s.key %5$s m.key AND s.modality = m.modality
            RETURNING 1),
        deq AS (
            DELETE FROM jointembed.%1$I r USING mine m
            WHERE r.claim = $1 AND r.version = $2 AND r.key %5$s m.key AND r.modality = m.modality
            RETURNING 1)
        SELECT (SELECT count(*) FROM up) + 0 * ((SELECT count(*) FROM same) + (SELECT count(*) FROM gone)
                                                + (SELECT count(*) FROM deq))$q$,
        jointembed._sync_queue_name(a.id), jointembed._sync_side_name(a.id, v.version),
        jointembed._sync_rel(a), a.key_column, eq)
        INTO n USING p_token, v.version, v.model_id, p_ids, p_hashes, p_embeddings;
    RETURN n;
END
$fn$;

-- Record failures of claimed rows (p_ids: ids from _sync_fetch): attempts + 1, last_error,
-- next attempt after p_backoff_s * 2^(attempts - 1) seconds (at most p_max_backoff_s);
-- given up (next_attempt_at = 'infinity') after p_max_attempts or when p_final. The
-- row's other claimed events are dropped (this one stands for them), and its stale
-- embedding is removed (it no longer describes the row's content) unless a newer one
-- is stored. Returns the number of rows recorded.
DROP FUNCTION IF EXISTS jointembed.sync_fail(integer, integer, uuid, bigint[], text[], boolean[], float8, float8, integer);  -- renamed _sync_fail (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_fail(p_id integer, p_version integer, p_token uuid,
                                                p_ids bigint[], p_errors text[], p_final boolean[],
                                                p_backoff_s float8, p_max_backoff_s float8,
                                                p_max_attempts integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a  jointembed.attachments := jointembed._sync_get(p_id);
    v  jointembed.attachment_versions := jointembed._sync_version(a, p_version);
    eq text := jointembed._sync_key_eq(a);
    n  integer;
BEGIN
    IF p_token IS NULL OR p_ids IS NULL OR cardinality(p_ids) > 10000
       OR cardinality(p_ids) <> cardinality(p_errors) OR cardinality(p_ids) <> cardinality(p_final)
       OR p_backoff_s IS NULL OR p_backoff_s NOT BETWEEN 0 AND 86400
       OR p_max_backoff_s IS NULL OR p_max_backoff_s NOT BETWEEN 0 AND 30 * 86400
       OR p_max_attempts IS NULL OR p_max_attempts < 1 THEN
        RAISE EXCEPTION 'jointembed._sync_fail: invalid arguments' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM jointembed._sync_lock_rows(a, v.version, p_token, p_ids);
    EXECUTE format($q$
        WITH x AS (SELECT * FROM unnest($2::bigint[], $3::text[], $7::boolean[]) AS x (id, err, final)),
        mine AS (
            SELECT DISTINCT ON (q.key, q.modality) q.id, q.key, q.modality, x.err, x.final
            FROM jointembed.%1$I q JOIN x ON x.id = q.id
            WHERE q.claim = $1 AND q.version = $8 AND q.claim_pid = pg_backend_pid()
            ORDER BY q.key, q.modality, q.id DESC),
        f AS (
            UPDATE jointembed.%1$I q
            SET attempts = q.attempts + 1, last_error = left(coalesce(m.err, 'unknown error'), 2000),
                failed_at = now(), claim = NULL, lease_until = NULL, claim_pid = NULL, claim_lock = NULL,
                next_attempt_at = CASE
                    WHEN m.final OR q.attempts + 1 >= $6 THEN 'infinity'::timestamptz
                    ELSE now() + make_interval(secs => least($5, $4 * 2 ^ least(q.attempts, 60))) END
            FROM mine m WHERE q.claim = $1 AND q.id = m.id
            RETURNING q.key, q.modality, q.id),
        sib AS (
            DELETE FROM jointembed.%1$I r USING mine m
            WHERE r.claim = $1 AND r.version = $8 AND r.key %3$s m.key AND r.modality = m.modality
              AND r.id <> m.id
            RETURNING 1),
        d AS (
            DELETE FROM jointembed.%2$I s USING f
            WHERE s.key %3$s f.key AND s.modality = f.modality AND s.event_id < f.id
            RETURNING 1)
        SELECT (SELECT count(*) FROM f) + 0 * ((SELECT count(*) FROM sib) + (SELECT count(*) FROM d))$q$,
        jointembed._sync_queue_name(a.id), jointembed._sync_side_name(a.id, v.version), eq)
        INTO n USING p_token, p_ids, p_errors, p_backoff_s, p_max_backoff_s, p_max_attempts, p_final, v.version;
    RETURN n;
END
$fn$;

-- Give back this session's claim p_token without doing the work (a worker stopping).
DROP FUNCTION IF EXISTS jointembed.sync_release(integer, uuid);  -- renamed _sync_release (worker-only)
CREATE OR REPLACE FUNCTION jointembed._sync_release(p_id integer, p_token uuid)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a jointembed.attachments := jointembed._sync_get(p_id);
    n integer;
BEGIN
    EXECUTE format('UPDATE jointembed.%I q SET claim = NULL, lease_until = NULL, claim_pid = NULL, '
                   'claim_lock = NULL WHERE q.claim = $1 AND q.claim_pid = pg_backend_pid()',
                   jointembed._sync_queue_name(a.id))
        USING p_token;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Make given-up rows of a version ready again (jointembed sync --retry-failed).
CREATE OR REPLACE FUNCTION jointembed.sync_retry_failed(p_id integer, p_version integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a jointembed.attachments := jointembed._sync_get(p_id);
    v jointembed.attachment_versions := jointembed._sync_version(a, p_version);
    n integer;
BEGIN
    EXECUTE format('UPDATE jointembed.%I q SET attempts = 0, next_attempt_at = now(), claim = NULL, '
                   'lease_until = NULL, claim_pid = NULL, claim_lock = NULL '
                   'WHERE q.version = $1 AND q.last_error IS NOT NULL', jointembed._sync_queue_name(a.id))
        USING v.version;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Rows of the user's table with neither an embedding nor a queued event in version v
-- (rows that arrived without row triggers: ATTACH PARTITION, session_replication_role =
-- replica, logical replication apply), counted per (row, modality). Exact when the table
-- holds at most p_exact_rows rows (by the planner's estimate); otherwise estimated from
-- a ~p_exact_rows-row sample (TABLESAMPLE SYSTEM). Returns {missing, missing_exact}.
CREATE OR REPLACE FUNCTION jointembed._sync_missing(a jointembed.attachments, v jointembed.attachment_versions,
                                                    p_exact_rows bigint DEFAULT 200000)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    est   float8;
    n     bigint;
    seen  bigint;
    mods  text[] := jointembed._sync_modalities(a);
    tmpl  text := $q$
        SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM jointembed.%1$I s
                                                 WHERE s.key %5$s u.k AND s.modality = m)
                                  AND NOT EXISTS (SELECT 1 FROM jointembed.%2$I q
                                                 WHERE q.key %5$s u.k AND q.version = $1 AND q.modality = m)),
               count(DISTINCT u.k)
        FROM (SELECT t.%3$I AS k FROM %4$s t %6$s) u CROSS JOIN unnest($2::text[]) m$q$;
BEGIN
    SELECT sum(greatest(c.reltuples, 0)) INTO est FROM pg_class c
    WHERE c.relkind = 'r' AND (c.oid = a.table_oid
                               OR c.oid IN (SELECT t.relid FROM pg_partition_tree(a.table_oid) t WHERE t.isleaf));
    IF coalesce(est, 0) <= p_exact_rows THEN
        EXECUTE format(tmpl, jointembed._sync_side_name(a.id, v.version), jointembed._sync_queue_name(a.id),
                       a.key_column, jointembed._sync_rel(a), jointembed._sync_key_eq(a), '')
            INTO n, seen USING v.version, mods;
        RETURN jsonb_build_object('missing', n, 'missing_exact', true);
    END IF;
    BEGIN
        EXECUTE format(tmpl, jointembed._sync_side_name(a.id, v.version), jointembed._sync_queue_name(a.id),
                       a.key_column, jointembed._sync_rel(a), jointembed._sync_key_eq(a),
                       format('TABLESAMPLE SYSTEM (%s)', round((100.0 * p_exact_rows / est)::numeric, 6)))
            INTO n, seen USING v.version, mods;
    EXCEPTION WHEN feature_not_supported OR wrong_object_type THEN   -- e.g. a partitioned table
        EXECUTE format(tmpl, jointembed._sync_side_name(a.id, v.version), jointembed._sync_queue_name(a.id),
                       a.key_column, jointembed._sync_rel(a), jointembed._sync_key_eq(a),
                       format('LIMIT %s', p_exact_rows))
            INTO n, seen USING v.version, mods;
    END;
    RETURN jsonb_build_object('missing', CASE WHEN seen > 0 THEN round(n * est / seen)::bigint ELSE 0 END,
                              'missing_exact', false);
END
$fn$;

-- Counts of one version: pending (changes never tried), failed (last attempt failed;
-- retrying or given up), gave_up, ready (claimable now), claimed (held by a live
-- session), done (embeddings stored). Several changes of one row before a worker sees
-- them count separately in pending (they are embedded once).
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
            'ready', count(*) FILTER (WHERE key IS NOT NULL AND next_attempt_at <= now() AND NOT live),
            'claimed', count(*) FILTER (WHERE live))
        FROM (SELECT r.*, coalesce(r.claim IS NOT NULL AND r.lease_until >= now()
                                   AND ((r.claim_pid::bigint << 32) | r.claim_lock) = ANY ($2), false) AS live
              FROM jointembed.%I r WHERE r.version = $1) x$q$, jointembed._sync_queue_name(a.id))
        INTO c USING v.version, jointembed._sync_live_claims();
    EXECUTE format('SELECT count(*) FROM jointembed.%I', jointembed._sync_side_name(a.id, v.version)) INTO d;
    RETURN c || jsonb_build_object('done', d, 'version', v.version, 'model_id', v.model_id,
                                   'dim', v.dim, 'state', v.state);
END
$fn$;

-- Status of one attachment as JSON: the active version's counts at top level
-- (pending / done / failed ...), 'missing' (rows with neither embedding nor queued
-- event, see _sync_missing; 'missing_exact' says whether counted or estimated),
-- 'building' (a reembed in progress, or null), 'retired' (side tables of an old model
-- not dropped yet) and the p_errors latest errors of the active version (a key longer
-- than 8192 bytes as text shows as its first 64 characters and '...'; last_error is
-- at most 2000 characters, see _sync_fail), so the JSON stays small whatever the keys.
DROP FUNCTION IF EXISTS jointembed.sync_status(integer, integer);
CREATE OR REPLACE FUNCTION jointembed.sync_status(p_id integer, p_errors integer DEFAULT 5,
                                                  p_exact_rows bigint DEFAULT 200000)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a   jointembed.attachments := jointembed._sync_get(p_id);
    act jointembed.attachment_versions;
    bld jointembed.attachment_versions;
    err jsonb;
BEGIN
    IF p_errors IS NULL OR p_errors NOT BETWEEN 0 AND 1000 OR p_exact_rows IS NULL
       OR p_exact_rows NOT BETWEEN 0 AND 100000000 THEN
        RAISE EXCEPTION 'jointembed.sync_status: 0 <= errors <= 1000, 0 <= exact_rows <= 1e8'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO STRICT act FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'active';
    SELECT * INTO bld FROM jointembed.attachment_versions x
    WHERE x.attachment_id = p_id AND x.state = 'building';
    EXECUTE format($q$
        SELECT coalesce(jsonb_agg(e ORDER BY e.failed_at DESC), '[]'::jsonb) FROM (
            SELECT CASE WHEN octet_length(q.k) <= 8192 THEN q.k ELSE left(q.k, 64) || '...' END AS key,
                   q.modality, q.attempts, q.last_error AS error,
                   q.failed_at, CASE WHEN q.next_attempt_at = 'infinity' THEN NULL
                                     ELSE q.next_attempt_at END AS next_attempt_at
            FROM (SELECT r.*, r.key::text AS k FROM jointembed.%I r
                  WHERE r.version = $1 AND r.last_error IS NOT NULL
                  ORDER BY r.failed_at DESC LIMIT $2 OFFSET 0) q) e$q$, jointembed._sync_queue_name(a.id))
        INTO err USING act.version, p_errors;
    RETURN jsonb_build_object('id', a.id, 'schema', a.schema_name, 'table', a.table_name,
                              'key_column', a.key_column, 'image_column', a.image_column,
                              'text_column', a.text_column, 'image_source', a.image_source)
           || jointembed._sync_counts(a, act)
           || jointembed._sync_missing(a, act, p_exact_rows)
           || jsonb_build_object(
                  'errors', err,
                  'building', CASE WHEN bld.version IS NULL THEN NULL
                                   ELSE jointembed._sync_counts(a, bld) || jointembed._sync_missing(a, bld, p_exact_rows) END,
                  'retired', (SELECT count(*) FROM jointembed.attachment_versions x
                              WHERE x.attachment_id = p_id AND x.state = 'retired'));
END
$fn$;

-- Enqueue every row again for every live version (jointembed sync --rescan): for images
-- whose files changed while their paths did not, and rows that arrived without triggers.
-- Unchanged content is only hashed, not re-embedded. Returns the number of events added.
CREATE OR REPLACE FUNCTION jointembed.sync_rescan(p_id integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    a jointembed.attachments := jointembed._sync_get(p_id);
    v record;
    n bigint := 0;
BEGIN
    FOR v IN SELECT version FROM jointembed.attachment_versions
             WHERE attachment_id = p_id AND state IN ('active', 'building') LOOP
        n := n + jointembed._sync_backfill(a, v.version);
    END LOOP;
    RETURN n;
END
$fn$;
