-- 004: the queue of an attached table becomes an append-only log of change events
-- (issue 13 item 7, issue 14 items 3 and 5).
--
-- * The user's triggers only INSERT into the queue: no lookup, no UPDATE, no DELETE of a
--   row a worker may touch, so the user's transactions (REPEATABLE READ, SERIALIZABLE
--   included) never conflict with a worker. A row may therefore have several events;
--   workers collapse them per (version, key, modality) and apply deletions themselves.
--   key IS NULL marks a TRUNCATE event (every older event and orphaned embedding of the
--   version goes).
-- * Claims are tied to the claiming session: claim_pid / claim_lock name a session-level
--   advisory lock (classid 1785031010 = 'jemb', objid claim_lock) that the claiming
--   backend holds while it lives; a claim whose lock is gone is free at once.
-- * Side tables record the newest event an embedding reflects (event_id), so a slow
--   worker never overwrites a newer embedding with an older one.
-- * Indexes: one on key (collapse, rescan, status), the ready order, claims, TRUNCATE
--   events. The identity id keeps no unique index (nothing looks a row up by id alone).
--
-- * jointembed.role_grants records the roles jointembed.grant_usage configured, so that
--   re-applying the definitions (which may re-create functions) re-applies their grants.
--
-- Existing queues and side tables (named from the attachment id, never from a stored
-- name) are converted in place; new ones are created this way by jointembed.attach.

DO $mig$
DECLARE
    a record;
    v record;
    q text;
BEGIN
    FOR a IN SELECT id FROM jointembed.attachments ORDER BY id LOOP
        q := 'a' || a.id || '_queue';
        IF to_regclass(format('jointembed.%I', q)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE format('ALTER TABLE jointembed.%I DROP CONSTRAINT IF EXISTS %I', q, q || '_pkey');
        EXECUTE format('ALTER TABLE jointembed.%I DROP CONSTRAINT IF EXISTS %I', q, q || '_id_key');
        EXECUTE format('ALTER TABLE jointembed.%I ALTER COLUMN key DROP NOT NULL', q);
        EXECUTE format('ALTER TABLE jointembed.%I ADD COLUMN IF NOT EXISTS claim_pid integer, '
                       'ADD COLUMN IF NOT EXISTS claim_lock integer', q);
        EXECUTE format('DROP INDEX IF EXISTS jointembed.%I', q || '_ready');
        EXECUTE format('DROP INDEX IF EXISTS jointembed.%I', q || '_claim');
        EXECUTE format('CREATE INDEX %I ON jointembed.%I (version, next_attempt_at, id) WHERE key IS NOT NULL',
                       q || '_ready', q);
        EXECUTE format('CREATE INDEX %I ON jointembed.%I (key)', q || '_key', q);
        EXECUTE format('CREATE INDEX %I ON jointembed.%I (claim) WHERE claim IS NOT NULL', q || '_claim', q);
        EXECUTE format('CREATE INDEX %I ON jointembed.%I (version, id) WHERE key IS NULL', q || '_truncate', q);
        FOR v IN SELECT version FROM jointembed.attachment_versions WHERE attachment_id = a.id LOOP
            IF to_regclass(format('jointembed.%I', 'a' || a.id || '_v' || v.version)) IS NOT NULL THEN
                EXECUTE format('ALTER TABLE jointembed.%I ADD COLUMN IF NOT EXISTS event_id bigint NOT NULL DEFAULT 0',
                               'a' || a.id || '_v' || v.version);
            END IF;
        END LOOP;
    END LOOP;
END
$mig$;

CREATE TABLE IF NOT EXISTS jointembed.role_grants (
    role       name        PRIMARY KEY,
    writer     boolean     NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE jointembed.role_grants IS
    'roles configured by jointembed.grant_usage (re-applied with the definitions)';
