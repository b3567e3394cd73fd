-- Run by jointembed_pg.migrations before any versioned migration, under the migration
-- advisory lock. Idempotent. Not a migration itself (no NNN_ prefix).
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS jointembed;
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
