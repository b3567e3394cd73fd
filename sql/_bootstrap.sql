-- Run by jointembed_pg.migrations before any versioned migration, under the migration
-- advisory lock. Idempotent. Not a migration itself (no NNN_ prefix).
-- vector: a no-op when the extension exists in any schema (an extension is installed once
-- per database; Supabase puts it in `extensions`), so no second copy is ever created.
CREATE EXTENSION IF NOT EXISTS vector;
-- CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists;
-- managed servers often give the app role no such right, with the schema made by an admin.
DO $do$
BEGIN
    IF pg_catalog.to_regnamespace('jointembed') IS NULL THEN
        CREATE SCHEMA jointembed;
    END IF;
END
$do$;
CREATE TABLE IF NOT EXISTS jointembed.schema_version (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- The SHA-256 of the sql/functions files last applied (one row), see migrations.py.
CREATE TABLE IF NOT EXISTS jointembed.definitions (
    id              boolean     PRIMARY KEY DEFAULT true CHECK (id),
    sha256          text        NOT NULL,
    package_version text        NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);
